"""Training steps/s and embed images/s with 1 vs N torchrun processes.

On CPU (Gloo) by default; on a CUDA machine also fp32 vs --bf16 training
at 128x128, batch 64, one GPU.

    python benchmarks/scaling.py --processes 2 --steps 60 --num_images 512
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def launch(script, args, processes):
    if processes == 1:
        command = [sys.executable, os.path.join(ROOT, script), *args]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
                   os.path.join(ROOT, script), *args]
    started = time.time()
    subprocess.run(command, check=True, cwd=ROOT, capture_output=True, text=True)
    return time.time() - started


def training_rate(images, workdir, processes, steps, resolution, batch_size, cuda, extra=()):
    """Steps/s of the training loop alone (timed from metrics.jsonl's step stamps)."""
    output = os.path.join(workdir, f"train_{processes}_{resolution}_{'_'.join(extra) or 'fp32'}")
    launch("train.py", ["--data_dir", images, "--output_dir", output, "--image_resolution", str(resolution),
                        "--batch_size", str(batch_size), "--max_steps", str(steps), "--log_interval", "1",
                        "--num_holdout", "0", "--cuda", str(cuda), "--num_workers", "0", *extra], processes)
    stamps = [json.loads(line) for line in open(os.path.join(output, "metrics.jsonl"))]
    first, last = stamps[steps // 4], stamps[-1]
    return (last["step"] - first["step"]) / (last["time"] - first["time"])


def embed_rate(images, workdir, processes, resolution, num_images, encoder_path, cuda):
    output = os.path.join(workdir, f"embed_{processes}")
    seconds = launch("embed_fingerprints.py", ["--encoder_path", encoder_path, "--data_dir", images,
                                               "--output_dir", output, "--image_resolution", str(resolution),
                                               "--cuda", str(cuda), "--num_workers", "1"], processes)
    return num_images / seconds


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--processes", type=int, default=2, help="N (default 2)")
    parser.add_argument("--steps", type=int, default=60, help="training steps per measurement (default 60)")
    parser.add_argument("--num_images", type=int, default=512, help="images to embed (default 512)")
    parser.add_argument("--image_resolution", type=int, default=32, help="CPU resolution (default 32)")
    parser.add_argument("--batch_size", type=int, default=64, help="per process (default 64)")
    args = parser.parse_args()

    import torch

    from fingerprinting.sample_images import write_sample_images
    from models import StegaStampEncoder

    with tempfile.TemporaryDirectory() as workdir:
        images = write_sample_images(os.path.join(workdir, "images"), count=args.num_images,
                                     size=args.image_resolution)
        encoder_path = os.path.join(workdir, "m_encoder.pth")
        torch.save(StegaStampEncoder(args.image_resolution, 3, 100).state_dict(), encoder_path)
        print(f"CPU, {args.image_resolution}x{args.image_resolution}, batch {args.batch_size} per process, "
              f"{os.cpu_count()} cores")
        for processes in (1, args.processes):
            steps = training_rate(images, workdir, processes, args.steps, args.image_resolution, args.batch_size, -1)
            rate = embed_rate(images, workdir, processes, args.image_resolution, args.num_images, encoder_path, -1)
            print(f"{processes} process(es): training {steps:.2f} steps/s ({steps * processes * args.batch_size:.0f} "
                  f"images/s), embed {rate:.1f} images/s (wall time incl. start-up)", flush=True)
        if torch.cuda.is_available():
            for extra in ((), ("--bf16",), ("--bf16", "--channels_last")):
                steps = training_rate(images, workdir, 1, args.steps, 128, 64, 0, extra)
                print(f"1 GPU, 128x128, batch 64, {' '.join(extra) or 'fp32'}: {steps:.2f} steps/s", flush=True)
        else:
            print("no CUDA device: GPU figures (fp32 vs bf16 at 128x128) not measured")


if __name__ == "__main__":
    main()
