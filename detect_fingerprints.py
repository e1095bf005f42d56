"""Decode the fingerprint of every image in a folder.

    python detect_fingerprints.py --decoder_path run_decoder.pth --data_dir out/fingerprinted_images \\
        --output_dir detected/ [--embedded_fingerprints out/embedded_fingerprints.txt]

Writes detected/detected_fingerprints.txt ('<name>.png <bits>' per line).
Given the embedding record (or one --fingerprint), also reports the bit
accuracy per image (bit_accuracy.csv) and on average.
"""

import os

# Decode workers and PNG writers share the cores with torch's threads: idle
# OpenMP threads sleep instead of spinning (must be set before torch loads).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from fingerprinting.detection import ACCURACY_FILE, ATTRIBUTION_FILE, CONFUSION_FILE, RECORD_FILE, detect_folder
from fingerprinting.detection import parse_args as parse_detection_args
from utils import run_cli


def parse_args(argv=None):
    return parse_detection_args(argv, description=__doc__)


def main(args):
    summary = detect_folder(args)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    line = f"detected {summary['processed']} image(s) at {summary['images_per_second']:.1f} images/s"
    if summary["skipped"]:
        line += f"; skipped {summary['skipped']} unreadable file(s), see {args.output_dir}/skipped.txt"
    print(f"{line}\noutput: {args.output_dir}/{RECORD_FILE}")
    if "bit_accuracy" in summary:
        print(f"mean bit accuracy vs expected: {summary['bit_accuracy']:.4f} over {summary['scored']} image(s)"
              + (f" ({summary['unmatched']} without an expected fingerprint)" if summary["unmatched"] else "")
              + f"; per image: {args.output_dir}/{ACCURACY_FILE}")
        print(f"detected as fingerprinted (>= {summary['min_matching_bits']} matching bits, FPR {args.fpr:g}): "
              f"{summary['detected_rate']:.4f}; tampered (<= {summary['max_tampered_matching_bits']} matching bits): "
              f"{summary['tampered_rate']:.4f}" + (f"; {summary['upscaled']} image(s) smaller than the model, read "
                                                    "upscaled" if summary["upscaled"] else ""))
    if "attribution" in summary:
        print("attribution: " + ", ".join(f"{owner} {count}" for owner, count in sorted(summary["attribution"].items()))
              + f"; per image: {args.output_dir}/{ATTRIBUTION_FILE}")
    if "open_world_accuracy" in summary:
        print(f"attribution accuracy: closed world {summary['closed_world_accuracy']:.4f}, open world "
              f"{summary['open_world_accuracy']:.4f}; confusion table: {args.output_dir}/{CONFUSION_FILE}")


if __name__ == "__main__":
    run_cli(main, parse_args())
