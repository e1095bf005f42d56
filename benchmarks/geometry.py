"""Crops taken anywhere and shifts, read as before and with the position
search (detect_fingerprints.py --search_positions; fingerprinting/crop_search.py).

Embeds one random fingerprint in never-seen images with the pair, changes
them with Pillow in memory (a crop of each side's 0.9, 3/4 or 0.67 at a
seeded random place and resized back; content moved 1, 2 or 4 pixels right
and down; and, to show the search costs nothing there, no change, JPEG 50
and a centred 3/4 crop), and reads each change both ways: bit accuracy,
the share detected at FPR 1e-6 and the search's time per image. The clean
images are read with the search too: the measured false positives.

    python benchmarks/positions.py --model cifar10_32_v5 --data_dir cifar_heldout/ --num_images 200
    python benchmarks/positions.py --model celeba_64_v6 --data_dir celeba_test/ --center_crop 74 --num_images 200
"""

import argparse
import os
import sys
import time

import numpy as np
from tqdm import tqdm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from fingerprinting import data, file_changes  # noqa: E402
from fingerprinting.api import Fingerprinter, pixels_to_pil  # noqa: E402
from utils import run_cli  # noqa: E402

CHANGES = {
    "crop 0.9 anywhere": file_changes.crop_anywhere(0.9, seed=1),
    "crop 3/4 anywhere": file_changes.crop_anywhere(0.75, seed=2),
    "crop 0.67 anywhere": file_changes.crop_anywhere(0.67, seed=3),
    "shift 1 px": file_changes.shift(1),
    "shift 2 px": file_changes.shift(2),
    "shift 4 px": file_changes.shift(4),
    "unchanged": lambda image: image,
    "jpeg 50": file_changes.jpeg_in_memory(50),
    "crop 3/4, centred": file_changes.center_crop(0.75),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a shipped pair")
    parser.add_argument("--data_dir", required=True, help="clean images never trained on")
    parser.add_argument("--center_crop", type=int, default=0, help="as for embed/detect (74 for CelebA at 64)")
    parser.add_argument("--num_images", type=int, default=200, help="images read (default 200)")
    parser.add_argument("--seed", type=int, default=0, help="the fingerprint's seed (default 0)")
    return parser.parse_args(argv)


def measure(args):
    """{change: (as before, searched, ms per image)} and the clean images' detected share."""
    fingerprinter = Fingerprinter.load(args.model)
    names = data.list_images(args.data_dir)[:args.num_images]
    clean = [pixels_to_pil(image) for image in data.load_all(args.data_dir, names, fingerprinter.resolution,
                                                              args.center_crop)]
    fingerprint = "".join(np.random.default_rng(args.seed).choice(["0", "1"], fingerprinter.fingerprint_length))
    marked = fingerprinter.embed(clean, fingerprint)
    rows = {}
    for name, change in tqdm(CHANGES.items(), desc="changes", unit="change"):
        changed = [change(image) for image in marked]
        before = fingerprinter.detect(changed, fingerprint)
        start = time.perf_counter()
        searched = fingerprinter.detect(changed, fingerprint, search_positions=True)
        rows[name] = (before, searched, 1000 * (time.perf_counter() - start) / len(changed))
    false_positives = fingerprinter.detect(clean, fingerprint, search_positions=True).detected.float().mean().item()
    return rows, false_positives


def table(args, rows, false_positives):
    def read(detection):
        return f"{detection.matching.float().mean().item() / detection.bits.shape[1]:.3f} / " \
               f"{detection.detected.float().mean().item():.3f}"

    lines = [f"`{args.model}`, {args.num_images} images; bit accuracy / detected",
             "", "| change | as before | --search_positions | ms per image |", "|---|---|---|---|"]
    lines += [f"| {name} | {read(before)} | {read(searched)} | {ms:.0f} |"
              for name, (before, searched, ms) in rows.items()]
    return "\n".join(lines + ["", f"clean images detected with the search: {false_positives:.3f}"])


def main(args):
    print(table(args, *measure(args)))


if __name__ == "__main__":
    run_cli(main, parse_args())
