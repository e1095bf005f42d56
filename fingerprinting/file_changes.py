"""Robustness as a user meets it: embed with the folder pipeline, change the
saved files with Pillow, detect with the folder pipeline.

For every file change, the fingerprinted files are rewritten into a folder
of their own (JPEG and WebP changes as .jpg/.webp files) and decoded against
the embedding record: mean bit accuracy and the share detected at the FPR.
The clean inputs are decoded too: the share "detected" there is the
measured false-positive rate. PSNR and SSIM compare each saved file with
its input at the size it was saved (with --keep_size, the input's own).
"""

import argparse
import io
import os

import numpy as np
import torchvision.transforms.v2.functional as TF
from PIL import Image, ImageEnhance, ImageFilter, ImageOps
from tqdm import tqdm

from fingerprinting import crop_search, data, detection, embedding, evaluation


def blur_sigma(kernel_size):
    """The sigma torchvision (and OpenCV) give a Gaussian kernel of this size."""
    return 0.3 * ((kernel_size - 1) * 0.5 - 1) + 0.8


def saved_as(image_format, quality=None):
    return lambda image: (image, dict(format=image_format, **({"quality": quality} if quality else {})))


def jpeg(quality):
    return saved_as("JPEG", quality)


def png(change):
    return lambda image: (change(image), dict(format="PNG"))


def cropped_back(fraction, place):
    """`fraction` of each side kept where `place(margin_w, margin_h)` -> (left,
    top) puts it, resized back (Pillow's default filter)."""
    def crop(image):
        width, height = image.size
        kept_w, kept_h = round(width * fraction), round(height * fraction)
        left, top = place(width - kept_w, height - kept_h)
        return image.crop((left, top, left + kept_w, top + kept_h)).resize((width, height))
    return crop


def center_crop(fraction):
    """The central `fraction` of each side, resized back."""
    return cropped_back(fraction, lambda margin_w, margin_h: (margin_w // 2, margin_h // 2))


def crop_anywhere(fraction, seed=0):
    """`fraction` of each side, kept at a random place (seeded), resized back."""
    generator = np.random.default_rng(seed)
    return cropped_back(fraction, lambda margin_w, margin_h: (int(generator.integers(0, margin_w + 1)),
                                                              int(generator.integers(0, margin_h + 1))))


def shift(pixels):
    """Content moved `pixels` right and down, the edge pixels repeated in."""
    def moved(image):
        array = np.asarray(image)
        padded = np.pad(array, ((pixels, 0), (pixels, 0), (0, 0)), mode="edge")
        return Image.fromarray(padded[:image.height, :image.width])
    return moved


def gaussian_noise(std, seed=0):
    generator = np.random.default_rng(seed)

    def noisy(image):
        pixels = np.asarray(image, dtype=np.float64) + generator.normal(0, std * 255, (image.height, image.width, 3))
        return Image.fromarray(np.clip(np.rint(pixels), 0, 255).astype(np.uint8))
    return noisy


def in_memory(image_format, quality):
    """A save and reload in `image_format` inside a chain of edits."""
    def roundtrip(image):
        buffer = io.BytesIO()
        image.save(buffer, format=image_format, quality=quality)
        return Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")
    return roundtrip


def jpeg_in_memory(quality):
    return in_memory("JPEG", quality)


def then(*steps):
    """Edits in order; the last one saves (returns the image and the save options)."""
    def chain(image):
        for step in steps[:-1]:
            image = step(image)
        return steps[-1](image)
    return chain


def resize(scale):
    return lambda image: image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))))


def brightness(factor):
    return lambda image: ImageEnhance.Brightness(image).enhance(factor)


def rotation(degrees):
    return lambda image: image.rotate(degrees, resample=Image.BILINEAR)


def border(fraction, fill=(255, 255, 255)):
    """The image on a canvas larger by `fraction` of its width on every side
    (the border a screenshot, a letterbox or a frame adds)."""
    return lambda image: ImageOps.expand(image, border=round(image.width * fraction), fill=fill)


def perspective(distortion, seed=0):
    """Each corner moved inward by up to `distortion` / 2 of the side, at
    seeded random (torchvision's RandomPerspective(distortion)), the rest black."""
    generator = np.random.default_rng(seed)

    def warp(image):
        width, height = image.size
        reach = np.array([width, height]) * distortion / 2
        corners = np.array([[0, 0], [width - 1, 0], [width - 1, height - 1], [0, height - 1]])
        inward = np.array([[1, 1], [-1, 1], [-1, -1], [1, -1]])
        moved = corners + inward * np.floor(generator.uniform(0, 1, (4, 2)) * (reach + 1))
        return TF.perspective(image, corners.tolist(), moved.tolist())
    return warp


