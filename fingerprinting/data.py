"""Images in and out: discovery, decoding to RGB, preprocessing, PNG names.

One definition of each, used by train, embed, detect and evaluation.
"""

import os
import warnings
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps
from torch.utils.data import DataLoader, Dataset

from fingerprinting import resizing
from fingerprinting.errors import UserError
from fingerprinting.records import atomic_write

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")
CELEBA_CROP = 148  # published CelebA preprocessing: center-crop 148, resize 128
CELEBA_RESOLUTION = 128
# zlib's fastest level: at 128 px it writes a PNG 3x faster than Pillow's
# default (6) for files about 8 % larger; the pixels are the same (lossless).
PNG_COMPRESS_LEVEL = 1

# Truncated files must fail, not decode as grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False
# Refuse decompression bombs as a skipped file, not a warning.
warnings.simplefilter("error", Image.DecompressionBombWarning)


def list_images(data_dir, recursive=False):
    """Image files under `data_dir` as sorted relative POSIX paths.

    Extensions are matched case-insensitively; hidden files are ignored.
    Raises UserError for a missing folder or one without images.
    """
    if not os.path.isdir(data_dir):
        raise UserError(f"--data_dir {data_dir}: no such folder")
    found = []
    for folder, subfolders, files in os.walk(data_dir):
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))
        relative = os.path.relpath(folder, data_dir)
        for name in files:
            if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
                found.append(name if relative == "." else f"{relative}/{name}".replace(os.sep, "/"))
        if not recursive:
            break
    if not found:
        hint = "" if recursive else " (use --recursive for sub-folders)"
        raise UserError(f"--data_dir {data_dir}: no images ({', '.join(IMAGE_EXTENSIONS)}){hint}")
    return sorted(found)


def output_names(relative_paths, extension=".png"):
    """Unique output names for the inputs: `a/x.jpg` -> `a/x.png`.

    The published rule (stem + .png) is kept whenever it is unambiguous;
    where two inputs would collide (`x.jpg`, `x.png`) the full file name is
    kept (`x.jpg.png`), then a counter is added. Other formats take their
    own `extension` (`.jpg`, `.webp`) by the same rule.
    """
    stems = [os.path.splitext(path)[0] + extension for path in relative_paths]
    counts = {}
    for stem in stems:
        counts[stem.lower()] = counts.get(stem.lower(), 0) + 1
    names, taken = [], set()
    for path, stem in zip(relative_paths, stems):
        name = stem if counts[stem.lower()] == 1 else (path if path.lower().endswith(extension) else path + extension)
        base, number = name[:-len(extension)], 1
        while name.lower() in taken:
            number += 1
            name = f"{base}-{number}{extension}"
        taken.add(name.lower())
        names.append(name)
    return names


def load_rgb(path):
    """Decode any supported file as an upright 8-bit RGB PIL image.

    Handles EXIF orientation, grayscale(+alpha), palette, RGBA, CMYK and
    16-bit files; alpha is dropped. Raises on unreadable content.
    """
    with Image.open(path) as image:
        image.load()
        ImageOps.exif_transpose(image, in_place=True)  # no copy when upright already
        return to_rgb(image)


