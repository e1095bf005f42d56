"""Secrecy: can anyone tell that an image carries a fingerprint? (paper, Appendix A.2)

Each test set holds --num_images images: half fingerprinted by the victim
model (one fingerprint, as a dataset owner embeds it), half clean. Three
attackers try to tell them apart (steganalysis.py):

1. ATS, the paper's protocol (Lerch-Hostalot & Megías 2016): no labels. The
   attacker trains an encoder of his own (another seed, the default recipe,
   a short run), embeds with it to build artificial training classes, trains
   an SVM on SPAM-686 features and classifies the test set through one more
   embedding. Chance is 0.50; the paper reports 0.502.
2. Outsider: a CNN trained on clean vs attacker-fingerprinted images.
3. Insider: the same CNN trained with the victim's own encoder (random
   fingerprints): what an attacker holding the encoder can do.

Test sets: real images fingerprinted by the victim (from --data_dir, never
used for any training here) and, with --transferability_dir, images from
the GAN (or DDPM) trained on fingerprinted data vs the one trained on
clean data (transferability.py's output), as in the paper.

    python secrecy.py --model cifar10_32 --data_dir cifar10/ --output_dir runs/secrecy
    python secrecy.py --model cifar10_32_robust --data_dir cifar10/ --transferability_dir runs/transfer \\
        --output_dir runs/secrecy
    python secrecy.py --smoke --output_dir /tmp/secrecy   # under a minute: plumbing only

Needs scikit-learn (pip install -r requirements-secrecy.txt). Writes
secrecy.json and secrecy.md to --output_dir.
"""

import argparse
import importlib.util
import os
import random
import shlex
import time

import torch

from fingerprinting import Fingerprinter, data, evaluation, folders, generators, steganalysis, training
from fingerprinting.bits import bit_accuracy, fingerprint_for
from fingerprinting.devices import select_device
from fingerprinting.errors import UserError
from fingerprinting.records import write_json
from fingerprinting.sample_images import write_sample_images
from utils import run_cli