def padded_to_square(image, fill=(0, 0, 0)):
    """The image centred on a square canvas of its longer side (a letterbox,
    a picture padded to a square for a feed or a model)."""
    return ImageOps.pad(image, (max(image.size),) * 2, color=fill)


# name: image -> (changed image, Pillow save options). At the model's size:
FILE_CHANGES = {
    "png (unchanged)": png(lambda image: image),
    "jpeg 95": jpeg(95),
    "jpeg 75": jpeg(75),
    "jpeg 50": jpeg(50),
    "blur kernel 5": png(lambda image: image.filter(ImageFilter.GaussianBlur(blur_sigma(5)))),
    "blur radius 2": png(lambda image: image.filter(ImageFilter.GaussianBlur(2))),  # a stronger reading of "kernel 5"
    "noise std 0.05": png(gaussian_noise(0.05)),
    "crop 3/4": png(center_crop(0.75)),
    "crop 0.67": png(center_crop(0.67)),
    "crop 3/4 + jpeg 75": then(center_crop(0.75), jpeg(75)),
    "resize 1/2 + jpeg 75": then(resize(0.5), jpeg(75)),
    "crop 3/4 anywhere": png(crop_anywhere(0.75)),  # read with --search_positions
    "shift 2 px": png(shift(2)),
    "rotation 5°": png(rotation(5)),  # read with --search_rotations
    "mirror + jpeg 75": then(ImageOps.mirror, jpeg(75)),  # read with --search_orientations or --search_mirror
    "border 10%": png(border(0.1)),  # read with --search_borders
    "border 10% + jpeg 75": then(border(0.1), jpeg(75)),  # a screenshot shared: read with --search_borders
}
# At the images' own size (--keep_size): what happens to a large photo online.
NATIVE_FILE_CHANGES = {
    "png (unchanged)": png(lambda image: image),
    "jpeg 95": jpeg(95),
    "jpeg 75": jpeg(75),
    "jpeg 50": jpeg(50),
    "webp 80": saved_as("WEBP", 80),
    "downscale 1/2 + jpeg 75": then(resize(0.5), jpeg(75)),
    "downscale 1/4 + jpeg 75": then(resize(0.25), jpeg(75)),
    "downscale 1/8 + jpeg 75": then(resize(0.125), jpeg(75)),
    "crop 3/4": png(center_crop(0.75)),
    "crop 3/4 + jpeg 75": then(center_crop(0.75), jpeg(75)),
    "crop 1/2": png(center_crop(0.5)),
    "crop 1/2 + jpeg 75": then(center_crop(0.5), jpeg(75)),
    "rotation 5°": png(rotation(5)),
    "mirror + jpeg 75": then(ImageOps.mirror, jpeg(75)),
    "border 10%": png(border(0.1)),
    "border 10% + jpeg 75": then(border(0.1), jpeg(75)),
    "padded to a square + jpeg 75": then(padded_to_square, jpeg(75)),  # a letterbox shared: --search_borders
    # VideoSeal's and OmniSealBench's combined attack.
    "combined: jpeg 80, crop 0.71, brightness 0.5": then(jpeg_in_memory(80), center_crop(0.71), brightness(0.5),
                                                         png(lambda image: image)),
}
EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp"}


def change_files(source_dir, target_dir, change):
    os.makedirs(target_dir, exist_ok=True)
    for name in sorted(os.listdir(source_dir)):
        with Image.open(os.path.join(source_dir, name)) as opened:
            image, options = change(opened.convert("RGB"))
        image.save(os.path.join(target_dir, os.path.splitext(name)[0] + EXTENSIONS[options["format"]]), **options)


def ssim_of_files(inputs, outputs, names):
    """Mean SSIM of each output file against its input (names: input path -> output name), at the output's size."""
    values = []
    for path, name in names:
        original = data.to_float(data.pil_to_uint8(data.load_rgb(os.path.join(inputs, path))))
        saved = data.to_float(data.pil_to_uint8(data.load_rgb(os.path.join(outputs, name))))
        if original.shape == saved.shape:
            values.append(evaluation.ssim(saved.unsqueeze(0), original.unsqueeze(0)).item())
    return float(np.mean(values)) if values else None


