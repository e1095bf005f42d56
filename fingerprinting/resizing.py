"""Images of any size through a model of one size: the residual method of
TrustMark (Bui et al. 2023).

Embedding: the image is shrunk (antialiased) to the model's square size,
the encoder's residual (fingerprinted - input) is computed there, enlarged
bilinearly to the image's own size and added. Detection shrinks the whole
image the same way. The fingerprint then lives at the model's scale, far
below the frequencies JPEG removes from a large image.

Images whose long side exceeds ELONGATED_ASPECT times the short one would
be squashed beyond recognition: as TrustMark does, only their centred
square (the short side's size) carries the fingerprint, and detection reads
that square. Pure functions over float images (c h w or b c h w, in [0, 1]),
and over uint8 pixels where the name says so.

The residual is enlarged by two matrix products with the weights of
torch's bilinear interpolation: the same values as F.interpolate, 2.7x
faster on a CPU at 1024 px (10 vs 27 ms an image, one core).
"""

from functools import lru_cache

import torch
import torch.nn.functional as F

ELONGATED_ASPECT = 2.0
ROWS_AT_A_TIME = 128  # rows of the enlarged residual made at once, on the uint8 path
# The border search reads windows of the fingerprinted box at its own pixels
# (crop_search.border_searched_logits), up to this many times the model's side:
# a model-size image fills at least the smallest window, 0.67 of the side, so
# it sits on a canvas at most 1.5 times its side. A larger box is shrunk to
# this, which also bounds the search's time (at 4x, 10x as long on LSUN).
CANVAS_LIMIT = 1.5


def fingerprinted_box(height, width):
    """(top, left, box height, box width) of the part of an image that
    carries the fingerprint: all of it, or its centred square when elongated."""
    if max(height, width) <= ELONGATED_ASPECT * min(height, width):
        return 0, 0, height, width
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side, side


def view_aspect(height, width):
    """Width / height of the part of an image that `model_view` squashes into
    the square view (1 for an elongated image's centred square)."""
    _, _, box_height, box_width = fingerprinted_box(height, width)
    return box_width / box_height


def model_view(images, resolution):
    """What the networks see of images (b c h w) of one size, as floats in
    [0, 1]: the fingerprinted box resized to resolution x resolution
    (antialiased bilinear when shrinking, bilinear when enlarging).
    Unchanged at the model's size.

    uint8 pixels (what a file holds) are resized in 8-bit levels, by
    torch's uint8 kernels (a tenth of the float path's time at 1024 px;
    the view rounded to 8 bits), then converted."""
    top, left, box_height, box_width = fingerprinted_box(*images.shape[-2:])
    box = images[..., top:top + box_height, left:left + box_width]
    if box.shape[-2:] != (resolution, resolution):
        shrinking = min(box_height, box_width) > resolution
        box = F.interpolate(box, size=(resolution, resolution), mode="bilinear", align_corners=False,
                            antialias=shrinking)
        if box.is_floating_point():
            box = box.clamp(0, 1)
    return box if box.is_floating_point() else box.float().div_(255)


def canvas_side(side, resolution):
    """The side of the square canvas the border search reads an image of
    `side` pixels on: its own, between the model's and CANVAS_LIMIT times it."""
    return min(max(side, resolution), round(CANVAS_LIMIT * resolution))


def canvas_view(images, resolution):
    """The fingerprinted box of images (b c h w, one size) as the border
    search reads it: squashed square on its longer side, `canvas_side`
    pixels, floats in [0, 1]. A square box up to CANVAS_LIMIT times the
    model's side keeps its own pixels, so a window where a model-size image
    sits on a larger canvas holds its pixels exactly."""
    _, _, box_height, box_width = fingerprinted_box(*images.shape[-2:])
    return model_view(images, canvas_side(max(box_height, box_width), resolution))


def add_residual(images, residuals, strength=1.0):
    """images (b c h w) plus `strength` x the model-size residuals (b c r r),
    enlarged onto the fingerprinted box; clamped to [0, 1]."""
    top, left, box_height, box_width = fingerprinted_box(*images.shape[-2:])
    if residuals.shape[-2:] != (box_height, box_width):
        residuals = bilinear(residuals, box_height, box_width)
    if (box_height, box_width) == tuple(images.shape[-2:]):
        return (images + strength * residuals).clamp(0, 1)
    padded = F.pad(residuals, (left, images.shape[-1] - left - box_width, top, images.shape[-2] - top - box_height))
    return (images + strength * padded).clamp(0, 1)


def add_residual_to_pixels(pixels, residual, strength=1.0):
    """uint8 pixels (c h w) plus `strength` x the model-size residual (c r r,
    float), enlarged onto the fingerprinted box, rounded to 8-bit levels:
    `add_residual` then rounding, without a float copy of the image (the
    file path at 1024 px).

    Returns (the marked uint8 pixels, the sum of their squared changes in
    8-bit levels: the PSNR without a second pass). The enlarged residual
    is made ROWS_AT_A_TIME rows at a time, in the pixels' own layout: the
    buffers stay small (no 12 MB float image a time at 1024 px, so memory
    does not fragment) and in cache."""
    top, left, box_height, box_width = fingerprinted_box(*pixels.shape[-2:])
    rows = bilinear_matrix(residual.shape[-2], box_height).to(residual)
    columns = bilinear_matrix(residual.shape[-1], box_width).to(residual)
    half = torch.matmul(residual * (255 * strength), columns.T).permute(1, 2, 0)  # r w c: enlarged along rows
    marked = pixels.clone()
    sources, outputs = pixels.permute(1, 2, 0), marked.permute(1, 2, 0)  # h w c views
    squared = torch.zeros((), dtype=torch.float64, device=pixels.device)
    for start in range(0, box_height, ROWS_AT_A_TIME):
        stop = min(start + ROWS_AT_A_TIME, box_height)
        block = torch.einsum("hr,rwc->hwc", rows[start:stop], half).round_()
        source = sources[top + start:top + stop, left:left + box_width]
        block.add_(source).clamp_(0, 255)
        outputs[top + start:top + stop, left:left + box_width] = block
        squared += block.sub_(source).square_().sum(dtype=torch.float64)
    return marked, squared


def squared_change(marked, pixels):
    """The sum of the squared differences, in 8-bit levels, between two
    uint8 images (c h w), in whatever memory layout they have (float64)."""
    return (marked.to(torch.int16) - pixels).double().square_().sum()


def is_smaller_than(images, resolution):
    """Whether the fingerprinted box of images (.. h w) is below the model's size (read upscaled)."""
    _, _, box_height, box_width = fingerprinted_box(*images.shape[-2:])
    return min(box_height, box_width) < resolution


def bilinear(images, height, width):
    """images (b c h w) resized to height x width as F.interpolate's bilinear
    mode (align_corners False, no antialiasing) does, by matrix products."""
    rows = bilinear_matrix(images.shape[-2], height).to(images)
    columns = bilinear_matrix(images.shape[-1], width).to(images)
    return torch.matmul(torch.matmul(rows, images), columns.T)


@lru_cache(maxsize=64)
def bilinear_matrix(source, target):
    """The target x source weights of 1-D bilinear resizing, read off
    F.interpolate by resizing the identity. Cached, so made outside
    inference mode: autograd may use them later."""
    with torch.inference_mode(False):
        identity = torch.eye(source).view(source, 1, 1, source)
        weights = F.interpolate(identity, size=(1, target), mode="bilinear", align_corners=False)
        return weights.view(source, target).T.contiguous()
