"""Decode the fingerprint of every image in a folder.

    python detect_fingerprints.py --decoder_path run_decoder.pth --data_dir out/fingerprinted_images \\
        --output_dir detected/ [--embedded_fingerprints out/embedded_fingerprints.txt]

Writes detected/detected_fingerprints.txt ('<name>.png <bits>' per line).
Given the embedding record (or one --fingerprint), also reports the bit
accuracy per image (bit_accuracy.csv) and on average.
"""

import argparse
import os
import time

import torch
from tqdm import tqdm

import data
from embed_fingerprints import add_input_arguments, list_inputs, open_pending, validate_input_arguments
from utils import (UserError, append_lines, bit_accuracy, bits_from_logits, decode, fingerprint_line,
                   format_bits, load_decoder, parse_bits, read_fingerprint_file, run_cli, select_device)

RECORD_FILE = "detected_fingerprints.txt"
ACCURACY_FILE = "bit_accuracy.csv"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_input_arguments(parser)
    parser.add_argument("--decoder_path", required=True, help="decoder checkpoint (*_decoder.pth)")
    truth = parser.add_mutually_exclusive_group()
    truth.add_argument("--embedded_fingerprints", default=None,
                       help="embedded_fingerprints.txt to compare with (matched by image name)")
    truth.add_argument("--fingerprint", default=None, help="one bit string every image should carry")
    args = parser.parse_args(argv)
    validate_input_arguments(parser, args)
    if args.fingerprint is not None:
        try:
            args.fingerprint = parse_bits(args.fingerprint)
        except ValueError as error:
            parser.error(f"--fingerprint: {error}")
    return args


def detect_folder(args):
    """Decode every image in args.data_dir; returns a summary dict."""
    paths, names = list_inputs(args)
    device = select_device(args.cuda)
    decoder, config = load_decoder(args.decoder_path, args.image_resolution)
    decoder = decoder.to(device)
    resolution = args.image_resolution or decoder.resolution
    data.check_preprocessing(resolution, args.use_celeba_preprocessing)
    expected = expected_fingerprints(args, decoder.fingerprint_size)
    pending, record = open_pending(args, names, RECORD_FILE)
    crop = data.center_crop_for(resolution, args.use_celeba_preprocessing, args.center_crop)
    dataset = data.ImageFiles(args.data_dir, paths, resolution, crop)
    failures, started = [], time.time()
    with record, torch.no_grad():
        batches = data.image_batches(dataset, args.batch_size, args.num_workers, pending)
        for indices, images, failed in tqdm(batches, desc="detecting", unit="batch", mininterval=1.0):
            failures.extend((paths[index], reason) for index, reason in failed)
            if len(indices):
                bits = bits_from_logits(decode(decoder, config, data.to_float(images).to(device))).cpu()
                append_lines(record, [fingerprint_line(names[index], row) for index, row in zip(indices, bits)])
    seconds = time.time() - started
    skipped = data.record_skipped(failures, os.path.join(args.output_dir, "skipped.txt"), args.resume)
    processed = len(pending) - len(failures)
    summary = dict(images=len(names) - skipped, processed=processed, skipped=skipped,
                   images_per_second=processed / max(seconds, 1e-9))
    if expected is not None:
        summary.update(score_against(expected, os.path.join(args.output_dir, RECORD_FILE), args.output_dir))
    return summary


def expected_fingerprints(args, length):
    """{name: bits} to compare with, a single fingerprint, or None."""
    if args.fingerprint is not None:
        expected = args.fingerprint
        lengths = {len(expected)}
    elif args.embedded_fingerprints:
        if not os.path.isfile(args.embedded_fingerprints):
            raise UserError(f"--embedded_fingerprints {args.embedded_fingerprints}: no such file")
        expected = read_fingerprint_file(args.embedded_fingerprints)
        lengths = {len(bits) for bits in expected.values()}
    else:
        return None
    if lengths - {length}:
        raise UserError(f"expected fingerprints have {sorted(lengths)} bits, the decoder reads {length}")
    return expected


def score_against(expected, detected_path, output_dir):
    """Per-image bit accuracy of the detected file vs the expected bits."""
    detected = read_fingerprint_file(detected_path)
    rows = []
    for name, bits in detected.items():
        truth = expected if isinstance(expected, torch.Tensor) else expected.get(name)
        if truth is not None:
            rows.append((name, bit_accuracy(bits[None], truth[None]).item(), format_bits(truth)))
    if not rows:
        raise UserError("no detected image name matches the embedded fingerprints file")
    with open(os.path.join(output_dir, ACCURACY_FILE), "w", encoding="utf-8") as file:
        file.write("image,bit_accuracy,expected\n")
        file.writelines(f'"{name}",{accuracy:.6f},{bits}\n' for name, accuracy, bits in rows)
    unmatched = len(detected) - len(rows)
    return dict(bit_accuracy=sum(accuracy for _, accuracy, _ in rows) / len(rows), scored=len(rows),
                unmatched=unmatched)


def main(args):
    summary = detect_folder(args)
    line = f"detected {summary['processed']} image(s) at {summary['images_per_second']:.1f} images/s"
    if summary["skipped"]:
        line += f"; skipped {summary['skipped']} unreadable file(s), see {args.output_dir}/skipped.txt"
    print(f"{line}\noutput: {args.output_dir}/{RECORD_FILE}")
    if "bit_accuracy" in summary:
        print(f"mean bit accuracy vs expected: {summary['bit_accuracy']:.4f} over {summary['scored']} image(s)"
              + (f" ({summary['unmatched']} without an expected fingerprint)" if summary["unmatched"] else "")
              + f"; per image: {args.output_dir}/{ACCURACY_FILE}")


if __name__ == "__main__":
    run_cli(main, parse_args())