# How detection searches, unless the settings say otherwise: crops as the pair's
# config says (True: on, False: off), and none of the others.
SEARCHES = crop_search.Searches.flags()


def settings_of(**values):
    """`measure`'s settings from `values`, the searches as SEARCHES and fresh
    bits per image unless given."""
    return argparse.Namespace(**{**SEARCHES, "identical_fingerprints": False, **values})


def measure(settings):
    """Embed, change the files, detect: a report dict. `settings`: model
    (or encoder_path/decoder_path), data_dir, output_dir, keep_size,
    strength, min_read_back, center_crop, recursive, fpr, seed, cuda,
    each of SEARCHES, and optionally identical_fingerprints (one
    fingerprint for the folder, as a published data set: a pair whose config
    says folder_mean_residual then takes the folder's mean residual out)."""
    out = lambda *parts: os.path.join(settings.output_dir, *parts)  # noqa: E731
    input_flags = input_arguments(settings)
    embedded = embedding.embed_folder(embedding.parse_args([
        *encoder_arguments(settings), "--data_dir", settings.data_dir, "--output_dir", out("embedded"),
        "--cuda", str(settings.cuda), "--seed", str(settings.seed), "--strength", str(settings.strength),
        "--min_read_back", str(settings.min_read_back), *input_flags,
        *(["--identical_fingerprints"] if settings.identical_fingerprints else [])]))
    record, saved = out("embedded", "embedded_fingerprints.txt"), out("embedded", "fingerprinted_images")
    ssim = None
    if settings.keep_size:
        paths = data.list_images(settings.data_dir, settings.recursive)
        ssim = ssim_of_files(settings.data_dir, saved, zip(paths, data.output_names(paths)))
    # The clean inputs are prepared as for embedding; the fingerprinted files already are.
    clean = detect(settings, settings.data_dir, out("clean"), record, *input_flags)
    rows = [dict(change="clean inputs (false positives)", **scores(clean))]
    changes = NATIVE_FILE_CHANGES if settings.keep_size else FILE_CHANGES
    for name, change in tqdm(changes.items(), desc="file changes", unit="change"):
        folder = out("changed", name.replace(" ", "_").replace("/", "-").replace(":", "").replace(",", ""))
        change_files(saved, folder, change)
        rows.append(dict(change=name, **scores(detect(settings, folder, folder + "_detected", record,
                                                      *(["--keep_size"] if settings.keep_size else [])))))
    return dict(psnr=embedded["psnr"], ssim=ssim, images=embedded["processed"], keep_size=settings.keep_size,
                strength=settings.strength, min_read_back=settings.min_read_back, rows=rows)


def detect(settings, folder, output_dir, record, *extra):
    return detection.detect_folder(detection.parse_args([
        *decoder_arguments(settings), "--data_dir", folder, "--output_dir", output_dir, "--embedded_fingerprints",
        record, "--fpr", str(settings.fpr), "--cuda", str(settings.cuda),
        *SEARCH_CROPS_FLAGS[settings.search_crops],
        *[f"--{search}" for search in SEARCHES if search != "search_crops" and getattr(settings, search)],
        *extra]))


# settings.search_crops: on, off, or as the pair's config says.
SEARCH_CROPS_FLAGS = {True: ["--search_crops"], False: ["--no-search_crops"], None: []}


def encoder_arguments(settings):
    return ["--model", settings.model] if settings.model else ["--encoder_path", settings.encoder_path]


def decoder_arguments(settings):
    return ["--model", settings.model] if settings.model else ["--decoder_path", settings.decoder_path]


def input_arguments(settings):
    return [*(["--center_crop", str(settings.center_crop)] if settings.center_crop else []),
            *(["--recursive"] if settings.recursive else []), *(["--keep_size"] if settings.keep_size else [])]


def scores(summary):
    return dict(bit_accuracy=summary["bit_accuracy"], detected=summary["detected_rate"], images=summary["scored"])


def table(report):
    quality = f"PSNR {report['psnr']:.2f} dB" + (f", SSIM {report['ssim']:.4f}" if report.get("ssim") else "")
    size = "at their own size (--keep_size)" if report["keep_size"] else "at the model's size"
    lines = [f"{report['images']} images {size}, strength {report['strength']:g} (read-back "
             f"{report['min_read_back']:g}), {quality}", "",
             "| file change | bit accuracy | detected |", "|---|---|---|"]
    lines += [f"| {row['change']} | {row['bit_accuracy']:.4f} | {row['detected']:.4f} |" for row in report["rows"]]
    return "\n".join(lines)

