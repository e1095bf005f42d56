"""Training a fingerprint encoder/decoder pair: the work behind train.py,
as plain functions (`parse_args`, `train`) that tests, the demo and the
benchmarks call directly."""

import argparse
import copy
import dataclasses
import glob
import importlib.util
import json
import os
import time
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DistributedSampler
from torchvision.utils import save_image
from tqdm import tqdm

from fingerprinting import data, forgery, modulation, perturbations
from fingerprinting.bits import bit_accuracy, bits_from_logits, random_bits
from fingerprinting.checkpoints import (
    ModelConfig,
    decode,
    decoder_resolution,
    encode,
    field_mean,
    load_checkpoint,
    load_decoder,
    load_encoder,
    model_pair_paths,
    save_checkpoint,
    save_model_config,
)
from fingerprinting.devices import Distributed, close_distributed, init_distributed
from fingerprinting.errors import UserError
from fingerprinting.evaluation import psnr
from fingerprinting.records import atomic_write, write_json
from models import StegaStampDecoder, StegaStampEncoder, check_resolution

# Recipes: what differs between the published algorithm and ours.
RECIPES = {
    # The published code, exactly: PyTorch's default initialisation, inputs
    # in [0, 1], constant learning rate.
    "paper": dict(centred_inputs=False, he_init=False, warmup_steps=0),
    # Default: He initialisation (the default one shrinks the signal through
    # the ReLU stack, which is why published runs sit at 50% for hundreds
    # of steps), inputs and bits centred on 0, a short warm-up to a 3x
    # higher learning rate, the L2 ramp starting when bits are learned and
    # rising to a 4x higher weight, and a lower-rate tail (RECIPE_DEFAULTS).
    "fast": dict(centred_inputs=True, he_init=True, warmup_steps=100),
}
RECIPE_DEFAULTS = {"paper": dict(lr=1e-4, lr_tail=0.0, l2_loss_await=1000, l2_loss_ramp=3000, l2_loss_weight=10,
                                 ema_decay=0.0),
                   "fast": dict(lr=3e-4, lr_tail=0.1, l2_loss_await=0, l2_loss_ramp=1000, l2_loss_weight=40,
                                ema_decay=0.999)}
LR_TAIL_FACTOR = 1 / 3  # the learning rate in the tail, relative to --lr
L2_ACTIVATION_ACCURACY = 0.9
# --target_psnr: per step, log(L2 weight multiplier) moves by this much per dB
# the batch PSNR is below (up) or above (down) the target, within the range.
L2_SCALE_RATE = 0.001
L2_SCALE_RANGE = (0.1, 100.0)
# Without a target, robust training settles far below 30 dB (24.8 dB measured).
# 30.3 dB on training batches measured 30.5 dB on held-out images (8-bit).
AUGMENT_TARGET_PSNR = 30.3
# --forgery_loss_weight: fingerprints shared by a quarter of the batch each,
# attacks pasted at a PSNR drawn from this range (the attacks must keep 30 dB).
FORGERY_GROUPS = 4
FORGERY_PSNR_RANGE = (28.0, 42.0)


def default_cache_gb():
    try:
        return round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 4 / 2 ** 30, 1)
    except (ValueError, OSError, AttributeError):
        return 4.0


