"""Throughput of embed and detect against the published scripts and the I/O floor.

    python benchmarks/throughput.py --data_dir cifar10/ --recursive --num_images 2500 --image_resolution 32
    python benchmarks/throughput.py --num_images 250 --image_resolution 128   # built-in sample photographs

Each side runs as a whole process (python start, imports, model load, the
folder, exit) on the first N and the first 4N input images, alternating,
--repeats times; the median time of each is kept. Throughput is the slope,
3N extra images over the extra seconds; start-up is what is left of the N
run once its images are paid for. Sides:

- ours: embed_fingerprints.py / detect_fingerprints.py as a user runs them;
- published: the 2021 scripts' loop (benchmarks/baselines.py);
- I/O floor: decoding the inputs and writing the same PNGs (the pixels our
  embed wrote) over all cores, nothing else (benchmarks/baselines.py).

All sides use the same published-key encoder/decoder (random weights, or a
shipped pair with --model: the networks' speed does not depend on
training, but how fast the fingerprinted PNGs compress does), batch 64 and
--cuda -1 unless told.
Detect reads the PNGs our embed wrote. Writes results.json and results.md
to --output_dir (default: a temporary folder, printed).
"""

import argparse
import json
import os
import statistics
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from memory import measure_process  # noqa: E402

SIDES = ("ours", "published", "I/O floor")


def prepare_inputs(args, workdir):
    """Folders of the first N and 4N inputs (flat, as the published scripts read them)."""
    from fingerprinting import data
    from fingerprinting.sample_images import write_sample_images

    count = 4 * args.num_images
    if args.data_dir:
        files = data.list_images(args.data_dir, args.recursive)[:count]
        if len(files) < count:
            raise SystemExit(f"error: --data_dir has {len(files)} images, {count} needed")
        source = args.data_dir
    else:
        source = write_sample_images(os.path.join(workdir, "samples"), count=count, size=args.image_resolution)
        files = sorted(os.listdir(source))
    folders = {}
    for size in (args.num_images, count):
        folder = os.path.join(workdir, f"inputs_{size}")
        os.makedirs(folder)
        for number, name in enumerate(files[:size]):
            link = f"{number:06d}{os.path.splitext(name)[1].lower()}"
            os.symlink(os.path.abspath(os.path.join(source, name)), os.path.join(folder, link))
        folders[size] = folder
    return folders


def model_pair(args, workdir):
    """(encoder path, decoder path): the shipped --model, or a random pair saved in workdir."""
    import torch

    from models import StegaStampDecoder, StegaStampEncoder

    if args.model:
        return tuple(os.path.join(ROOT, "saved_models", f"{args.model}_{part}.pth") for part in ("encoder", "decoder"))
    torch.manual_seed(0)
    resolution = args.model_resolution if args.keep_size else args.image_resolution
    paths = os.path.join(workdir, "m_encoder.pth"), os.path.join(workdir, "m_decoder.pth")
    torch.save(StegaStampEncoder(resolution, 3, 100).state_dict(), paths[0])
    torch.save(StegaStampDecoder(resolution, 3, 100).state_dict(), paths[1])
    return paths


def commands(args, side, job, inputs, output, pair):
    """The command line of one side's job on one input folder."""
    if args.keep_size:  # the images at their own size: a model of --model_resolution, no preprocessing
        resolution = ours = ["--keep_size"]
    else:
        resolution = ours = ["--image_resolution", str(args.image_resolution)]
    common = ["--batch_size", str(args.batch_size), "--cuda", str(args.cuda)]
    baselines = [sys.executable, os.path.join(ROOT, "benchmarks", "baselines.py")]
    if side == "ours" and job == "embed":
        # --decoder_path only tells a published-key encoder its size
        return [sys.executable, "embed_fingerprints.py", "--encoder_path", pair[0], "--decoder_path", pair[1],
                "--data_dir", inputs, "--output_dir", output, *ours, *common]
    if side == "ours":
        return [sys.executable, "detect_fingerprints.py", "--decoder_path", pair[1], "--data_dir", inputs,
                "--output_dir", output, *ours, *common]
    if side == "published":
        checkpoint = ["--encoder_path", pair[0]] if job == "embed" else ["--decoder_path", pair[1]]
        return [*baselines, f"published-{job}", *checkpoint, "--data_dir", inputs, "--output_dir", output,
                *resolution, *common]
    pixels = ["--pixels_dir", pixels_dir(inputs)] if job == "embed" else []
    return [*baselines, f"floor-{job}", "--data_dir", inputs, "--output_dir", output, *resolution, *pixels]


def pixels_dir(inputs):
    """Where the floor finds the pixels our embed wrote for an input folder."""
    return inputs + "_pixels"


def run(args, workdir):
    from baselines import save_pixels

    inputs = prepare_inputs(args, workdir)
    pair = model_pair(args, workdir)
    sizes = (args.num_images, 4 * args.num_images)
    # detect reads the PNGs our embed writes; the floor writes their pixels
    detect_inputs = {}
    for size in sizes:
        output = os.path.join(workdir, f"embedded_{size}")
        measure_process(commands(args, "ours", "embed", inputs[size], output, pair))
        detect_inputs[size] = os.path.join(output, "fingerprinted_images")
        if "I/O floor" in args.sides:
            save_pixels(detect_inputs[size], pixels_dir(inputs[size]))
    times = {(job, side, size): [] for job in args.jobs for side in args.sides for size in sizes}
    peaks = dict.fromkeys(times, 0.0)
    for repeat in range(args.repeats):
        for job in args.jobs:
            for side in args.sides:
                for size in sizes:
                    source = inputs[size] if job == "embed" else detect_inputs[size]
                    output = os.path.join(workdir, "runs", f"{job}_{side.replace('/', '')}_{size}_{repeat}")
                    seconds, peak, _ = measure_process(commands(args, side, job, source, output, pair))
                    times[job, side, size].append(seconds)
                    peaks[job, side, size] = max(peaks[job, side, size], peak)
                    print(f"repeat {repeat + 1}/{args.repeats} {job:6s} {side:9s} {size:6d} images: "
                          f"{seconds:6.2f} s, peak {peak:7.1f} MiB", flush=True)
    return summarise(args, times, peaks)


