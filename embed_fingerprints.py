"""Embed fingerprints into every image of a folder.

    python embed_fingerprints.py --encoder_path run_encoder.pth --data_dir images/ \\
        --output_dir out/ [--identical_fingerprints] [--check --decoder_path run_decoder.pth]

Writes out/fingerprinted_images/<name>.png and out/embedded_fingerprints.txt
('<name>.png <bits>' per line, appended batch by batch so an interrupted
run continues with --resume), and out/skipped.txt for unreadable files.
"""

import argparse
import glob
import os
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
from tqdm import tqdm

import data
from models import check_resolution
from utils import (UserError, append_lines, barrier, bit_accuracy, bits_from_logits, close_distributed,
                   complete_lines, decode, decoder_resolution, encode, fingerprint_for, fingerprint_line, gather,
                   init_distributed, load_decoder, load_encoder, load_model_config, merge_shards, model_pair_paths,
                   open_record, psnr, run_cli, shard_path, shipped_models, TEMP_PREFIX)


RECORD_FILE = "embedded_fingerprints.txt"
IMAGE_FOLDER = "fingerprinted_images"
PNG_WRITERS = 4


def add_input_arguments(parser):
    """Flags shared by embed and detect: which images, and how they are prepared."""
    add = parser.add_argument
    add("--data_dir", required=True, help="folder of images")
    add("--output_dir", required=True, help="folder for the results")
    add("--recursive", action="store_true", help="also read sub-folders (outputs keep the relative path)")
    add("--image_resolution", type=int, default=None,
        help="size the images are resized/cropped to (default: the model's own)")
    add("--use_celeba_preprocessing", action="store_true", help="center-crop 148, resize 128")
    add("--center_crop", type=int, default=0,
        help="center-crop this many pixels, then resize (0 = resize shorter side; default 0)")
    add("--batch_size", type=int, default=64, help="images per batch (default 64)")
    add("--cuda", type=int, default=0, help="CUDA device index; -1 or no GPU = CPU (default 0)")
    add("--seed", type=int, default=42, help="fingerprint seed (default 42)")
    add("--num_workers", type=int, default=None, help="image decoding processes (default: cores - 1)")
    add("--resume", action="store_true", help="keep finished images of an interrupted run, do the rest")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_input_arguments(parser)
    parser.add_argument("--encoder_path", default=None, help="encoder checkpoint (*_encoder.pth)")
    add_model_argument(parser)
    parser.add_argument("--identical_fingerprints", action="store_true",
                        help="the same fingerprint in every image (to train a GAN on)")
    parser.add_argument("--check", action="store_true",
                        help="decode the saved PNGs and report bit accuracy (needs --decoder_path)")
    parser.add_argument("--decoder_path", default=None, help="decoder checkpoint for --check")
    args = parser.parse_args(argv)
    resolve_model(parser, args, need_encoder=True, need_decoder=args.check)
    if args.check and not args.decoder_path:
        parser.error("--check needs --decoder_path")
    validate_input_arguments(parser, args)
    return args


def add_model_argument(parser):
    parser.add_argument("--model", default=None,
                        help=f"a shipped model instead of the checkpoint paths ({', '.join(shipped_models()) or 'none'})")


def resolve_model(parser, args, need_encoder=False, need_decoder=False):
    """Fill the checkpoint paths from --model; insist on what is needed."""
    if args.model:
        if args.model not in shipped_models():
            parser.error(f"--model {args.model}: unknown; shipped: {', '.join(shipped_models()) or 'none'}")
        encoder_path, decoder_path = model_pair_paths(args.model)
        args.encoder_path = getattr(args, "encoder_path", None) or encoder_path
        args.decoder_path = getattr(args, "decoder_path", None) or decoder_path
    if need_encoder and not args.encoder_path:
        parser.error("give --encoder_path or --model")
    if need_decoder and not args.decoder_path:
        parser.error("give --decoder_path or --model")


def validate_input_arguments(parser, args):
    if args.image_resolution is not None:
        try:
            check_resolution(args.image_resolution)
            data.check_preprocessing(args.image_resolution, args.use_celeba_preprocessing)
        except (ValueError, UserError) as error:
            parser.error(str(error))
    if args.batch_size < 1:
        parser.error("--batch_size must be >= 1")
    if args.num_workers is None:
        args.num_workers = data.default_num_workers()


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


def list_inputs(args):
    """The input files (relative paths) and their unique output names."""
    paths = data.list_images(args.data_dir, args.recursive)
    return paths, data.output_names(paths)


def open_pending(args, names, record_file, context):
    """Open this process's record; returns its share of the indices still to
    do and the open file. Under torchrun each rank takes every
    world_size-th pending image and appends to its own part file."""
    os.makedirs(args.output_dir, exist_ok=True)
    record_path = os.path.join(args.output_dir, record_file)
    done = set()
    if args.resume and context.world_size > 1:
        done.update(complete_lines(record_path))
        for part in glob.glob(glob.escape(record_path) + ".rank*"):
            done.update(complete_lines(part))
    own_done, record = open_record(shard_path(record_path, context), args.resume)
    done.update(own_done)
    pending = [index for index, name in enumerate(names) if name not in done]
    if done and context.is_main:
        print(f"resuming: {len(names) - len(pending)} of {len(names)} images already done")
    return pending[context.rank::context.world_size], record


