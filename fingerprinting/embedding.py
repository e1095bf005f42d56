"""Embedding fingerprints into a folder of images: the work behind
embed_fingerprints.py, as plain functions (tests, the demo and the
transferability experiment call them directly), on the Fingerprinter API."""

import argparse
import os

import numpy as np
import torch
from tqdm import tqdm

from fingerprinting import data, evaluation, folders, resizing
from fingerprinting.api import MIN_READ_BACK, Fingerprinter
from fingerprinting.bits import bit_accuracy, fingerprint_for
from fingerprinting.checkpoints import decoder_resolution, load_model_config, model_pair_paths
from fingerprinting.devices import barrier, init_distributed
from fingerprinting.errors import UserError
from fingerprinting.records import TEMP_PREFIX, fingerprint_line
from models import check_resolution

RECORD_FILE = "embedded_fingerprints.txt"
RESIDUAL_MEAN_CHOICES = ("auto", "keep", "take_out")
IMAGE_FOLDER = "fingerprinted_images"


def parse_args(argv=None, description=None):
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    folders.add_input_arguments(parser)
    add = parser.add_argument
    add("--encoder_path", default=None, help="encoder checkpoint (*_encoder.pth)")
    folders.add_model_argument(parser)
    add("--identical_fingerprints", action="store_true", help="the same fingerprint in every image (to train a GAN on)")
    add("--residual_mean", choices=RESIDUAL_MEAN_CHOICES, default="auto",
        help="with --identical_fingerprints and a content-keyed pair (v2 and later): take_out fits the fingerprint's "
             "mean residual over the folder in a first pass and leaves it out of every image, against the averaging "
             "attack; keep does not; auto (default) does what the model's config says (celeba_64_v4: take_out)")
    add("--strength", type=float, default=1.0,
        help="scale of the embedded residual: lower is cleaner and less robust (default 1.0)")
    add("--min_read_back", type=float, default=MIN_READ_BACK,
        help="images not at the model's size: read each back as detection will and, below this share of its "
             f"bits, embed it again up to 1.5x stronger (needs the decoder; 0 = never; default {MIN_READ_BACK})")
    add("--output_format", choices=sorted(data.OUTPUT_FORMATS), default="png",
        help="file format of the fingerprinted images (default png, the published one: <stem>.png)")
    add("--quality", type=int, default=data.DEFAULT_QUALITY,
        help=f"JPEG/WebP quality, 1-100 (default {data.DEFAULT_QUALITY})")
    add("--check", action="store_true", help="decode the saved images and report bit accuracy (needs --decoder_path)")
    add("--decoder_path", default=None, help="decoder checkpoint for --check")
    args = parser.parse_args(argv)
    folders.resolve_model(parser, args, need_encoder=True, need_decoder=args.check)
    if args.check and not args.decoder_path:
        parser.error("--check needs --decoder_path")
    if not 0 < args.strength <= 4:
        parser.error("--strength must be in (0, 4]")
    if not 0 <= args.min_read_back <= 1:
        parser.error("--min_read_back must be in [0, 1]")
    if not 1 <= args.quality <= 100:
        parser.error("--quality must be in 1..100")
    if args.residual_mean == "take_out" and not args.identical_fingerprints:
        parser.error("--residual_mean take_out needs --identical_fingerprints (one fingerprint to take the mean of)")
    folders.validate_input_arguments(parser, args)
    return args


def check_output_dir(data_dir, output_dir, recursive):
    """Refuse outputs that would land among (and later be read as) the inputs."""
    images_dir = os.path.realpath(os.path.join(output_dir, IMAGE_FOLDER))
    source = os.path.realpath(data_dir)
    inside = images_dir == source or (recursive and images_dir.startswith(source + os.sep))
    if inside or source.startswith(images_dir + os.sep):
        raise UserError(f"--output_dir {output_dir}: would write fingerprinted images into --data_dir; "
                        f"choose a folder outside it")


def model_resolution(args):
    """The encoder's own size: recorded in its config, else the decoder's input
    size, else (a published checkpoint alone) --image_resolution, as there."""
    resolution = load_model_config(args.encoder_path).resolution
    if not resolution and args.decoder_path:
        resolution = decoder_resolution(args.decoder_path)
    resolution = resolution or args.image_resolution
    if not resolution:
        raise UserError(f"{args.encoder_path}: has no recorded resolution; give --image_resolution or --decoder_path")
    try:
        check_resolution(resolution)
    except ValueError as error:
        raise UserError(f"{args.encoder_path}: {error}") from None
    return resolution


def remove_partial_files(images_dir):
    """Delete our own half-written temp files left by a killed run."""
    for folder, _, files in os.walk(images_dir):
        for name in files:
            if name.startswith(TEMP_PREFIX):
                os.remove(os.path.join(folder, name))


