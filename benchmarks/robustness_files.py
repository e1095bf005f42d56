"""Robustness as a user meets it: embed with the CLI, change the saved files
with Pillow, detect with the CLI (fingerprinting/file_changes.py).

At the model's size: JPEG, blur, noise, centred crops and their chains;
a 3/4 crop taken anywhere and a 2-pixel shift (read with --search_positions), and a
5° rotation (read with --search_rotations), and a mirror image saved as
JPEG 75 (read with --search_orientations or --search_mirror), and a 10 %
white border, saved as PNG and as JPEG 75 (read with --search_borders). With
--keep_size (images at their own size, the residual method): JPEG 95/75/50,
WebP 80, downscales then JPEG 75, crops (and then JPEG 75), rotation 5°, a
mirror image then JPEG 75, a 10 % border (and then JPEG 75), the image
padded to a square then JPEG 75 and
the combined attack of VideoSeal and OmniSealBench; PSNR and SSIM at the
native size. The clean inputs are decoded too: the measured FPR.

    python benchmarks/robustness_files.py --model cifar10_32_robust --data_dir heldout/ --output_dir /tmp/files
    python benchmarks/robustness_files.py --model celeba_64_robust --data_dir celeba_test/ --center_crop 74 \\
        --output_dir /tmp/files
    python benchmarks/robustness_files.py --model celeba_64_robust --data_dir faces_1024/ --keep_size \\
        --output_dir /tmp/files [--strength 0.7]
"""

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from fingerprinting import file_changes  # noqa: E402
from fingerprinting.api import MIN_READ_BACK  # noqa: E402
from utils import run_cli  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a shipped model")
    parser.add_argument("--encoder_path", default=None, help="instead of --model")
    parser.add_argument("--decoder_path", default=None, help="instead of --model")
    parser.add_argument("--data_dir", required=True, help="clean images never trained on")
    parser.add_argument("--output_dir", required=True, help="working folder; report.json and report.md")
    parser.add_argument("--recursive", action="store_true", help="also read images in sub-folders")
    parser.add_argument("--center_crop", type=int, default=0, help="as for embed/detect (74 for CelebA at 64)")
    parser.add_argument("--keep_size", action="store_true", help="embed and detect at the images' own size")
    parser.add_argument("--strength", type=float, default=1.0, help="embed_fingerprints.py --strength (default 1)")
    parser.add_argument("--min_read_back", type=float, default=MIN_READ_BACK,
                        help=f"embed_fingerprints.py --min_read_back (default {MIN_READ_BACK}; 0 = exactly --strength)")
    parser.add_argument("--fpr", type=float, default=1e-6, help="detection threshold's false-positive rate")
    parser.add_argument("--search_crops", action=argparse.BooleanOptionalAction, default=None,
                        help="detect_fingerprints.py --search_crops / --no-search_crops (default: the pair's choice)")
    parser.add_argument("--search_positions", action="store_true",
                        help="detect_fingerprints.py --search_positions: crops taken anywhere, and shifts")
    parser.add_argument("--search_rotations", action="store_true",
                        help="detect_fingerprints.py --search_rotations: rotations up to 30 degrees")
    parser.add_argument("--search_borders", action="store_true",
                        help="detect_fingerprints.py --search_borders: an image on a larger canvas")
    parser.add_argument("--search_perspective", action="store_true",
                        help="detect_fingerprints.py --search_perspective: perspective warps")
    orientations = parser.add_mutually_exclusive_group()
    orientations.add_argument("--search_orientations", action="store_true",
                              help="detect_fingerprints.py --search_orientations: mirror images and quarter turns")
    orientations.add_argument("--search_mirror", action="store_true",
                              help="detect_fingerprints.py --search_mirror: as they are or mirrored, either as likely")
    parser.add_argument("--identical_fingerprints", action="store_true",
                        help="embed_fingerprints.py --identical_fingerprints: one fingerprint for the folder, as a "
                             "published data set (pairs trained with --group_mean_out embed that way)")
    parser.add_argument("--seed", type=int, default=42, help="fingerprint seed (default 42)")
    parser.add_argument("--cuda", type=int, default=-1, help="CUDA device; -1 = CPU (default -1)")
    args = parser.parse_args(argv)
    if not args.model and not (args.encoder_path and args.decoder_path):
        parser.error("give --model, or --encoder_path and --decoder_path")
    if args.keep_size and args.center_crop:
        parser.error("--keep_size takes no --center_crop")
    return args


def main(args):
    report = file_changes.measure(args)
    with open(os.path.join(args.output_dir, "report.json"), "w", encoding="utf-8") as file:
        json.dump(report, file, indent=2)
    with open(os.path.join(args.output_dir, "report.md"), "w", encoding="utf-8") as file:
        file.write(file_changes.table(report) + "\n")
    print(file_changes.table(report))


if __name__ == "__main__":
    run_cli(main, parse_args())
