r"""A compact unconditional DDPM (Ho et al. 2020) for the transferability
experiment, built from diffusers: a `UNet2DModel` trained from scratch to
predict the noise of a `DDPMScheduler` (1,000 linear-beta steps), sampled
with a `DDIMScheduler` (--sampling_steps, deterministic, eta 0). The
weights' moving average (EMA) is what samples. Nothing is downloaded.

    python -m fingerprinting.generators.diffusion train --data_dir fingerprinted_images/ --output_dir runs/ddpm \
        --steps 50000
    python -m fingerprinting.generators.diffusion generate --checkpoint runs/ddpm/ddpm.pth --num_images 1000 \
        --output_dir samples/

The run folder holds args.json, metrics.jsonl, logs/ (TensorBoard),
samples/<step>.png and ddpm.pth (model, EMA, optimizer and step, for
--resume). Needs `pip install -r requirements-diffusers.txt`.
"""

import argparse
import copy
import importlib.util
import json
import os
import time

import torch
import torch.nn.functional as F
from tqdm import tqdm

from fingerprinting import data
from fingerprinting.checkpoints import load_checkpoint, save_checkpoint
from fingerprinting.devices import select_device
from fingerprinting.errors import UserError, run_cli
from fingerprinting.records import atomic_write, write_json

TRAIN_TIMESTEPS = 1000


def require_diffusers():
    if importlib.util.find_spec("diffusers") is None:
        raise UserError("the DDPM needs diffusers: pip install -r requirements-diffusers.txt")


def build(resolution, width):
    """The U-Net: three resolutions (width, 2 width, 2 width), self-attention at the middle one."""
    from diffusers import UNet2DModel

    return UNet2DModel(sample_size=resolution, in_channels=3, out_channels=3, layers_per_block=1,
                       norm_num_groups=min(32, width),
                       block_out_channels=(width, 2 * width, 2 * width),
                       down_block_types=("DownBlock2D", "AttnDownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "AttnUpBlock2D", "UpBlock2D"))


def noise_scheduler():
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=TRAIN_TIMESTEPS, beta_schedule="linear")


def diffusion_loss(model, scheduler, images, rng):
    """Noise-prediction MSE at a uniform random timestep (images in [-1, 1])."""
    noise = torch.randn(images.shape, generator=rng).to(images.device)
    timesteps = torch.randint(0, TRAIN_TIMESTEPS, (len(images),), generator=rng).to(images.device)
    return F.mse_loss(model(scheduler.add_noise(images, noise, timesteps), timesteps).sample, noise)


@torch.no_grad()
def update_ema(ema, model, decay):
    for averaged, current in zip(ema.parameters(), model.parameters()):
        averaged.lerp_(current, 1 - decay)


def train_ddpm(args, probe=None):
    """Train on args.data_dir; returns the checkpoint path.

    `probe(ema_model, step)`, if given, runs every --probe_interval steps
    and its dict of numbers is logged with the losses (e.g. the bit
    accuracy of samples: when does a fingerprint appear?)."""
    from torch.utils.tensorboard import SummaryWriter

    require_diffusers()
    device = select_device(args.cuda)
    torch.manual_seed(args.seed)
    images = data.load_all(args.data_dir, data.list_images(args.data_dir, args.recursive), args.resolution)
    model = build(args.resolution, args.width).to(device)
    ema = copy.deepcopy(model).eval().requires_grad_(False)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr)
    scheduler = noise_scheduler()
    os.makedirs(args.output_dir, exist_ok=True)
    write_json(vars(args), os.path.join(args.output_dir, "args.json"))
    path, step = os.path.join(args.output_dir, "ddpm.pth"), 0
    if args.resume and os.path.exists(path):
        step = restore(path, model, ema, optimizer)
    writer = SummaryWriter(os.path.join(args.output_dir, "logs"))
    metrics_path = os.path.join(args.output_dir, "metrics.jsonl")
    progress = tqdm(total=args.steps, initial=step, desc="DDPM", unit="step", mininterval=1.0)
    while step < args.steps:
        step += 1
        rng = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        batch = images[torch.randint(len(images), (args.batch_size,), generator=rng)]
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            loss = diffusion_loss(model, scheduler, data.to_float(batch).to(device) * 2 - 1, rng)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        update_ema(ema, model, min(args.ema_decay, (1 + step) / (10 + step)))
        progress.update(1)
        metrics = {}
        if step % args.log_interval == 0 or step == args.steps:
            metrics["loss"] = loss.item()
        if probe is not None and (step % args.probe_interval == 0 or step == args.steps):
            metrics.update(loss=loss.item(), **probe(ema, step))
        if metrics:
            progress.set_postfix(**{name: f"{value:.3f}" for name, value in metrics.items()})
            log(writer, metrics_path, step, metrics)
        if step % args.sample_interval == 0 or step == args.steps:
            save_grid(ema, args, os.path.join(args.output_dir, "samples", f"{step}.png"))
        if step % args.checkpoint_interval == 0 or step == args.steps:
            save(path, model, ema, optimizer, step, args)
    progress.close()
    writer.close()
    return path


