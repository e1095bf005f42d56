"""Robustness as a user meets it: embed with the CLI, change the saved PNG
files with Pillow, detect with the CLI.

For every file change below, the fingerprinted PNGs are rewritten into a
folder of their own (JPEG changes as .jpg files) and decoded with
detect_fingerprints.py against the embedding record: mean bit accuracy and
the share detected at --fpr. The clean inputs are decoded too: the share
"detected" there is the measured false-positive rate.

    python benchmarks/robustness_files.py --model cifar10_32_robust --data_dir heldout/ --output_dir /tmp/files
    python benchmarks/robustness_files.py --model celeba_64_robust --data_dir celeba_test/ --center_crop 74 \\
        --output_dir /tmp/files
"""

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
from PIL import Image, ImageFilter  # noqa: E402
from tqdm import tqdm  # noqa: E402

from fingerprinting import detection, embedding  # noqa: E402
from utils import run_cli  # noqa: E402


def blur_sigma(kernel_size):
    """The sigma torchvision (and OpenCV) give a Gaussian kernel of this size."""
    return 0.3 * ((kernel_size - 1) * 0.5 - 1) + 0.8


def jpeg(quality):
    return lambda image: (image, dict(format="JPEG", quality=quality))


def png(change):
    return lambda image: (change(image), dict(format="PNG"))


def center_crop(fraction):
    """The central `fraction` of each side, resized back (Pillow's default filter)."""
    def crop(image):
        width, height = image.size
        kept_w, kept_h = round(width * fraction), round(height * fraction)
        left, top = (width - kept_w) // 2, (height - kept_h) // 2
        return image.crop((left, top, left + kept_w, top + kept_h)).resize((width, height))
    return crop


def gaussian_noise(std, seed=0):
    generator = np.random.default_rng(seed)

    def noisy(image):
        pixels = np.asarray(image, dtype=np.float64) + generator.normal(0, std * 255, (image.height, image.width, 3))
        return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
    return noisy


def then(first, second):
    return lambda image: second(first(image))


def resize(scale):
    return lambda image: image.resize((round(image.width * scale), round(image.height * scale)))


# name: image -> (changed image, Pillow save options)
FILE_CHANGES = {
    "png (unchanged)": png(lambda image: image),
    "jpeg 95": jpeg(95),
    "jpeg 75": jpeg(75),
    "jpeg 50": jpeg(50),
    "blur kernel 5": png(lambda image: image.filter(ImageFilter.GaussianBlur(blur_sigma(5)))),
    "blur radius 2": png(lambda image: image.filter(ImageFilter.GaussianBlur(2))),  # a stronger reading of "kernel 5"
    "noise std 0.05": png(gaussian_noise(0.05)),
    "crop 3/4": png(center_crop(0.75)),
    "crop 0.67": png(center_crop(0.67)),
    "crop 3/4 + jpeg 75": then(center_crop(0.75), jpeg(75)),
    "resize 1/2 + jpeg 75": then(resize(0.5), jpeg(75)),
}


def change_files(source_dir, target_dir, change):
    os.makedirs(target_dir, exist_ok=True)
    for name in sorted(os.listdir(source_dir)):
        image, options = change(Image.open(os.path.join(source_dir, name)).convert("RGB"))
        extension = ".jpg" if options["format"] == "JPEG" else ".png"
        image.save(os.path.join(target_dir, os.path.splitext(name)[0] + extension), **options)


def detect(args, folder, output_dir, record, *extra):
    return detection.detect_folder(detection.parse_args([
        *model_flags(args), "--data_dir", folder, "--output_dir", output_dir, "--embedded_fingerprints", record,
        "--fpr", str(args.fpr), "--cuda", str(args.cuda), *extra]))


def model_flags(args):
    return ["--model", args.model] if args.model else ["--decoder_path", args.decoder_path]


def input_flags(args):
    return [*(["--center_crop", str(args.center_crop)] if args.center_crop else []),
            *(["--recursive"] if args.recursive else [])]


def measure(args):
    out = lambda *parts: os.path.join(args.output_dir, *parts)  # noqa: E731
    encoder = ["--model", args.model] if args.model else ["--encoder_path", args.encoder_path]
    embedded = embedding.embed_folder(embedding.parse_args([
        *encoder, "--data_dir", args.data_dir, "--output_dir", out("embedded"), "--cuda", str(args.cuda),
        "--seed", str(args.seed), *input_flags(args)]))
    record, pngs = out("embedded", "embedded_fingerprints.txt"), out("embedded", "fingerprinted_images")
    # The clean inputs are prepared as for embedding; the fingerprinted files already are.
    clean = detect(args, args.data_dir, out("clean"), record, *input_flags(args))
    rows = [dict(change="clean inputs (false positives)", **scores(clean))]
    for name, change in tqdm(FILE_CHANGES.items(), desc="file changes", unit="change"):
        folder = out("changed", name.replace(" ", "_").replace("/", "-"))
        change_files(pngs, folder, change)
        rows.append(dict(change=name, **scores(detect(args, folder, folder + "_detected", record))))
    return dict(psnr=embedded["psnr"], images=embedded["processed"], rows=rows)


def scores(summary):
    return dict(bit_accuracy=summary["bit_accuracy"], detected=summary["detected_rate"], images=summary["scored"])


def table(report):
    lines = [f"{report['images']} images, PSNR {report['psnr']:.2f} dB", "",
             "| file change | bit accuracy | detected |", "|---|---|---|"]
    lines += [f"| {row['change']} | {row['bit_accuracy']:.4f} | {row['detected']:.4f} |" for row in report["rows"]]
    return "\n".join(lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="a shipped model")
    parser.add_argument("--encoder_path", default=None, help="instead of --model")
    parser.add_argument("--decoder_path", default=None, help="instead of --model")
    parser.add_argument("--data_dir", required=True, help="clean images never trained on")
    parser.add_argument("--output_dir", required=True, help="working folder; report.json and report.md")
    parser.add_argument("--recursive", action="store_true", help="also read images in sub-folders")
    parser.add_argument("--center_crop", type=int, default=0, help="as for embed/detect (74 for CelebA at 64)")
    parser.add_argument("--fpr", type=float, default=1e-6, help="detection threshold's false-positive rate")
    parser.add_argument("--seed", type=int, default=42, help="fingerprint seed (default 42)")
    parser.add_argument("--cuda", type=int, default=-1, help="CUDA device; -1 = CPU (default -1)")
    args = parser.parse_args(argv)
    if not args.model and not (args.encoder_path and args.decoder_path):
        parser.error("give --model, or --encoder_path and --decoder_path")
    return args


def main(args):
    report = measure(args)
    with open(os.path.join(args.output_dir, "report.json"), "w", encoding="utf-8") as file:
        json.dump(report, file, indent=2)
    with open(os.path.join(args.output_dir, "report.md"), "w", encoding="utf-8") as file:
        file.write(table(report) + "\n")
    print(table(report))


if __name__ == "__main__":
    run_cli(main, parse_args())
