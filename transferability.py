r"""The paper's Table-1 protocol: do GANs trained on fingerprinted images
generate fingerprinted images?

1. embed one fingerprint into every training image (--identical_fingerprints),
2. train a generator on the fingerprinted set and, as the control, on the
   clean set: a DCGAN (gan.py, the paper's setting) or, with
   --generator ddpm, a DDPM (diffusion.py, DDIM sampling), whose samples'
   bit accuracy is also probed along training (when does it appear?),
3. generate --num_generated images from each and decode them,
4. report bit accuracy vs the embedded fingerprint, detection TPR at --fpr
   (the control GAN's rate is the measured FPR), FID of each GAN against the
   clean real images (if the FID extra is installed),
5. image-level robustness of the generated images (Fig. 3's red dots): bit
   accuracy under every perturbation of perturbations.py,
6. model-level robustness (Fig. 3 right): generator weights quantised to a
   decimal precision, and with Gaussian noise added,
7. attribution across --num_sources GANs trained with different fingerprints.
   (6 and 7 are GAN only: on a CPU they would cost a DDPM many sampling runs.)

With --mirror (GAN only), every GAN is trained with mirror augmentation, as
face and scene GANs usually are, so that half the generated images carry the
fingerprint's mirror image, and every image is read as it is and mirrored
(detect_fingerprints.py --search_mirror).

    python transferability.py --model cifar10_32 --data_dir cifar10/ --output_dir runs/transfer --gan_steps 20000
    python transferability.py --model cifar10_32 --data_dir cifar10/ --output_dir runs/ddpm --generator ddpm \
        --gan_steps 100000 --num_generated 10000 --fid --cuda 0
    python transferability.py --smoke --output_dir /tmp/transfer   # minutes on CPU: plumbing only

Writes report.md, report.json, image_robustness.csv (and for the GAN
model_robustness.csv and model_robustness.png).
"""

import argparse
import copy
import csv
import importlib.util
import json
import os
import time

import torch

from fingerprinting import Fingerprinter, data, embedding, evaluation, folders, perturbations
from fingerprinting.bits import bit_accuracy, matching_bits, min_matching_bits
from fingerprinting.devices import select_device
from fingerprinting.generators import gan
from fingerprinting.records import read_fingerprint_file
from fingerprinting.sample_images import write_sample_images
from utils import run_cli

QUANTISATION_DECIMALS = [None, 4, 3, 2, 1]
WEIGHT_NOISE_STDS = [0.0, 0.01, 0.02, 0.05, 0.1, 0.2]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--output_dir", required=True)
    add("--data_dir", default=None, help="training images (default: built-in sample photographs)")
    add("--recursive", action="store_true")
    add("--model", default=None, help="shipped fingerprint model (or --encoder_path/--decoder_path)")
    add("--encoder_path", default=None)
    add("--decoder_path", default=None)
    add("--generator", choices=("gan", "ddpm"), default="gan",
        help="gan: the paper's DCGAN (default); ddpm: a diffusion model (requirements-diffusers.txt)")
    add("--gan_steps", type=int, default=20000, help="training steps of each generator (default 20000)")
    add("--gan_width", type=int, default=64, help="base channels of each generator (default 64)")
    add("--batch_size", type=int, default=64, help="training images per generator step (default 64)")
    add("--sampling_steps", type=int, default=50, help="ddpm: DDIM steps per sample (default 50)")
    add("--probe_interval", type=int, default=1000,
        help="ddpm: steps between bit-accuracy probes of the samples along training (default 1000)")
    add("--probe_images", type=int, default=256, help="ddpm: samples per probe (default 256)")
    add("--bf16", action="store_true", help="ddpm: bfloat16 autocast in training")
    add("--mirror", action="store_true",
        help="GAN only: train every GAN with mirror augmentation (half the images flipped left to right, "
             "StyleGAN's --mirror) and read the generated images as they are and mirrored "
             "(detect_fingerprints.py --search_mirror)")
    add("--num_generated", type=int, default=1000, help="images generated per GAN (default 1000)")
    add("--num_sources", type=int, default=2, help="GANs with different fingerprints for attribution (default 2)")
    add("--source_steps", type=int, default=None, help="GAN steps for the attribution sources (default --gan_steps)")
    add("--fpr", type=float, default=1e-6, help="detection false-positive rate (default 1e-6)")
    add("--fid", action="store_true", help="FID of each GAN vs the clean images (requirements-fid.txt)")
    add("--seed", type=int, default=0)
    add("--cuda", type=int, default=0)
    add("--smoke", action="store_true", help="tiny everything, to check the plumbing in minutes on CPU")
    args = parser.parse_args(argv)
    if args.smoke:
        args.gan_steps, args.gan_width, args.num_generated, args.source_steps = 30, 8, 32, 10
        args.sampling_steps, args.probe_interval, args.probe_images = 4, 15, 8
        args.batch_size = 16 if args.generator == "ddpm" else args.batch_size
    args.source_steps = args.source_steps or args.gan_steps
    if args.num_sources < 2:
        parser.error("--num_sources must be >= 2")
    folders.resolve_model(parser, args, need_encoder=not args.smoke, need_decoder=not args.smoke)
    if args.mirror and args.generator != "gan":
        parser.error("--mirror: for --generator gan only")
    if args.generator == "ddpm" and importlib.util.find_spec("diffusers") is None:
        parser.error("--generator ddpm needs diffusers: pip install -r requirements-diffusers.txt")
    return args


