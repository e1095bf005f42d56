"""Edits no other benchmark makes: colour, tone and filter changes, palettes,
WebP, erasing and perspective, as image editors and the augmentation lists
of VideoSeal and OmniSealBench make them.

Embeds one random fingerprint in never-seen images with the pair, changes
them with Pillow or torchvision in memory, and reads them as
detect_fingerprints.py does by default (the pair's own searches only):
bit accuracy, the share detected at FPR 1e-6, the share read as tampered
(so few bits match that the fingerprint reads inverted, as an inverted
image's does), the share of the clean images, changed alike, detected
(the measured false positives), and the median PSNR of each changed image
against the fingerprinted one it came from (how strong the edit is).

    python benchmarks/edits.py --model cifar10_32_robust --data_dir cifar_heldout/ --num_images 300
    python benchmarks/edits.py --model celeba_64_v6 --data_dir celeba_test/ --center_crop 74 --num_images 300
"""

import argparse
import os
import sys

import numpy as np
import torchvision.transforms.v2.functional as TF
from PIL import ImageEnhance, ImageFilter, ImageOps
from tqdm import tqdm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from fingerprinting import data, evaluation, file_changes  # noqa: E402
from fingerprinting.api import Fingerprinter  # noqa: E402
from geometry import add_image_arguments, clean_images  # noqa: E402
from utils import run_cli  # noqa: E402


def gamma(value):
    return lambda image: image.point(lambda level: round(255 * (level / 255) ** value))


def erased_corner(area):
    """A grey square of `area` of the image over its top left corner (an erased logo, a sticker)."""
    def erase(image):
        side = round(min(image.size) * area ** 0.5)
        erased = image.copy()
        erased.paste((128, 128, 128), (0, 0, side, side))
        return erased
    return erase


def edits(seed):
    """{name: edit of one PIL image}; the perspective warps drawn from `seed`."""
    return {
        "grayscale": lambda image: ImageOps.grayscale(image).convert("RGB"),
        "saturation 0.5": lambda image: ImageEnhance.Color(image).enhance(0.5),
        "saturation 1.5": lambda image: ImageEnhance.Color(image).enhance(1.5),
        "hue 0.05": lambda image: TF.adjust_hue(image, 0.05),
        "hue 0.1": lambda image: TF.adjust_hue(image, 0.1),
        "hue 0.25": lambda image: TF.adjust_hue(image, 0.25),
        "gamma 0.7": gamma(0.7),
        "gamma 1.4": gamma(1.4),
        "equalize": ImageOps.equalize,
        "autocontrast 2 %": lambda image: ImageOps.autocontrast(image, cutoff=2),
        "invert": ImageOps.invert,
        "sharpen": lambda image: image.filter(ImageFilter.SHARPEN),
        "unsharp mask": lambda image: image.filter(ImageFilter.UnsharpMask(2, 100, 3)),
        "median 3": lambda image: image.filter(ImageFilter.MedianFilter(3)),
        "median 5": lambda image: image.filter(ImageFilter.MedianFilter(5)),
        "erase a quarter": erased_corner(0.25),
        "palette 256 (GIF)": lambda image: image.quantize(256).convert("RGB"),
        "posterize 5 bits": lambda image: ImageOps.posterize(image, 5),
        "webp 80": file_changes.in_memory("WEBP", 80),
        "webp 50": file_changes.in_memory("WEBP", 50),
        "perspective 0.1": file_changes.perspective(0.1, seed),
        "perspective 0.2": file_changes.perspective(0.2, seed + 1),
        "contrast 0.7 + jpeg 75": file_changes.then(lambda image: ImageEnhance.Contrast(image).enhance(0.7),
                                                    file_changes.jpeg_in_memory(75)),
    }


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_image_arguments(parser)
    return parser.parse_args(argv)


def median_psnr(changed, sources):
    """Median PSNR (dB, capped at 100) of PIL images against their sources, over those of the same size."""
    def tensor(image):
        return data.to_float(data.pil_to_uint8(image)).unsqueeze(0)
    values = [evaluation.psnr(tensor(image), tensor(source)).item()
              for image, source in zip(changed, sources) if image.size == source.size]
    return float(np.median(values)) if values else None


def measure(args):
    """{edit: (marked images' Detection, the clean ones', median PSNR)}."""
    fingerprinter = Fingerprinter.load(args.model)
    clean = clean_images(args, fingerprinter.resolution)
    fingerprint = "".join(np.random.default_rng(args.seed).choice(["0", "1"], fingerprinter.fingerprint_length))
    marked = fingerprinter.embed(clean, fingerprint)
    rows = {}
    for name, edit in tqdm({"unchanged": lambda image: image, **edits(args.seed)}.items(), desc="edits", unit="edit"):
        changed = [edit(image) for image in marked]
        rows[name] = (fingerprinter.detect(changed, fingerprint),
                      fingerprinter.detect([edit(image) for image in clean], fingerprint),
                      median_psnr(changed, marked))
    return rows


def table(args, rows):
    def share(flags):
        return f"{flags.float().mean().item():.3f}"

    lines = [f"`{args.model}`, {args.num_images} images, read as detect_fingerprints.py reads by default",
             "", "| edit | PSNR to the fingerprinted image | bit accuracy | detected | read inverted (tampered) "
                 "| clean images detected |", "|---|---|---|---|---|---|"]
    for name, (marked, clean, strength) in rows.items():
        accuracy = marked.matching.float().mean().item() / marked.bits.shape[1]
        decibels = "" if strength is None else f"{strength:.1f} dB"
        lines.append(f"| {name} | {decibels} | {accuracy:.3f} | {share(marked.detected)} | {share(marked.tampered)} "
                     f"| {share(clean.detected)} |")
    return "\n".join(lines)


def main(args):
    print(table(args, measure(args)))


if __name__ == "__main__":
    run_cli(main, parse_args())
