"""The quick-start job: fingerprint real photographs and detect the fingerprints.

1. cut sample photographs from scikit-image's bundled CC0 images,
2. take the shipped model saved_models/cifar10_32_robust (or, with --train,
   train a small encoder/decoder on the photographs),
3. embed a fingerprint into every image (saved as PNG),
4. detect the fingerprints from the PNG files,
5. save those files again as JPEG (quality 75) and detect again,
6. print the bit accuracy of detected vs embedded fingerprints for both, and PSNR.

    python demo.py --output_dir demo_output [--train]
"""

import argparse
import os
import time

from PIL import Image

from fingerprinting import detection, embedding, training
from fingerprinting.sample_images import write_sample_images
from utils import run_cli


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", default="demo_output", help="folder for everything (default demo_output)")
    parser.add_argument("--num_images", type=int, default=256, help="sample photographs (default 256)")
    parser.add_argument("--model", default="cifar10_32_robust",
                        help="shipped model to use (default cifar10_32_robust)")
    parser.add_argument("--train", action="store_true", help="train a small model instead of using --model")
    parser.add_argument("--image_resolution", type=int, default=32, help="with --train (default 32)")
    parser.add_argument("--fingerprint_length", type=int, default=32, help="with --train (default 32)")
    parser.add_argument("--steps", type=int, default=800, help="with --train: training steps (default 800)")
    parser.add_argument("--jpeg_quality", type=int, default=75, help="quality of the JPEG re-save (default 75)")
    parser.add_argument("--cuda", type=int, default=0, help="CUDA device; -1 or no GPU = CPU (default 0)")
    return parser.parse_args(argv)


def trained_model(args, images, common):
    print(f"[2/5] training {args.image_resolution}x{args.image_resolution}, {args.fingerprint_length} bits, "
          f"{args.steps} steps")
    _, prefix = training.train(training.parse_args([
        "--data_dir", images, "--output_dir", os.path.join(args.output_dir, "training"),
        "--image_resolution", str(args.image_resolution), "--fingerprint_length", str(args.fingerprint_length),
        "--max_steps", str(args.steps), "--num_holdout", "0", "--image_interval", str(args.steps), *common]))
    return ["--encoder_path", prefix + "_encoder.pth"], ["--decoder_path", prefix + "_decoder.pth"]


def save_as_jpeg(source_dir, target_dir, quality):
    """Every image of `source_dir` saved again as JPEG, as a user re-saving or uploading it would."""
    os.makedirs(target_dir, exist_ok=True)
    for name in sorted(os.listdir(source_dir)):
        image = Image.open(os.path.join(source_dir, name)).convert("RGB")
        image.save(os.path.join(target_dir, os.path.splitext(name)[0] + ".jpg"), quality=quality)
    return target_dir


def detect(decoder, images, output_dir, record, common):
    return detection.detect_folder(detection.parse_args([
        *decoder, "--data_dir", images, "--output_dir", output_dir, "--embedded_fingerprints", record, *common]))


def run_demo(args):
    """Run the steps; returns the detection summaries (PNG files, JPEG files) and the embedding summary."""
    folder = lambda name: os.path.join(args.output_dir, name)  # noqa: E731
    images = write_sample_images(folder("samples"), count=args.num_images, size=64)
    print(f"[1/5] {args.num_images} sample photographs in {images}")
    common = ["--cuda", str(args.cuda)]
    if args.train:
        encoder, decoder = trained_model(args, images, common)
    else:
        print(f"[2/5] shipped model saved_models/{args.model}")
        encoder, decoder = ["--model", args.model], ["--model", args.model]
    print("[3/5] embedding")
    embedded = embedding.embed_folder(embedding.parse_args([
        *encoder, "--data_dir", images, "--output_dir", folder("embedded"), *common]))
    print("[4/5] detecting from the PNG files")
    record = folder("embedded/embedded_fingerprints.txt")
    detected = detect(decoder, folder("embedded/fingerprinted_images"), folder("detected"), record, common)
    print(f"[5/5] saving them again as JPEG (quality {args.jpeg_quality}) and detecting")
    jpegs = save_as_jpeg(folder("embedded/fingerprinted_images"), folder("jpeg"), args.jpeg_quality)
    detected_jpeg = detect(decoder, jpegs, folder("detected_jpeg"), record, common)
    return detected, detected_jpeg, embedded


def main(args):
    started = time.time()
    detected, detected_jpeg, embedded = run_demo(args)
    print(f"\nbit accuracy, detected vs embedded, over {detected['scored']} images:")
    print(f"  saved as PNG:                     {detected['bit_accuracy']:.4f} "
          f"({detected['detected_rate']:.1%} detected)")
    print(f"  saved again as JPEG (quality {args.jpeg_quality}): {detected_jpeg['bit_accuracy']:.4f} "
          f"({detected_jpeg['detected_rate']:.1%} detected)")
    print(f"PSNR fingerprinted vs clean: {embedded['psnr']:.2f} dB")
    print(f"total time: {time.time() - started:.0f} s; results in {args.output_dir}/")


if __name__ == "__main__":
    run_cli(main, parse_args())
