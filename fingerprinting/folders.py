"""The folder pipeline: one job (embed or detect) over every image of a folder.

What embed and detect share lives here, written once: their flags and
`--model` resolution, listing the inputs, resuming (the record file says
what is done), torchrun sharding into part files, the batch loop with its
decode workers and image writers, and the summary.
"""

import glob
import os
import time
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from functools import partial

import torch
from tqdm import tqdm

from fingerprinting import data
from fingerprinting.checkpoints import model_pair_paths, shipped_models
from fingerprinting.devices import barrier, close_distributed, gather
from fingerprinting.errors import UserError
from fingerprinting.records import append_lines, complete_lines, merge_shards, open_record, shard_path

MIN_RESOLUTION = 8  # smallest --image_resolution (the images are then resized to the model's size)
PNG_WRITERS = 2  # threads; Pillow's zlib releases the GIL
BATCHES_IN_FLIGHT = 2  # batches whose PNGs may still be writing while the next is computed


# --- flags -------------------------------------------------------------------

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
    add("--num_workers", type=int, default=None,
        help="image decoding processes (default: cores - 1; every core for detection with --keep_size)")
    add("--resume", action="store_true", help="keep finished images of an interrupted run, do the rest")
    add("--keep_size", action="store_true",
        help="images at their own size: each whole image is resized to the model's size for the networks "
             "(its centred square if one side is over twice the other); nothing is cropped (default off)")
    add("--fingerprint_length", "--fingerprint_size", dest="fingerprint_length", type=int, default=None,
        help="bits the model's fingerprints must have (read from the checkpoint; checked if given)")


def add_model_argument(parser):
    shipped = ", ".join(shipped_models()) or "none"
    parser.add_argument("--model", default=None, help=f"a shipped model instead of the checkpoint paths ({shipped})")


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


def validate_input_arguments(parser, args, decode_bound=False):
    """Check the shared flags; `decode_bound`: the job does little beside
    decoding (detection at native size), so readers get every core."""
    if args.image_resolution is not None:
        if args.image_resolution < MIN_RESOLUTION:
            parser.error(f"--image_resolution must be >= {MIN_RESOLUTION}")
        try:
            data.check_preprocessing(args.image_resolution, args.use_celeba_preprocessing)
        except UserError as error:
            parser.error(str(error))
    if args.keep_size and (args.image_resolution or args.use_celeba_preprocessing or args.center_crop):
        parser.error("--keep_size keeps every image's own size: it takes no --image_resolution, "
                     "--use_celeba_preprocessing or --center_crop")
    if args.batch_size < 1:
        parser.error("--batch_size must be >= 1")
    if args.num_workers is None:
        args.num_workers = data.default_num_workers(every_core=decode_bound)


# --- inputs and resume ------------------------------------------------------------

def list_inputs(args, extension=".png"):
    """The input files (relative paths) and their unique output names."""
    paths = data.list_images(args.data_dir, args.recursive)
    return paths, data.output_names(paths, extension)


def check_fingerprint_length(args, fingerprinter):
    """--fingerprint_length/--fingerprint_size, if given, must be the checkpoint's."""
    if args.fingerprint_length is not None and args.fingerprint_length != fingerprinter.fingerprint_length:
        raise UserError(f"--fingerprint_length {args.fingerprint_length}: the model's fingerprints have "
                        f"{fingerprinter.fingerprint_length} bits")


def preprocessing_resolution(args, model_resolution):
    """The size the images are preprocessed to: --image_resolution, else 128
    with --use_celeba_preprocessing (the published CelebA setting), else the
    model's. A size other than the model's is resized for the networks."""
    resolution = args.image_resolution or (data.CELEBA_RESOLUTION if args.use_celeba_preprocessing
                                           else model_resolution)
    data.check_preprocessing(resolution, args.use_celeba_preprocessing)
    return resolution


def input_images(args, paths, resolution, model_resolution, keep_pixels=True, canvases=False):
    """The dataset the folder loop reads: preprocessed to `resolution` (with
    `canvases`, each with its canvas for the border search), or with
    --keep_size the images at their own size with their model views."""
    if args.keep_size:
        return data.NativeImageFiles(args.data_dir, paths, model_resolution, keep_pixels)
    return data.ImageFiles(args.data_dir, paths, resolution,
                           data.center_crop_for(args.use_celeba_preprocessing, args.center_crop), canvases)


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


# --- the loop ----------------------------------------------------------------------

def model_input(images, device):
    """uint8 images (b c h w) -> float in [0, 1] on `device`, channels-last.

    The uint8 batch crosses to a GPU (4x fewer bytes than float), without
    waiting when it sits in pinned memory."""
    images = images.to(device, non_blocking=True)
    return data.to_float(images).contiguous(memory_format=torch.channels_last)


class ImageWriter:
    """Writes a batch's images in background threads; its record lines are
    appended only once all of them are on disk, so a line in the record
    still means its image is finished."""

    def __init__(self, record, image_format="png", quality=data.DEFAULT_QUALITY):
        self.record = record
        self.save = partial(data.save_image, image_format=image_format, quality=quality)
        self.threads = ThreadPoolExecutor(PNG_WRITERS)
        self.in_flight = deque()  # (futures, lines) per batch, oldest first

    def submit(self, lines, images):
        futures = [self.threads.submit(self.save, image, path) for image, path in images]
        self.in_flight.append((futures, lines))
        while len(self.in_flight) > BATCHES_IN_FLIGHT:
            self.finish_oldest()

    def finish_oldest(self):
        futures, lines = self.in_flight.popleft()
        for future in futures:
            future.result()  # re-raises a failed write
        append_lines(self.record, lines)

    def close(self):
        while self.in_flight:
            self.finish_oldest()
        self.threads.shutdown()


def run_over_folder(args, context, device, dataset, names, record_file, process_batch, description):
    """Feed every pending image of `dataset` (`input_images`) to `process_batch`, batch by batch.

    `process_batch(indices, images)` gets uint8 images (b c h w), or a
    data.NativeBatch with --keep_size, and returns (record lines,
    [(uint8 image c h w, output path), ...] to save).
    Returns this process's results for `finish`.
    """
    pending, record = open_pending(args, names, record_file, context)
    failures, started = [], time.time()
    with record, torch.inference_mode():
        output_format = getattr(args, "output_format", "png")
        writer = ImageWriter(record, output_format, getattr(args, "quality", data.DEFAULT_QUALITY))
        try:
            batches = data.image_batches(dataset, args.batch_size, args.num_workers, pending,
                                         pin_memory=device.type == "cuda")
            for indices, images, failed in tqdm(batches, desc=description, unit="batch", mininterval=1.0,
                                                disable=not context.is_main):
                failures.extend((dataset.relative_paths[index], reason) for index, reason in failed)
                if len(indices):
                    writer.submit(*process_batch(indices, images))
        finally:
            writer.close()
    return dict(failures=failures, pending=len(pending), seconds=time.time() - started)


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
