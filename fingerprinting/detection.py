"""Decoding the fingerprints of a folder of images, scoring them against the
expected ones and attributing them to a registry: the work behind
detect_fingerprints.py, as plain functions."""

import argparse
import os

import torch
from PIL import Image

from fingerprinting import crop_search, data, evaluation, folders, resizing
from fingerprinting.api import Fingerprinter
from fingerprinting.bits import (
    binomial_p_value,
    format_bits,
    matching_bits,
    max_tampered_matching_bits,
    min_matching_bits,
    parse_bits,
)
from fingerprinting.devices import init_distributed
from fingerprinting.errors import UserError
from fingerprinting.records import fingerprint_line, read_fingerprint_file

RECORD_FILE = "detected_fingerprints.txt"
ACCURACY_FILE = "bit_accuracy.csv"
ATTRIBUTION_FILE = "attribution.csv"
CONFUSION_FILE = "attribution_confusion.csv"


def parse_args(argv=None, description=None):
    parser = argparse.ArgumentParser(description=description, formatter_class=argparse.RawDescriptionHelpFormatter)
    folders.add_input_arguments(parser)
    parser.add_argument("--decoder_path", default=None, help="decoder checkpoint (*_decoder.pth)")
    folders.add_model_argument(parser)
    truth = parser.add_mutually_exclusive_group()
    truth.add_argument("--embedded_fingerprints", default=None,
                       help="embedded_fingerprints.txt to compare with (matched by image name)")
    truth.add_argument("--fingerprint", default=None, help="one bit string every image should carry")
    parser.add_argument("--fpr", type=float, default=1e-6,
                        help="false-positive rate of the 'fingerprinted' decision (binomial test; default 1e-6)")
    parser.add_argument("--search_crops", action=argparse.BooleanOptionalAction, default=None,
                        help="content-keyed pairs (v2 and later): also read each image as a centred crop (0.9 to "
                             "0.67 of the side) resized back, and keep the most confident reading: crops read "
                             "better, at 9x the decoding time, 18x at 32 px (the FPR holds; docs/security.md "
                             "sections 19-22). Default: as the pair's config says (on for celeba_64_v6 and "
                             "cifar10_32_v5, trained for it)")
    parser.add_argument("--search_positions", action="store_true",
                        help="also read each image as a crop taken anywhere (0.67 to 1 of the side) resized back, "
                             "or shifted a few pixels, and keep the most confident reading: off-centre crops and "
                             "shifts read instead of failing, at about 700 decodes an image (any pair; the FPR "
                             "holds; docs/robust_training.md, 'Crops anywhere')")
    parser.add_argument("--search_rotations", action="store_true",
                        help="also read each image turned back by every whole degree up to 30 either way, and keep "
                             "the most confident reading: photos rotated (their size kept) read instead of failing, "
                             "at 60 more decodes an image (any pair; the FPR holds; docs/robust_training.md, "
                             "'Rotations')")
    parser.add_argument("--search_borders", action="store_true",
                        help="also read each image as one placed on a larger canvas (a border, a letterbox, a "
                             "screenshot, a picture padded to a square), through every window it may sit in "
                             "(0.67 to 1 of the side) and finely through every centred border, enlarged back, "
                             "keeping a reading that stands out: 700-2,000 decodes an image (any pair; the FPR "
                             "holds; docs/robust_training.md, 'Borders')")
    parser.add_argument("--search_perspective", action="store_true",
                        help="also read each image warped back in perspective (a photo of a screen or a print, a "
                             "keystone correction), its corners found by gradient ascent on the reading's "
                             "confidence: warps that move each corner up to a tenth of the side read instead of "
                             "failing, at 300 decodes with their gradients an image; weaker after JPEG (any pair; "
                             "the FPR holds; docs/robust_training.md, 'Perspective warps')")
    orientations = parser.add_mutually_exclusive_group()
    orientations.add_argument("--search_orientations", action="store_true",
                              help="also read each image mirrored left to right and turned by quarter turns (the "
                                   "eight ways a picture can lie), every other search in each, and keep the way that "
                                   "reads clearly most confidently: mirrored, upside-down or turned photos read "
                                   "instead of failing, at 8x the decoding (any pair; the FPR holds; "
                                   "docs/robust_training.md, 'Mirror images and quarter turns')")
    orientations.add_argument("--search_mirror", action="store_true",
                              help="for samples of a GAN trained with mirror augmentation (StyleGAN's --mirror), "
                                   "half of which carry the fingerprint's mirror image: read each image as it is and "
                                   "mirrored, and keep the more confident reading (2x the decoding; any pair; the "
                                   "FPR holds)")
    parser.add_argument("--registry", default=None,
                        help="known fingerprints ('name bits' per line): attribute each image to one, or unknown")
    args = parser.parse_args(argv)
    folders.resolve_model(parser, args, need_decoder=True)
    if not 0 < args.fpr < 1:
        parser.error("--fpr must be between 0 and 1")
    # at native size the decoder reads a model-size view: decoding the files is the work
    folders.validate_input_arguments(parser, args, decode_bound=args.keep_size)
    if args.fingerprint is not None:
        try:
            args.fingerprint = parse_bits(args.fingerprint)
        except ValueError as error:
            parser.error(f"--fingerprint: {error}")
    return args