def build_parser(description=None):
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--data_dir", required=True, help="folder of training images")
    add("--output_dir", required=True, help="run folder for checkpoints, logs and samples")
    add("--recursive", action="store_true", help="also read images in sub-folders")
    add("--use_celeba_preprocessing", action="store_true",
        help="center-crop 148 then resize to 128 (only with --image_resolution 128)")
    add("--center_crop", type=int, default=0,
        help="center-crop this many pixels, then resize (0 = resize shorter side; default 0)")
    add("--fingerprint_length", "--fingerprint_size", dest="fingerprint_length", type=int, default=100,
        help="number of bits (default 100)")
    add("--image_resolution", type=int, default=128, help="power of two >= 16 (default 128)")
    add("--num_epochs", type=int, default=20, help="passes over the data (default 20)")
    add("--max_steps", type=int, default=0, help="train this many steps instead of --num_epochs (default 0 = off)")
    add("--stop_at_bit_acc", type=float, default=0,
        help="stop early once a logged step's training bit accuracy reaches this (default 0 = off)")
    add("--batch_size", type=int, default=64, help="images per step (default 64)")
    add("--recipe", choices=sorted(RECIPES), default="fast",
        help="'paper' = the published algorithm exactly; 'fast' (default) = converges in far fewer steps")
    add("--lr", type=float, default=None, help="Adam learning rate (paper 1e-4, fast 3e-4)")
    add("--lr_tail", type=float, default=None,
        help="fraction of the steps, at the end, trained at a third of --lr (paper 0, fast 0.1)")
    add("--cuda", type=int, default=0, help="CUDA device index; -1 or no GPU = CPU (default 0)")
    add("--l2_loss_await", type=int, default=None,
        help="steps after bit accuracy first exceeds 0.9 before the L2 weight rises (paper 1000, fast 0)")
    add("--l2_loss_weight", type=float, default=None, help="final L2 loss weight (paper 10, fast 40)")
    add("--l2_loss_ramp", type=int, default=None, help="steps to ramp the L2 weight up (paper 3000, fast 1000)")
    add("--ema_decay", type=float, default=None,
        help="save and evaluate an exponential moving average of the weights, this decay per step "
             "(paper 0 = off, fast 0.999)")
    add("--BCE_loss_weight", type=float, default=1, help="bit loss weight (default 1)")
    add("--seed", type=int, default=0, help="seed for weights, batches and bits (default 0)")
    add("--num_workers", type=int, default=None, help="image decoding processes (default: cores - 1)")
    add("--num_holdout", type=int, default=None,
        help="images held out to measure PSNR/bit accuracy (default 1%%, at most 500)")
    add("--log_interval", type=int, default=100, help="steps between logged metrics (default 100)")
    add("--checkpoint_interval", type=int, default=5000, help="steps between checkpoints (default 5000)")
    add("--image_interval", type=int, default=1000, help="steps between sample grids (default 1000)")
    add("--resume", action="store_true", help="continue the latest run in --output_dir")
    add("--init_from", default=None, metavar="PAIR",
        help="start from existing weights: a shipped model's name or an _encoder.pth path (with its "
             "_decoder.pth beside it); its resolution and length must match the run's (default: off)")
    add("--decoder_only", action="store_true",
        help="with --init_from: train the decoder alone; the pair's encoder and its config (field, mean "
             "field, residual) stay exactly as they are, so the new decoder reads every record the pair "
             "embedded (default off)")
    add("--cache_gb", type=float, default=default_cache_gb(),
        help="decode the training images once into memory up to this size, else every epoch "
             "(default: a quarter of RAM)")
    add("--augment", action="store_true",
        help="train through noise, blur, JPEG and crops (perturbations.py), ramped up after bits are learned")
    add("--augment_ramp", type=int, default=2000, help="steps to reach full augmentation strength (default 2000)")
    add("--augment_crop", type=float, default=perturbations.AugmentOptions.strongest_crop,
        help="with --augment: the strongest center crop trained on, as the kept fraction of the side "
             f"(default {perturbations.AugmentOptions.strongest_crop:g})")
    add("--augment_resample", action="store_true",
        help="with --augment: one more batch slice enlarged and shrunk back (then cropped), as images larger "
             "than the model are through the residual method (embed/detect --keep_size; default off)")
    add("--augment_crops_shrunk_back", action="store_true",
        help="with --augment: the crop slice is shrunk back to the scale it was embedded at, its border "
             "replicated, as detect_fingerprints.py --search_crops reads a crop; the pair's config then "
             "turns that search on by default (default off)")
    add("--augment_chains", action="store_true",
        help="with --augment: two more batch slices cropped or downscaled, then saved as JPEG, and every JPEG "
             "slice saved off JPEG's 8x8 grid, as an upload does (default off)")
    add("--jpeg_gradient", choices=sorted(perturbations.JPEG_STAND_INS), default="approximation",
        help="with --augment: what the real JPEG's gradient flows through (default approximation; "
             "kornia needs `pip install kornia`)")
    add("--target_psnr", type=float, default=None,
        help="once the L2 ramp is done, scale the L2 weight up or down to hold the training PSNR at this "
             f"many dB (default {AUGMENT_TARGET_PSNR:g} with --augment, else 0 = off)")
    add("--modulation", choices=modulation.MODES, default="none",
        help="'dog', 'fine_dog', 'smooth_dog', 'smooth_fine_dog' or 'folded_smooth_dog': sign the residual by "
             "the image's own field, so that copied or averaged residuals decode to chance; fine_dog's finer "
             "field agrees by chance between fewer pairs of images; smooth_dog blurs the residual first, so that "
             "copy estimates hold little of it (smooth_fine_dog: the same at half the scale, for 32 px; "
             "folded_smooth_dog: smooth_dog with a field that turns over at several levels, so that look-alike "
             "images agree less; modulation.py; default none, the published encoding)")
    add("--modulation_mean", action="store_true",
        help="with --modulation: subtract the field's average over the training images (stored in the "
             "_config.json), for aligned data such as faces (default off)")
    add("--luma_residual", action="store_true",
        help="a grey residual, the same change on the three channels: JPEG's chroma subsampling cannot "
             "remove it (default off, the published colour residual)")
    add("--chroma_loss_weight", type=float, default=0.0,
        help="extra L2 weight, relative to the L2 loss, on the residual's colour (Cb, Cr) planes, which JPEG "
             "subsamples and quantises hardest: the encoder moves its change into brightness (default 0 = off)")
    add("--forgery_loss_weight", type=float, default=0.0,
        help="weight of the defence against averaging and copy attacks: images forged with another image's "
             "or a group's mean residual must decode to chance, fingerprinted ones stripped of them must "
             "keep their bits (forgery.py; default 0 = off)")
    add("--forgery_scheme_aware", action="store_true",
        help="with --forgery_loss_weight: train against the attacker who has read modulation.py too (a "
             "group's residual unsigned by its fields, re-signed by the target's; the pair's --modulation, or "
             "'dog' without one, as attacks.py's; default off)")
    add("--forgery_look_alikes", action="store_true",
        help="with --forgery_loss_weight: also forge each image with the residual of the batch's most "
             "look-alike image, as the copy attack from the nearest look-alike does (default off)")
    add("--forgery_dct_copies", action="store_true",
        help="with --forgery_loss_weight: also forge with another image minus its DCT-thresholded copy "
             "(forgery.dct_denoise, a fast stand-in for the BM3D copy attack; docs/security.md section 27; "
             "default off)")
    add("--forgery_look_alike_dct", action="store_true",
        help="with --forgery_loss_weight: also forge each image with the batch's most look-alike image minus "
             "its DCT-thresholded copy, as the look-alike copy through that estimate does (default off)")
    add("--group_mean_out", action="store_true",
        help="with --forgery_loss_weight: take each fingerprint group's mean residual out of its images, as "
             "embedding a one-fingerprint folder then takes the folder's out (\"folder_mean_residual\" in the "
             "_config.json): the bits must ride on what differs from image to image, which an average of "
             "fingerprinted images does not hold; --decoder_only from such a pair needs it too "
             "(docs/security.md section 25; default off)")
    add("--group_mean_loss_weight", type=float, default=0.0,
        help="with --group_mean_out: also penalise that group mean (times the L2 weight), so that the encoder "
             "learns to leave most of it out itself, on images like its training data, and images embedded "
             "one fingerprint each carry less of it (docs/security.md section 26; default 0 = off)")
    add("--fingerprint_groups", type=int, default=None,
        help="slices of each batch that share one fingerprint, as a dataset does (default 4 with "
             "--forgery_loss_weight, else 1 = fresh bits per image)")
    add("--bf16", action="store_true",
        help="bfloat16 autocast, weights stay float32 (CUDA; on CPUs with AMX units measured 2x faster)")
    add("--channels_last", action=argparse.BooleanOptionalAction, default=None,
        help="channels-last memory format (default: on for CPU, where it measured faster; opt-in on CUDA)")
    return parser


