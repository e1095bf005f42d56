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
import evaluation
from embed_fingerprints import (add_input_arguments, add_model_argument, finish, list_inputs, open_pending,
                                resolve_model, validate_input_arguments)
from utils import (UserError, append_lines, bits_from_logits, init_distributed, decode, fingerprint_line,
                   format_bits, load_decoder, parse_bits, read_fingerprint_file, run_cli)

RECORD_FILE = "detected_fingerprints.txt"
ACCURACY_FILE = "bit_accuracy.csv"
ATTRIBUTION_FILE = "attribution.csv"
CONFUSION_FILE = "attribution_confusion.csv"


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_input_arguments(parser)
    parser.add_argument("--decoder_path", default=None, help="decoder checkpoint (*_decoder.pth)")
    add_model_argument(parser)
    truth = parser.add_mutually_exclusive_group()
    truth.add_argument("--embedded_fingerprints", default=None,
                       help="embedded_fingerprints.txt to compare with (matched by image name)")
    truth.add_argument("--fingerprint", default=None, help="one bit string every image should carry")
    parser.add_argument("--fpr", type=float, default=1e-6,
                        help="false-positive rate of the 'fingerprinted' decision (binomial test; default 1e-6)")
    parser.add_argument("--registry", default=None,
                        help="known fingerprints ('name bits' per line): attribute each image to one, or unknown")
    args = parser.parse_args(argv)
    resolve_model(parser, args, need_decoder=True)
    if not 0 < args.fpr < 1:
        parser.error("--fpr must be between 0 and 1")
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
    context, device = init_distributed(args.cuda)
    decoder, config = load_decoder(args.decoder_path, args.image_resolution)
    decoder = decoder.to(device)
    resolution = args.image_resolution or decoder.resolution
    data.check_preprocessing(resolution, args.use_celeba_preprocessing)
    expected = expected_fingerprints(args, decoder.fingerprint_size)
    pending, record = open_pending(args, names, RECORD_FILE, context)
    crop = data.center_crop_for(args.use_celeba_preprocessing, args.center_crop)
    dataset = data.ImageFiles(args.data_dir, paths, resolution, crop)
    failures, started = [], time.time()
    with record, torch.no_grad():
        batches = data.image_batches(dataset, args.batch_size, args.num_workers, pending)
        for indices, images, failed in tqdm(batches, desc="detecting", unit="batch", mininterval=1.0,
                                            disable=not context.is_main):
            failures.extend((paths[index], reason) for index, reason in failed)
            if len(indices):
                bits = bits_from_logits(decode(decoder, config, data.to_float(images).to(device))).cpu()
                append_lines(record, [fingerprint_line(names[index], row) for index, row in zip(indices, bits)])
    results = dict(failures=failures, pending=len(pending), seconds=time.time() - started)
    summary = finish(args, context, names, RECORD_FILE, results)
    detected_path = os.path.join(args.output_dir, RECORD_FILE)
    if context.is_main and expected is not None:
        summary.update(score_against(expected, detected_path, args.output_dir, args.fpr))
    if context.is_main and args.registry:
        summary.update(attribute_file(args.registry, detected_path, args.output_dir, args.fpr,
                                      expected if isinstance(expected, dict) else None))
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


def score_against(expected, detected_path, output_dir, fpr):
    """Per-image bit accuracy and detection decision of the detected file vs the expected bits."""
    detected = read_fingerprint_file(detected_path)
    rows = []
    for name, bits in detected.items():
        truth = expected if isinstance(expected, torch.Tensor) else expected.get(name)
        if truth is not None:
            rows.append((name, int(evaluation.matching_bits(bits, truth)), format_bits(truth)))
    if not rows:
        raise UserError("no detected image name matches the expected fingerprints")
    length = len(rows[0][2])
    threshold = evaluation.min_matching_bits(length, fpr)
    with open(os.path.join(output_dir, ACCURACY_FILE), "w", encoding="utf-8") as file:
        file.write("image,bit_accuracy,matching_bits,p_value,fingerprinted,expected\n")
        file.writelines(f'"{name}",{matches / length:.6f},{matches},{evaluation.binomial_p_value(matches, length):.3e},'
                        f'{int(matches >= threshold)},{bits}\n' for name, matches, bits in rows)
    return dict(bit_accuracy=sum(matches for _, matches, _ in rows) / (length * len(rows)), scored=len(rows),
                unmatched=len(detected) - len(rows), min_matching_bits=threshold,
                detected_rate=sum(matches >= threshold for _, matches, _ in rows) / len(rows))


