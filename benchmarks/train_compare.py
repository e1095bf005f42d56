"""`--recipe paper` vs the default recipe, side by side on the same data and seeds.

For each recipe and seed: steps to 0.95 training bit accuracy, steps to
quality (held-out bit accuracy >= 0.99 after 8-bit quantisation and held-out
PSNR >= 30 dB), final held-out bit accuracy and PSNR, training steps/s; then
the ratios. Also the published data loop's speed (PIL decoding every batch
in 16 DataLoader workers, as the published train.py does) vs ours (images
decoded once into a uint8 cache).

    python benchmarks/train_compare.py --data_dir cifar10/ --recursive --steps 3500 --paper_steps 7000 --bf16

With --paper_steps twice --steps, "fast reaches quality and paper does not"
shows a time-to-quality ratio of at most 1/2 even when paper never gets
there (the fast recipe's lower-rate tail sits at the end of its own budget).
    python benchmarks/train_compare.py --size small   # built-in sample photos, a few minutes
"""

import argparse
import json
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import torch  # noqa: E402

from fingerprinting import data, training  # noqa: E402

SIZES = {"small": dict(steps=600, num_images=512), "medium": dict(steps=3000, num_images=5000)}


def run_recipe(recipe, seed, args, images, output):
    steps = args.paper_steps if recipe == "paper" else args.steps
    train_args = training.parse_args([
        "--data_dir", images, "--output_dir", output, "--recipe", recipe, "--seed", str(seed),
        "--image_resolution", str(args.image_resolution), "--fingerprint_length", str(args.fingerprint_length),
        "--batch_size", "64", "--max_steps", str(steps), "--log_interval", str(args.log_interval),
        "--num_holdout", str(args.num_holdout), "--cuda", "-1", "--num_workers", "1",
        "--image_interval", str(10 ** 9), "--checkpoint_interval", str(10 ** 9),
        *(["--recursive"] if args.recursive else []), *(["--bf16"] if args.bf16 else [])])
    started = time.time()
    final, _ = training.train(train_args)
    rows = [json.loads(line) for line in open(os.path.join(output, "metrics.jsonl"))]
    first = lambda test: next((row["step"] for row in rows if test(row)), None)  # noqa: E731
    return dict(recipe=recipe, seed=seed, steps=steps, bf16=train_args.bf16,
                steps_to_095=first(lambda row: row["bit_acc"] >= 0.95),
                steps_to_quality=first(lambda row: row["heldout_bit_acc"] >= 0.99 and row["heldout_psnr"] >= 30),
                heldout_bit_acc=final["heldout_bit_acc"], heldout_psnr=final["heldout_psnr"],
                steps_per_second=steps / (time.time() - started),
                psnr_when_099=next((row["heldout_psnr"] for row in rows if row["heldout_bit_acc"] >= 0.99), None))


def published_loop_speed(images, args, steps=100):
    """Steps/s of a loop that decodes a fresh batch of files every step."""
    paths = data.list_images(images, args.recursive)
    dataset = data.ImageFiles(images, paths, args.image_resolution)
    loader = torch.utils.data.DataLoader(dataset, batch_size=64, shuffle=True, num_workers=16,
                                         collate_fn=data.collate_records, drop_last=True)
    return loop_speed(args, (batch for _, batch, _ in loader), steps, torch.contiguous_format, bf16=False)


def cached_loop_speed(images, args, steps=100):
    """Steps/s of our loop on CPU: images decoded once, batches indexed from
    memory, channels-last (the CPU default), bf16 autocast with --bf16."""
    cache, _ = training.training_data(training.parse_args([
        "--data_dir", images, "--output_dir", tempfile.gettempdir(), "--num_holdout", "0",
        "--image_resolution", str(args.image_resolution), *(["--recursive"] if args.recursive else [])]))
    batches = (cache[torch.randint(len(cache), (64,))] for _ in range(10 ** 9))
    return loop_speed(args, batches, steps, torch.channels_last, bf16=args.bf16)


