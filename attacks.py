"""Attack a fingerprint model: can an attacker forge or strip its fingerprint?

Every image of one data set carries one fingerprint (as
`embed_fingerprints.py --identical_fingerprints` gives). The attacker holds
some of those images and some clean ones. The families (--attacks):

- averaging (Yang et al. 2024): mean of N fingerprinted images minus the
  mean of N other clean images, added to clean images (forgery) or
  subtracted from fingerprinted ones (removal), N = --sizes; the mean over N
  fingerprinted images of each one minus its median-filtered copy (no clean
  images needed); with --transferability_dir the same over samples of the
  GAN (or DDPM) trained on fingerprinted data, which anyone can draw; and
  scheme-aware averaging: an attacker who has read modulation.py (public
  code) estimates the residual before its sign field and signs it with each
  target's own field;
- copy: one fingerprinted image minus its denoised copy (median, Gaussian,
  total variation, BM3D, or BM3D's DCT thresholding without its block matching),
  pasted onto a clean image or subtracted from another one; and from the nearest
  look-alike among 1,000 fingerprinted images (median, Gaussian, total variation, DCT);
- signal: median filters 3/5/7, BM3D at several noise levels, JPEG 50 then BM3D;
- regeneration: compression autoencoders (three bottlenecks) and a one-step
  denoiser (purification at several noise levels), trained here on the
  attacker's clean images (the CPU-trained DDPM of diffusion.py is too weak
  to give faithful images, so the one-step denoiser stands in for it);
- white-box: L-infinity PGD with our decoder, towards a fresh random string,
  budgets 1, 2, 4, 8/255;
- transfer: the same PGD against the attacker's own encoder/decoder pair
  (trained here, or --attacker_encoder) and, with --transferability_dir,
  against a clean-vs-fingerprinted classifier trained on the generator's
  samples vs real images (WAVES);
- overwrite: a new random fingerprint embedded over ours, with our encoder
  (an insider) and with the attacker's.

Forgeries and averaged or copied estimates are applied at their natural
scale and scaled to 30-40 dB. --num_targets images
drawn from --data_dir are attacked: images the model was never trained on.
The attacker's pool is the rest of the draw, or --pool_dir (the published
data set, say).

    python attacks.py --model cifar10_32_v2 --data_dir heldout/ --output_dir runs/attacks
    python attacks.py --model cifar10_32_v2 --data_dir heldout/ --transferability_dir runs/transfer_v2 \\
        --output_dir runs/attacks
    python attacks.py --smoke --output_dir /tmp/attacks    # under a minute: plumbing only

Writes attacks.json, attacks.md and attacks.png (detection rate against the
attacked image's PSNR) to --output_dir.
"""

import argparse
import importlib.util
import os
import random
import shlex
import time

import torch

from fingerprinting import Fingerprinter, attack_suite, data, embedding, folders, generators, steganalysis, training
from fingerprinting.bits import fingerprint_for, max_tampered_matching_bits, min_matching_bits
from fingerprinting.devices import select_device
from fingerprinting.errors import UserError
from fingerprinting.records import write_json
from fingerprinting.sample_images import write_sample_images
from utils import run_cli

