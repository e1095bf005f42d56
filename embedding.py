"""Embedding fingerprints into a folder of images: the work behind
embed_fingerprints.py, as plain functions (tests, the demo and the
transferability experiment call them directly)."""

import argparse
import os
from functools import partial

import numpy as np
import torch

import data
import folders
from models import check_resolution
from utils import (UserError, barrier, bit_accuracy, bits_from_logits, decode, decoder_resolution, encode,
                   fingerprint_for, fingerprint_line, init_distributed, load_decoder, load_encoder, load_model_config,
                   psnr, TEMP_PREFIX)

RECORD_FILE = "embedded_fingerprints.txt"
IMAGE_FOLDER = "fingerprinted_images"


def parse_args(argv=None, description=None):
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    folders.add_input_arguments(parser)
    parser.add_argument("--encoder_path", default=None, help="encoder checkpoint (*_encoder.pth)")
    folders.add_model_argument(parser)
    parser.add_argument("--identical_fingerprints", action="store_true",
                        help="the same fingerprint in every image (to train a GAN on)")
    parser.add_argument("--check", action="store_true",
                        help="decode the saved PNGs and report bit accuracy (needs --decoder_path)")
    parser.add_argument("--decoder_path", default=None, help="decoder checkpoint for --check")
    args = parser.parse_args(argv)
    folders.resolve_model(parser, args, need_encoder=True, need_decoder=args.check)
    if args.check and not args.decoder_path:
        parser.error("--check needs --decoder_path")
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


def embedding_resolution(args, config):
    """--image_resolution, else the model's recorded one, else the decoder's."""
    if args.image_resolution and config.resolution and args.image_resolution != config.resolution:
        raise UserError(f"{args.encoder_path}: trained at {config.resolution}x{config.resolution}, "
                        f"but --image_resolution is {args.image_resolution}")
    resolution = args.image_resolution or config.resolution
    if not resolution and args.decoder_path:
        resolution = decoder_resolution(args.decoder_path)
    if not resolution:
        raise UserError(f"{args.encoder_path}: has no recorded resolution; give --image_resolution")
    check_resolution(resolution)
    data.check_preprocessing(resolution, args.use_celeba_preprocessing)
    return resolution


def remove_partial_files(images_dir):
    """Delete our own half-written temp files left by a killed run."""
    for folder, _, files in os.walk(images_dir):
        for name in files:
            if name.startswith(TEMP_PREFIX):
                os.remove(os.path.join(folder, name))


def embed_folder(args):
    """Fingerprint every image in args.data_dir; returns a summary dict."""
    check_output_dir(args.data_dir, args.output_dir, args.recursive)
    paths, names = folders.list_inputs(args)
    context, device = init_distributed(args.cuda)
    resolution = embedding_resolution(args, load_model_config(args.encoder_path))
    encoder, config = load_encoder(args.encoder_path, resolution)
    encoder = folders.inference_model(encoder, device)
    decoder = folders.inference_model(load_decoder(args.decoder_path, resolution)[0], device) if args.check else None
    images_dir = os.path.join(args.output_dir, IMAGE_FOLDER)
    if context.is_main:
        remove_partial_files(images_dir)
    barrier(context)
    psnrs, accuracies = [], []
    encode_images = folders.in_sub_batches(partial(encode, encoder, config), folders.sub_batch_size(encoder, device))
    decode_images = (folders.in_sub_batches(partial(decode, decoder, config), folders.sub_batch_size(decoder, device))
                     if decoder is not None else None)

    def fingerprint_batch(indices, images):
        fingerprints = torch.from_numpy(np.stack([fingerprint_for(int(index), encoder.fingerprint_size, args.seed,
                                                                  args.identical_fingerprints) for index in indices]))
        clean = folders.model_input(images, device)
        saved = data.to_uint8(encode_images(fingerprints.float().to(device), clean)).cpu()
        psnrs.append(psnr(data.to_float(saved), clean.cpu()))
        if decoder is not None:
            logits = decode_images(folders.model_input(saved, device))
            accuracies.append(bit_accuracy(bits_from_logits(logits).cpu(), fingerprints))
        lines = [fingerprint_line(names[index], bits) for index, bits in zip(indices, fingerprints)]
        return lines, [(image, os.path.join(images_dir, names[index])) for index, image in zip(indices, saved)]

    results = folders.run_over_folder(args, context, device, paths, names, resolution, RECORD_FILE,
                                      fingerprint_batch, "embedding")
    results.update(psnr=torch.cat(psnrs).tolist() if psnrs else [],
                   bit_accuracy=torch.cat(accuracies).tolist() if accuracies else [])
    return folders.finish(args, context, names, RECORD_FILE, results)
