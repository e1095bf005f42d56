"""Full evaluation report of an encoder/decoder pair over a folder of images.

    python evaluate.py --encoder_path run_encoder.pth --decoder_path run_decoder.pth \\
        --data_dir heldout_images/ --output_dir report/ [--fid]

Fingerprints each image (8-bit quantised, exactly what a PNG stores) and
measures: bit accuracy; PSNR and SSIM; detection TPR on fingerprinted and
measured FPR on clean images at --fpr (binomial test) and with the paper's
75% rule; FID fingerprinted vs clean (--fid, optional extra); bit accuracy
under each perturbation of perturbations.py over its range, with the working
range (strongest setting with bit accuracy >= 0.75).
Writes report.md, report.json, per_image.csv, robustness.csv, robustness.png.
"""

import argparse
import csv
import json
import os

import numpy as np
import torch
from tqdm import tqdm

from fingerprinting import Fingerprinter, data, evaluation, file_changes, perturbations
from fingerprinting.api import MIN_READ_BACK
from fingerprinting.bits import (
    binomial_p_value,
    bit_accuracy,
    fingerprint_for,
    matching_bits,
    min_matching_bits,
    paper_min_matching_bits,
)
from fingerprinting.checkpoints import load_decoder, load_encoder, load_model_config
from fingerprinting.devices import select_device
from fingerprinting.errors import UserError
from fingerprinting.folders import add_model_argument, resolve_model
from utils import run_cli

WORKING_RANGE_ACCURACY = 0.75


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--encoder_path", default=None, help="encoder checkpoint")
    add("--decoder_path", default=None, help="decoder checkpoint")
    add_model_argument(parser)
    add("--data_dir", required=True, help="clean images (ideally held out from training)")
    add("--output_dir", required=True, help="folder for the report")
    add("--recursive", action="store_true", help="also read sub-folders")
    add("--image_resolution", type=int, default=None, help="default: the decoder's input size")
    add("--center_crop", type=int, default=0, help="center-crop N pixels before resizing (default 0 = off)")
    add("--use_celeba_preprocessing", action="store_true", help="center-crop 148, resize 128")
    add("--num_images", type=int, default=1000, help="evaluate the first N images (default 1000)")
    add("--keep_size", action="store_true",
        help="evaluate at the images' own size (embed/detect --keep_size): PSNR and SSIM at the native size and "
             "robustness through real files (JPEG, WebP, downscales, crops, rotation, the combined attack)")
    add("--strength", type=float, default=1.0, help="with --keep_size: embed_fingerprints.py --strength")
    add("--min_read_back", type=float, default=MIN_READ_BACK,
        help=f"with --keep_size: embed_fingerprints.py --min_read_back (default {MIN_READ_BACK})")
    add("--fpr", type=float, default=1e-6, help="false-positive rate of the detection test (default 1e-6)")
    add("--fid", action="store_true", help="also compute FID (needs requirements-fid.txt)")
    add("--skip_robustness", action="store_true", help="leave out the perturbation sweep")
    add("--batch_size", type=int, default=64, help="default 64")
    add("--seed", type=int, default=42, help="fingerprint seed (default 42)")
    add("--cuda", type=int, default=0, help="CUDA device; -1 or no GPU = CPU (default 0)")
    add("--num_workers", type=int, default=None, help="image decoding processes")
    args = parser.parse_args(argv)
    resolve_model(parser, args, need_encoder=True, need_decoder=True)
    if not 0 < args.fpr < 1:
        parser.error("--fpr must be between 0 and 1")
    if args.num_workers is None:
        args.num_workers = data.default_num_workers()
    return args


