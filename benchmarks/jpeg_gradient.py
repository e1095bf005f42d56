"""Which differentiable JPEG should the real JPEG's gradient flow through?

Trains one run per stand-in (`train.py --jpeg_gradient`: the hand-written
approximation in perturbations.py, kornia's `jpeg_codec_differentiable`)
with the same data, seed, steps and starting weights, then measures each
through real files (benchmarks/robustness_files.py) on held-out images.

    pip install kornia
    python benchmarks/jpeg_gradient.py --data_dir cifar10/ --recursive --heldout_dir heldout/ \\
        --init_from cifar10_32 --steps 3000 --output_dir /tmp/jpeg_gradient
"""

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from fingerprinting import file_changes, perturbations, training  # noqa: E402
from utils import run_cli  # noqa: E402

import robustness_files  # noqa: E402

COLUMNS = ["png (unchanged)", "jpeg 95", "jpeg 50", "blur kernel 5", "noise std 0.05", "crop 3/4",
           "crop 3/4 + jpeg 75", "resize 1/2 + jpeg 75"]


def run(stand_in, args):
    output = os.path.join(args.output_dir, stand_in)
    started = time.time()
    final, prefix = training.train(training.parse_args([
        "--data_dir", args.data_dir, "--output_dir", output, "--image_resolution", str(args.image_resolution),
        "--fingerprint_length", str(args.fingerprint_length), "--max_steps", str(args.steps),
        "--num_holdout", str(args.num_holdout), "--seed", str(args.seed), "--cuda", "-1", "--augment", "--bf16",
        "--jpeg_gradient", stand_in, "--image_interval", str(10 ** 9), "--checkpoint_interval", str(10 ** 9),
        *(["--init_from", args.init_from] if args.init_from else []),
        *(["--recursive"] if args.recursive else [])]))
    minutes = (time.time() - started) / 60
    report = file_changes.measure(robustness_files.parse_args([
        "--encoder_path", prefix + "_encoder.pth", "--decoder_path", prefix + "_decoder.pth",
        "--data_dir", args.heldout_dir, "--output_dir", os.path.join(output, "files")]))
    accuracy = {row["change"]: row["bit_accuracy"] for row in report["rows"]}
    return dict(stand_in=stand_in, minutes=minutes, psnr=report["psnr"], **{name: accuracy[name] for name in COLUMNS})


def table(rows):
    lines = ["| JPEG gradient through | train min | PSNR | " + " | ".join(COLUMNS) + " |",
             "|---" * (len(COLUMNS) + 3) + "|"]
    lines += [f"| {row['stand_in']} | {row['minutes']:.1f} | {row['psnr']:.2f} | "
              + " | ".join(f"{row[name]:.4f}" for name in COLUMNS) + " |" for row in rows]
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True, help="training images")
    parser.add_argument("--recursive", action="store_true", help="also read training images in sub-folders")
    parser.add_argument("--heldout_dir", required=True, help="images never trained on, for the measurement")
    parser.add_argument("--output_dir", required=True, help="working folder; results.json")
    parser.add_argument("--init_from", default=None, help="starting weights for both runs (train.py --init_from)")
    parser.add_argument("--steps", type=int, default=3000, help="training steps per run (default 3000)")
    parser.add_argument("--image_resolution", type=int, default=32, help="(default 32)")
    parser.add_argument("--fingerprint_length", type=int, default=100, help="(default 100)")
    parser.add_argument("--num_holdout", type=int, default=1000,
                        help="kept out of training; with --seed, the images in --heldout_dir (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="(default 0)")
    parser.add_argument("--stand_ins", nargs="+", default=sorted(perturbations.JPEG_STAND_INS),
                        choices=sorted(perturbations.JPEG_STAND_INS), help="(default: all)")
    return parser.parse_args(argv)


def main(args):
    rows = [run(stand_in, args) for stand_in in args.stand_ins]
    with open(os.path.join(args.output_dir, "results.json"), "w", encoding="utf-8") as file:
        json.dump(rows, file, indent=2)
    print(table(rows))


if __name__ == "__main__":
    run_cli(main, parse_args())
