r"""A compact DCGAN (Radford et al. 2016) for the transferability experiment.

Unconditional, 32x32 or 64x64, non-saturating GAN loss, Adam(2e-4, 0.5).

    python -m fingerprinting.generators.gan train --data_dir fingerprinted_images/ --output_dir runs/gan \
        --resolution 32 --steps 20000
    python -m fingerprinting.generators.gan generate --checkpoint runs/gan/gan.pth --num_images 1000 \
        --output_dir samples/

The run folder holds args.json, metrics.jsonl, logs/ (TensorBoard),
samples/<step>.png and gan.pth (generator, discriminator, optimizers and
step, for --resume; the generator alone is what `generate` needs).
"""

import argparse
import json
import math
import os
import time

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.utils import save_image
from tqdm import tqdm

from fingerprinting import data
from fingerprinting.checkpoints import load_checkpoint, save_checkpoint
from fingerprinting.devices import select_device
from fingerprinting.errors import UserError, run_cli
from fingerprinting.records import atomic_write, write_json

LATENT_SIZE = 128


class Generator(nn.Module):
    """z (b LATENT_SIZE) -> images (b 3 r r) in [0, 1]."""

    def __init__(self, resolution=32, width=64):
        super().__init__()
        self.resolution = resolution
        doublings = int(math.log2(resolution)) - 2  # 4x4 -> resolution
        channels = width * 2 ** (doublings - 1)
        layers = [nn.ConvTranspose2d(LATENT_SIZE, channels, 4, 1, 0, bias=False), nn.BatchNorm2d(channels),
                  nn.ReLU(True)]
        for _ in range(doublings - 1):
            layers += [nn.ConvTranspose2d(channels, channels // 2, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(channels // 2), nn.ReLU(True)]
            channels //= 2
        layers += [nn.ConvTranspose2d(channels, 3, 4, 2, 1), nn.Sigmoid()]
        self.net = nn.Sequential(*layers)

    def forward(self, z):
        return self.net(z[:, :, None, None])


class Discriminator(nn.Module):
    """images (b 3 r r) in [0, 1] -> realness logits (b)."""

    def __init__(self, resolution=32, width=64):
        super().__init__()
        doublings = int(math.log2(resolution)) - 2
        layers = [nn.Conv2d(3, width, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        channels = width
        for _ in range(doublings - 1):
            layers += [nn.Conv2d(channels, channels * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(channels * 2),
                       nn.LeakyReLU(0.2, True)]
            channels *= 2
        layers += [nn.Conv2d(channels, 1, 4, 1, 0)]
        self.net = nn.Sequential(*layers)

    def forward(self, images):
        return self.net(images * 2 - 1).flatten()


def init_weights(module):
    """DCGAN initialisation: N(0, 0.02) convolutions, N(1, 0.02) batch-norm scales."""
    if isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)):
        nn.init.normal_(module.weight, 0.0, 0.02)
    elif isinstance(module, nn.BatchNorm2d):
        nn.init.normal_(module.weight, 1.0, 0.02)
        nn.init.zeros_(module.bias)


def build(resolution, width):
    if resolution not in (32, 64):
        raise UserError(f"--resolution must be 32 or 64, got {resolution}")
    generator, discriminator = Generator(resolution, width), Discriminator(resolution, width)
    generator.apply(init_weights)
    discriminator.apply(init_weights)
    return generator, discriminator


def load_images(data_dir, resolution, recursive=False, num_workers=0):
    return data.load_all(data_dir, data.list_images(data_dir, recursive), resolution, num_workers=num_workers)


def train_gan(args):
    """Train on args.data_dir; returns the path of the checkpoint."""
    from torch.utils.tensorboard import SummaryWriter

    device = select_device(args.cuda)
    torch.manual_seed(args.seed)
    images = load_images(args.data_dir, args.resolution, args.recursive, args.num_workers)
    generator, discriminator = build(args.resolution, args.width)
    generator, discriminator = generator.to(device), discriminator.to(device)
    optimizers = [torch.optim.Adam(net.parameters(), lr=args.lr, betas=(0.5, 0.999))
                  for net in (generator, discriminator)]
    os.makedirs(args.output_dir, exist_ok=True)
    write_json(vars(args), os.path.join(args.output_dir, "args.json"))
    path, step = os.path.join(args.output_dir, "gan.pth"), 0
    if args.resume and os.path.exists(path):
        step = restore(path, generator, discriminator, optimizers)
    writer = SummaryWriter(os.path.join(args.output_dir, "logs"))
    fixed_z = torch.randn(64, LATENT_SIZE, generator=torch.Generator().manual_seed(args.seed)).to(device)
    progress = tqdm(total=args.steps, initial=step, desc="GAN", unit="step", mininterval=1.0)
    while step < args.steps:
        step += 1
        generator_rng = torch.Generator().manual_seed(args.seed * 1_000_003 + step)
        real = data.to_float(images[torch.randint(len(images), (args.batch_size,), generator=generator_rng)])
        if args.mirror:
            real = mirrored_at_random(real, generator_rng)
        losses = gan_step(generator, discriminator, optimizers, real.to(device), generator_rng)
        progress.update(1)
        if step % args.log_interval == 0 or step == args.steps:
            progress.set_postfix(d=f"{losses['d_loss']:.3f}", g=f"{losses['g_loss']:.3f}")
            log(writer, os.path.join(args.output_dir, "metrics.jsonl"), step, losses)
        if step % args.sample_interval == 0 or step == args.steps:
            save_grid(generator, fixed_z, os.path.join(args.output_dir, "samples", f"{step}.png"))
        if step % args.checkpoint_interval == 0 or step == args.steps:
            save(path, generator, discriminator, optimizers, step, args)
    progress.close()
    writer.close()
    return path


def mirrored_at_random(images, rng):
    """`images` (b c h w), each flipped left to right with probability 1/2
    (StyleGAN's `--mirror`, the usual augmentation of a face or scene GAN)."""
    flip = torch.rand(len(images), generator=rng) < 0.5
    return torch.where(flip[:, None, None, None], images.flip(-1), images)


def gan_step(generator, discriminator, optimizers, real, rng):
    """One discriminator and one generator update (non-saturating loss)."""
    g_optimizer, d_optimizer = optimizers
    z = torch.randn(len(real), LATENT_SIZE, generator=rng).to(real.device)
    fake = generator(z)
    d_loss = (F.softplus(-discriminator(real)).mean() + F.softplus(discriminator(fake.detach())).mean())
    d_optimizer.zero_grad(set_to_none=True)
    d_loss.backward()
    d_optimizer.step()
    g_loss = F.softplus(-discriminator(fake)).mean()
    g_optimizer.zero_grad(set_to_none=True)
    g_loss.backward()
    g_optimizer.step()
    return dict(d_loss=d_loss.item(), g_loss=g_loss.item())


def log(writer, path, step, losses):
    for name, value in losses.items():
        writer.add_scalar(f"gan/{name}", value, step)
    with open(path, "a", encoding="utf-8") as file:
        file.write(json.dumps(dict(step=step, time=time.time(), **losses)) + "\n")


@torch.no_grad()
def save_grid(generator, z, path):
    generator.eval()
    grid = generator(z).cpu()
    generator.train()
    atomic_write(path, lambda temp_path: save_image(grid, temp_path, nrow=8, format="png"))


def save(path, generator, discriminator, optimizers, step, args):
    save_checkpoint(dict(generator=generator.state_dict(), discriminator=discriminator.state_dict(),
                         g_optimizer=optimizers[0].state_dict(), d_optimizer=optimizers[1].state_dict(),
                         step=step, resolution=args.resolution, width=args.width), path)


def restore(path, generator, discriminator, optimizers):
    state = load_checkpoint(path)
    generator.load_state_dict(state["generator"])
    discriminator.load_state_dict(state["discriminator"])
    optimizers[0].load_state_dict(state["g_optimizer"])
    optimizers[1].load_state_dict(state["d_optimizer"])
    return state["step"]


def load_generator(path):
    state = load_checkpoint(path)
    if not isinstance(state, dict) or "generator" not in state:
        raise UserError(f"{path}: not a GAN checkpoint of gan.py")
    generator = Generator(state["resolution"], state["width"])
    generator.load_state_dict(state["generator"])
    return generator.eval()


@torch.no_grad()
def generate(generator, num_images, seed, batch_size=256, device="cpu"):
    """uint8 images (n 3 r r) from a fixed seed."""
    rng = torch.Generator().manual_seed(seed)
    generator = generator.to(device)
    out = []
    for start in range(0, num_images, batch_size):
        z = torch.randn(min(batch_size, num_images - start), LATENT_SIZE, generator=rng).to(device)
        out.append(data.to_uint8(generator(z)).cpu())
    return torch.cat(out)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    train = commands.add_parser("train", help="train a DCGAN on a folder")
    train.add_argument("--data_dir", required=True)
    train.add_argument("--output_dir", required=True)
    train.add_argument("--recursive", action="store_true")
    train.add_argument("--resolution", type=int, default=32, help="32 or 64 (default 32)")
    train.add_argument("--width", type=int, default=64, help="base channel width (default 64)")
    train.add_argument("--steps", type=int, default=20000, help="default 20000")
    train.add_argument("--batch_size", type=int, default=64, help="default 64")
    train.add_argument("--lr", type=float, default=2e-4, help="default 2e-4")
    train.add_argument("--mirror", action="store_true",
                       help="flip half the training images left to right, at random (StyleGAN's --mirror)")
    train.add_argument("--seed", type=int, default=0)
    train.add_argument("--cuda", type=int, default=0, help="CUDA device; -1 or no GPU = CPU")
    train.add_argument("--num_workers", type=int, default=0)
    train.add_argument("--log_interval", type=int, default=100)
    train.add_argument("--sample_interval", type=int, default=1000)
    train.add_argument("--checkpoint_interval", type=int, default=1000)
    train.add_argument("--resume", action="store_true")
    sample = commands.add_parser("generate", help="write generated images as PNG")
    sample.add_argument("--checkpoint", required=True)
    sample.add_argument("--output_dir", required=True)
    sample.add_argument("--num_images", type=int, default=1000)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--cuda", type=int, default=0)
    return parser.parse_args(argv)


def main(args):
    if args.command == "train":
        print(f"checkpoint: {train_gan(args)}")
    else:
        images = generate(load_generator(args.checkpoint), args.num_images, args.seed,
                          device=select_device(args.cuda))
        data.save_numbered_pngs(images, args.output_dir)
        print(f"wrote {len(images)} images to {args.output_dir}")


if __name__ == "__main__":
    run_cli(main, parse_args())