def summarise(args, times, peaks):
    small, large = args.num_images, 4 * args.num_images
    rows = []
    for job in args.jobs:
        for side in args.sides:
            t_small, t_large = statistics.median(times[job, side, small]), statistics.median(times[job, side, large])
            rate = (large - small) / (t_large - t_small) if t_large > t_small else float("nan")  # N too small
            rows.append(dict(job=job, side=side, images_per_second=rate, startup_seconds=t_small - small / rate,
                             seconds_small=t_small, seconds_large=t_large, peak_mib_small=peaks[job, side, small],
                             peak_mib_large=peaks[job, side, large],
                             runs=times[job, side, small] + times[job, side, large]))
        rate = {row["side"]: row["images_per_second"] for row in rows if row["job"] == job}
        mine = next(row for row in rows if row["job"] == job and row["side"] == "ours") if "ours" in rate else {}
        if "published" in rate and mine:
            mine["vs_published"] = mine["images_per_second"] / rate["published"]
        if "I/O floor" in rate and mine:
            mine["floor_over_ours"] = rate["I/O floor"] / mine["images_per_second"]
    return rows


def markdown(args, rows):
    size = (f"images at their own size (--keep_size, model {args.model_resolution} px)" if args.keep_size
            else f"{args.image_resolution} px")
    lines = [f"{size}, N = {args.num_images} and 4N = {4 * args.num_images} images, "
             f"median of {args.repeats} alternating runs, {os.cpu_count()} CPU cores, --cuda {args.cuda}", "",
             "| job | side | images/s after start-up | start-up s | peak RSS (N / 4N) | ours vs published | "
             "I/O floor / ours |", "|---|---|---|---|---|---|---|"]
    for row in rows:
        ratio = f"**{row['vs_published']:.2f}×**" if "vs_published" in row else ""
        floor = f"{row['floor_over_ours']:.2f}×" if "floor_over_ours" in row else ""
        lines.append(f"| {row['job']} | {row['side']} | {row['images_per_second']:.0f} | "
                     f"{row['startup_seconds']:.1f} | {row['peak_mib_small']:.0f} / {row['peak_mib_large']:.0f} MiB | "
                     f"{ratio} | {floor} |")
    return "\n".join(lines) + "\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=None, help="input images (default: built-in sample photographs)")
    parser.add_argument("--model", default=None,
                        help="a shipped pair (e.g. celeba_64_native) instead of random weights of the given size")
    parser.add_argument("--recursive", action="store_true", help="also read sub-folders of --data_dir")
    parser.add_argument("--num_images", type=int, default=1000, help="N (default 1000)")
    parser.add_argument("--image_resolution", type=int, default=32, help="default 32")
    parser.add_argument("--batch_size", type=int, default=64,
                        help="images per batch of every side (default 64); at 1024 px a smaller one lets N hold "
                             "several batches, so that the N vs 4N peak memory compares steady states")
    parser.add_argument("--repeats", type=int, default=3, help="alternating repeats (default 3)")
    parser.add_argument("--cuda", type=int, default=-1, help="default -1 (CPU)")
    parser.add_argument("--output_dir", default=None, help="where results.json/.md go")
    parser.add_argument("--jobs", nargs="+", choices=["embed", "detect"], default=["embed", "detect"])
    parser.add_argument("--sides", nargs="+", choices=SIDES, default=None,
                        help="default: all three (with --keep_size: ours and the I/O floor)")
    parser.add_argument("--keep_size", action="store_true",
                        help="embed/detect --keep_size: the inputs at their own size (--image_resolution is then the "
                             "size of the built-in samples), a model of --model_resolution; the published scripts "
                             "cannot do this")
    parser.add_argument("--model_resolution", type=int, default=64,
                        help="with --keep_size, the random pair's size (default 64; --model sets its own)")
    args = parser.parse_args()
    if args.sides is None:
        args.sides = [side for side in SIDES if not (args.keep_size and side == "published")]
    if args.keep_size and "published" in args.sides:
        parser.error("--keep_size: the published scripts cannot keep the images' size")
    if args.model:
        from fingerprinting.checkpoints import load_model_config

        encoder = os.path.join(ROOT, "saved_models", f"{args.model}_encoder.pth")
        if not os.path.exists(encoder):
            parser.error(f"--model {args.model}: no such shipped pair in saved_models/")
        args.model_resolution = load_model_config(encoder).resolution
        if not args.keep_size and args.model_resolution != args.image_resolution:
            parser.error(f"--model {args.model} is {args.model_resolution} px: give --image_resolution "
                         f"{args.model_resolution} or --keep_size")
    with tempfile.TemporaryDirectory() as workdir:
        rows = run(args, workdir)
    table = markdown(args, rows)
    print("\n" + table)
    output_dir = args.output_dir or tempfile.mkdtemp(prefix="throughput-")
    os.makedirs(output_dir, exist_ok=True)
    with open(os.path.join(output_dir, "results.json"), "w") as file:
        json.dump(dict(args=vars(args), rows=rows), file, indent=2)
    with open(os.path.join(output_dir, "results.md"), "w") as file:
        file.write(table)
    print(f"results: {output_dir}/results.md")


if __name__ == "__main__":
    main()