BATCH = 256
MIN_TRAIN_IMAGES = 100  # fewer images beside the test set train no attacker worth the name


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--output_dir", required=True)
    add("--data_dir", default=None, help="real images (default: built-in sample photographs)")
    add("--recursive", action="store_true", help="also read sub-folders of --data_dir")
    add("--center_crop", type=int, default=0, help="center-crop this many pixels, then resize (default 0)")
    folders.add_model_argument(parser)
    add("--encoder_path", default=None, help="victim encoder (instead of --model)")
    add("--decoder_path", default=None, help="victim decoder (instead of --model)")
    add("--num_images", type=int, default=500, help="test images per test set, half fingerprinted (default 500)")
    add("--num_train", type=int, default=2000,
        help="images for the CNN detectors, each seen clean and fingerprinted (default 2000; fewer if the "
             "folder has fewer beside the test images, at least 100)")
    add("--attacker_steps", type=int, default=2000, help="training steps of the attacker's encoder (default 2000)")
    add("--attacker_encoder", default=None,
        help="an attacker's *_encoder.pth trained before (skips training one; its config file beside it)")
    add("--detector_steps", type=int, default=1000, help="training steps of each CNN detector (default 1000)")
    add("--transferability_dir", default=None,
        help="transferability.py output: also test its generators' images (fingerprinted vs clean data)")
    add("--bf16", action="store_true", help="train the attacker's encoder in bfloat16 autocast")
    add("--seed", type=int, default=0)
    add("--cuda", type=int, default=0, help="CUDA device index; -1 or no GPU = CPU (default 0)")
    add("--smoke", action="store_true", help="tiny everything (shipped cifar10_32 unless told): plumbing only")
    args = parser.parse_args(argv)
    if args.smoke:
        args.model = args.model or (None if args.encoder_path else "cifar10_32")
        args.num_images, args.num_train, args.attacker_steps, args.detector_steps = 40, 40, 20, 20
    folders.resolve_model(parser, args, need_encoder=True, need_decoder=True)
    if args.num_images < 10 or args.num_images % 2:
        parser.error("--num_images must be an even number >= 10")
    for name in ("num_train", "attacker_steps", "detector_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    if importlib.util.find_spec("sklearn") is None:
        parser.error("secrecy.py needs scikit-learn: pip install -r requirements-secrecy.txt")
    return args


# --- images -------------------------------------------------------------------------------

def split_real_images(args, workdir, resolution):
    """(test images, detector training images, folder for the attacker's
    encoder): disjoint, the test images never trained on."""
    data_dir = args.data_dir or write_sample_images(os.path.join(workdir, "samples"),
                                                    count=2 * args.num_images + args.num_train, size=64)
    paths = data.list_images(data_dir, args.recursive)
    random.Random(args.seed).shuffle(paths)
    spare = len(paths) - args.num_images
    if spare < min(args.num_train, MIN_TRAIN_IMAGES):
        raise UserError(f"--data_dir {data_dir}: {len(paths)} images; --num_images {args.num_images} plus at least "
                        f"{min(args.num_train, MIN_TRAIN_IMAGES)} for the attackers' training are needed")
    if spare < args.num_train:
        print(f"--data_dir has {len(paths)} images: the detectors train on the {spare} beside the "
              f"{args.num_images} test images (--num_train {args.num_train} asked for)")
        args.num_train = spare
    test = paths[:args.num_images]
    train = paths[args.num_images:args.num_images + args.num_train]
    attacker_dir = os.path.join(workdir, "attacker_data")
    os.makedirs(attacker_dir, exist_ok=True)
    for number, path in enumerate(paths[args.num_images:]):  # every image but the test ones
        link = os.path.join(attacker_dir, f"{number:07d}{os.path.splitext(path)[1].lower()}")
        if not os.path.lexists(link):
            os.symlink(os.path.abspath(os.path.join(data_dir, path)), link)
    return (data.load_all(data_dir, test, resolution, args.center_crop),
            data.load_all(data_dir, train, resolution, args.center_crop), attacker_dir)


# --- encoders ------------------------------------------------------------------------------

class Embedder:
    """Fingerprints uint8 images with one encoder: the given bits, or fresh random bits per image."""

    def __init__(self, encoder_path, resolution, device, seed):
        self.fingerprinter = Fingerprinter.from_paths(encoder_path, None, device, resolution=resolution)
        self.device = device
        self.generator = torch.Generator().manual_seed(seed)

    def __call__(self, images, bits=None):
        shape = (len(images), self.fingerprinter.fingerprint_length)
        bits = bits.expand(shape) if bits is not None else torch.randint(0, 2, shape, generator=self.generator)
        return evaluation.fingerprinted_images(self.fingerprinter, bits, images, BATCH)


def attacker_training_argv(args, attacker_dir, workdir, resolution, length):
    return ["--data_dir", attacker_dir, "--output_dir", os.path.join(workdir, "attacker_encoder"),
            "--image_resolution", str(resolution), "--fingerprint_length", str(length),
            "--max_steps", str(args.attacker_steps), "--seed", str(args.seed + 1), "--cuda", str(args.cuda),
            "--num_holdout", "64" if not args.smoke else "8", "--resume", *(["--bf16"] if args.bf16 else [])]


def train_attacker_encoder(args, attacker_dir, workdir, resolution, length):
    """The attacker's own encoder: returns (its path, how it was made)."""
    if args.attacker_encoder:
        return args.attacker_encoder, dict(command=f"given: {args.attacker_encoder}")
    argv = attacker_training_argv(args, attacker_dir, workdir, resolution, length)
    final, prefix = training.train(training.parse_args(argv))
    return prefix + "_encoder.pth", dict(command="python train.py " + shlex.join(argv), steps=final["step"],
                                         heldout_bit_accuracy=final.get("heldout_bit_acc"),
                                         heldout_psnr=final.get("heldout_psnr"), seconds=final["seconds"])


# --- experiments ----------------------------------------------------------------------------

def real_test_set(test_images, victim, fingerprint):
    """First half fingerprinted with the victim's fingerprint, second half clean."""
    half = len(test_images) // 2
    images = torch.cat([victim(test_images[:half], fingerprint), test_images[half:]])
    return images, torch.cat([torch.ones(half), torch.zeros(len(test_images) - half)]).long()


def generated_test_set(transferability_dir, count, seed, device):
    """Images of the generator trained on fingerprinted data (label 1) and
    of the one trained on clean data (0), the fingerprint that data
    carried, and the generator's kind."""
    samplers = [generators.load_sampler(transferability_dir, name) for name in ("fingerprinted", "clean")]
    images = torch.cat([generate(count // 2, seed, device=device) for generate, _ in samplers])
    fingerprint = generators.data_fingerprint(transferability_dir).long()
    labels = torch.cat([torch.ones(count // 2), torch.zeros(count // 2)]).long()
    return images, labels, fingerprint, samplers[0][1]


def victim_bit_accuracy(detector, images, fingerprint):
    """How well the victim's own decoder reads its fingerprint (is it really there?)."""
    bits = evaluation.decoded_bits(detector, images, BATCH)
    return bit_accuracy(bits, fingerprint.expand_as(bits)).mean().item()


def own_encoder_accuracy(clean, detectors, attacker, victim):
    """Each CNN on the fingerprints it was trained on (new images, fresh bits): did it learn its task?"""
    results = {}
    for name, embedder in (("outsider", attacker), ("insider", victim)):
        images = torch.cat([embedder(clean), clean])
        labels = [1] * len(clean) + [0] * len(clean)
        results[name] = steganalysis.accuracy_with_interval(
            steganalysis.detector_predictions(detectors[name], images, embedder.device), labels)
    return results


def attack(images, labels, attacker, detectors, seed):
    """Every attacker's accuracy (95 % interval) on one test set."""
    ats, c = steganalysis.ats_predictions(images, attacker, seed)
    results = dict(ats=dict(steganalysis.accuracy_with_interval(ats, labels), svm_c=c))
    for name, detector in detectors.items():
        results[name] = steganalysis.accuracy_with_interval(
            steganalysis.detector_predictions(detector, images, attacker.device), labels)
    return results


def run(args):
    started = time.time()
    device = select_device(args.cuda)
    os.makedirs(args.output_dir, exist_ok=True)
    detector = Fingerprinter.from_paths(None, args.decoder_path, device)
    resolution, length = detector.resolution, detector.fingerprint_length
    test_images, train_images, attacker_dir = split_real_images(args, args.output_dir, resolution)
    victim = Embedder(args.encoder_path, resolution, device, args.seed)
    attacker_path, attacker_made = train_attacker_encoder(args, attacker_dir, args.output_dir, resolution, length)
    attacker = Embedder(attacker_path, resolution, device, args.seed + 2)
    detectors = {name: steganalysis.train_detector(train_images, embedder(train_images), args.detector_steps,
                                                   args.seed, device=device, description=f"{name} CNN")
                 for name, embedder in (("outsider", attacker), ("insider", victim))}

    own_encoder = own_encoder_accuracy(test_images[len(test_images) // 2:], detectors, attacker, victim)
    fingerprint = torch.from_numpy(fingerprint_for(0, length, args.seed, identical=True)).long()
    test_sets = {"real images": (*real_test_set(test_images, victim, fingerprint), fingerprint)}
    if args.transferability_dir:
        *generated, kind = generated_test_set(args.transferability_dir, args.num_images, args.seed + 3, device)
        test_sets[f"{kind.upper()} images"] = generated
    results = {}
    for name, (images, labels, fingerprint) in test_sets.items():
        results[name] = attack(images, labels, attacker, detectors, args.seed)
        results[name]["victim_decoder_bit_accuracy"] = victim_bit_accuracy(detector, images[labels == 1],
                                                                           fingerprint)
    report = dict(model=args.model or args.encoder_path, resolution=resolution, fingerprint_length=length,
                  num_images=args.num_images, num_train=args.num_train, detector_steps=args.detector_steps,
                  detectors_on_own_encoder=own_encoder,
                  attacker_encoder=attacker_made, features="SPAM-686 per colour channel (Pevný et al. 2010, "
                  f"second order, T = {steganalysis.SPAM_T}): {686 * 3} features", results=results,
                  seconds=time.time() - started, smoke=args.smoke, args=vars(args))
    write_json(report, os.path.join(args.output_dir, "secrecy.json"))
    write_markdown(report, os.path.join(args.output_dir, "secrecy.md"))
    return report


def write_markdown(report, path):
    def cell(result):
        return f"{result['accuracy']:.3f} [{result['low']:.3f}, {result['high']:.3f}]"

    made = report["attacker_encoder"]
    lines = ["# Secrecy of the fingerprint\n",
             f"{'SMOKE RUN: tiny sizes, plumbing only. ' if report['smoke'] else ''}Victim model "
             f"{report['model']} ({report['resolution']} px, {report['fingerprint_length']} bits); "
             f"{report['num_images']} test images per set, half fingerprinted; accuracy with its 95 % interval "
             f"(chance 0.50); {report['seconds'] / 60:.1f} min.\n",
             "| test set | ATS (unsupervised, SVM) | outsider CNN (own encoder) | insider CNN (victim's encoder) "
             "| victim decoder's bit accuracy on the fingerprinted half |",
             "|---|---|---|---|---|"]
    for name, result in report["results"].items():
        lines.append(f"| {name} | {cell(result['ats'])} | {cell(result['outsider'])} | {cell(result['insider'])} "
                     f"| {result['victim_decoder_bit_accuracy']:.4f} |")
    lines += ["", f"- Features: {report['features']}; RBF SVM on standardised features, C by 5-fold "
              "cross-validation (" + ", ".join(f"{name}: C = {result['ats']['svm_c']:g}"
                                               for name, result in report["results"].items()) + ").",
              f"- Attacker's encoder: `{made['command']}`"
              + (f" ({made['steps']} steps, held-out bit accuracy {made['heldout_bit_accuracy']:.4f}, "
                 f"PSNR {made['heldout_psnr']:.2f} dB, {made['seconds'] / 60:.1f} min)"
                 if made.get("heldout_bit_accuracy") is not None else ""),
              f"- CNN detectors: {report['num_train']} real images each seen clean and fingerprinted (random "
              f"fingerprints), {report['detector_steps']} Adam steps of 64; never the test images. On the "
              "encoder each was trained with (the clean test images, clean and fingerprinted with fresh bits): "
              + ", ".join(f"{name} {cell(result)}" for name, result in report["detectors_on_own_encoder"].items())
              + "."]
    with open(path, "w", encoding="utf-8") as file:
        file.write("\n".join(lines) + "\n")


def main(args):
    report = run(args)
    for name, result in report["results"].items():
        print(f"{name}: " + ", ".join(f"{attacker} {result[attacker]['accuracy']:.3f} "
                                      f"[{result[attacker]['low']:.3f}, {result[attacker]['high']:.3f}]"
                                      for attacker in ("ats", "outsider", "insider")))
    print(f"report: {args.output_dir}/secrecy.md")


if __name__ == "__main__":
    run_cli(main, parse_args())
