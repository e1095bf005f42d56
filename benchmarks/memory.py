"""Peak memory and throughput of embed and detect for N and 4N images.

Embeds N and then 4N sample photographs (random-weight encoder: memory and
speed do not depend on training) and detects them, each run in a fresh
process; prints peak RSS (of the largest process, including DataLoader
workers) and images/s, and the 4N/N memory ratio (target <= 1.2: memory
must not grow with the number of images).

    python benchmarks/memory.py --num_images 250 --image_resolution 128
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

# Runs one command in a fresh process and prints its wall time and the peak
# RSS of its largest descendant: RUSAGE_CHILDREN covers only processes this
# wrapper waited for.
MEASURE = ("import resource, subprocess, sys, time; started = time.perf_counter(); "
           "subprocess.run(sys.argv[1:], check=True, cwd={root!r}); "
           "print('SECONDS', time.perf_counter() - started); "
           "print('PEAK_RSS_KB', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)")


def measure_process(command):
    """(wall seconds, peak RSS in MiB, stdout) of `command` run in a fresh process."""
    result = subprocess.run([sys.executable, "-c", MEASURE.format(root=ROOT), *command],
                            capture_output=True, text=True, check=True)
    seconds = float(re.search(r"SECONDS ([\d.]+)", result.stdout).group(1))
    peak_kb = int(re.search(r"PEAK_RSS_KB (\d+)", result.stdout).group(1))
    return seconds, peak_kb / 1024, result.stdout


def measure(command):
    """(peak RSS in MiB, stdout) of `command` run in a fresh process."""
    _, peak, stdout = measure_process(command)
    return peak, stdout


def images_per_second(stdout):
    return float(re.search(r"at ([\d.]+) images/s", stdout).group(1))


def run(args, workdir):
    import torch

    from fingerprinting.sample_images import write_sample_images
    from models import StegaStampDecoder, StegaStampEncoder

    encoder_path, decoder_path = os.path.join(workdir, "m_encoder.pth"), os.path.join(workdir, "m_decoder.pth")
    torch.save(StegaStampEncoder(args.image_resolution, 3, 100).state_dict(), encoder_path)
    torch.save(StegaStampDecoder(args.image_resolution, 3, 100).state_dict(), decoder_path)
    results = {}
    for count in (args.num_images, 4 * args.num_images):
        images = write_sample_images(os.path.join(workdir, f"images_{count}"), count=count,
                                     size=args.image_resolution)
        out = os.path.join(workdir, f"out_{count}")
        common = ["--image_resolution", str(args.image_resolution), "--cuda", str(args.cuda),
                  "--batch_size", str(args.batch_size)]
        if args.num_workers is not None:
            common += ["--num_workers", str(args.num_workers)]
        embed = measure([sys.executable, "embed_fingerprints.py", "--encoder_path", encoder_path,
                         "--data_dir", images, "--output_dir", out, *common])
        detect = measure([sys.executable, "detect_fingerprints.py", "--decoder_path", decoder_path,
                          "--data_dir", os.path.join(out, "fingerprinted_images"), "--output_dir", out, *common])
        results[count] = dict(embed=embed, detect=detect)
        print(f"{count:6d} images: embed peak {embed[0]:7.1f} MiB, {images_per_second(embed[1]):6.1f} images/s | "
              f"detect peak {detect[0]:7.1f} MiB, {images_per_second(detect[1]):6.1f} images/s", flush=True)
    small, large = results[args.num_images], results[4 * args.num_images]
    for job in ("embed", "detect"):
        print(f"{job}: peak memory ratio 4N/N = {large[job][0] / small[job][0]:.3f} (target <= 1.2)")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_images", type=int, default=250, help="N (default 250)")
    parser.add_argument("--image_resolution", type=int, default=128, help="default 128")
    parser.add_argument("--batch_size", type=int, default=64, help="default 64")
    parser.add_argument("--num_workers", type=int, default=None, help="default: the scripts' default")
    parser.add_argument("--cuda", type=int, default=-1, help="default -1 (CPU)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as workdir:
        run(args, workdir)


if __name__ == "__main__":
    main()
