"""Train a fingerprint encoder/decoder pair on a folder of images.

    python train.py --data_dir images/ --output_dir runs/celeba \\
        --image_resolution 128 --fingerprint_length 100 --use_celeba_preprocessing

Writes, into --output_dir: args.json (resolved options), metrics.jsonl,
logs/ (TensorBoard), saved_images/<step>.png (clean | fingerprinted |
amplified residual) and checkpoints/<run>_encoder.pth, _decoder.pth (the
weights' moving average, --ema_decay), _config.json and _optim.pth
(optimizer, step, schedule and the trained weights, for --resume).
"""

from fingerprinting.training import parse_args as parse_training_args
from fingerprinting.training import train
from utils import run_cli


def parse_args(argv=None):
    return parse_training_args(argv, description=__doc__)


def main(args):
    final, prefix = train(args)
    summary = ", ".join(f"{name} {value:.4g}" for name, value in final.items())
    print(f"done: {summary}\ncheckpoints: {prefix}_encoder.pth, {prefix}_decoder.pth")


if __name__ == "__main__":
    run_cli(main, parse_args())