SMOKE = dict(num_targets=20, sizes=[5, 20], bm3d_images=1, attacker_steps=10, regeneration_steps=3, pgd_steps=3,
             classifier_steps=10)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--output_dir", required=True, help="folder for attacks.json, attacks.md, attacks.png")
    folders.add_model_argument(parser)
    add("--encoder_path", default=None, help="victim encoder (instead of --model)")
    add("--decoder_path", default=None, help="victim decoder (instead of --model)")
    add("--data_dir", default=None, help="clean images never trained on (default: built-in sample photographs)")
    add("--recursive", action="store_true", help="also read sub-folders of --data_dir")
    add("--center_crop", type=int, default=0, help="center-crop this many pixels, then resize (default 0)")
    add("--num_images", type=int, default=2400,
        help="images drawn from --data_dir, a seeded random draw (default 2400: 400 targets + 2 x 1000)")
    add("--num_targets", type=int, default=400, help="images of the draw that are attacked (default 400)")
    add("--pool_dir", default=None,
        help="the images the attacker holds, e.g. the published (training) data set (default: the draw from "
             "--data_dir beyond the targets)")
    add("--sizes", default="10,100,1000",
        help="N of the averaging attacks, comma-separated (default 10,100,1000; those the pool allows)")
    add("--bm3d_images", type=int, default=50,
        help="fingerprinted images whose BM3D copy estimates are pasted (about 3 s each on a CPU; default 50)")
    add("--transferability_dir", default=None,
        help="transferability.py output: also average samples of its generator trained on fingerprinted data, "
             "and train the transfer attack's classifier on them")
    add("--attacks", default=",".join(attack_suite.FAMILIES),
        help=f"families to run, comma-separated (default all: {','.join(attack_suite.FAMILIES)})")
    add("--attacker_encoder", default=None,
        help="the attacker's own *_encoder.pth (its _decoder.pth beside it) for the transfer and overwrite attacks "
             "(default: trained here on the attacker's pool)")
    add("--attacker_steps", type=int, default=2000, help="training steps of the attacker's pair (default 2000)")
    add("--regeneration_steps", type=int, default=1500,
        help="training steps of each autoencoder and of the denoiser (default 1500)")
    add("--pgd_steps", type=int, default=100, help="steps of every PGD attack (default 100)")
    add("--classifier_steps", type=int, default=1000,
        help="training steps of the clean-vs-fingerprinted classifier (default 1000)")
    add("--fpr", type=float, default=1e-6, help="false-positive rate of the detection test (default 1e-6)")
    add("--seed", type=int, default=42, help="fingerprint seed, as embed_fingerprints.py's (default 42)")
    add("--residual_mean", choices=embedding.RESIDUAL_MEAN_CHOICES, default="auto",
        help="embed as embed_fingerprints.py --identical_fingerprints --residual_mean does, the mean taken over the "
             "attacker's pool (the published set); default auto: as the model's config says")
    add("--cuda", type=int, default=0, help="CUDA device index; -1 or no GPU = CPU (default 0)")
    add("--smoke", action="store_true", help="tiny sizes (shipped cifar10_32 unless told): plumbing only")
    args = parser.parse_args(argv)
    try:
        args.sizes = sorted({int(size) for size in args.sizes.split(",")})
    except ValueError:
        parser.error(f"--sizes {args.sizes}: give whole numbers separated by commas")
    if args.smoke:
        args.model = args.model or (None if args.encoder_path else "cifar10_32")
        vars(args).update(SMOKE)
        args.num_images = args.num_targets + 2 * max(args.sizes)
    folders.resolve_model(parser, args, need_encoder=True, need_decoder=True)
    if not 0 < args.fpr < 1:
        parser.error("--fpr must be between 0 and 1")
    if min(args.sizes) < 1 or args.num_targets < 1 or args.bm3d_images < 0:
        parser.error("--sizes, --num_targets must be >= 1 and --bm3d_images >= 0")
    args.attacks = tuple(name.strip() for name in args.attacks.split(","))
    unknown = set(args.attacks) - set(attack_suite.FAMILIES)
    if unknown:
        parser.error(f"--attacks: unknown {', '.join(sorted(unknown))}; known: {', '.join(attack_suite.FAMILIES)}")
    for name in ("attacker_steps", "regeneration_steps", "pgd_steps", "classifier_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if args.num_images < args.num_targets + 2:
        parser.error("--num_images must leave at least 2 images beside --num_targets for the attacker")
    return args


def load_images(args, resolution):
    """(targets, the attacker's pool) as uint8 images (n c r r): seeded random draws."""
    data_dir = args.data_dir or write_sample_images(os.path.join(args.output_dir, "samples"),
                                                    count=args.num_images, size=max(64, resolution))
    images = random_draw(data_dir, args.recursive, args.num_images, resolution, args.center_crop, args.seed)
    targets, pool = images[:args.num_targets], images[args.num_targets:]
    if args.pool_dir:
        # Drawn num_targets longer, for the copies of targets it may hold.
        drawn = random_draw(args.pool_dir, args.recursive, args.num_images, resolution, args.center_crop, args.seed + 1)
        pool = without_copies(drawn, targets)[:args.num_images - args.num_targets]
    if len(targets) < args.num_targets or len(pool) < 2:
        raise UserError(f"--data_dir {data_dir}: {len(targets)} targets and a pool of {len(pool)} readable images; "
                        f"--num_targets {args.num_targets} plus at least 2 for the attacker are needed")
    return targets, pool


def without_copies(pool, targets):
    """The pool less any image identical to a target: a --pool_dir that
    holds --data_dir (CIFAR-10's training set around its held-out draw)
    would otherwise give the attacker a target's own fingerprinted copy."""
    seen = {image.numpy().tobytes() for image in targets}
    return pool[[index for index, image in enumerate(pool) if image.numpy().tobytes() not in seen]]


def random_draw(data_dir, recursive, count, resolution, center_crop, seed):
    paths = data.list_images(data_dir, recursive)
    random.Random(seed).shuffle(paths)
    return data.load_all(data_dir, paths[:count], resolution, center_crop)


def generated_samples(args, count, device):
    """Samples of the generator trained on fingerprinted data, and that data's fingerprint."""
    generate, _ = generators.load_sampler(args.transferability_dir, "fingerprinted")
    return generate(count, args.seed, device=device), generators.data_fingerprint(args.transferability_dir)


def attacker_pair(args, pool, resolution, length, device):
    """The attacker's own encoder/decoder (a Fingerprinter): given, or trained on his pool; and how it was made."""
    if args.attacker_encoder:
        return Fingerprinter.load(args.attacker_encoder, device), dict(command=f"given: {args.attacker_encoder}")
    folder = os.path.join(args.output_dir, "attacker_data")
    data.save_numbered_pngs(pool, folder)
    argv = ["--data_dir", folder, "--output_dir", os.path.join(args.output_dir, "attacker_encoder"),
            "--image_resolution", str(resolution), "--fingerprint_length", str(length),
            "--max_steps", str(args.attacker_steps), "--seed", str(args.seed + 1), "--cuda", str(args.cuda),
            "--num_holdout", "8" if args.smoke else "64", "--resume"]
    final, prefix = training.train(training.parse_args(argv))
    made = dict(command="python train.py " + shlex.join(argv), steps=final["step"],
                heldout_bit_accuracy=final.get("heldout_bit_acc"), heldout_psnr=final.get("heldout_psnr"))
    return Fingerprinter.load(prefix + "_encoder.pth", device), made


def run(args):
    started = time.time()
    os.makedirs(args.output_dir, exist_ok=True)
    device = select_device(args.cuda)
    fingerprinter = Fingerprinter.from_paths(args.encoder_path, args.decoder_path, device)
    length = fingerprinter.fingerprint_length
    targets, pool = load_images(args, fingerprinter.resolution)
    sizes = [size for size in args.sizes if 2 * size <= len(pool)] or [len(pool) // 2]
    fingerprint = torch.from_numpy(fingerprint_for(0, length, args.seed, identical=True))
    generated = None
    if args.transferability_dir:
        generated, fingerprint = generated_samples(args, args.num_targets + max(sizes), device)
    denoisers = [name for name in attack_suite.DENOISERS
                 if not name.startswith("bm3d") or (args.bm3d_images and importlib.util.find_spec("bm3d"))]
    surrogate = made = classifier = None
    if {"transfer", "overwrite"} & set(args.attacks):
        surrogate, made = attacker_pair(args, pool, fingerprinter.resolution, length, device)
    if "transfer" in args.attacks and generated is not None:
        classifier = steganalysis.train_detector(pool, generated[args.num_targets:], args.classifier_steps,
                                                 args.seed, device=device, description="classifier")
    options = attack_suite.Options(families=args.attacks, sizes=sizes, denoisers=denoisers,
                                   bm3d_images=args.bm3d_images if importlib.util.find_spec("bm3d") else 0,
                                   regeneration_steps=args.regeneration_steps, pgd_steps=args.pgd_steps,
                                   generated=generated, surrogate=surrogate, classifier=classifier, seed=args.seed)
    victim = attack_suite.Victim(fingerprinter, fingerprint, args.fpr)
    residual_mean_rms = (victim.take_out_residual_mean(pool)
                         if embedding.takes_out_mean(args.residual_mean, fingerprinter) else None)
    rows, trained = attack_suite.run_attacks(victim, targets, pool, options)
    surrogate_classifier = (classifier_scores(classifier, targets, generated[:args.num_targets], victim, device)
                            if classifier is not None else None)
    report = dict(model=args.model or args.encoder_path, resolution=fingerprinter.resolution, fingerprint_length=length,
                  min_matching_bits=min_matching_bits(length, args.fpr),
                  max_tampered_matching_bits=max_tampered_matching_bits(length, args.fpr), fpr=args.fpr,
                  targets=args.num_targets, pool=len(pool), sizes=sizes, denoisers=denoisers, attacker_pair=made,
                  residual_mean_rms=residual_mean_rms, trained=trained, classifier=surrogate_classifier, rows=rows,
                  best=attack_suite.best_attacks(rows),
                  seconds=time.time() - started, smoke=args.smoke, args=vars(args))
    write_json(report, os.path.join(args.output_dir, "attacks.json"))
    write_markdown(report, os.path.join(args.output_dir, "attacks.md"))
    plot(rows, os.path.join(args.output_dir, "attacks.png"), report["model"])
    return report


def classifier_scores(classifier, clean, held_out_samples, victim, device):
    """How well the WAVES surrogate tells samples it never saw from real
    images (accuracy, 95 % interval), and the share of our fingerprinted
    real images it calls fingerprinted: PGD against it can only move what it sees."""
    predictions = steganalysis.detector_predictions(classifier, torch.cat([clean, held_out_samples]), device)
    labels = [0] * len(clean) + [1] * len(held_out_samples)
    called = steganalysis.detector_predictions(classifier, victim.embed(clean), device)
    return dict(held_out=steganalysis.accuracy_with_interval(predictions, labels),
                fingerprinted_real_called_fingerprinted=float(called.mean()))


def classifier_line(scores):
    held_out = scores["held_out"]
    return (f"\nThe clean-vs-fingerprinted classifier (WAVES surrogate): accuracy {held_out['accuracy']:.3f} "
            f"(95 % {held_out['low']:.3f}-{held_out['high']:.3f}) on {held_out['images']} held-out samples and real "
            f"images; it calls {scores['fingerprinted_real_called_fingerprinted']:.3f} of our fingerprinted real "
            "images fingerprinted.")


def table(rows):
    lines = ["| attack | goal | setting | strength | detected | bit accuracy | tampered | PSNR (min) | SSIM |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['attack']} | {r['goal']} | {r['setting']} | {r['strength']} | {r['detected']:.3f} | "
              f"{r['bit_accuracy']:.3f} | {r['tampered']:.3f} | {r['psnr']:.1f} ({r['psnr_min']:.1f}) | "
              f"{r['ssim']:.3f} |" for r in rows]
    return lines


def write_markdown(report, path):
    lines = ["# Attacks on the fingerprint\n",
             f"{'SMOKE RUN: tiny sizes, plumbing only. ' if report['smoke'] else ''}Model {report['model']} "
             f"({report['resolution']} px, {report['fingerprint_length']} bits), detection at FPR {report['fpr']:g} "
             f"(>= {report['min_matching_bits']} matching bits); {report['targets']} attacked images, an attacker's "
             f"pool of {report['pool']}; {report['seconds'] / 60:.1f} min. 'detected': the share of attacked "
             "images that carry the fingerprint for the detector (a forgery succeeds where it is high, a removal "
             f"where it is low); 'tampered': the share with <= {report['max_tampered_matching_bits']} matching "
             "bits, as unlikely on a clean image; PSNR and SSIM against the image attacked."
             + (f" Embedded as embed_fingerprints.py embeds a folder: less the mean residual over the pool (RMS "
                f"{report['residual_mean_rms']:.4f})." if report["residual_mean_rms"] is not None else "") + "\n",
             "## The attacker's best, every image kept at >= 30 dB\n", *table(report["best"]),
             *([f"\nThe attacker's own pair: `{report['attacker_pair']['command']}`"] if report["attacker_pair"]
               else []),
             *(["\nTrained in the run (first -> last training loss): " + ", ".join(
                 f"{name} {values['first_loss']:.4f} -> {values['last_loss']:.4f}"
                 for name, values in report["trained"].items())] if report["trained"] else []),
             *([classifier_line(report["classifier"])] if report["classifier"] else []),
             "\n## Every attack and strength\n", *table(report["rows"])]
    with open(path, "w", encoding="utf-8") as file:
        file.write("\n".join(lines) + "\n")


def plot(rows, path, title):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for axis, goal in zip(axes, attack_suite.GOALS):
        series = {}
        for entry in rows:
            if entry["goal"] == goal and entry["attack"] != "none":
                series.setdefault(entry["attack"], []).append((entry["psnr"], entry["detected"]))
        for name, points in sorted(series.items()):
            points.sort()
            axis.plot(*zip(*points), marker="o", markersize=3, linestyle=":", label=name)
        axis.axvline(attack_suite.ADMISSIBLE_PSNR, color="grey", linestyle=":")
        axis.set_xlabel("PSNR of the attacked image against its source (dB)")
        axis.set_title({"forge": "forgery: clean images detected", "remove": "removal: fingerprinted images still "
                        "detected"}[goal])
        axis.grid(alpha=0.3)
    axes[0].set_ylabel("detected at the FPR")
    axes[1].legend(fontsize=6, loc="lower right")
    figure.suptitle(title)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def main(args):
    report = run(args)
    for entry in report["best"]:
        print(f"{entry['attack']:>40s} {entry['goal']:>6s}: {entry['detected']:.3f} detected at "
              f"{entry['psnr']:.1f} dB ({entry['setting']}, {entry['strength']})")
    print(f"report: {args.output_dir}/attacks.md")


if __name__ == "__main__":
    run_cli(main, parse_args())