def to_rgb(image):
    """A PIL image of any mode as 8-bit RGB (16-bit scaled down, alpha dropped)."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        values = np.asarray(image, dtype=np.float64)
        scale = 257.0 if values.max() > 255 else 1.0
        image = Image.fromarray(np.clip(values / scale + 0.5, 0, 255).astype(np.uint8), "L")
    elif image.mode == "F":
        image = Image.fromarray(np.clip(np.asarray(image) * 255 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA")
    return image if image.mode == "RGB" else image.convert("RGB")


def check_preprocessing(resolution, use_celeba_preprocessing):
    if use_celeba_preprocessing and resolution != CELEBA_RESOLUTION:
        raise UserError(f"--use_celeba_preprocessing is defined for --image_resolution "
                        f"{CELEBA_RESOLUTION}, got {resolution} (use --center_crop for other sizes)")


def preprocess(image, resolution, center_crop=0):
    """PIL RGB -> uint8 tensor (c h w) of size `resolution`.

    With `center_crop` > 0: center-crop that many pixels, then resize
    (CelebA: 148 -> 128). Otherwise resize the shorter side, center-crop.
    Pixel for pixel what torchvision's `resize` (bilinear, antialiased)
    and `center_crop` give a PIL image, without importing torchvision
    (which imports the compiler stack and doubles a CLI's start-up).
    """
    if center_crop:
        image = resize_pil(center_crop_pil(image, center_crop), resolution, resolution)
    else:
        width, height = image.size
        short, long = min(width, height), max(width, height)
        resized_long = int(resolution * long / short)
        image = resize_pil(image, resolution if width <= height else resized_long,
                           resized_long if width <= height else resolution)
        image = center_crop_pil(image, resolution)
    return pil_to_uint8(image)


def resize_pil(image, width, height):
    return image if image.size == (width, height) else image.resize((width, height), Image.BILINEAR)


def center_crop_pil(image, size):
    """A size x size center crop; zero padding where the image is smaller (torchvision's offsets)."""
    def offset(length):
        return -((size - length) // 2) if size > length else int(round((length - size) / 2.0))
    left, top = offset(image.size[0]), offset(image.size[1])
    return image.crop((left, top, left + size, top + size))


def center_crop_for(use_celeba_preprocessing, center_crop=0):
    """The crop size the flags ask for (0 = shorter-side resize)."""
    return CELEBA_CROP if use_celeba_preprocessing else center_crop


def resize_and_center_crop(image, resolution):
    """The default preprocessing on a float tensor (c h w): shorter side resized
    to `resolution` (antialiased bilinear), then center-cropped square."""
    height, width = image.shape[-2:]
    short, long = min(height, width), max(height, width)
    resized_long = int(resolution * long / short)
    size = (resized_long, resolution) if width <= height else (resolution, resized_long)
    if size != (height, width):
        image = torch.nn.functional.interpolate(image.unsqueeze(0), size=size, mode="bilinear", align_corners=False,
                                                antialias=short > resolution)[0].clamp(0, 1)
    top, left = (image.shape[-2] - resolution) // 2, (image.shape[-1] - resolution) // 2
    return image[..., top:top + resolution, left:left + resolution]


class ImageFiles(Dataset):
    """Preprocessed images of a listing; unreadable files become error records.

    Items are (index, uint8 tensor c h w or None, error message or None),
    so one bad file never stops a run. With `canvases`, the image is a pair:
    the preprocessed image and its canvas for the border search (`canvas`).
    """

    def __init__(self, data_dir, relative_paths, resolution, center_crop=0, canvases=False):
        self.data_dir = data_dir
        self.relative_paths = relative_paths
        self.resolution = resolution
        self.center_crop = center_crop
        self.canvases = canvases

    def __len__(self):
        return len(self.relative_paths)

    def __getitem__(self, index):
        path = os.path.join(self.data_dir, self.relative_paths[index])
        try:
            image = self.prepare(load_rgb(path))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombWarning,
                Image.DecompressionBombError) as error:
            return index, None, f"{type(error).__name__}: {error}".replace("\n", " ")
        return index, image, None

    def prepare(self, image):
        prepared = preprocess(image, self.resolution, self.center_crop)
        return CanvasItem(prepared, self.canvas(image)) if self.canvases else prepared

    def canvas(self, image):
        """The preprocessing's square at the image's own pixels (uint8 c v v,
        within `resizing.canvas_side`): where a model-size image sits on a
        larger canvas, its pixels as they are."""
        side = self.center_crop or min(image.size)
        return preprocess(image, resizing.canvas_side(side, self.resolution), self.center_crop)


class NativeImageFiles(ImageFiles):
    """Images at their own size (--keep_size), each with its model view.

    Items carry (uint8 pixels c h w, or None without `keep_pixels`; the
    float view c r r the networks read, `resizing.model_view`; whether it was
    upscaled; the width / height squashed into it, `resizing.view_aspect`),
    computed in the reader processes."""

    def __init__(self, data_dir, relative_paths, resolution, keep_pixels=True):
        super().__init__(data_dir, relative_paths, resolution)
        self.keep_pixels = keep_pixels

    def prepare(self, image):
        pixels = pil_to_uint8(image)
        view = resizing.model_view(pixels.unsqueeze(0), self.resolution)[0]
        return NativeItem(pixels if self.keep_pixels else None, view, resizing.is_smaller_than(pixels, self.resolution),
                          resizing.view_aspect(*pixels.shape[-2:]))


class CanvasItem(NamedTuple):
    """An `ImageFiles` image with its canvas (`ImageFiles.canvas`)."""
    image: torch.Tensor  # uint8 c r r
    canvas: torch.Tensor  # uint8 c v v


class NativeItem(NamedTuple):
    """A `NativeImageFiles` image."""
    pixels: "torch.Tensor | None"  # uint8 c h w, or None without keep_pixels
    view: torch.Tensor  # float c r r
    upscaled: bool
    aspect: float


def pil_to_uint8(image):
    """An RGB PIL image as a uint8 tensor (c h w)."""
    return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)


def collate_records(records):
    """Batch good images; pass bad ones through as (index, reason).

    Preprocessed images stack into one uint8 tensor (b c h w), or with
    their canvases give a CanvasBatch; native ones (NativeImageFiles) give a
    NativeBatch."""
    good = [(index, image) for index, image, error in records if error is None]
    failed = [(index, error) for index, _, error in records if error is not None]
    indices = torch.tensor([index for index, _ in good], dtype=torch.long)
    first = good[0][1] if good else None
    if isinstance(first, CanvasItem):
        images, canvases = zip(*(image for _, image in good))
        return indices, CanvasBatch(torch.stack(images), list(canvases)), failed
    if isinstance(first, NativeItem):
        pixels, views, upscaled, aspects = zip(*(image for _, image in good))
        batch = NativeBatch(list(pixels), torch.stack(views), torch.tensor(upscaled), torch.tensor(aspects))
        return indices, batch, failed
    images = torch.stack([image for _, image in good]) if good else torch.empty(0, dtype=torch.uint8)
    return indices, images, failed


class NativeBatch:
    """Images of mixed sizes: their uint8 pixels (a list of c h w, or Nones),
    their model views (b c r r, float), whether each was upscaled (b) and the
    width / height of what each view holds (b)."""

    def __init__(self, pixels, views, upscaled, aspects):
        self.pixels, self.views, self.upscaled, self.aspects = pixels, views, upscaled, aspects

    def __len__(self):
        return len(self.views)

    def pin_memory(self):
        self.views = self.views.pin_memory()
        return self


class CanvasBatch:
    """Preprocessed images (uint8 b c r r) with their canvases for the border
    search (a list of uint8 c v v, `ImageFiles.canvas`)."""

    def __init__(self, images, canvases):
        self.images, self.canvases = images, canvases

    def __len__(self):
        return len(self.images)

    def pin_memory(self):
        self.images = self.images.pin_memory()
        return self


def image_batches(dataset, batch_size, num_workers, indices=None, pin_memory=False):
    """Iterate (indices, uint8 images b c h w, failed) over `dataset` in order.

    With `pin_memory` (for a CUDA device) the batches arrive in page-locked
    memory, so the copy to the GPU can overlap the next batch's decoding."""
    subset = dataset if indices is None else torch.utils.data.Subset(dataset, indices)
    return DataLoader(subset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                      collate_fn=collate_records, persistent_workers=False, pin_memory=pin_memory)


def load_all(data_dir, relative_paths, resolution, center_crop=0, num_workers=0):
    """The readable images among `relative_paths` as one uint8 tensor (n c h w)."""
    dataset = ImageFiles(data_dir, relative_paths, resolution, center_crop)
    batches = [images for _, images, _ in image_batches(dataset, 256, num_workers) if len(images)]
    if not batches:
        raise UserError(f"--data_dir {data_dir}: no readable images")
    return torch.cat(batches)


def default_num_workers(every_core=False):
    """Reader processes: all cores but one (the main process computes), or
    every core for a job bound by decoding; at most 8."""
    return max(0, min(8, (os.cpu_count() or 1) - (0 if every_core else 1)))


def to_float(images):
    """uint8 (b c h w) -> float in [0, 1]."""
    return images.float().div_(255)


def to_uint8(images):
    """float in [0, 1] (b c h w) -> uint8, rounded: exactly what a PNG stores."""
    return images.clamp(0, 1).mul_(255).round_().to(torch.uint8)


# --output_format: file extension and Pillow's save options.
OUTPUT_FORMATS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}
DEFAULT_QUALITY = 95  # JPEG and WebP