def loop_speed(args, batches, steps, memory_format, bf16):
    train_args = training.parse_args(["--data_dir", ".", "--output_dir", ".", "--recipe", "paper",
                                   "--image_resolution", str(args.image_resolution),
                                   "--fingerprint_length", str(args.fingerprint_length),
                                   *(["--bf16"] if bf16 else [])])
    encoder, decoder, config = training.build_models(train_args)
    encoder, decoder = encoder.to(memory_format=memory_format), decoder.to(memory_format=memory_format)
    optimizer = torch.optim.Adam([*encoder.parameters(), *decoder.parameters()], lr=1e-4)
    started = None
    for step, batch in enumerate(batches):
        if step == 5:
            started = time.time()  # after worker start-up
        if step == steps + 5:
            break
        images = data.to_float(batch).contiguous(memory_format=memory_format)
        bits = torch.randint(0, 2, (len(images), args.fingerprint_length)).float()
        training.training_step((encoder, decoder, config), optimizer, images, bits, dict(l2=1.0), train_args)
    return steps / (time.time() - started)


def summarise(results):
    by_recipe = {}
    for row in results:
        by_recipe.setdefault(row["recipe"], []).append(row)
    mean = lambda rows, key: (sum(r[key] for r in rows) / len(rows)  # noqa: E731
                              if all(r[key] is not None for r in rows) else None)
    print(f"\n{'recipe':8s} {'seed':>4s} {'to 0.95':>8s} {'to quality':>11s} {'held-out acc':>13s} "
          f"{'PSNR':>7s} {'PSNR@0.99':>10s} {'steps/s':>8s} {'bf16':>5s}")
    for row in results:
        cells = [str(row[k]) if row[k] is not None else f">{row['steps']}"
                 for k in ("steps_to_095", "steps_to_quality")]
        at99 = f"{row['psnr_when_099']:.2f}" if row["psnr_when_099"] is not None else "-"
        print(f"{row['recipe']:8s} {row['seed']:4d} {cells[0]:>8s} {cells[1]:>11s} {row['heldout_bit_acc']:13.4f} "
              f"{row['heldout_psnr']:7.2f} {at99:>10s} {row['steps_per_second']:8.2f} {str(row['bf16']):>5s}")
    paper, fast = by_recipe.get("paper", []), by_recipe.get("fast", [])
    for key in ("steps_to_095", "steps_to_quality"):
        if paper and fast and mean(paper, key) and mean(fast, key):
            print(f"{key}: fast / paper = {mean(fast, key) / mean(paper, key):.3f}")
        elif paper and fast and mean(fast, key) and all(row[key] is None for row in paper):
            budget = min(row["steps"] for row in paper)
            print(f"{key}: fast / paper < {mean(fast, key) / budget:.3f} (paper never within {budget} steps)")
        else:
            print(f"{key}: not reached by every run within its step budget")
    if paper and fast:
        print(f"final held-out PSNR: fast {mean(fast, 'heldout_psnr'):.2f} dB vs paper "
              f"{mean(paper, 'heldout_psnr'):.2f} dB")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", default=None, help="default: built-in sample photographs")
    parser.add_argument("--recursive", action="store_true")
    parser.add_argument("--size", choices=sorted(SIZES), default="small")
    parser.add_argument("--steps", type=int, default=None, help="default: from --size")
    parser.add_argument("--paper_steps", type=int, default=None, help="budget of --recipe paper (default: --steps)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--recipes", nargs="+", default=["paper", "fast"])
    parser.add_argument("--image_resolution", type=int, default=32)
    parser.add_argument("--fingerprint_length", type=int, default=100)
    parser.add_argument("--num_holdout", type=int, default=256)
    parser.add_argument("--log_interval", type=int, default=50)
    parser.add_argument("--loop_speed", action="store_true", help="also time the published data loop vs ours")
    parser.add_argument("--bf16", action="store_true", help="train both recipes (and our loop) with bf16 autocast")
    args = parser.parse_args()
    args.steps = args.steps or SIZES[args.size]["steps"]
    args.paper_steps = args.paper_steps or args.steps
    torch.set_num_threads(os.cpu_count() or 1)
    with tempfile.TemporaryDirectory() as workdir:
        images = args.data_dir
        if images is None:
            from fingerprinting.sample_images import write_sample_images

            images = write_sample_images(os.path.join(workdir, "images"), SIZES[args.size]["num_images"], 64)
        results = []
        for seed in args.seeds:
            for recipe in args.recipes:
                results.append(run_recipe(recipe, seed, args, images, os.path.join(workdir, f"{recipe}_{seed}")))
                print(json.dumps(results[-1]), flush=True)
        summarise(results)
        if args.loop_speed:
            published, ours = published_loop_speed(images, args), cached_loop_speed(images, args)
            print(f"data loop: published-style {published:.2f} steps/s, cached {ours:.2f} steps/s, "
                  f"ratio {ours / published:.2f}")


if __name__ == "__main__":
    main()
