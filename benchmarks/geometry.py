"""Crops taken anywhere, shifts, rotations, mirror images and quarter turns,
borders and perspective warps,
read as before and with the search that undoes them (detect_fingerprints.py
--search_positions, --search_rotations, --search_orientations,
--search_mirror, --search_borders or --search_perspective;
fingerprinting/crop_search.py).

Embeds one random fingerprint in never-seen images with the pair, changes
them with Pillow in memory, and reads each change both ways: bit accuracy,
the share detected at FPR 1e-6 and the search's time per image. The
positions search meets a crop of each side's 0.9, 3/4 or 0.67 at a seeded
random place, resized back, and content moved 1, 2 or 4 pixels right and
down; the rotations search, turns of 2 to 30 degrees, the size kept (black
corners, as Pillow's `rotate` leaves them), and also a centred crop to 0.67
and a blur of radius 2; the orientations search, a mirror image, a picture
upside down, quarter turns and a transpose, alone and then JPEG 75 or a
centred 3/4 crop, and the same crop and blur; the mirror search, a mirror
image alone and then JPEG 75 or the crop, and the same crop and blur; the
borders search, white borders of 5 and 10 % of the side, a black one of
15 %, the image at the top left of a canvas 1.3 times its size, a 10 %
border then JPEG 75, the image padded to a square (black bars on two
sides; nothing for a square image) then JPEG 75, and the same crop and
blur; the perspective search, warps moving each corner inward by up to
0.05 and 0.1 of the side (torchvision's RandomPerspective(0.1) and (0.2)),
the first then JPEG 90, and the same crop and blur. Each
meets, to show what the search costs there, no change, JPEG 50 and a
centred 3/4 crop.
The clean images are read with the search too: the measured false
positives. `--keep_size` reads the images at their own sizes (the
residual method), as a native-size pair is used.

    python benchmarks/geometry.py --model cifar10_32_v5 --data_dir cifar_heldout/ --num_images 200
    python benchmarks/geometry.py --model celeba_64_v6 --data_dir celeba_test/ --center_crop 74 --num_images 200
    python benchmarks/geometry.py --model celeba_64_native2 --data_dir lsun_test/ --keep_size --search rotations
    python benchmarks/geometry.py --model cifar10_32_robust --data_dir cifar_heldout/ --search orientations
    python benchmarks/geometry.py --model celeba_64_robust --data_dir celeba_test/ --center_crop 74 --search perspective
"""

import argparse
import os
import sys
import time

import numpy as np
from PIL import Image, ImageFilter, ImageOps
from tqdm import tqdm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from fingerprinting import data, file_changes  # noqa: E402
from fingerprinting.api import Fingerprinter, pixels_to_pil  # noqa: E402
from utils import run_cli  # noqa: E402


def quarter_turn(image):
    return image.transpose(Image.Transpose.ROTATE_90)


def on_a_canvas(image):
    """At the top left of a grey-green canvas 1.3 times its size (a collage, a page)."""
    canvas = Image.new("RGB", (round(image.width * 1.3), round(image.height * 1.3)), (90, 120, 60))
    canvas.paste(image, (0, 0))
    return canvas


def blurred(image):
    return image.filter(ImageFilter.GaussianBlur(2))