def smoke_models(args):
    """For --smoke without a model: an untrained pair (plumbing, not quality)."""
    from models import StegaStampDecoder, StegaStampEncoder

    folder = os.path.join(args.output_dir, "smoke_model")
    os.makedirs(folder, exist_ok=True)
    args.encoder_path, args.decoder_path = f"{folder}/m_encoder.pth", f"{folder}/m_decoder.pth"
    torch.manual_seed(args.seed)
    torch.save(StegaStampEncoder(32, 3, 100).state_dict(), args.encoder_path)
    torch.save(StegaStampDecoder(32, 3, 100).state_dict(), args.decoder_path)


def embed_identical(args, data_dir, name, seed):
    """Fingerprint the training set with one fingerprint; returns (folder, bits)."""
    output = os.path.join(args.output_dir, name)
    embedding.embed_folder(embedding.parse_args(
        ["--encoder_path", args.encoder_path, "--data_dir", data_dir, "--output_dir", output,
         "--identical_fingerprints", "--seed", str(seed), "--cuda", str(args.cuda), "--num_workers", "0",
         *(["--recursive"] if args.recursive else []), *(["--image_resolution", "32"] if args.smoke else [])]))
    bits = next(iter(read_fingerprint_file(os.path.join(output, "embedded_fingerprints.txt")).values()))
    return os.path.join(output, "fingerprinted_images"), bits


def train(args, data_dir, name, steps, resolution, probe=None):
    """Train the chosen generator on `data_dir`; returns the sampling network."""
    output_dir = os.path.join(args.output_dir, name)
    common = ["--data_dir", data_dir, "--output_dir", output_dir, "--resolution", str(resolution),
              "--width", str(args.gan_width), "--steps", str(steps), "--batch_size", str(args.batch_size),
              "--seed", str(args.seed),
              "--cuda", str(args.cuda), "--recursive", "--resume"]
    if args.generator == "gan":
        return gan.load_generator(gan.train_gan(gan.parse_args(["train", *common,
                                                                *(["--mirror"] if args.mirror else [])])))
    from fingerprinting.generators import diffusion

    ddpm_args = diffusion.parse_args(["train", *common, "--sampling_steps", str(args.sampling_steps),
                                      "--probe_interval", str(args.probe_interval),
                                      *(["--bf16"] if args.bf16 else [])])
    return diffusion.load_model(diffusion.train_ddpm(ddpm_args, probe))


def generate(args, generator, num_images, seed, device):
    if args.generator == "gan":
        return gan.generate(generator, num_images, seed, device=device)
    from fingerprinting.generators import diffusion

    return diffusion.generate(generator, num_images, seed, args.sampling_steps, device=device)


def sample_probe(args, detector, fingerprint, threshold, device):
    """probe(model, step) for diffusion.train_ddpm: bit accuracy of fresh samples."""
    def probe(model, step):
        return score(detector, generate(args, model, args.probe_images, args.seed + 5, device),
                     fingerprint, threshold)
    return probe


