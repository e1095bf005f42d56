"""Can the publisher, who holds the encoder, tell a genuine fingerprinted image
from a copy of a look-alike's residual? (docs/security.md §14; an experiment,
not part of detection.)

The check: the encoder's bit-dependent residual for the suspect image itself,
(E(y, bits) - E(y, 1 - bits)) / 2, against the image's own detail, as the
cosine of the two after a high-pass. A genuine image carries the residual
the encoder puts into that very image; a copy carries a look-alike's, which
the decoder reads as the same bits but whose pixels differ. Reported, for
each high-pass, the AUC between genuine images through each file edit (and
GAN samples, --samples_dir) and the detected look-alike forgeries (copy
estimates: median, Gaussian, total variation); then the rule "consistent
when any high-pass reaches its cut", the cuts set on the first half of the
targets to let 1 % of its detected median-estimate forgeries through each,
and measured on the second half: forgeries still passing, genuine kept.

    python benchmarks/consistency_check.py --model celeba_64_v4 --data_dir celeba_test/ \\
        --pool_dir celeba_first_9000/ --center_crop 74 --output_dir /tmp/consistency \\
        [--samples_dir runs/gan/samples]   # a GAN's samples, its data embedded with --identical_fingerprints

Needs the secrecy extra (scikit-learn) for the AUC: pip install -r requirements-secrecy.txt
"""

import argparse
import io
import json
import os
import sys

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from attacks import random_draw  # noqa: E402
from fingerprinting import data, embedding, file_changes, forgery  # noqa: E402
from fingerprinting.api import Fingerprinter  # noqa: E402
from fingerprinting.attack_suite import Victim, applied, copy_estimates  # noqa: E402
from fingerprinting.bits import fingerprint_for, min_matching_bits  # noqa: E402
from utils import run_cli  # noqa: E402

EDITS = ("png (unchanged)", "jpeg 75", "jpeg 50", "blur kernel 5", "noise std 0.05", "crop 3/4")
FORGERY_PSNRS = (30, 33)
COPY_ESTIMATES = ("median 3x3", "gaussian sigma 1", "tv 0.1")  # of attack_suite.DENOISERS
CALIBRATION = "median 3x3, 30 dB"  # the forgeries the cuts are set on
FORGERIES_LET_THROUGH = 0.01  # share of the calibration half's detected forgeries each cut passes


def luminance(images):
    return images.mean(1, keepdim=True)


def high_pass(sigma, of=lambda images: images):
    return lambda images: of(images) - forgery.gaussian_denoise(of(images), sigma)


HIGH_PASSES = {
    "RGB band (blur 0.7 - blur 2.5)": lambda images: (forgery.gaussian_denoise(images, 0.7)
                                                      - forgery.gaussian_denoise(images, 2.5)),
    "luminance - blur 1.5": high_pass(1.5, luminance),
    "chroma - blur 2.5": high_pass(2.5, lambda images: images - luminance(images)),
}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="a shipped content-keyed model")
    parser.add_argument("--data_dir", required=True, help="clean targets never trained on")
    parser.add_argument("--pool_dir", required=True, help="the attacker's fingerprinted pool (the published set)")
    parser.add_argument("--output_dir", required=True, help="report.json and report.md")
    parser.add_argument("--recursive", action="store_true", help="also read images in sub-folders")
    parser.add_argument("--center_crop", type=int, default=0, help="as for embed/detect (74 for CelebA at 64)")
    parser.add_argument("--num_targets", type=int, default=400)
    parser.add_argument("--pool_size", type=int, default=1000, help="look-alikes to choose among (default 1000)")
    parser.add_argument("--seed", type=int, default=42, help="fingerprint seed (default 42)")
    parser.add_argument("--samples_dir", default=None,
                        help="generated images carrying the --seed fingerprint (embed_fingerprints.py "
                             "--identical_fingerprints --seed on the GAN's data)")
    return parser.parse_args(argv)


def edited(images, edit):
    """uint8 images (n c r r) through one of file_changes.FILE_CHANGES, saved and read back in memory."""
    out = []
    for pixels in images:
        image, options = file_changes.FILE_CHANGES[edit](Image.fromarray(pixels.permute(1, 2, 0).numpy()))
        buffer = io.BytesIO()
        image.save(buffer, **options)
        out.append(torch.from_numpy(np.array(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))))
    return torch.stack(out).permute(0, 3, 1, 2)


def consistency(fingerprinter, images, bits):
    """{high-pass: cosine (n)} between each image's detail and the residual
    the encoder's bits put into that image."""
    with torch.inference_mode():
        expected = (fingerprinter.encode_in_batches(images, bits)
                    - fingerprinter.encode_in_batches(images, 1 - bits)) / 2
    return {name: F.cosine_similarity(hp(images).flatten(1), hp(expected).flatten(1))
            for name, hp in HIGH_PASSES.items()}


def auc(positives, negatives):
    """P(a positive scores above a negative), ties counted half."""
    from sklearn.metrics import roc_auc_score  # the secrecy extra

    labels = np.r_[np.ones(len(positives)), np.zeros(len(negatives))]
    return float(roc_auc_score(labels, torch.cat([positives, negatives]).numpy()))