def save_image(image, path, image_format="png", quality=DEFAULT_QUALITY):
    """Write a uint8 (c h w) tensor as PNG, JPEG or WebP, atomically (output names are unique)."""
    array = image.permute(1, 2, 0).cpu().numpy()
    options = (dict(format="PNG", compress_level=PNG_COMPRESS_LEVEL) if image_format == "png"
               else dict(format=image_format.upper(), quality=quality))
    atomic_write(path, lambda temp_path: Image.fromarray(array).save(temp_path, **options), unique_name=True)


def save_png(image, path):
    save_image(image, path)


def save_numbered_pngs(images, output_dir):
    """Write uint8 images (n c h w) as 000000.png, 000001.png, ... (generated samples)."""
    os.makedirs(output_dir, exist_ok=True)
    for number, image in enumerate(images):
        save_png(image, os.path.join(output_dir, f"{number:06d}.png"))


def record_skipped(failures, path, resume=False):
    """Write skipped files as '<file>\\t<reason>' lines; returns how many.

    With `resume`, files recorded by the interrupted run are kept.
    """
    skipped = {}
    if resume and os.path.exists(path):
        with open(path, encoding="utf-8") as file:
            skipped = dict(line.rstrip("\n").split("\t", 1) for line in file if "\t" in line)
    skipped.update(failures)
    if not skipped and not os.path.exists(path):
        return 0

    def write(temp_path):
        with open(temp_path, "w", encoding="utf-8") as file:
            file.writelines(f"{name}\t{reason}\n" for name, reason in sorted(skipped.items()))
    atomic_write(path, write)
    return len(skipped)