def detect_folder(args):
    """Decode every image in args.data_dir; returns a summary dict."""
    paths, names = folders.list_inputs(args)
    context, device = init_distributed(args.cuda)
    fingerprinter = Fingerprinter.from_paths(None, args.decoder_path, device)
    folders.check_fingerprint_length(args, fingerprinter)
    if args.search_crops:
        fingerprinter.check_can_search_crops()
    resolution = folders.preprocessing_resolution(args, fingerprinter.resolution)
    expected = expected_fingerprints(args, fingerprinter.fingerprint_length)
    dataset = folders.input_images(args, paths, resolution, fingerprinter.resolution,
                                   keep_pixels=args.search_borders, canvases=args.search_borders)

    searches = crop_search.Searches.of(args)

    def decode_batch(indices, images):
        canvases = None
        if isinstance(images, data.NativeBatch):
            views, aspects = images.views.to(device, non_blocking=True), images.aspects
            if args.search_borders:
                canvases = [resizing.canvas_view(pixels.unsqueeze(0).to(device), fingerprinter.resolution)[0]
                            for pixels in images.pixels]
        else:  # preprocessed to a square at a uniform scale
            if isinstance(images, data.CanvasBatch):
                images, canvases = images.images, [data.to_float(canvas.to(device)) for canvas in images.canvases]
            views = torch.stack([resizing.model_view(image.unsqueeze(0), fingerprinter.resolution)[0]
                                 for image in folders.model_input(images, device)])
            aspects = None
        bits = fingerprinter.read_bits(views, searches, aspects, canvases).cpu()
        return [fingerprint_line(names[index], row) for index, row in zip(indices, bits)], []

    results = folders.run_over_folder(args, context, device, dataset, names, RECORD_FILE, decode_batch, "detecting")
    summary = folders.finish(args, context, names, RECORD_FILE, results)
    detected_path = os.path.join(args.output_dir, RECORD_FILE)
    if context.is_main and expected is not None:
        upscaled = upscaled_images(args, paths, names, fingerprinter.resolution)
        summary.update(score_against(expected, detected_path, args.output_dir, args.fpr, upscaled))
    if context.is_main and args.registry:
        summary.update(attribute_file(args.registry, detected_path, args.output_dir, args.fpr,
                                      expected if isinstance(expected, dict) else None))
    return summary


def upscaled_images(args, paths, names, resolution):
    """Names of the images read upscaled: with --keep_size, those smaller than
    the model's size (from the file headers; a resumed run's too)."""
    if not args.keep_size:
        return set()
    upscaled = set()
    for path, name in zip(paths, names):
        try:
            with Image.open(os.path.join(args.data_dir, path)) as image:
                width, height = image.size
        except OSError:
            continue
        if resizing.is_smaller_than(torch.empty(0, height, width), resolution):
            upscaled.add(name)
    return upscaled


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
        # Detected names follow the published rule (<stem>.png); a record of JPEG or WebP files names them
        # with their own extension.
        expected = {**{os.path.splitext(name)[0] + ".png": bits for name, bits in expected.items()}, **expected}
    else:
        return None
    if lengths - {length}:
        raise UserError(f"expected fingerprints have {sorted(lengths)} bits, the decoder reads {length}")
    return expected


def score_against(expected, detected_path, output_dir, fpr, upscaled=frozenset()):
    """Per-image bit accuracy and detection decision of the detected file vs
    the expected bits (and whether each was tampered with or read upscaled)."""
    detected = read_fingerprint_file(detected_path)
    rows = []
    for name, bits in detected.items():
        truth = expected if isinstance(expected, torch.Tensor) else expected.get(name)
        if truth is not None:
            rows.append((name, int(matching_bits(bits, truth)), format_bits(truth)))
    if not rows:
        raise UserError("no detected image name matches the expected fingerprints")
    length = len(rows[0][2])
    threshold, tampered = min_matching_bits(length, fpr), max_tampered_matching_bits(length, fpr)
    with open(os.path.join(output_dir, ACCURACY_FILE), "w", encoding="utf-8") as file:
        file.write("image,bit_accuracy,matching_bits,p_value,fingerprinted,tampered,upscaled,expected\n")
        file.writelines(f'"{name}",{matches / length:.6f},{matches},{binomial_p_value(matches, length):.3e},'
                        f'{int(matches >= threshold)},{int(matches <= tampered)},{int(name in upscaled)},{bits}\n'
                        for name, matches, bits in rows)
    return dict(bit_accuracy=sum(matches for _, matches, _ in rows) / (length * len(rows)), scored=len(rows),
                unmatched=len(detected) - len(rows), min_matching_bits=threshold, max_tampered_matching_bits=tampered,
                detected_rate=sum(matches >= threshold for _, matches, _ in rows) / len(rows),
                tampered_rate=sum(matches <= tampered for _, matches, _ in rows) / len(rows),
                upscaled=sum(name in upscaled for name, _, _ in rows))


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