def log(writer, path, step, metrics):
    for name, value in metrics.items():
        writer.add_scalar(f"ddpm/{name}", value, step)
    with open(path, "a", encoding="utf-8") as file:
        file.write(json.dumps(dict(step=step, time=time.time(), **metrics)) + "\n")


def save_grid(model, args, path):
    from torchvision.utils import save_image

    grid = generate(model, 64, args.seed, args.sampling_steps, device=next(model.parameters()).device)
    atomic_write(path, lambda temp_path: save_image(data.to_float(grid), temp_path, nrow=8, format="png"))


def save(path, model, ema, optimizer, step, args):
    save_checkpoint(dict(model=model.state_dict(), ema=ema.state_dict(), optimizer=optimizer.state_dict(),
                         step=step, resolution=args.resolution, width=args.width), path)


def restore(path, model, ema, optimizer):
    state = load_checkpoint(path)
    model.load_state_dict(state["model"])
    ema.load_state_dict(state["ema"])
    optimizer.load_state_dict(state["optimizer"])
    return state["step"]


def load_model(path):
    """The sampling network (the EMA weights) of a ddpm.pth."""
    require_diffusers()
    state = load_checkpoint(path)
    if not isinstance(state, dict) or "ema" not in state:
        raise UserError(f"{path}: not a DDPM checkpoint of diffusion.py")
    model = build(state["resolution"], state["width"])
    model.load_state_dict(state["ema"])
    return model.eval()


@torch.no_grad()
def generate(model, num_images, seed, sampling_steps=50, batch_size=256, device="cpu"):
    """uint8 images (n 3 r r) by DDIM sampling from a fixed seed."""
    from diffusers import DDIMScheduler

    rng = torch.Generator().manual_seed(seed)
    model = model.to(device).eval()
    scheduler = DDIMScheduler.from_config(noise_scheduler().config)
    scheduler.set_timesteps(sampling_steps)
    size = model.config.sample_size
    out = []
    for start in range(0, num_images, batch_size):
        sample = torch.randn(min(batch_size, num_images - start), 3, size, size, generator=rng).to(device)
        for timestep in scheduler.timesteps:
            sample = scheduler.step(model(sample, timestep).sample, timestep, sample, eta=0.0).prev_sample
        out.append(data.to_uint8((sample + 1) / 2).cpu())
    return torch.cat(out)


def add_training_arguments(parser):
    add = parser.add_argument
    add("--resolution", type=int, default=32, help="32 (default) or any multiple of 4")
    add("--width", type=int, default=64, help="U-Net base channels (default 64)")
    add("--batch_size", type=int, default=64, help="default 64")
    add("--lr", type=float, default=2e-4, help="Adam learning rate (default 2e-4)")
    add("--ema_decay", type=float, default=0.9995, help="default 0.9995")
    add("--sampling_steps", type=int, default=50, help="DDIM steps when sampling (default 50)")
    add("--bf16", action="store_true", help="bfloat16 autocast (weights stay float32)")
    add("--log_interval", type=int, default=100)
    add("--sample_interval", type=int, default=1000)
    add("--checkpoint_interval", type=int, default=1000)
    add("--probe_interval", type=int, default=1000, help="steps between probes of the samples (default 1000)")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train a DDPM on a folder")
    train.add_argument("--data_dir", required=True)
    train.add_argument("--output_dir", required=True)
    train.add_argument("--recursive", action="store_true")
    train.add_argument("--steps", type=int, default=50000, help="default 50000")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--cuda", type=int, default=0, help="CUDA device; -1 or no GPU = CPU")
    train.add_argument("--resume", action="store_true")
    add_training_arguments(train)
    sample = commands.add_parser("generate", help="write DDIM samples as PNG")
    sample.add_argument("--checkpoint", required=True)
    sample.add_argument("--output_dir", required=True)
    sample.add_argument("--num_images", type=int, default=1000)
    sample.add_argument("--sampling_steps", type=int, default=50)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--cuda", type=int, default=0)
    args = parser.parse_args(argv)
    if args.command == "train" and (args.resolution % 4 or args.resolution < 8):
        parser.error("--resolution must be a multiple of 4, at least 8")
    return args


def main(args):
    if args.command == "train":
        print(f"checkpoint: {train_ddpm(args)}")
    else:
        images = generate(load_model(args.checkpoint), args.num_images, args.seed, args.sampling_steps,
                          device=select_device(args.cuda))
        data.save_numbered_pngs(images, args.output_dir)
        print(f"wrote {len(images)} images to {args.output_dir}")


if __name__ == "__main__":
    run_cli(main, parse_args())