# Options of the forgery defence: each needs --forgery_loss_weight.
DEFENCE_OPTIONS = ("forgery_scheme_aware", "forgery_look_alikes", "forgery_dct_copies", "forgery_look_alike_dct",
                   "group_mean_out")


def parse_args(argv=None, description=None):
    parser = build_parser(description)
    args = parser.parse_args(argv)
    for name, value in RECIPE_DEFAULTS[args.recipe].items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    try:
        check_resolution(args.image_resolution)
        data.check_preprocessing(args.image_resolution, args.use_celeba_preprocessing)
    except (ValueError, UserError) as error:
        parser.error(str(error))
    for name in ("fingerprint_length", "batch_size", "num_epochs", "log_interval", "checkpoint_interval",
                 "image_interval"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.lr <= 0:
        parser.error("--lr must be > 0")
    if not 0 <= args.lr_tail < 1:
        parser.error("--lr_tail must be in [0, 1)")
    if not 0 <= args.ema_decay < 1:
        parser.error("--ema_decay must be in [0, 1)")
    if args.num_workers is None:
        args.num_workers = data.default_num_workers()
    if not 0 < args.augment_crop <= 1:
        parser.error("--augment_crop must be in (0, 1]")
    if args.jpeg_gradient == "kornia" and importlib.util.find_spec("kornia") is None:
        parser.error("--jpeg_gradient kornia needs kornia: pip install kornia")
    if args.forgery_loss_weight < 0:
        parser.error("--forgery_loss_weight must be >= 0")
    for name in DEFENCE_OPTIONS:
        if getattr(args, name) and not args.forgery_loss_weight:
            parser.error(f"--{name} needs --forgery_loss_weight > 0")
    if args.group_mean_loss_weight and not args.group_mean_out:
        parser.error("--group_mean_loss_weight needs --group_mean_out")
    if args.group_mean_loss_weight < 0:
        parser.error("--group_mean_loss_weight must be >= 0")
    if args.group_mean_loss_weight and args.decoder_only:
        parser.error("--group_mean_loss_weight trains the encoder: leave it out with --decoder_only")
    if args.decoder_only and not args.init_from:
        parser.error("--decoder_only needs --init_from: the encoder it keeps")
    if args.augment_crops_shrunk_back and not args.augment:
        parser.error("--augment_crops_shrunk_back needs --augment")
    if args.augment_chains and not args.augment:
        parser.error("--augment_chains needs --augment")
    if args.decoder_only and (args.modulation != "none" or args.modulation_mean or args.luma_residual
                              or args.chroma_loss_weight):
        parser.error("--decoder_only keeps the --init_from pair's encoding: leave out --modulation, "
                     "--modulation_mean, --luma_residual and --chroma_loss_weight")
    if args.chroma_loss_weight < 0:
        parser.error("--chroma_loss_weight must be >= 0")
    if args.fingerprint_groups is None:
        args.fingerprint_groups = FORGERY_GROUPS if args.forgery_loss_weight else 1
    if args.fingerprint_groups < 1:
        parser.error("--fingerprint_groups must be >= 1")
    if args.group_mean_out and args.fingerprint_groups * 2 > args.batch_size:
        parser.error("--group_mean_out needs groups of at least two images: --fingerprint_groups <= --batch_size / 2")
    if args.target_psnr is None:
        args.target_psnr = AUGMENT_TARGET_PSNR if args.augment else 0.0
    return args


# --- data -----------------------------------------------------------------

def image_dataset(args):
    paths = data.list_images(args.data_dir, args.recursive)
    crop = data.center_crop_for(args.use_celeba_preprocessing, args.center_crop)
    return data.ImageFiles(args.data_dir, paths, args.image_resolution, crop)


def decode_images(dataset, indices, args, context, what):
    """Decode the given images once into a uint8 tensor (n c h w); report skipped files."""
    images, failures = [], []
    for _, batch, failed in tqdm(data.image_batches(dataset, 256, args.num_workers, indices), desc=what,
                                 unit="batch", leave=False, disable=not context.is_main):
        images.append(batch) if len(batch) else None
        failures.extend((dataset.relative_paths[index], reason) for index, reason in failed)
    report_skipped(failures, args, context)
    if not images:
        raise UserError(f"--data_dir {args.data_dir}: none of the {len(indices)} files could be read")
    return torch.cat(images)


def report_skipped(failures, args, context):
    if failures and context.is_main:
        skipped = data.record_skipped(failures, os.path.join(args.output_dir, "skipped.txt"), resume=True)
        print(f"skipped unreadable file(s), {skipped} listed in {args.output_dir}/skipped.txt")


def training_data(args, context=Distributed()):
    """(training source, held-out uint8 images).

    Held-out images (a seeded draw) are never trained on. The training
    images are decoded once into a uint8 tensor when that fits in
    --cache_gb; otherwise the source is the files themselves, decoded
    every epoch by DataLoader workers.
    """
    dataset = image_dataset(args)
    count = len(dataset)
    num_holdout = min(500, count // 100) if args.num_holdout is None else args.num_holdout
    if num_holdout >= count:
        raise UserError(f"--num_holdout {num_holdout} leaves no training images (found {count})")
    order = torch.randperm(count, generator=torch.Generator().manual_seed(args.seed))
    heldout = (decode_images(dataset, order[:num_holdout].tolist(), args, context, "reading held-out images")
               if num_holdout else torch.empty(0, 3, args.image_resolution, args.image_resolution, dtype=torch.uint8))
    training = order[num_holdout:].tolist()
    if len(training) * 3 * args.image_resolution ** 2 <= args.cache_gb * 2 ** 30:
        return decode_images(dataset, training, args, context, "reading images"), heldout
    if context.is_main:
        print(f"{len(training)} images exceed --cache_gb {args.cache_gb}: decoding them every epoch")
    return torch.utils.data.Subset(dataset, training), heldout


def source_batches(source, args, epoch, offset, context):
    """uint8 image batches (b c h w) of one epoch, from the cache or streamed from files."""
    batches = epoch_batches(len(source), args.batch_size, args.seed, epoch, context)[offset:]
    if isinstance(source, torch.Tensor):
        yield from (source[batch] for batch in batches)
        return
    order = torch.cat(batches).tolist() if batches else []
    failures = []
    loader = torch.utils.data.DataLoader(torch.utils.data.Subset(source, order), batch_size=len(batches[0]),
                                         num_workers=args.num_workers, collate_fn=data.collate_records)
    for _, images, failed in loader:
        failures.extend((source.dataset.relative_paths[source.indices[order[i]]], reason) for i, reason in failed)
        if len(images):
            yield images
    report_skipped(failures, args, context)


def epoch_batches(num_images, batch_size, seed, epoch, context=Distributed()):
    """This process's index batches of one epoch (torch's DistributedSampler:
    order from (seed, epoch), one shard per rank; one shard without torchrun)."""
    batch_size = min(batch_size, num_images // context.world_size)
    if batch_size < 1:
        raise UserError(f"{num_images} training images cannot be shared by {context.world_size} processes")
    sampler = DistributedSampler(range(num_images), num_replicas=context.world_size, rank=context.rank,
                                 shuffle=True, seed=seed, drop_last=True)
    sampler.set_epoch(epoch)
    order = torch.tensor(list(sampler))
    return [order[start:start + batch_size] for start in range(0, len(order) - batch_size + 1, batch_size)]


# --- the recipe -----------------------------------------------------------

def l2_weight(step, l2_activation_step, args):
    """Published schedule: 0 until activation, then after `await` a linear ramp."""
    if l2_activation_step is None:
        return 0.0
    steps_since = step - l2_activation_step
    return min(max(0.0, args.l2_loss_weight * (steps_since - args.l2_loss_await) / args.l2_loss_ramp),
               args.l2_loss_weight)


def adapt_l2_scale(scale, batch_psnr, args):
    """--target_psnr: raise the L2 weight multiplier while the PSNR is below
    the target, lower it while above."""
    scale *= float(np.exp(L2_SCALE_RATE * (args.target_psnr - batch_psnr)))
    return min(max(scale, L2_SCALE_RANGE[0]), L2_SCALE_RANGE[1])


def learning_rate(step, total_steps, args):
    """Linear warm-up (fast recipe), constant, then the last --lr_tail of
    the steps at LR_TAIL_FACTOR x --lr."""
    warmup = RECIPES[args.recipe]["warmup_steps"]
    if step < warmup:
        return args.lr * step / warmup
    if step > total_steps * (1 - args.lr_tail):
        return args.lr * LR_TAIL_FACTOR
    return args.lr


def build_models(args):
    torch.manual_seed(args.seed)
    recipe = RECIPES[args.recipe]
    config = ModelConfig(encoder_output="image", centred_inputs=recipe["centred_inputs"],
                         resolution=args.image_resolution, fingerprint_length=args.fingerprint_length,
                         modulation=args.modulation, luma_residual=args.luma_residual,
                         folder_mean_residual=args.group_mean_out, search_crops=args.augment_crops_shrunk_back)
    encoder = StegaStampEncoder(args.image_resolution, 3, args.fingerprint_length)
    decoder = StegaStampDecoder(args.image_resolution, 3, args.fingerprint_length)
    if recipe["he_init"]:
        for module in [*encoder.modules(), *decoder.modules()]:
            if isinstance(module, (nn.Conv2d, nn.Linear)):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                nn.init.zeros_(module.bias)
        # Logits start near 0: the bit loss starts at log 2, not saturated.
        nn.init.normal_(decoder.dense[2].weight, std=0.01)
    return encoder, decoder, config


def load_initial_weights(pair, encoder, decoder, args):
    """--init_from: the pair's weights (published keys, strict) and meaning."""
    encoder_path, decoder_path = model_pair_paths(pair)
    loaded_encoder, config = load_encoder(encoder_path, args.image_resolution)
    loaded_decoder, _ = load_decoder(decoder_path, args.image_resolution)
    found = (config.resolution or decoder_resolution(decoder_path), loaded_encoder.secret_dense.in_features)
    if found != (args.image_resolution, args.fingerprint_length) or config.encoder_output != "image":
        raise UserError(f"--init_from {pair}: a {found[0]}x{found[0]}, {found[1]}-bit "
                        f"{config.encoder_output}-output pair; this run is {args.image_resolution}x"
                        f"{args.image_resolution}, {args.fingerprint_length} bits, image output")
    encoder.load_state_dict(loaded_encoder.state_dict())
    decoder.load_state_dict(loaded_decoder.state_dict())
    if args.decoder_only:
        check_same_group_mean_out(pair, config, args)
        return dataclasses.replace(config, resolution=args.image_resolution,
                                   search_crops=args.augment_crops_shrunk_back)
    return ModelConfig(encoder_output="image", centred_inputs=config.centred_inputs,
                       resolution=args.image_resolution, fingerprint_length=args.fingerprint_length,
                       modulation=args.modulation, luma_residual=args.luma_residual,
                       folder_mean_residual=args.group_mean_out, search_crops=args.augment_crops_shrunk_back)


def check_same_group_mean_out(pair, config, args):
    """--decoder_only: the new decoder must see what the pair embeds, so
    --group_mean_out exactly when the pair was trained with it (an additive
    pair whose config says folder_mean_residual; the keyed pairs' flag was
    set after training)."""
    trained_with_it = config.folder_mean_residual and config.modulation not in modulation.BANDS
    if trained_with_it and not args.group_mean_out:
        raise UserError(f"--decoder_only --init_from {pair}: a pair trained with --group_mean_out; add "
                        f"--group_mean_out, so that its new decoder trains on images without their groups' mean")
    if args.group_mean_out and not trained_with_it:
        raise UserError(f"--decoder_only --init_from {pair} --group_mean_out: the pair was not trained with "
                        f"--group_mean_out; leave it out")


@torch.no_grad()
def update_average(averaged, models, step, decay):
    """Exponential moving average of the weights. The decay starts low, so
    that the random initial weights fade out of short runs too."""
    decay = min(decay, (1 + step) / (10 + step))
    for average_model, model in zip(averaged[:2], models[:2]):
        for average, weight in zip(average_model.parameters(), model.parameters()):
            average.lerp_(weight, 1 - decay)


def augment_ramp(step, l2_activation_step, args):
    """Augmentation strength 0..1: off until the bits are learned, then ramped."""
    if not args.augment or l2_activation_step is None:
        return 0.0
    return min(1.0, (step - l2_activation_step) / args.augment_ramp)


def training_step(models, optimizer, images, bits, weights, args, generator=None):
    """One optimisation step; returns the batch metrics."""
    encoder, decoder, config = models
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=args.bf16):
        fingerprinted = encode(encoder, config, bits, images)
        group_means = torch.zeros_like(images)
        if args.group_mean_out:
            group_means = forgery.group_mean_residuals(images, fingerprinted, args.fingerprint_groups)
            fingerprinted = fingerprinted - group_means
        seen = fingerprinted
        if weights.get("augment"):
            options = perturbations.AugmentOptions(args.jpeg_gradient, args.augment_crop, args.augment_resample,
                                                   args.augment_crops_shrunk_back, args.augment_chains)
            seen = perturbations.augment(fingerprinted.float().clamp(0, 1), weights["augment"], generator, options)
        logits = decode(decoder, config, seen)
    fingerprinted, logits = fingerprinted.float(), logits.float()
    l2_loss = F.mse_loss(fingerprinted, images)
    chroma_loss = perturbations.chroma(fingerprinted - images).pow(2).mean()
    group_mean_loss = group_means.float().pow(2).mean()
    bce_loss = F.binary_cross_entropy_with_logits(logits.view(-1), bits.view(-1))
    loss = (weights["l2"] * (l2_loss + args.chroma_loss_weight * chroma_loss
                             + args.group_mean_loss_weight * group_mean_loss) + args.BCE_loss_weight * bce_loss)
    defence = {}
    if weights.get("forgery"):
        forgery_loss, defence = defence_loss(decoder, config, images, fingerprinted, bits, args, generator)
        loss = loss + weights["forgery"] * forgery_loss
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    with torch.no_grad():
        accuracy = bit_accuracy(bits_from_logits(logits), bits).mean().item()
        return dict(bit_acc=accuracy, bce=bce_loss.item(), l2=l2_loss.item(), chroma_l2=chroma_loss.item(),
                    psnr=psnr(fingerprinted.detach(), images).mean().item(), l2_weight=weights["l2"],
                    group_mean_rms=group_mean_loss.sqrt().item(),
                    **defence), fingerprinted


def defence_loss(decoder, config, images, fingerprinted, bits, args, generator=None):
    """--forgery_loss_weight: forged images (another image's or group's
    residual pasted on) decode to chance; stripped ones keep their bits."""
    fields = (modulation.sign_field(images, field_mean(config, images), modulation.field_or_dog(config.modulation))
              if args.forgery_scheme_aware else None)
    forged, pasted_bits, stripped, kept_bits = forgery.attack_batch(
        images, fingerprinted.float(), bits, args.fingerprint_groups, FORGERY_PSNR_RANGE, generator, fields,
        args.forgery_look_alikes, args.forgery_dct_copies, args.forgery_look_alike_dct)
    with torch.autocast(images.device.type, dtype=torch.bfloat16, enabled=args.bf16):
        logits = decode(decoder, config, torch.cat([forged, stripped])).float()
    forged_logits, stripped_logits = logits.split(len(images))
    chance_loss = forgery.agreement(forged_logits, pasted_bits).pow(2).mean()
    strip_loss = F.binary_cross_entropy_with_logits(stripped_logits, kept_bits)
    with torch.no_grad():
        metrics = dict(forged_bit_acc=bit_accuracy(bits_from_logits(forged_logits), pasted_bits).mean().item(),
                       stripped_bit_acc=bit_accuracy(bits_from_logits(stripped_logits), kept_bits).mean().item())
    return chance_loss + strip_loss, metrics


@torch.no_grad()
def evaluate(models, images, length, device, seed, batch_size=256, mean_out_groups=0):
    """Bit accuracy after 8-bit quantisation, and PSNR, on held-out images.
    `mean_out_groups` (--group_mean_out): each batch in that many groups
    sharing a fingerprint, each group's mean residual taken out, as the pair
    embeds a one-fingerprint folder."""
    encoder, decoder, config = models
    encoder.eval(), decoder.eval()
    generator = torch.Generator().manual_seed(seed)
    accuracies, psnrs = [], []
    for start in range(0, len(images), batch_size):
        clean = data.to_float(images[start:start + batch_size]).to(device)
        bits = forgery.grouped_bits(random_bits(len(clean), length, generator, device), mean_out_groups)
        fingerprinted = encode(encoder, config, bits, clean)
        if mean_out_groups:
            fingerprinted = forgery.without_group_mean_residuals(clean, fingerprinted, mean_out_groups)
        saved = data.to_float(data.to_uint8(fingerprinted))
        accuracies.append(bit_accuracy(bits_from_logits(decode(decoder, config, saved)), bits))
        psnrs.append(psnr(saved, clean))
    encoder.train(), decoder.train()
    return dict(heldout_bit_acc=torch.cat(accuracies).mean().item(), heldout_psnr=torch.cat(psnrs).mean().item())


def heldout_groups(args):
    """Groups of the held-out evaluation's batches: --group_mean_out's, else none (fresh bits per image)."""
    return args.fingerprint_groups if args.group_mean_out else 0


# --- run folder -----------------------------------------------------------

def run_name(args, context):
    """Published naming; under torchrun every rank takes rank 0's name."""
    names = [f"stegastamp_{args.fingerprint_length}_{datetime.now().strftime('%d%m%Y_%H:%M:%S')}"]
    if context.world_size > 1:
        import torch.distributed as dist

        dist.broadcast_object_list(names, src=0)
    return names[0]


def latest_run(checkpoint_dir):
    """Name of the newest run with a resumable state in `checkpoint_dir`, or None."""
    states = glob.glob(os.path.join(checkpoint_dir, "*_optim.pth"))
    if not states:
        return None
    return os.path.basename(max(states, key=os.path.getmtime))[: -len("_optim.pth")]


def save_run_state(prefix, models, optimizer, state, averaged=None):
    """The checkpoints (the weights' moving average when there is one) and
    the state to resume from (with the trained weights in that case)."""
    encoder, decoder, config = averaged or models
    save_checkpoint(encoder.state_dict(), prefix + "_encoder.pth")
    save_checkpoint(decoder.state_dict(), prefix + "_decoder.pth")
    save_model_config(config, prefix)
    if averaged:
        state = dict(state, trained=dict(encoder=models[0].state_dict(), decoder=models[1].state_dict()))
    # The state file goes last: a run is resumable from it only once the
    # weights it refers to are on disk.
    save_checkpoint(dict(optimizer=optimizer.state_dict(), **state), prefix + "_optim.pth")


def restore_run_state(prefix, models, optimizer, averaged=None):
    checkpoints = [load_checkpoint(prefix + "_encoder.pth"), load_checkpoint(prefix + "_decoder.pth")]
    state = load_checkpoint(prefix + "_optim.pth")
    optimizer.load_state_dict(state.pop("optimizer"))
    trained = state.pop("trained", None)  # saved when the checkpoints hold the moving average
    for model, weights in zip(models, [trained["encoder"], trained["decoder"]] if trained else checkpoints):
        model.load_state_dict(weights)
    for model, weights in zip(averaged or (), checkpoints):
        model.load_state_dict(weights)
    state.setdefault("l2_scale", 1.0)  # runs saved before --target_psnr
    return state


def save_samples(path, clean, fingerprinted, count=8):
    clean, fingerprinted = clean[:count].cpu(), fingerprinted[:count].detach().clamp(0, 1).cpu()
    residual = ((fingerprinted - clean) * 10 + 0.5).clamp(0, 1)
    grid = torch.cat([clean, fingerprinted, residual])
    atomic_write(path, lambda temp_path: save_image(grid, temp_path, nrow=len(clean), format="png"))


def log_metrics(metrics, step, writer, metrics_path):
    for name, value in metrics.items():
        writer.add_scalar(f"train/{name}", value, step)
    with open(metrics_path, "a", encoding="utf-8") as file:
        file.write(json.dumps(dict(step=step, time=time.time(), **metrics)) + "\n")


# --- training -------------------------------------------------------------

def prepare_run(args, models, averaged, optimizer, context):
    """Checkpoint prefix and the state to start from (fresh or resumed)."""
    checkpoint_dir = os.path.join(args.output_dir, "checkpoints")
    name = latest_run(checkpoint_dir) if args.resume else None
    if args.resume and name is None and context.is_main:
        print(f"--resume: no checkpoint in {checkpoint_dir}, starting a new run")
    prefix = os.path.join(checkpoint_dir, name or run_name(args, context))
    state = dict(step=0, l2_activation_step=None, l2_scale=1.0, run=os.path.basename(prefix))
    if name is not None:
        state = restore_run_state(prefix, models, optimizer, averaged)
        if context.is_main:
            print(f"resuming {name} at step {state['step']}")
    return prefix, state


@dataclass
class Session:
    """Everything one training process works with (a record, not a framework)."""

    args: argparse.Namespace
    models: tuple  # (encoder, decoder, config), unwrapped: what is trained
    trained: tuple  # the same, DDP-wrapped when distributed
    optimizer: torch.optim.Optimizer
    device: torch.device
    context: Distributed
    prefix: str
    heldout: torch.Tensor
    total_steps: int
    writer: object = None
    state: dict = None  # step, L2 activation step and scale, run name: saved in _optim.pth
    averaged: tuple = None  # --ema_decay: the moving average of `models`

    @property
    def saved_models(self):
        """The weights that are evaluated and saved as the checkpoints."""
        return self.averaged or self.models


def train(args):
    """Train as `args` says; returns the final metrics and the checkpoint prefix.

    Under torchrun every rank trains on its own shard of each epoch (the
    batch size is per process); rank 0 alone logs and writes files.
    """
    context, device = init_distributed(args.cuda)
    if args.channels_last is None:
        args.channels_last = device.type == "cpu"
    if args.bf16 and device.type == "cpu" and args.image_resolution < 32:
        # The decoder's last convolution then sees a 1x1 map with stride 2,
        # where PyTorch's CPU bf16 weight gradient is NaN or differs run to run.
        raise UserError("--bf16 on CPU needs --image_resolution >= 32 (NaN weight gradients at 16)")
    if context.is_main:
        os.makedirs(args.output_dir, exist_ok=True)
        write_json(dict(vars(args), world_size=context.world_size), os.path.join(args.output_dir, "args.json"))
    source, heldout = training_data(args, context)
    steps_per_epoch = len(epoch_batches(len(source), args.batch_size, args.seed, 0, context))
    total_steps = args.max_steps or steps_per_epoch * args.num_epochs
    session = start_session(args, context, device, heldout, total_steps, source)
    state = session.state
    progress = tqdm(total=total_steps, initial=state["step"], desc="training", unit="step", dynamic_ncols=True,
                    mininterval=1.0, disable=not context.is_main)
    metrics, started = {}, time.time()
    while state["step"] < total_steps:
        epoch, offset = divmod(state["step"], steps_per_epoch)
        for batch_images in source_batches(source, args, epoch, offset, context):
            if state["step"] >= total_steps:
                break
            metrics = run_step(session, batch_images, state)
            progress.update(1)
            progress.set_postfix(bit_acc=f"{metrics['bit_acc']:.3f}", psnr=f"{metrics['psnr']:.1f}")
            if reached_target(metrics, state["step"], args, context):
                total_steps = state["step"]
                break
    progress.close()
    final = dict(step=state["step"], seconds=time.time() - started, **metrics)
    if context.is_main:
        save_run_state(session.prefix, session.models, session.optimizer, state, session.averaged)
        if len(heldout):
            final.update(evaluate(session.saved_models, heldout, args.fingerprint_length, device, args.seed,
                                  mean_out_groups=heldout_groups(args)))
        session.writer.close()
    close_distributed(context)
    return final, session.prefix


def start_session(args, context, device, heldout, total_steps, source):
    from torch.nn.parallel import DistributedDataParallel
    from torch.utils.tensorboard import SummaryWriter

    encoder, decoder, config = build_models(args)
    if args.init_from:
        config = load_initial_weights(args.init_from, encoder, decoder, args)
    if args.modulation_mean:
        config = dataclasses.replace(config, modulation_mean=training_mean_field(source, args, context))
    if args.decoder_only:
        encoder.requires_grad_(False)
    memory_format = torch.channels_last if args.channels_last else torch.contiguous_format
    encoder = encoder.to(device, memory_format=memory_format)
    decoder = decoder.to(device, memory_format=memory_format)
    models = (encoder, decoder, config)
    averaged = (copy.deepcopy(encoder), copy.deepcopy(decoder), config) if args.ema_decay else None
    trained = models
    if context.world_size > 1:
        device_ids = [device.index] if device.type == "cuda" else None
        trained = (encoder if args.decoder_only else DistributedDataParallel(encoder, device_ids=device_ids),
                   DistributedDataParallel(decoder, device_ids=device_ids), config)
    trained_parameters = list(decoder.parameters()) + ([] if args.decoder_only else list(encoder.parameters()))
    optimizer = torch.optim.Adam(trained_parameters, lr=args.lr)
    prefix, state = prepare_run(args, models, averaged, optimizer, context)
    writer = SummaryWriter(os.path.join(args.output_dir, "logs")) if context.is_main else None
    return Session(args, models, trained, optimizer, device, context, prefix, heldout, total_steps, writer, state,
                   averaged)


MEAN_FIELD_IMAGES = 4096  # training images averaged for --modulation_mean


def training_mean_field(source, args, context):
    """The average sign field (a nested list, r x r) of the first training
    images: the same images, so the same field, on a resumed run."""
    if isinstance(source, torch.Tensor):
        images = source[:MEAN_FIELD_IMAGES]
    else:
        images = torch.cat([batch for _, batch, _ in data.image_batches(
            source, 256, args.num_workers, list(range(min(len(source), MEAN_FIELD_IMAGES)))) if len(batch)])
    field = modulation.mean_field(data.to_float(images), mode=args.modulation)[0, 0]
    return [[round(value, 5) for value in row] for row in field.tolist()]


def run_step(session, batch_images, state):
    args, context, device = session.args, session.context, session.device
    step = state["step"] + 1
    # Fresh bits per step and per rank, reproducible on resume.
    generator = torch.Generator().manual_seed(int(np.random.SeedSequence([args.seed, step, context.rank])
                                                  .generate_state(1)[0]))
    images = data.to_float(batch_images).to(device, non_blocking=True)
    if args.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    bits = forgery.grouped_bits(random_bits(len(images), args.fingerprint_length, generator, device),
                                args.fingerprint_groups)
    for group in session.optimizer.param_groups:
        group["lr"] = learning_rate(step, session.total_steps, args)
    base_l2 = l2_weight(step, state["l2_activation_step"], args)
    weights = dict(l2=base_l2 * state["l2_scale"])
    weights["augment"] = augment_ramp(step, state["l2_activation_step"], args)
    # The defence ramps in with the augmentation, once the bits are learned.
    weights["forgery"] = args.forgery_loss_weight * (weights["augment"] if args.augment else
                                                     float(state["l2_activation_step"] is not None))
    metrics, fingerprinted = training_step(session.trained, session.optimizer, images, bits, weights, args, generator)
    if session.averaged:
        update_average(session.averaged, session.models, step, args.ema_decay)
    # Every rank must switch the L2 loss on at the same step.
    if state["l2_activation_step"] is None and mean_over_ranks(metrics["bit_acc"], context) > L2_ACTIVATION_ACCURACY:
        state["l2_activation_step"] = step
    if args.target_psnr and base_l2 >= args.l2_loss_weight:
        state["l2_scale"] = adapt_l2_scale(state["l2_scale"], mean_over_ranks(metrics["psnr"], context), args)
    state["step"] = step
    if context.is_main:
        write_outputs(session, state, metrics, images, fingerprinted)
    return metrics


def reached_target(metrics, step, args, context):
    """--stop_at_bit_acc, checked at logged steps; all ranks agree."""
    if not args.stop_at_bit_acc or step % args.log_interval:
        return False
    return mean_over_ranks(metrics["bit_acc"], context) >= args.stop_at_bit_acc


def mean_over_ranks(value, context):
    if context.world_size == 1:
        return value
    import torch.distributed as dist

    tensor = torch.tensor([value], dtype=torch.float64, device=context_device(context))
    dist.all_reduce(tensor)
    return tensor.item() / context.world_size


def context_device(context):
    import torch.distributed as dist

    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def write_outputs(session, state, metrics, images, fingerprinted):
    args, step = session.args, state["step"]
    if step % args.log_interval == 0:
        if len(session.heldout):
            metrics.update(evaluate(session.saved_models, session.heldout, args.fingerprint_length, session.device,
                                    args.seed, mean_out_groups=heldout_groups(args)))
        log_metrics(metrics, step, session.writer, os.path.join(args.output_dir, "metrics.jsonl"))
    if step % args.image_interval == 0:
        save_samples(os.path.join(args.output_dir, "saved_images", f"{step}.png"), images, fingerprinted)
    if step % args.checkpoint_interval == 0:
        save_run_state(session.prefix, session.models, session.optimizer, state, session.averaged)