def along_training(output_dir):
    """The probes a DDPM run logged: [{step, bit_accuracy, detected_rate}, ...]."""
    rows = []
    with open(os.path.join(output_dir, "metrics.jsonl"), encoding="utf-8") as file:
        for line in file:
            entry = json.loads(line)
            if "bit_accuracy" in entry:
                rows.append(dict(step=entry["step"], bit_accuracy=entry["bit_accuracy"],
                                 detected_rate=entry["detected_rate"]))
    return list({row["step"]: row for row in rows}.values())  # a resumed run logs a step once more


def score(detector, images, fingerprint, threshold, perturb=None, search_mirror=False):
    if perturb is not None:
        images = data.to_uint8(perturb(data.to_float(images)))
    detected = evaluation.decoded_bits(detector, images, search_mirror=search_mirror)
    matches = matching_bits(detected, fingerprint)
    return dict(bit_accuracy=bit_accuracy(detected, fingerprint.expand_as(detected)).mean().item(),
                detected_rate=(matches >= threshold).float().mean().item())


def fid_against(real_features, network, images, device):
    if network is None:
        return None
    return evaluation.frechet_distance(evaluation.image_features(network, images, device), real_features)


def image_robustness(images, detector, fingerprint, threshold, search_mirror=False):
    """Generated images under every image perturbation, at every strength."""
    rows = []
    for name, (_, strengths, _) in perturbations.PERTURBATIONS.items():
        for strength in strengths:
            perturb = lambda x, n=name, s=strength: perturbations.apply(n, x, s)  # noqa: E731
            rows.append(dict(perturbation=name, strength=strength,
                             **score(detector, images, fingerprint, threshold, perturb, search_mirror)))
    return rows


def perturbed(generator, decimals=None, noise_std=0.0, seed=0):
    """A copy of the generator with rounded weights and/or weight noise."""
    copy_ = copy.deepcopy(generator)
    rng = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in copy_.parameters():
            if decimals is not None:
                parameter.copy_(torch.round(parameter, decimals=decimals))
            if noise_std:
                parameter.add_(noise_std * torch.randn(parameter.shape, generator=rng).to(parameter))
    return copy_


def model_robustness(args, generator, detector, fingerprint, threshold, device, fid):
    rows = []
    settings = ([("quantisation", d, dict(decimals=d)) for d in QUANTISATION_DECIMALS]
                + [("weight_noise", s, dict(noise_std=s)) for s in WEIGHT_NOISE_STDS])
    for kind, strength, change in settings:
        images = gan.generate(perturbed(generator, seed=args.seed, **change), args.num_generated, args.seed + 1,
                              device=device)
        row = dict(perturbation=kind, strength="none" if strength is None else strength,
                   **score(detector, images, fingerprint, threshold, search_mirror=args.mirror))
        row["fid"] = fid(images)
        rows.append(row)
    return rows


def plot(rows, path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(8, 3))
    for axis, kind in zip(axes, ("quantisation", "weight_noise")):
        points = [row for row in rows if row["perturbation"] == kind]
        axis.plot(range(len(points)), [row["bit_accuracy"] for row in points], "o-")
        axis.set_xticks(range(len(points)), [str(row["strength"]) for row in points])
        axis.set_title(kind + (" (decimals)" if kind == "quantisation" else " (std)"))
        axis.set_ylim(0.4, 1.02)
        axis.axhline(0.75, color="gray", linestyle="--", linewidth=0.8)
    axes[0].set_ylabel("bit accuracy of generated images")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)