def measure(args):
    fingerprinter = Fingerprinter.load(args.model)
    resolution, length = fingerprinter.resolution, fingerprinter.config.fingerprint_length
    targets = random_draw(args.data_dir, args.recursive, args.num_targets, resolution, args.center_crop, args.seed)
    pool = random_draw(args.pool_dir, args.recursive, args.pool_size, resolution, args.center_crop, args.seed + 1)
    victim = Victim(fingerprinter, torch.from_numpy(fingerprint_for(0, length, args.seed, identical=True)), 1e-6)
    if embedding.takes_out_mean("auto", fingerprinter):
        victim.take_out_residual_mean(pool)
    bits = victim.fingerprint.float().expand(len(targets), -1)
    threshold = min_matching_bits(length, victim.fpr)

    def scored(images):
        images = data.to_float(images)
        with torch.inference_mode():
            detected = (fingerprinter.read_bits(images) == victim.fingerprint).sum(1) >= threshold
        return detected, consistency(fingerprinter, images, bits)

    marked = victim.embed(targets)
    genuine = {edit: scored(edited(marked, edit)) for edit in EDITS}
    if args.samples_dir:
        genuine["GAN samples"] = scored(random_draw(args.samples_dir, args.recursive, args.num_targets, resolution,
                                                    0, args.seed))
    sources = data.to_float(victim.embed(pool))
    clean = data.to_float(targets)
    nearest = forgery.nearest_look_alikes(clean, sources)
    forged = {}
    for denoiser in COPY_ESTIMATES:
        estimates = copy_estimates(sources, denoiser)[nearest]
        forged.update({f"{denoiser}, {db} dB": scored(data.to_uint8(applied(clean, estimates, 1, db)))
                       for db in FORGERY_PSNRS})
    return dict(separation=separation(genuine, forged), rule=rule(genuine, forged))


def separation(genuine, forged):
    """AUC of each high-pass between detected genuine images and detected forgeries."""
    rows = []
    for forgery_label, (forged_detected, forged_scores) in forged.items():
        for name in HIGH_PASSES:
            for edit, (detected, scores) in genuine.items():
                rows.append(dict(forgery=forgery_label, high_pass=name, edit=edit,
                                 auc=auc(scores[name][detected], forged_scores[name][forged_detected])))
    return rows


def rule(genuine, forged):
    """Consistent when any high-pass reaches its cut; cuts from the first
    half's detected CALIBRATION forgeries, rates on the second half (for
    every copy estimate: an attacker need not use the one calibrated on)."""
    detected, scores = forged[CALIBRATION]
    half = len(detected) // 2
    calibration = detected[:half]
    cuts = {name: scores[name][:half][calibration].quantile(1 - FORGERIES_LET_THROUGH).item() for name in HIGH_PASSES}

    def passing(detected, scores):
        consistent = torch.stack([scores[name] >= cut for name, cut in cuts.items()]).any(0)
        return dict(detected=detected[half:].float().mean().item(),
                    detected_and_consistent=(detected & consistent)[half:].float().mean().item())

    return dict(cuts=cuts, genuine={edit: passing(*pair) for edit, pair in genuine.items()},
                forged={label: passing(*pair) for label, pair in forged.items()})


def table(report):
    edits = list(report["rule"]["genuine"])
    lines = ["AUC of each high-pass, genuine (columns) against detected look-alike forgeries:", "",
             "| forgery | high-pass | " + " | ".join(edits) + " |", "|---|---|" + "---|" * len(edits)]
    for label in report["rule"]["forged"]:
        for name in HIGH_PASSES:
            aucs = {row["edit"]: row["auc"] for row in report["separation"]
                    if row["forgery"] == label and row["high_pass"] == name}
            lines.append(f"| {label} | {name} | " + " | ".join(f"{aucs[edit]:.3f}" for edit in edits) + " |")
    cuts = ", ".join(f"{name} {cut:.3f}" for name, cut in report["rule"]["cuts"].items())
    lines += ["", f"Consistent when any high-pass reaches its cut ({cuts}; set on {CALIBRATION} forgeries); "
              "second half of the targets:", "",
              "| images | detected | detected and consistent |", "|---|---|---|"]
    for edit, rates in report["rule"]["genuine"].items():
        lines.append(f"| genuine, {edit} | {rates['detected']:.3f} | {rates['detected_and_consistent']:.3f} |")
    for label, rates in report["rule"]["forged"].items():
        lines.append(f"| look-alike copy ({label}) | {rates['detected']:.3f} | "
                     f"{rates['detected_and_consistent']:.3f} |")
    return "\n".join(lines)


def main(args):
    report = measure(args)
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "report.json"), "w", encoding="utf-8") as file:
        json.dump(report, file, indent=2)
    with open(os.path.join(args.output_dir, "report.md"), "w", encoding="utf-8") as file:
        file.write(table(report) + "\n")
    print(table(report))


if __name__ == "__main__":
    run_cli(main, parse_args())
