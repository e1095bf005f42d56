"""The quick-start job: fingerprint real photographs and detect the fingerprints.

1. cut sample photographs from scikit-image's bundled CC0 images,
2. take the shipped model saved_models/cifar10_32 (or, with --train, train a
   small encoder/decoder on the photographs),
3. embed a fingerprint into every image (saved as PNG),
4. detect the fingerprints from the PNG files,
5. print the bit accuracy of detected vs embedded fingerprints, and PSNR.

    python demo.py --output_dir demo_output [--train]
"""

import argparse
import os
import time

import detect_fingerprints
import embed_fingerprints
import train
from sample_images import write_sample_images
from utils import run_cli


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="demo_output", help="folder for everything (default demo_output)")
    parser.add_argument("--num_images", type=int, default=256, help="sample photographs (default 256)")
    parser.add_argument("--model", default="cifar10_32", help="shipped model to use (default cifar10_32)")
    parser.add_argument("--train", action="store_true", help="train a small model instead of using --model")
    parser.add_argument("--image_resolution", type=int, default=32, help="with --train (default 32)")
    parser.add_argument("--fingerprint_length", type=int, default=32, help="with --train (default 32)")
    parser.add_argument("--steps", type=int, default=800, help="with --train: training steps (default 800)")
    parser.add_argument("--cuda", type=int, default=0, help="CUDA device; -1 or no GPU = CPU (default 0)")
    return parser.parse_args(argv)


def trained_model(args, images, common):
    print(f"[2/4] training {args.image_resolution}x{args.image_resolution}, {args.fingerprint_length} bits, "
          f"{args.steps} steps")
    _, prefix = train.train(train.parse_args([
        "--data_dir", images, "--output_dir", os.path.join(args.output_dir, "training"),
        "--image_resolution", str(args.image_resolution), "--fingerprint_length", str(args.fingerprint_length),
        "--max_steps", str(args.steps), "--num_holdout", "0", "--image_interval", str(args.steps), *common]))
    return ["--encoder_path", prefix + "_encoder.pth"], ["--decoder_path", prefix + "_decoder.pth"]


def run_demo(args):
    """Run the steps; returns the detection summary and the embedding summary."""
    folder = lambda name: os.path.join(args.output_dir, name)  # noqa: E731
    images = write_sample_images(folder("samples"), count=args.num_images, size=64)
    print(f"[1/4] {args.num_images} sample photographs in {images}")
    common = ["--cuda", str(args.cuda)]
    if args.train:
        encoder, decoder = trained_model(args, images, common)
    else:
        print(f"[2/4] shipped model saved_models/{args.model}")
        encoder, decoder = ["--model", args.model], ["--model", args.model]
    print("[3/4] embedding")
    embedded = embed_fingerprints.embed_folder(embed_fingerprints.parse_args([
        *encoder, "--data_dir", images, "--output_dir", folder("embedded"), *common]))
    print("[4/4] detecting")
    detected = detect_fingerprints.detect_folder(detect_fingerprints.parse_args([
        *decoder, "--data_dir", folder("embedded/fingerprinted_images"), "--output_dir", folder("detected"),
        "--embedded_fingerprints", folder("embedded/embedded_fingerprints.txt"), *common]))
    return detected, embedded


def main(args):
    started = time.time()
    detected, embedded = run_demo(args)
    print(f"\nbit accuracy, detected vs embedded: {detected['bit_accuracy']:.4f} "
          f"over {detected['scored']} images (saved as PNG, then decoded)")
    print(f"PSNR fingerprinted vs clean: {embedded['psnr']:.2f} dB")
    print(f"total time: {time.time() - started:.0f} s; results in {args.output_dir}/")


if __name__ == "__main__":
    run_cli(main, parse_args())
