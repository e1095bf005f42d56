"""Embed fingerprints into every image of a folder.

    python embed_fingerprints.py --encoder_path run_encoder.pth --data_dir images/ \\
        --output_dir out/ [--identical_fingerprints] [--check --decoder_path run_decoder.pth]

Writes out/fingerprinted_images/<name>.png and out/embedded_fingerprints.txt
('<name>.png <bits>' per line, appended batch by batch so an interrupted
run continues with --resume), and out/skipped.txt for unreadable files.
"""

import os

# Decode workers and PNG writers share the cores with torch's threads: idle
# OpenMP threads sleep instead of spinning (must be set before torch loads).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from fingerprinting.embedding import IMAGE_FOLDER, RECORD_FILE, embed_folder
from fingerprinting.embedding import parse_args as parse_embedding_args
from utils import run_cli


def parse_args(argv=None):
    return parse_embedding_args(argv, description=__doc__)


def main(args):
    summary = embed_folder(args)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    line = f"embedded {summary['processed']} image(s) at {summary['images_per_second']:.1f} images/s"
    if "psnr" in summary:
        line += f", PSNR {summary['psnr']:.2f} dB"
    if "bit_accuracy" in summary:
        line += f", bit accuracy of the saved PNGs {summary['bit_accuracy']:.4f}"
    if summary["residual_mean_rms"] is not None:
        line += f"; the fingerprint's mean residual over the folder (RMS {summary['residual_mean_rms']:.4f}) taken out"
    if summary["skipped"]:
        line += f"; skipped {summary['skipped']} unreadable file(s), see {args.output_dir}/skipped.txt"
    print(f"{line}\noutputs: {args.output_dir}/{IMAGE_FOLDER}/, {args.output_dir}/{RECORD_FILE}")


if __name__ == "__main__":
    run_cli(main, parse_args())