def load_pair(args, device):
    """The pair as a Fingerprinter, and the resolution images are prepared at."""
    decoder, config = load_decoder(args.decoder_path, args.image_resolution)
    resolution = args.image_resolution or decoder.resolution
    encoder, _ = load_encoder(args.encoder_path, resolution)
    if encoder.fingerprint_size != decoder.fingerprint_size:
        raise UserError(f"encoder writes {encoder.fingerprint_size} bits, decoder reads {decoder.fingerprint_size}")
    if load_model_config(args.encoder_path) != config:
        raise UserError("encoder and decoder come from different runs (their _config.json differ)")
    return Fingerprinter(encoder, decoder, config, device), resolution


def load_images(args, resolution):
    paths = data.list_images(args.data_dir, args.recursive)[: args.num_images]
    crop = data.center_crop_for(args.use_celeba_preprocessing, args.center_crop)
    dataset = data.ImageFiles(args.data_dir, paths, resolution, crop)
    batches = [(indices, images) for indices, images, _ in data.image_batches(dataset, 256, args.num_workers)
               if len(images)]
    if not batches:
        raise UserError(f"--data_dir {args.data_dir}: no readable images")
    names = [paths[i] for indices, _ in batches for i in indices.tolist()]
    return names, torch.cat([images for _, images in batches])


def fingerprint_all(fingerprinter, clean, seed, batch_size):
    """(fingerprints n L uint8, fingerprinted uint8 images n c h w)."""
    fingerprints = torch.from_numpy(np.stack([fingerprint_for(i, fingerprinter.fingerprint_length, seed)
                                              for i in range(len(clean))]))
    return fingerprints, evaluation.fingerprinted_images(fingerprinter, fingerprints, clean, batch_size)


def detection_metrics(detected, clean_detected, fingerprints, fpr):
    """TPR on fingerprinted images and measured FPR on clean ones, at the
    binomial threshold for `fpr` and at the paper's 75% rule."""
    length = fingerprints.shape[1]
    matches = matching_bits(detected, fingerprints)
    clean_matches = matching_bits(clean_detected, fingerprints)
    result = {}
    for rule, threshold in (("binomial", min_matching_bits(length, fpr)),
                            ("paper_75", paper_min_matching_bits(length))):
        result[rule] = dict(min_matching_bits=threshold,
                            theoretical_fpr=binomial_p_value(threshold, length),
                            tpr=(matches >= threshold).float().mean().item(),
                            measured_fpr=(clean_matches >= threshold).float().mean().item(),
                            clean_images=len(clean_matches))
    return result


def robustness_sweep(fingerprinter, fingerprinted, fingerprints, batch_size):
    """Rows (perturbation, strength, bit accuracy) over every perturbation's range."""
    rows = []
    for name, (_, strengths, _) in tqdm(perturbations.PERTURBATIONS.items(), desc="robustness", unit="attack"):
        for strength in strengths:
            generator = torch.Generator().manual_seed(0)
            perturb = ((lambda x: perturbations.gaussian_noise(x, strength, generator)) if name == "gaussian_noise"
                       else (lambda x, n=name, s=strength: perturbations.apply(n, x, s)))
            detected = evaluation.decoded_bits(fingerprinter, fingerprinted, batch_size, perturb)
            rows.append(dict(perturbation=name, strength=strength,
                             bit_accuracy=bit_accuracy(detected, fingerprints).mean().item()))
    return rows


def working_ranges(rows):
    """Per perturbation: the strongest setting with accuracy >= 0.75, walking away from the
    identity setting (the first strength) and stopping at the first failure. Two-sided
    perturbations (brightness, contrast) get [lowest, highest], one walk per side."""
    ranges = {}
    for name, (_, strengths, _) in perturbations.PERTURBATIONS.items():
        accuracy = {row["strength"]: row["bit_accuracy"] for row in rows if row["perturbation"] == name}
        identity = strengths[0]
        sides = [[s for s in strengths if s < identity], [s for s in strengths if s > identity]]
        reached = [strongest_working(accuracy, [identity] + side) for side in sides if side]
        ranges[name] = reached if len(reached) == 2 else reached[0]
    return ranges


