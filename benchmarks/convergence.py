"""Does a recipe converge for every seed? Steps to 0.95 training bit accuracy.

Trains each seed until a logged batch reaches --target (train.py
--stop_at_bit_acc) or --max_steps.

    python benchmarks/convergence.py --data_dir cifar10/ --recursive --seeds 0 1 2 3 4 5 6 7 8 9
"""

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from fingerprinting import training  # noqa: E402


def steps_to_target(args, seed, output):
    """First logged step whose batch bit accuracy is >= target, or None."""
    final, _ = training.train(training.parse_args([
        "--data_dir", args.data_dir, "--output_dir", output, "--recipe", args.recipe, "--seed", str(seed),
        "--image_resolution", str(args.image_resolution), "--fingerprint_length", str(args.fingerprint_length),
        "--batch_size", "64", "--max_steps", str(args.max_steps), "--log_interval", str(args.log_interval),
        "--stop_at_bit_acc", str(args.target), "--num_holdout", "0", "--cuda", "-1",
        "--image_interval", str(10 ** 9), "--checkpoint_interval", str(10 ** 9),
        *(["--recursive"] if args.recursive else [])]))
    return final["step"] if final["bit_acc"] >= args.target else None


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--recursive", action="store_true")
    parser.add_argument("--recipe", default="fast")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(range(10)))
    parser.add_argument("--target", type=float, default=0.95)
    parser.add_argument("--max_steps", type=int, default=2000)
    parser.add_argument("--log_interval", type=int, default=25)
    parser.add_argument("--image_resolution", type=int, default=32)
    parser.add_argument("--fingerprint_length", type=int, default=100)
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as workdir:
        for seed in args.seeds:
            started = time.time()
            results[seed] = steps_to_target(args, seed, os.path.join(workdir, f"seed_{seed}"))
            print(f"seed {seed}: {'never' if results[seed] is None else results[seed]} steps to "
                  f"{args.target} ({time.time() - started:.0f} s)", flush=True)
    reached = [steps for steps in results.values() if steps is not None]
    print(f"{args.recipe}: {len(reached)}/{len(results)} seeds reached {args.target} within {args.max_steps} steps"
          + (f"; steps min {min(reached)}, median {sorted(reached)[len(reached) // 2]}, max {max(reached)}"
             if reached else ""))


if __name__ == "__main__":
    main()