def run(args):
    started = time.time()
    device = select_device(args.cuda)
    os.makedirs(args.output_dir, exist_ok=True)
    data_dir = args.data_dir or write_sample_images(os.path.join(args.output_dir, "clean_samples"),
                                                    count=64 if args.smoke else 1024, size=64)
    if args.smoke and not args.encoder_path:
        smoke_models(args)
    detector = Fingerprinter.from_paths(None, args.decoder_path, device)
    resolution = detector.resolution
    length = detector.fingerprint_length
    threshold = min_matching_bits(length, args.fpr)

    fingerprinted_dir, fingerprint = embed_identical(args, data_dir, "fingerprinted_data", args.seed)
    probe = sample_probe(args, detector, fingerprint, threshold, device) if args.generator == "ddpm" else None
    run_names = {"clean": f"{args.generator}_clean", "fingerprinted": f"{args.generator}_fingerprinted"}
    generators = {name: train(args, folder, run_names[name], args.gan_steps, resolution, probe)
                  for name, folder in (("fingerprinted", fingerprinted_dir), ("clean", data_dir))}
    network = evaluation.load_inception().to(device) if args.fid else None
    real_features = None
    if network is not None:
        real = gan.load_images(data_dir, resolution, args.recursive)[: max(args.num_generated, 1000)]
        real_features = evaluation.image_features(network, real, device)
    fid = lambda images: fid_against(real_features, network, images, device)  # noqa: E731

    table, generated = {}, {}
    for name, generator in generators.items():
        generated[name] = images = generate(args, generator, args.num_generated, args.seed + 1, device)
        data.save_numbered_pngs(images[:64], os.path.join(args.output_dir, f"generated_{name}"))
        table[name] = dict(**score(detector, images, fingerprint, threshold, search_mirror=args.mirror),
                           fid=fid(images))
        if args.mirror:  # what detection without the search reads
            table[name]["read_as_is"] = score(detector, images, fingerprint, threshold)
    report = dict(generator=args.generator, fingerprint_length=length, fpr=args.fpr, min_matching_bits=threshold,
                  gan_steps=args.gan_steps, num_generated=args.num_generated, table=table,
                  image_robustness=image_robustness(generated["fingerprinted"], detector, fingerprint,
                                                    threshold, args.mirror))
    if args.generator == "gan":
        report["model_robustness"] = model_robustness(args, generators["fingerprinted"], detector, fingerprint,
                                                      threshold, device, fid if args.fid else (lambda images: None))
        report["attribution"] = attribute_sources(args, data_dir, detector, device, fingerprinted_dir,
                                                  fingerprint, generators, resolution)
    else:
        report["sampling_steps"] = args.sampling_steps
        report["along_training"] = {name: along_training(os.path.join(args.output_dir, run_name))
                                    for name, run_name in run_names.items()}
    report.update(seconds=time.time() - started, smoke=args.smoke)
    write_report(args, report)
    return report


def attribute_sources(args, data_dir, detector, device, fingerprinted_dir, fingerprint, generators, resolution):
    """K fingerprinted GANs (the main one plus K-1 more) and the clean GAN:
    closed-world (sources only) and open-world (clean GAN must be 'unknown')."""
    sources = {"source_0": (generators["fingerprinted"], fingerprint)}
    for k in range(1, args.num_sources):
        folder, bits = embed_identical(args, data_dir, f"fingerprinted_data_{k}", args.seed + k)
        sources[f"source_{k}"] = (train(args, folder, f"gan_source_{k}", args.source_steps, resolution), bits)
    names = list(sources)
    registry = torch.stack([bits for _, bits in sources.values()])
    truth, attributed = [], []
    for name, (generator, _) in [*sources.items(), ("unknown", (generators["clean"], None))]:
        detected = evaluation.decoded_bits(detector, gan.generate(generator, args.num_generated, args.seed + 2,
                                                                  device=device), search_mirror=args.mirror)
        owners, _ = evaluation.attribute(detected, names, registry, args.fpr)
        attributed += owners
        truth += [name] * len(owners)
    closed = [i for i, name in enumerate(truth) if name != "unknown"]
    return dict(closed_world_accuracy=evaluation.attribution_accuracy([attributed[i] for i in closed],
                                                                      [truth[i] for i in closed]),
                open_world_accuracy=evaluation.attribution_accuracy(attributed, truth),
                confusion={f"{t} -> {a}": n for (t, a), n in evaluation.confusion_table(attributed, truth).items()})


def write_csv(rows, path):
    with open(path, "w", newline="", encoding="utf-8") as file:
        writer = csv.DictWriter(file, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)