def strongest_working(accuracy, walk):
    reached = None
    for strength in walk:
        if accuracy[strength] < WORKING_RANGE_ACCURACY:
            break
        reached = strength
    return reached


def is_two_sided(strengths):
    return min(strengths) < strengths[0] < max(strengths)


def plot_robustness(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(perturbations.PERTURBATIONS)
    figure, axes = plt.subplots(2, (len(names) + 1) // 2, figsize=(3.2 * ((len(names) + 1) // 2), 6))
    for axis, name in zip(axes.flat, names):
        points = [row for row in rows if row["perturbation"] == name]
        if is_two_sided(perturbations.PERTURBATIONS[name][1]):
            points.sort(key=lambda row: row["strength"])
        axis.plot(range(len(points)), [row["bit_accuracy"] for row in points], "o-")
        axis.set_xticks(range(len(points)), [str(row["strength"]) for row in points], fontsize=7)
        axis.axhline(WORKING_RANGE_ACCURACY, color="gray", linestyle="--", linewidth=0.8)
        axis.set_ylim(0.4, 1.02)
        axis.set_title(name, fontsize=9)
        axis.set_xlabel(perturbations.PERTURBATIONS[name][2], fontsize=8)
    axes.flat[0].set_ylabel("bit accuracy")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def write_csv(rows, path):
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def evaluate_native(args):
    """--keep_size: the folder pipeline at the images' own size, real-file
    edits (fingerprinting/file_changes.py); the first --num_images images."""
    folder = os.path.join(args.output_dir, "inputs")
    os.makedirs(folder, exist_ok=True)
    for path in data.list_images(args.data_dir, args.recursive)[:args.num_images]:
        link = os.path.join(folder, path.replace("/", "__"))
        if not os.path.lexists(link):
            os.symlink(os.path.abspath(os.path.join(args.data_dir, path)), link)
    settings = file_changes.settings_of(model=None, encoder_path=args.encoder_path, decoder_path=args.decoder_path,
                                        data_dir=folder, output_dir=os.path.join(args.output_dir, "files"),
                                        keep_size=True, strength=args.strength, min_read_back=args.min_read_back,
                                        center_crop=0, recursive=False, fpr=args.fpr, seed=args.seed, cuda=args.cuda)
    report = file_changes.measure(settings)
    with open(os.path.join(args.output_dir, "report.json"), "w", encoding="utf-8") as file:
        json.dump(report, file, indent=2)
    with open(os.path.join(args.output_dir, "report.md"), "w", encoding="utf-8") as file:
        file.write("# Fingerprint evaluation at the images' own size\n\n" + file_changes.table(report) + "\n")
    return report


def evaluate(args):
    """Compute everything; returns the report dict (also written to disk)."""
    if args.keep_size:
        return evaluate_native(args)
    device = select_device(args.cuda)
    fingerprinter, resolution = load_pair(args, device)
    names, clean = load_images(args, resolution)
    fingerprints, fingerprinted = fingerprint_all(fingerprinter, clean, args.seed, args.batch_size)
    detected = evaluation.decoded_bits(fingerprinter, fingerprinted, args.batch_size)
    clean_detected = evaluation.decoded_bits(fingerprinter, clean, args.batch_size)
    accuracies = bit_accuracy(detected, fingerprints)
    psnrs = evaluation.psnr(data.to_float(fingerprinted), data.to_float(clean))
    ssims = evaluation.ssim(data.to_float(fingerprinted), data.to_float(clean))
    os.makedirs(args.output_dir, exist_ok=True)
    write_csv([dict(image=name, bit_accuracy=float(a), psnr=float(p), ssim=float(s))
               for name, a, p, s in zip(names, accuracies, psnrs, ssims)],
              os.path.join(args.output_dir, "per_image.csv"))
    report = dict(images=len(names), resolution=resolution, fingerprint_length=fingerprinter.fingerprint_length,
                  bit_accuracy=accuracies.mean().item(), psnr=psnrs.mean().item(), ssim=ssims.mean().item(),
                  detection=detection_metrics(detected, clean_detected, fingerprints, args.fpr), fpr=args.fpr)
    if args.fid:
        network = evaluation.load_inception().to(device)
        features = [evaluation.image_features(network, images, device) for images in (fingerprinted, clean)]
        report["fid_fingerprinted_vs_clean"] = evaluation.frechet_distance(*features)
    if not args.skip_robustness:
        rows = robustness_sweep(fingerprinter, fingerprinted, fingerprints, args.batch_size)
        write_csv(rows, os.path.join(args.output_dir, "robustness.csv"))
        plot_robustness(rows, os.path.join(args.output_dir, "robustness.png"))
        report["robustness"] = rows
        report["working_ranges"] = working_ranges(rows)
    with open(os.path.join(args.output_dir, "report.json"), "w", encoding="utf-8") as file:
        json.dump(report, file, indent=2)
    with open(os.path.join(args.output_dir, "report.md"), "w", encoding="utf-8") as file:
        file.write(markdown_report(report, args))
    return report


def markdown_report(report, args):
    lines = ["# Fingerprint evaluation\n", f"- encoder: `{args.encoder_path}`", f"- decoder: `{args.decoder_path}`",
             f"- images: {report['images']} from `{args.data_dir}` at {report['resolution']}x{report['resolution']}, "
             f"{report['fingerprint_length']} bits\n",
             "| metric | value |", "|---|---|",
             f"| bit accuracy (after 8-bit quantisation) | {report['bit_accuracy']:.4f} |",
             f"| PSNR (dB) | {report['psnr']:.2f} |", f"| SSIM | {report['ssim']:.4f} |"]
    if "fid_fingerprinted_vs_clean" in report:
        lines.append(f"| FID fingerprinted vs clean | {report['fid_fingerprinted_vs_clean']:.3f} |")
    lines += ["\n## Detection\n", "| rule | min matching bits | theoretical FPR | TPR | measured FPR (clean) |",
              "|---|---|---|---|---|"]
    for rule, values in report["detection"].items():
        lines.append(f"| {rule} | {values['min_matching_bits']} | {values['theoretical_fpr']:.2e} | "
                     f"{values['tpr']:.4f} | {values['measured_fpr']:.4f} ({values['clean_images']} images) |")
    if "robustness" in report:
        lines += ["\n## Robustness (bit accuracy)\n", "![robustness](robustness.png)\n",
                  "| perturbation | strength | bit accuracy |", "|---|---|---|"]
        lines += [f"| {row['perturbation']} | {row['strength']} | {row['bit_accuracy']:.4f} |"
                  for row in report["robustness"]]
        lines += ["\nWorking ranges (strongest setting with bit accuracy >= 0.75):\n"]
        lines += [f"- {name}: {format_range(value)}" for name, value in report["working_ranges"].items()]
    return "\n".join(lines) + "\n"


def format_range(value):
    if isinstance(value, list):
        return "none" if None in value else f"{value[0]} to {value[1]}"
    return "none" if value is None else str(value)


def main(args):
    report = evaluate(args)
    if args.keep_size:
        print(file_changes.table(report) + f"\nreport: {args.output_dir}/report.md")
        return
    print(f"bit accuracy {report['bit_accuracy']:.4f}, PSNR {report['psnr']:.2f} dB, SSIM {report['ssim']:.4f}, "
          f"TPR {report['detection']['binomial']['tpr']:.4f} / measured FPR "
          f"{report['detection']['binomial']['measured_fpr']:.4f} at FPR {args.fpr:g}"
          + (f", FID {report['fid_fingerprinted_vs_clean']:.3f}" if "fid_fingerprinted_vs_clean" in report else ""))
    print(f"report: {args.output_dir}/report.md")


if __name__ == "__main__":
    run_cli(main, parse_args())
