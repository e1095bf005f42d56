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
that square. Pure functions over float images (c h w or b c h w, in [0, 1]).
"""

import torch.nn.functional as F

ELONGATED_ASPECT = 2.0


def fingerprinted_box(height, width):
    """(top, left, box height, box width) of the part of an image that
    carries the fingerprint: all of it, or its centred square when elongated."""
    if max(height, width) <= ELONGATED_ASPECT * min(height, width):
        return 0, 0, height, width
    side = min(height, width)
    return (height - side) // 2, (width - side) // 2, side, side


def model_view(images, resolution):
    """What the networks see of images (b c h w) of one size: the fingerprinted
    box resized to resolution x resolution (antialiased bilinear when
    shrinking, bilinear when enlarging). Unchanged at the model's size."""
    top, left, box_height, box_width = fingerprinted_box(*images.shape[-2:])
    box = images[..., top:top + box_height, left:left + box_width]
    if box.shape[-2:] == (resolution, resolution):
        return box
    shrinking = min(box_height, box_width) > resolution
    return F.interpolate(box, size=(resolution, resolution), mode="bilinear", align_corners=False,
                         antialias=shrinking).clamp(0, 1)


def add_residual(images, residuals, strength=1.0):
    """images (b c h w) plus `strength` x the model-size residuals (b c r r),
    enlarged onto the fingerprinted box; clamped to [0, 1]."""
    top, left, box_height, box_width = fingerprinted_box(*images.shape[-2:])
    if residuals.shape[-2:] != (box_height, box_width):
        residuals = F.interpolate(residuals, size=(box_height, box_width), mode="bilinear", align_corners=False)
    if (box_height, box_width) == tuple(images.shape[-2:]):
        return (images + strength * residuals).clamp(0, 1)
    padded = F.pad(residuals, (left, images.shape[-1] - left - box_width, top, images.shape[-2] - top - box_height))
    return (images + strength * padded).clamp(0, 1)


def is_smaller_than(images, resolution):
    """Whether the fingerprinted box of images (.. h w) is below the model's size (read upscaled)."""
    _, _, box_height, box_width = fingerprinted_box(*images.shape[-2:])
    return min(box_height, box_width) < resolution