def write_report(args, report):
    with open(os.path.join(args.output_dir, "report.json"), "w", encoding="utf-8") as file:
        json.dump(report, file, indent=2)
    write_csv(report["image_robustness"], os.path.join(args.output_dir, "image_robustness.csv"))
    fmt = lambda value: "n/a" if value is None else f"{value:.3f}"  # noqa: E731
    kind = "GAN" if report["generator"] == "gan" else "DDPM"
    sampling = f" (DDIM, {report['sampling_steps']} steps)" if kind == "DDPM" else ""
    lines = [f"# Transferability of fingerprints to {kind} samples\n",
             f"{'SMOKE RUN: tiny models, plumbing only. ' if args.smoke else ''}{kind} training steps "
             f"{args.gan_steps}, {args.num_generated} generated images per model{sampling}, detection at FPR "
             f"{args.fpr:g} (>= {report['min_matching_bits']} of {report['fingerprint_length']} bits), "
             f"{report['seconds'] / 60:.1f} min.\n",
             f"| {kind} trained on | bit accuracy of generated images | detected as fingerprinted "
             "| FID vs clean data |",
             "|---|---|---|---|"]
    for name, row in report["table"].items():
        lines.append(f"| {name} data | {row['bit_accuracy']:.4f} | {row['detected_rate']:.4f} | {fmt(row['fid'])} |")
    if args.mirror:
        lines.append("\nEvery GAN was trained with mirror augmentation, and its images read as they are and "
                     "mirrored (--search_mirror). Read as they are only: " + "; ".join(
                         f"{name} data {row['read_as_is']['bit_accuracy']:.4f} bit accuracy, "
                         f"{row['read_as_is']['detected_rate']:.4f} detected" for name, row in report["table"].items())
                     + ".")
    if "along_training" in report:
        runs = report["along_training"]
        lines += ["\n## Bit accuracy of samples along training\n",
                  "| step | " + " | ".join(f"{name} data: bit accuracy / detected" for name in runs) + " |",
                  "|---|" + "---|" * len(runs)]
        by_step = {}
        for name, rows in runs.items():
            for row in rows:
                by_step.setdefault(row["step"], {})[name] = row
        for step, cells in sorted(by_step.items()):
            lines.append(f"| {step} | " + " | ".join(
                f"{cells[name]['bit_accuracy']:.4f} / {cells[name]['detected_rate']:.3f}" if name in cells else ""
                for name in runs) + " |")
    lines += ["\n## Generated images under image perturbations\n",
              "| perturbation | strength | bit accuracy | detected as fingerprinted |", "|---|---|---|---|"]
    lines += [f"| {row['perturbation']} | {row['strength']} | {row['bit_accuracy']:.4f} | {row['detected_rate']:.4f} |"
              for row in report["image_robustness"]]
    if "model_robustness" in report:
        write_csv(report["model_robustness"], os.path.join(args.output_dir, "model_robustness.csv"))
        plot(report["model_robustness"], os.path.join(args.output_dir, "model_robustness.png"))
        lines += ["\n## Model perturbations\n", "![model robustness](model_robustness.png)\n",
                  "| perturbation | strength | bit accuracy | FID |", "|---|---|---|---|"]
        lines += [f"| {row['perturbation']} | {row['strength']} | {row['bit_accuracy']:.4f} | {fmt(row['fid'])} |"
                  for row in report["model_robustness"]]
    if "attribution" in report:
        attribution = report["attribution"]
        lines += ["\n## Attribution\n", f"- closed world: {attribution['closed_world_accuracy']:.4f}",
                  f"- open world (clean GAN must be unknown): {attribution['open_world_accuracy']:.4f}", "",
                  "| truth -> attributed | images |", "|---|---|"]
        lines += [f"| {key} | {count} |" for key, count in attribution["confusion"].items()]
    with open(os.path.join(args.output_dir, "report.md"), "w", encoding="utf-8") as file:
        file.write("\n".join(lines) + "\n")


def main(args):
    report = run(args)
    for name, row in report["table"].items():
        print(f"{args.generator.upper()} on {name} data: bit accuracy {row['bit_accuracy']:.4f}, "
              f"detected {row['detected_rate']:.4f}"
              + (f", FID {row['fid']:.2f}" if row["fid"] is not None else ""))
    print(f"report: {args.output_dir}/report.md")


if __name__ == "__main__":
    run_cli(main, parse_args())
