"""How each sign field of fingerprinting/modulation.py trades security for
robustness, on real images and without a model.

Security: a copy forgery transfers as far as the source's and the target's
fields agree, so the spread of the field correlation over pairs of images
matters (its std, the share of pairs above 0.3), and most of all the
correlation with the look-alike that the nearest-image copy attacker picks
(forgery.structure) among the other images, and the best-matching
field among them (an attacker who computes the fields). Robustness: the cosine
between the field of an edited image and the original's (for a crop, the
same crop of the original's field), through Pillow's JPEG, blur, noise and
a 3/4 crop. Fields are taken minus their mean over the images, as
--modulation_mean does.

    python benchmarks/field_study.py --data_dir cifar_heldout/ --resolution 32 --num_images 400
"""

import argparse
import os
import sys

import torch
import torch.nn.functional as F
from PIL import ImageFilter

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from fingerprinting import data, file_changes, modulation  # noqa: E402
from fingerprinting.api import pixels_to_pil  # noqa: E402
from fingerprinting.forgery import structure  # noqa: E402

EDITS = {
    "jpeg 95": file_changes.jpeg_in_memory(95),
    "jpeg 50": file_changes.jpeg_in_memory(50),
    "blur kernel 5": lambda image: image.filter(ImageFilter.GaussianBlur(file_changes.blur_sigma(5))),
    "noise std 0.05": file_changes.gaussian_noise(0.05),
    "crop 3/4": file_changes.center_crop(0.75),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True, help="images (any size; resized as embed_fingerprints.py does)")
    parser.add_argument("--resolution", type=int, default=32, help="the model's view (default 32)")
    parser.add_argument("--center_crop", type=int, default=0, help="as for embed/detect (74 for CelebA at 64)")
    parser.add_argument("--num_images", type=int, default=400, help="images read (default 400)")
    parser.add_argument("--recursive", action="store_true", help="also read images in sub-folders")
    return parser.parse_args(argv)


def load(args):
    paths = data.list_images(args.data_dir, args.recursive)[:args.num_images]
    dataset = data.ImageFiles(args.data_dir, paths, args.resolution, args.center_crop)
    return torch.cat([batch for _, batch, _ in data.image_batches(dataset, 256, 0) if len(batch)])


def unit(fields):
    flat = fields.flatten(1)
    return flat / flat.norm(dim=1, keepdim=True).clamp_min(1e-8)


def edited(images, edit):
    """uint8 images through one Pillow edit, as uint8 again."""
    changed = [data.pil_to_uint8(edit(pixels_to_pil(image))) for image in images]
    return torch.stack(changed)


def agreement(original, changed, mode, mean, crop=None):
    field = modulation.sign_field(original, mean, mode)
    if crop:
        size = field.shape[-1]
        kept = round(size * crop)
        start = (size - kept) // 2
        field = F.interpolate(field[..., start:start + kept, start:start + kept], size=(size, size),
                              mode="bilinear", align_corners=False)
    return (unit(field) * unit(modulation.sign_field(changed, mean, mode))).sum(1).mean().item()


def study(images, mode):
    floats = data.to_float(images)
    mean = modulation.mean_field(floats, mode=mode)
    fields = unit(modulation.sign_field(floats, mean, mode))
    itself = torch.eye(len(fields), dtype=torch.bool)
    pairs = fields @ fields.T
    others = pairs[~itself]
    details = structure(floats)
    look_alike = (details @ details.T).masked_fill(itself, -2).argmax(1)
    row = {"pair std": others.std().item(), "pairs > 0.3": (others > 0.3).float().mean().item(),
           "look-alike mean": pairs[torch.arange(len(pairs)), look_alike].mean().item(),
           "best match mean": pairs.masked_fill(itself, -2).amax(1).mean().item()}
    for name, edit in EDITS.items():
        crop = 0.75 if name.startswith("crop") else None
        row[name] = agreement(floats, data.to_float(edited(images, edit)), mode, mean, crop)
    return row


def main(args):
    images = load(args)
    # A smoothed mode signs by its band's field: the same field, the same row.
    rows = {mode: study(images, mode) for mode in modulation.BANDS if mode not in modulation.RESIDUAL_BLUR}
    columns = list(next(iter(rows.values())))
    print(f"{len(images)} images at {args.resolution} px; fields minus their mean\n")
    print("| field (sigmas) | " + " | ".join(columns) + " |")
    print("|---" * (len(columns) + 1) + "|")
    for mode, row in rows.items():
        print(f"| {mode} {modulation.BANDS[mode]} | " + " | ".join(f"{row[key]:.3f}" for key in columns) + " |")


if __name__ == "__main__":
    main(parse_args())