def decoder_needed(args):
    """The decoder for --check and the read-back: --decoder_path (or --model's),
    else for the read-back the _decoder.pth beside --encoder_path, if there."""
    if not (args.check or args.min_read_back):
        return None
    if args.decoder_path or not args.encoder_path.endswith("_encoder.pth"):
        return args.decoder_path
    beside = model_pair_paths(args.encoder_path)[1]
    return beside if os.path.isfile(beside) else None


def load_fingerprinter(args, device):
    """The encoder (and the decoder, `decoder_needed`) as a Fingerprinter."""
    fingerprinter = Fingerprinter.from_paths(args.encoder_path, decoder_needed(args), device,
                                             resolution=model_resolution(args))
    folders.check_fingerprint_length(args, fingerprinter)
    return fingerprinter


def embed_folder(args):
    """Fingerprint every image in args.data_dir; returns a summary dict."""
    check_output_dir(args.data_dir, args.output_dir, args.recursive)
    paths, names = folders.list_inputs(args, data.OUTPUT_FORMATS[args.output_format])
    context, device = init_distributed(args.cuda)
    fingerprinter = load_fingerprinter(args, device)
    resolution = folders.preprocessing_resolution(args, fingerprinter.resolution)
    dataset = folders.input_images(args, paths, resolution, fingerprinter.resolution)
    images_dir = os.path.join(args.output_dir, IMAGE_FOLDER)
    if context.is_main:
        remove_partial_files(images_dir)
    barrier(context)
    residual_mean_rms = take_out_residual_mean(args, fingerprinter, dataset, device, context.is_main)
    psnrs, accuracies = [], []

    def fingerprint_batch(indices, images):
        fingerprints = torch.from_numpy(np.stack([fingerprint_for(int(index), fingerprinter.fingerprint_length,
                                                                  args.seed, args.identical_fingerprints)
                                                  for index in indices]))
        saved, batch_psnrs = fingerprint_images(fingerprinter, images, fingerprints, args, device)
        psnrs.append(batch_psnrs)
        if args.check:
            views = torch.stack([resizing.model_view(data.to_float(image).unsqueeze(0), fingerprinter.resolution)[0]
                                 for image in saved])
            accuracies.append(bit_accuracy(fingerprinter.read_bits(views.to(device)).cpu(), fingerprints))
        lines = [fingerprint_line(names[index], bits) for index, bits in zip(indices, fingerprints)]
        return lines, [(image, os.path.join(images_dir, names[index])) for index, image in zip(indices, saved)]

    results = folders.run_over_folder(args, context, device, dataset, names, RECORD_FILE, fingerprint_batch,
                                      "embedding")
    results.update(psnr=torch.cat(psnrs).tolist() if psnrs else [],
                   bit_accuracy=torch.cat(accuracies).tolist() if accuracies else [])
    return dict(folders.finish(args, context, names, RECORD_FILE, results), residual_mean_rms=residual_mean_rms)


def take_out_residual_mean(args, fingerprinter, dataset, device, show_progress=True):
    """With one fingerprint for the whole folder and --residual_mean (`takes_out_mean`),
    a first pass over every image of the folder fits the mean residual that
    each embedding then leaves out (`Fingerprinter.fit_residual_mean`), the
    same on every rank and on a resumed run. Returns its RMS, or None."""
    if not (args.identical_fingerprints and takes_out_mean(args.residual_mean, fingerprinter)):
        return None
    fingerprint = fingerprint_for(0, fingerprinter.fingerprint_length, args.seed, identical=True)
    batches = tqdm(data.image_batches(dataset, args.batch_size, args.num_workers), desc="mean residual",
                   unit="batch", mininterval=1.0, disable=not show_progress)
    return fingerprinter.fit_residual_mean((batch_views(fingerprinter, images, device)[1]
                                            for _, images, _ in batches if len(images)), torch.from_numpy(fingerprint))


def takes_out_mean(choice, fingerprinter):
    """Whether --residual_mean `choice` takes the mean residual out for this pair."""
    return choice == "take_out" or (choice == "auto" and fingerprinter.config.folder_mean_residual)


def batch_views(fingerprinter, images, device):
    """(source images, their model views b c r r) of a batch: uint8 b c h w, or
    a data.NativeBatch (--keep_size)."""
    if isinstance(images, data.NativeBatch):
        return images.pixels, images.views.to(device, non_blocking=True)
    return images, torch.stack([resizing.model_view(image.unsqueeze(0), fingerprinter.resolution)[0]
                                for image in folders.model_input(images, device)])


def fingerprint_images(fingerprinter, images, fingerprints, args, device):
    """(the uint8 images to save, a list of c h w; their PSNR at their own
    size, b) for a batch: uint8 b c h w, or a data.NativeBatch (--keep_size),
    at args.strength, with args.min_read_back."""
    sources, views = batch_views(fingerprinter, images, device)
    marked = list(fingerprinter.marked_pixels(sources, views, fingerprints.float().to(device), args.strength,
                                              args.min_read_back))
    psnrs = [evaluation.psnr_of_squared_levels(squared.cpu(), image.numel()) for image, squared in marked]
    return [image.cpu() for image, _ in marked], torch.stack(psnrs)