def finish(args, context, names, record_file, results):
    """Gather every rank's results; rank 0 merges the part files and writes skipped.txt.

    Returns the summary (the same on every rank)."""
    gathered = gather(results, context)
    barrier(context)
    if context.world_size > 1 and context.is_main:
        merge_shards(os.path.join(args.output_dir, record_file), names, args.resume)
    failures = [failure for result in gathered for failure in result["failures"]]
    skipped = (data.record_skipped(failures, os.path.join(args.output_dir, "skipped.txt"), args.resume)
               if context.is_main else len(failures))
    processed = sum(result["pending"] for result in gathered) - len(failures)
    seconds = max(result["seconds"] for result in gathered)
    summary = dict(images=len(names) - skipped, processed=processed, skipped=skipped,
                   images_per_second=processed / max(seconds, 1e-9))
    for key in ("psnr", "bit_accuracy"):
        values = [value for result in gathered for value in result.get(key, [])]
        if values:
            summary[key] = sum(values) / len(values)
    close_distributed(context)
    return summary


def remove_partial_files(images_dir):
    """Delete our own half-written temp files left by a killed run."""
    for folder, _, files in os.walk(images_dir):
        for name in files:
            if name.startswith(TEMP_PREFIX):
                os.remove(os.path.join(folder, name))


def write_pngs(writers, images, paths):
    """Write uint8 images (b c h w) in parallel; returns when all are on disk."""
    list(writers.map(data.save_png, images, paths))


def embed_folder(args):
    """Fingerprint every image in args.data_dir; returns a summary dict."""
    check_output_dir(args.data_dir, args.output_dir, args.recursive)
    paths, names = list_inputs(args)
    context, device = init_distributed(args.cuda)
    resolution = embedding_resolution(args, load_model_config(args.encoder_path))
    encoder, config = load_encoder(args.encoder_path, resolution)
    encoder = encoder.to(device)
    decoder = load_decoder(args.decoder_path, resolution)[0].to(device) if args.check else None
    length = encoder.fingerprint_size
    pending, record = open_pending(args, names, RECORD_FILE, context)
    images_dir = os.path.join(args.output_dir, IMAGE_FOLDER)
    if context.is_main:
        remove_partial_files(images_dir)
    barrier(context)
    crop = data.center_crop_for(args.use_celeba_preprocessing, args.center_crop)
    dataset = data.ImageFiles(args.data_dir, paths, resolution, crop)
    failures, accuracies, psnrs, started = [], [], [], time.time()
    with record, ThreadPoolExecutor(PNG_WRITERS) as writers, torch.no_grad():
        batches = data.image_batches(dataset, args.batch_size, args.num_workers, pending)
        for indices, images, failed in tqdm(batches, desc="embedding", unit="batch", mininterval=1.0,
                                            disable=not context.is_main):
            failures.extend((paths[index], reason) for index, reason in failed)
            if not len(indices):
                continue
            fingerprints = torch.from_numpy(np.stack([
                fingerprint_for(int(index), length, args.seed, args.identical_fingerprints) for index in indices]))
            clean = data.to_float(images).to(device)
            saved = data.to_uint8(encode(encoder, config, fingerprints.float().to(device), clean)).cpu()
            write_pngs(writers, saved, [os.path.join(images_dir, names[index]) for index in indices])
            append_lines(record, [fingerprint_line(names[index], bits) for index, bits in zip(indices, fingerprints)])
            psnrs.append(psnr(data.to_float(saved), clean.cpu()))
            if decoder is not None:
                logits = decode(decoder, config, data.to_float(saved).to(device))
                accuracies.append(bit_accuracy(bits_from_logits(logits).cpu(), fingerprints))
    results = dict(failures=failures, pending=len(pending), seconds=time.time() - started,
                   psnr=torch.cat(psnrs).tolist() if psnrs else [],
                   bit_accuracy=torch.cat(accuracies).tolist() if accuracies else [])
    return finish(args, context, names, RECORD_FILE, results)


def main(args):
    summary = embed_folder(args)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    line = f"embedded {summary['processed']} image(s) at {summary['images_per_second']:.1f} images/s"
    if "psnr" in summary:
        line += f", PSNR {summary['psnr']:.2f} dB"
    if "bit_accuracy" in summary:
        line += f", bit accuracy of the saved PNGs {summary['bit_accuracy']:.4f}"
    if summary["skipped"]:
        line += f"; skipped {summary['skipped']} unreadable file(s), see {args.output_dir}/skipped.txt"
    print(f"{line}\noutputs: {args.output_dir}/{IMAGE_FOLDER}/, {args.output_dir}/{RECORD_FILE}")


if __name__ == "__main__":
    run_cli(main, parse_args())