UNTOUCHED = {
    "unchanged": lambda image: image,
    "jpeg 50": file_changes.jpeg_in_memory(50),
    "crop 3/4, centred": file_changes.center_crop(0.75),
}
CHANGES = {
    "positions": {
        "crop 0.9 anywhere": file_changes.crop_anywhere(0.9, seed=1),
        "crop 3/4 anywhere": file_changes.crop_anywhere(0.75, seed=2),
        "crop 0.67 anywhere": file_changes.crop_anywhere(0.67, seed=3),
        "shift 1 px": file_changes.shift(1),
        "shift 2 px": file_changes.shift(2),
        "shift 4 px": file_changes.shift(4),
        **UNTOUCHED,
    },
    "rotations": {
        **{f"rotation {degrees}°": file_changes.rotation(degrees) for degrees in (2, 5, -5, 10, 20, 30)},
        "rotation 5° + jpeg 75": file_changes.then(file_changes.rotation(5), file_changes.jpeg_in_memory(75)),
        **UNTOUCHED,
        # where a turn read wrongly stood out before PROMINENCE (crop_search.py)
        "crop 0.67, centred": file_changes.center_crop(0.67),
        "blur radius 2": blurred,
    },
    "orientations": {
        "mirror": ImageOps.mirror,
        "upside down": ImageOps.flip,
        "quarter turn": quarter_turn,
        "half turn": lambda image: image.transpose(Image.Transpose.ROTATE_180),
        "transpose": lambda image: image.transpose(Image.Transpose.TRANSPOSE),
        "mirror + jpeg 75": file_changes.then(ImageOps.mirror, file_changes.jpeg_in_memory(75)),
        "quarter turn + jpeg 75": file_changes.then(quarter_turn, file_changes.jpeg_in_memory(75)),
        "mirror + crop 3/4": file_changes.then(ImageOps.mirror, file_changes.center_crop(0.75)),
        **UNTOUCHED,
        "jpeg 75": file_changes.jpeg_in_memory(75),
        "crop 0.67, centred": file_changes.center_crop(0.67),
        "blur radius 2": blurred,
    },
    "borders": {
        "border 5%": file_changes.border(0.05),
        "border 10%": file_changes.border(0.1),
        "border 15%, black": file_changes.border(0.15, (0, 0, 0)),
        "top left of a canvas 1.3x": on_a_canvas,
        "border 10% + jpeg 75": file_changes.then(file_changes.border(0.1), file_changes.jpeg_in_memory(75)),
        "padded to a square + jpeg 75": file_changes.then(file_changes.padded_to_square,
                                                          file_changes.jpeg_in_memory(75)),
        **UNTOUCHED,
        "crop 0.67, centred": file_changes.center_crop(0.67),
        "blur radius 2": blurred,
    },
    "perspective": {
        "perspective 0.1": file_changes.perspective(0.1),
        "perspective 0.2": file_changes.perspective(0.2),
        "perspective 0.1 + jpeg 90": file_changes.then(file_changes.perspective(0.1), file_changes.jpeg_in_memory(90)),
        **UNTOUCHED,
        "crop 0.67, centred": file_changes.center_crop(0.67),
        "blur radius 2": blurred,
    },
    "mirror": {
        "mirror": ImageOps.mirror,
        "mirror + jpeg 75": file_changes.then(ImageOps.mirror, file_changes.jpeg_in_memory(75)),
        "mirror + crop 3/4": file_changes.then(ImageOps.mirror, file_changes.center_crop(0.75)),
        **UNTOUCHED,
        "jpeg 75": file_changes.jpeg_in_memory(75),
        "crop 0.67, centred": file_changes.center_crop(0.67),
        "blur radius 2": blurred,
    },
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_image_arguments(parser)
    parser.add_argument("--search", choices=sorted(CHANGES), default="positions",
                        help="which search, and the changes it meets (default positions)")
    return parser.parse_args(argv)


def add_image_arguments(parser):
    """The pair, the clean images (`clean_images`) and the fingerprint's seed."""
    parser.add_argument("--model", required=True, help="a shipped pair")
    parser.add_argument("--data_dir", required=True, help="clean images never trained on")
    parser.add_argument("--center_crop", type=int, default=0, help="as for embed/detect (74 for CelebA at 64)")
    parser.add_argument("--keep_size", action="store_true", help="the images at their own sizes, as --keep_size")
    parser.add_argument("--num_images", type=int, default=200, help="images read (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="the fingerprint's seed (default 0)")


def clean_images(args, resolution):
    names = data.list_images(args.data_dir)[:args.num_images]
    if args.keep_size:
        return [data.load_rgb(os.path.join(args.data_dir, name)) for name in names]
    return [pixels_to_pil(image) for image in data.load_all(args.data_dir, names, resolution, args.center_crop)]


def measure(args):
    """{change: (as before, searched, ms per image)} and the clean images' detected share."""
    fingerprinter = Fingerprinter.load(args.model)
    clean = clean_images(args, fingerprinter.resolution)
    fingerprint = "".join(np.random.default_rng(args.seed).choice(["0", "1"], fingerprinter.fingerprint_length))
    marked = fingerprinter.embed(clean, fingerprint)
    search = {f"search_{args.search}": True}
    rows = {}
    for name, change in tqdm(CHANGES[args.search].items(), desc="changes", unit="change"):
        changed = [change(image) for image in marked]
        before = fingerprinter.detect(changed, fingerprint)
        start = time.perf_counter()
        searched = fingerprinter.detect(changed, fingerprint, **search)
        rows[name] = (before, searched, 1000 * (time.perf_counter() - start) / len(changed))
    false_positives = fingerprinter.detect(clean, fingerprint, **search).detected.float().mean().item()
    return rows, false_positives


def table(args, rows, false_positives):
    def read(detection):
        return f"{detection.matching.float().mean().item() / detection.bits.shape[1]:.3f} / " \
               f"{detection.detected.float().mean().item():.3f}"

    lines = [f"`{args.model}`, {args.num_images} images; bit accuracy / detected",
             "", f"| change | as before | --search_{args.search} | ms per image |", "|---|---|---|---|"]
    lines += [f"| {name} | {read(before)} | {read(searched)} | {ms:.0f} |"
              for name, (before, searched, ms) in rows.items()]
    return "\n".join(lines + ["", f"clean images detected with the search: {false_positives:.3f}"])


def main(args):
    print(table(args, *measure(args)))


if __name__ == "__main__":
    run_cli(main, parse_args())