def attribute_file(registry_path, detected_path, output_dir, fpr, embedded=None):
    """Attribute every detected fingerprint to the registry (or 'unknown').

    With the embedding record, each image's true source is the registry entry
    holding its embedded fingerprint ('unknown' if none): closed-world
    accuracy (registered images only), open-world accuracy (all) and a
    confusion table are reported too."""
    if not os.path.isfile(registry_path):
        raise UserError(f"--registry {registry_path}: no such file")
    registry = read_fingerprint_file(registry_path)
    detected = read_fingerprint_file(detected_path)
    if {len(bits) for bits in registry.values()} != {len(next(iter(detected.values())))}:
        raise UserError(f"--registry {registry_path}: fingerprints of another length than the decoder's")
    attributed, matches = evaluation.attribute(torch.stack(list(detected.values())), list(registry),
                                               torch.stack(list(registry.values())), fpr)
    with open(os.path.join(output_dir, ATTRIBUTION_FILE), "w", encoding="utf-8") as file:
        file.write("image,attributed_to,matching_bits\n")
        file.writelines(f'"{name}","{owner}",{int(count)}\n'
                        for name, owner, count in zip(detected, attributed, matches))
    counts = {}
    for owner in attributed:
        counts[owner] = counts.get(owner, 0) + 1
    summary = dict(attribution=counts)
    if embedded is not None:
        summary.update(attribution_scores(registry, detected, attributed, embedded, output_dir))
    return summary


def attribution_scores(registry, detected, attributed, embedded, output_dir):
    owners = {format_bits(bits): name for name, bits in registry.items()}
    truth = [owners.get(format_bits(embedded[name]), evaluation.UNKNOWN) if name in embedded else evaluation.UNKNOWN
             for name in detected]
    closed = [i for i, name in enumerate(truth) if name != evaluation.UNKNOWN]
    table = evaluation.confusion_table(attributed, truth)
    with open(os.path.join(output_dir, CONFUSION_FILE), "w", encoding="utf-8") as file:
        file.write("true_source,attributed_to,images\n")
        file.writelines(f'"{true}","{owner}",{count}\n' for (true, owner), count in sorted(table.items()))
    return dict(closed_world_accuracy=evaluation.attribution_accuracy([attributed[i] for i in closed],
                                                                      [truth[i] for i in closed]),
                open_world_accuracy=evaluation.attribution_accuracy(attributed, truth))


def main(args):
    summary = detect_folder(args)
    if int(os.environ.get("RANK", "0")) != 0:
        return
    line = f"detected {summary['processed']} image(s) at {summary['images_per_second']:.1f} images/s"
    if summary["skipped"]:
        line += f"; skipped {summary['skipped']} unreadable file(s), see {args.output_dir}/skipped.txt"
    print(f"{line}\noutput: {args.output_dir}/{RECORD_FILE}")
    if "bit_accuracy" in summary:
        print(f"mean bit accuracy vs expected: {summary['bit_accuracy']:.4f} over {summary['scored']} image(s)"
              + (f" ({summary['unmatched']} without an expected fingerprint)" if summary["unmatched"] else "")
              + f"; per image: {args.output_dir}/{ACCURACY_FILE}")
        print(f"detected as fingerprinted (>= {summary['min_matching_bits']} matching bits, FPR {args.fpr:g}): "
              f"{summary['detected_rate']:.4f}")
    if "attribution" in summary:
        print("attribution: " + ", ".join(f"{owner} {count}" for owner, count in sorted(summary["attribution"].items()))
              + f"; per image: {args.output_dir}/{ATTRIBUTION_FILE}")
    if "open_world_accuracy" in summary:
        print(f"attribution accuracy: closed world {summary['closed_world_accuracy']:.4f}, open world "
              f"{summary['open_world_accuracy']:.4f}; confusion table: {args.output_dir}/{CONFUSION_FILE}")


if __name__ == "__main__":
    run_cli(main, parse_args())
