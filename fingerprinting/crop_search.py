"""Reading a fingerprint through a centred crop zoomed back to the model's size.

A crop that keeps `fraction` of each side, resized back, enlarges the
residual by 1/fraction, and for content-keyed pairs the sign field the
decoder computes from the image no longer falls on the embedded one.
Shrinking the view by `fraction` again, its border replicated out to the
model's size, puts its centre back at the scale and place it was embedded
at (docs/security.md §19).

The fraction is not known, so a view is read as it is and shrunk back by
each of the fractions `searched_fractions` gives, placed both ways where
the crop's margin is odd, and the reading whose logits are the most
confident is kept. The view as it is wins unless another reading is
MARGIN times more confident: an image that was not cropped, but JPEG'd,
reads with little confidence everywhere and would otherwise be taken for
a crop now and then. The choice never looks at the expected fingerprint,
so a clean image's bits stay as random as they were and the
false-positive rate holds.

Pure functions over float views b c r r in [0, 1] and logits t b L.
"""

import torch
import torch.nn.functional as F

FRACTIONS = (0.9, 0.8, 0.75, 0.7, 0.67)
MARGIN = 1.15
# Where one pixel is more than this share of the side, a shrink-back off by a
# pixel misses: at 32 px (3 % a pixel) cifar10_32_v5 reads a 23-pixel crop at
# 0.58 bits shrunk back by 0.7 or 0.75, at 0.90 by its own 23/32. There every
# whole size from the smallest fraction up is tried; at 64 px celeba_64_v6
# reads every crop size between FRACTIONS as well (docs/security.md §20).
FINEST_PIXEL = 0.02


def searched_fractions(resolution):
    """The fractions a view of `resolution` pixels is shrunk back by: FRACTIONS,
    or every whole size down to the smallest of them where pixels are coarse."""
    if 1 / resolution <= FINEST_PIXEL:
        return FRACTIONS
    smallest = round(resolution * min(FRACTIONS))
    return tuple(size / resolution for size in range(resolution - 1, smallest - 1, -1))


def placements(resolution, size):
    """Where a centred crop of `size` pixels from `resolution` may start: where
    the margin is odd, tools round its half either way (Pillow scripts down,
    torchvision to even), and one pixel off the decoder reads far worse
    (cifar10_32_v5, a 21-pixel crop: 0.88 bits in place, 0.73 a pixel off)."""
    margin = resolution - size
    return sorted({margin // 2, (margin + 1) // 2})


def shrunk_back(views, fraction, before=None):
    """`views` (b c r r) shrunk by `fraction` (antialiased), placed `before`
    pixels from the top and left (default: centred, the odd pixel after), the
    border replicated out to r x r: a centred crop zoomed back, undone."""
    resolution = views.shape[-1]
    size = round(resolution * fraction)
    if before is None:
        before = (resolution - size) // 2
    after = resolution - size - before
    small = F.interpolate(views, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return F.pad(small, (before, after, before, after), mode="replicate")


def most_confident(readings):
    """Per image, the most confident of `readings` (t b L logits, the first
    of the view as it is, favoured by MARGIN): b L."""
    confidence = readings.abs().mean(2)
    confidence[1:] /= MARGIN
    return readings[confidence.argmax(0), torch.arange(readings.shape[1], device=readings.device)]


def searched_shrinks(resolution):
    """(fraction, before) of every shrink-back a view is read through."""
    return [(fraction, before) for fraction in searched_fractions(resolution)
            for before in placements(resolution, round(resolution * fraction))]


def searched_logits(logits_of, views):
    """Logits (b L) of the most confident reading of `views`, as they are
    and shrunk back by each of `searched_shrinks`; `logits_of` maps views
    to logits."""
    readings = [logits_of(views)] + [logits_of(shrunk_back(views, fraction, before))
                                     for fraction, before in searched_shrinks(views.shape[-1])]
    return most_confident(torch.stack(readings))
