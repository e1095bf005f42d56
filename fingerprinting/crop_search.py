"""Reading a fingerprint through a crop zoomed back to the model's size, a
shift, a rotation, a border or a perspective warp, by undoing each
candidate and keeping the most confident reading.

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

A crop taken anywhere else, or an image shifted by a few pixels, misses
every centred reading: each shipped pair reads it at chance. With
`search_positions`, such a view is also shrunk back into every place it
may have come from (`crops_anywhere`, on a grid a step apart, the best then
refined to the pixel) and moved back by a few steps each way
(`shifts_back`), again keeping the most confident reading, MARGIN ahead
of the readings before (docs/robust_training.md, "Crops anywhere").
With `search_rotations`, a view is also turned back by each whole degree
up to ROTATION_DEGREES either way (`rotated_back`), in the image's own
geometry: a photo of any shape is squashed into the square view, so a turn
of the photo is a sheared turn of the view. The best turn must also stand
out from the other turns (PROMINENCE). With `search_orientations`, a view
is also read mirrored left to right and turned by quarter turns (the eight
ways a picture can lie, each exact on the pixel grid), every other search
within each, and the way that reads LEAD times more confidently than
every other way wins; with `search_mirror`, as it is and mirrored, the
more confident wins: a GAN trained with mirror augmentation generates
either as often (docs/robust_training.md, "Mirror images and quarter
turns"). With `search_borders`, an image placed on a larger canvas (a
border, a letterbox, a screenshot) is read through each window it may sit
in, cut from the image at its own pixels and resized to the model's size,
and centred borders, the usual kind, a quarter of a pixel apart
(`centred_boxes`); the best must stand out from the other windows
(BORDER_PROMINENCE). With `search_perspective`, a view is also warped
back through four corners found by gradient ascent on the reading's
confidence (`perspective_climbed`), counted only where each corner moved
as an editor's warp moves it (`within_reach`), and kept where it is
PERSPECTIVE_MARGIN more confident than the readings before. `Searches`
names which of these a reading runs.

Pure functions over float views b c r r in [0, 1] and logits t b L.
"""

import math
from dataclasses import dataclass, fields
from functools import partial
from typing import Optional

import torch
import torch.nn.functional as F

from fingerprinting import modulation, resizing


@dataclass(frozen=True)
class Searches:
    """Which searches a reading runs, each named as detect_fingerprints.py's
    --search_<name> (`Fingerprinter.read_bits` says what each does and costs);
    `crops` None: as the pair's config says."""

    crops: Optional[bool] = None
    positions: bool = False
    rotations: bool = False
    orientations: bool = False
    mirror: bool = False
    borders: bool = False
    perspective: bool = False

    @classmethod
    def flags(cls):
        """{"search_<name>": default} of every search: detect_fingerprints.py's flags."""
        return {f"search_{field.name}": field.default for field in fields(cls)}

    @classmethod
    def of(cls, settings):
        """The searches an object with search_<name> attributes (parsed flags) asks for."""
        return cls(**{field.name: getattr(settings, f"search_{field.name}") for field in fields(cls)})


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
    return shrunk_into(views, size, before, before)


def shrunk_into(views, size, top, left):
    """`views` (b c r r) shrunk to `size` pixels (antialiased), placed `top`
    and `left` pixels in, the border replicated out to r x r: a crop taken
    there and zoomed back, undone."""
    margin = views.shape[-1] - size
    small = F.interpolate(views, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
    return F.pad(small, (left, margin - left, top, margin - top), mode="replicate")


def moved(views, down, right):
    """`views` (b c r r) moved `down` and `right` pixels (negative: up, left),
    the border replicated in."""
    resolution = views.shape[-1]
    padded = F.pad(views, (max(right, 0), max(-right, 0), max(down, 0), max(-down, 0)), mode="replicate")
    top, left = max(-down, 0), max(-right, 0)
    return padded[..., top:top + resolution, left:left + resolution]


class MostConfident:
    """The running most confident reading of each view: logits b L, their
    confidence (mean |logit|) and the crop it came from (None: a shift, or not tracked)."""

    def __init__(self, logits, crop=None):
        self.logits, self.confidence = logits.clone(), logits.abs().mean(1)
        self.crops = [crop] * len(logits)

    def offer(self, logits, crops=None, rows=None):
        """Keep `logits` (of the views `rows`, default all) where more confident;
        `crops`: the crop they were read through, or a list of one per row."""
        rows = torch.arange(len(self.logits), device=logits.device) if rows is None else rows
        crops = crops if isinstance(crops, list) else [crops] * len(rows)
        better = logits.abs().mean(1) > self.confidence[rows]
        self.logits[rows[better]], self.confidence[rows[better]] = logits[better], logits[better].abs().mean(1)
        for index in better.nonzero().flatten().tolist():
            self.crops[rows[index]] = crops[index]


def most_confident(readings):
    """Per image, the most confident of `readings` (t b L logits, the first
    of the view as it is, favoured by MARGIN): b L."""
    best = MostConfident(readings[1])
    for reading in readings[2:]:
        best.offer(reading)
    return clearly_better(best, readings[0])


def clearly_better(best, before, margin=MARGIN):
    """Per image, `best`'s reading (a MostConfident) where it is `margin` times
    as confident as `before` (b L logits), else `before`: b L."""
    found = best.confidence > margin * before.abs().mean(1)
    return torch.where(found.unsqueeze(1), best.logits, before)


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


# --- crops anywhere and shifts (search_positions) -------------------------------------

SHIFT_STEPS = 3  # a shifted view is moved back up to this many grid steps each way


def grid_step(resolution):
    """Pixels between the sizes and places first tried: 1 at 32 px, 2 at 64 px."""
    return max(1, resolution // 32)


def crops_anywhere(resolution):
    """(size, top, left) of every crop the position search first reads: sizes
    from a pixel short of the side down to the smallest of FRACTIONS, and
    places, a grid step apart (and flush with the far edges)."""
    step, smallest = grid_step(resolution), round(resolution * min(FRACTIONS))
    crops = []
    for size in range(resolution - 1, smallest - 1, -step):
        margin = resolution - size
        places = sorted(set(range(0, margin + 1, step)) | {margin})
        crops += [(size, top, left) for top in places for left in places]
    return crops


def shifts_back(resolution):
    """(down, right) of every move back the position search reads."""
    reach = SHIFT_STEPS * grid_step(resolution)
    offsets = range(-reach, reach + 1, grid_step(resolution))
    return [(down, right) for down in offsets for right in offsets if down or right]


def nudges(resolution):
    """(grown, down, right) of every crop within a grid step of another, in size and place."""
    step = grid_step(resolution)
    near = range(1 - step, step)
    return [(grown, down, right) for grown in range(-step, step + 1) for down in near for right in near
            if (grown, down, right) != (0, 0, 0)]


def nudged(crop, nudge, resolution):
    """`crop` (size, top, left) moved by `nudge` (grown, down, right), or None outside the view."""
    size, top, left = (value + change for value, change in zip(crop, nudge))
    return (size, top, left) if 0 <= min(top, left) and max(top, left) <= resolution - size < resolution else None


def position_searched_logits(logits_of, views, before):
    """Logits (b L) of `views` read as crops taken anywhere and as shifts,
    where MARGIN more confident than `before` (b L, the readings so far)."""
    resolution = views.shape[-1]
    first, *others = crops_anywhere(resolution)
    best = MostConfident(logits_of(shrunk_into(views, *first)), first)
    for crop in others:
        best.offer(logits_of(shrunk_into(views, *crop)), crop)
    for down, right in shifts_back(resolution):
        best.offer(logits_of(moved(views, down, right)))
    if grid_step(resolution) > 1:
        refine(logits_of, views, best)
    return clearly_better(best, before)


def refine(logits_of, views, best, undo=shrunk_into):
    """Offer each view the crops within a grid step of its best one, undone
    by `undo(views, size, top, left)` (views whose best reading is a shift
    are left as they are)."""
    resolution, starts = views.shape[-1], list(best.crops)
    for nudge in nudges(resolution):
        crops = {row: nudged(start, nudge, resolution) for row, start in enumerate(starts) if start is not None}
        crops = {row: crop for row, crop in crops.items() if crop is not None}
        if crops:
            shrunk = torch.cat([undo(views[row:row + 1], *crop) for row, crop in crops.items()])
            best.offer(logits_of(shrunk), list(crops.values()), torch.tensor(list(crops), device=views.device))


# --- rotations (search_rotations) -----------------------------------------------------

ROTATION_DEGREES = 30  # a view is turned back by every whole degree up to this, either way
# Turning back a real rotation reads far more confidently than the other turns
# (1.4-2.5x the median turn); a view never turned, zoomed or blurred, now and
# then reads a little more confidently at some turn, and wrongly, but so do
# many turns (1.1-1.3x): cifar10_32_robust's crops to 0.67 through files
# read 0.79 as they are, 0.59 searched without this test (docs/robust_training.md).
PROMINENCE = 1.3


def rotated_back(views, degrees, aspects):
    """`views` (b c r r) of images turned `degrees` counter-clockwise about
    their centre, their size kept (Pillow's `rotate`), then squashed into the
    square view from width / height = `aspects` (b), turned back: b c r r, the
    border replicated."""
    turn = torch.tensor(math.radians(degrees), dtype=views.dtype, device=views.device)
    cos, sin = torch.cos(turn), torch.sin(turn)
    aspects = aspects.to(views)
    # Where each output point lies in the turned view (normalised, y down):
    # the turn in square-pixel units, conjugated by the squash (x scaled by the aspect).
    rows_x = torch.stack([cos.expand_as(aspects), sin / aspects, torch.zeros_like(aspects)], 1)
    rows_y = torch.stack([-sin * aspects, cos.expand_as(aspects), torch.zeros_like(aspects)], 1)
    grid = F.affine_grid(torch.stack([rows_x, rows_y], 1), list(views.shape), align_corners=False)
    return F.grid_sample(views, grid, mode="bilinear", padding_mode="border", align_corners=False)


def rotations_back():
    """The turns (degrees) the rotation search reads a view through."""
    return [degrees for degrees in range(-ROTATION_DEGREES, ROTATION_DEGREES + 1) if degrees]


def rotation_searched_logits(logits_of, views, aspects, before):
    """Logits (b L) of `views` (of images with width / height `aspects`, b)
    turned back by each of `rotations_back`, where the most confident turn
    stands out: MARGIN more confident than `before` (b L, the readings so
    far) and PROMINENCE more than the median turn."""
    readings = [logits_of(rotated_back(views, degrees, aspects)) for degrees in rotations_back()]
    best = MostConfident(readings[0])
    for reading in readings[1:]:
        best.offer(reading)
    return standing_out(best, before, torch.stack([reading.abs().mean(1) for reading in readings]))


def standing_out(best, before, confidences, prominence=PROMINENCE):
    """Per image, `best`'s reading (a MostConfident) where it is clearly better
    than `before` (b L logits) and `prominence` times as confident as the median
    of `confidences` (t b: every reading searched), else `before`: b L."""
    prominent = (best.confidence > prominence * confidences.median(0).values).unsqueeze(1)
    return torch.where(prominent, clearly_better(best, before), before)


# --- an image on a larger canvas (search_borders) -------------------------------------

# A border, a letterbox, a screenshot or a collage puts the image inside a larger
# canvas, so the view holds it smaller, somewhere: each window the position search
# would shrink a crop into is instead cut from the canvas (the image at its own
# pixels, resizing.canvas_view) and resized to the view. Where the image
# sits, the best window reads 1.5-2x as confidently as the median window; a crop
# to 0.67 as it is, whose reading is weak, now and then reads more confidently
# and wrongly through some window, but then many windows read nearly as well
# (1.18-1.36x): cifar10_32_robust read such crops at 0.73, 0.53 searched without
# this test (docs/robust_training.md, "Borders").
BORDER_PROMINENCE = 1.5


def zoomed_into(views, size, top, left, resolution=None):
    """The window of `size` pixels at `top` and `left` of `views` (b c v v),
    resized to `resolution` (default v; antialiased when shrinking): an
    image placed there on a larger canvas, undone."""
    resolution = resolution or views.shape[-1]
    window = views[..., top:top + size, left:left + size]
    if size == resolution:
        return window
    return F.interpolate(window, size=(resolution, resolution), mode="bilinear", align_corners=False,
                         antialias=size > resolution)


def boxes_zoomed(canvases, boxes, resolution):
    """Each canvas (b c v v) zoomed into its box ((height, width, top, left)
    in pixels, fractional too, one per canvas) at `resolution`: bilinear, as
    `zoomed_into`, without antialiasing."""
    side = canvases.shape[-1]
    height, width, top, left = torch.tensor(boxes, dtype=canvases.dtype, device=canvases.device).unbind(1)
    zeros = torch.zeros_like(height)
    theta = torch.stack([torch.stack([width / side, zeros, (2 * left + width) / side - 1], 1),
                         torch.stack([zeros, height / side, (2 * top + height) / side - 1], 1)], 1)
    grid = F.affine_grid(theta, [len(canvases), canvases.shape[1], resolution, resolution], align_corners=False)
    return F.grid_sample(canvases, grid, mode="bilinear", padding_mode="border", align_corners=False)


def border_searched_logits(logits_of, views, before, canvases=None, aspects=None):
    """Logits (b L) of `views` (b c r r) read through each window of
    `canvas_windows` of their `canvases`, resized to the view (then refined
    to the pixel), where the most confident stands out: MARGIN more
    confident than `before` (b L) and BORDER_PROMINENCE more than the median
    window. `canvases`: each image's square at its own pixels (c v v each,
    `resizing.canvas_view`), so that a window holds a model-size image on a
    larger canvas exactly, not resampled twice; default the views.
    `aspects` (b, width / height of what each canvas squashed; default
    square): where a centred border sits (`centred_boxes`)."""
    canvases = list(views) if canvases is None else canvases
    aspects = torch.ones(len(views)) if aspects is None else aspects
    logits = before.clone()
    for side in sorted({canvas.shape[-1] for canvas in canvases}):
        rows = [row for row, canvas in enumerate(canvases) if canvas.shape[-1] == side]
        same_side = torch.stack([canvases[row] for row in rows])
        logits[rows] = windows_searched_logits(logits_of, same_side, before[rows], views.shape[-1],
                                               [float(aspects[row]) for row in rows])
    return logits


def canvas_windows(side, resolution):
    """(size, top, left) of every window the border search first reads on a
    canvas of `side` pixels: `crops_anywhere`'s, and a model-size window at
    every pixel where it is larger than the smallest of them (a canvas at
    the image's own pixels, `resizing.canvas_view`, holding a model-size
    image: a window a pixel off, or a grid that misses its size, reads it
    at chance once JPEG has been through; celeba_64_robust, a 10 % border
    then JPEG 75: 0.63 without these windows, 0.96 with them)."""
    windows = crops_anywhere(side)
    if side * min(FRACTIONS) < resolution < side:
        places = range(side - resolution + 1)
        windows += sorted({(resolution, top, left) for top in places for left in places} - set(windows))
    return windows


def windows_searched_logits(logits_of, canvases, before, resolution, aspects):
    """`border_searched_logits` over canvases of one side (b c v v), of
    images of width / height `aspects` (a list)."""
    undo = partial(zoomed_into, resolution=resolution)
    side = canvases.shape[-1]
    first, *others = canvas_windows(side, resolution)
    best = MostConfident(logits_of(undo(canvases, *first)), first)
    confidences = [best.confidence.clone()]
    for window in others:
        logits = logits_of(undo(canvases, *window))
        best.offer(logits, window)
        confidences.append(logits.abs().mean(1))
    if grid_step(side) > 1:
        refine(logits_of, canvases, best, undo)
    for boxes, rows in centred_boxes(side, aspects):
        best.offer(logits_of(boxes_zoomed(canvases[rows], boxes, resolution)),
                   rows=torch.tensor(rows, device=canvases.device))
    return standing_out(best, before, torch.stack(confidences), BORDER_PROMINENCE)


# Through JPEG a window reads the image well only within about a pixel of where
# it sits (a window one pixel larger each side: 0.77 of the bits, the image
# itself 0.94), finer than the windows' grid, and the best window of the grid is
# then often another, a few pixels off: celeba_64_native2 read 3:2 sample photos
# on a 10 % border then JPEG 75 at 0.85 searched, 0.99 at their own box. The
# usual borders are centred (a frame, a letterbox, a picture padded to a square),
# so those are also read finely, this many canvas pixels apart.
CENTRED_STEP = 0.25


def centred_boxes(side, aspects):
    """(boxes, rows) of each centred box the border search reads finely on a
    canvas of `side` pixels, one box (height, width, top, left) for each of
    the `rows` (of images of width / height `aspects`) it fits: an equal
    border on every side, and bars on two opposite sides only, CENTRED_STEP
    apart, down to half the side (a 2:1 picture padded to a square; the
    windows' grid stops at FRACTIONS' 0.67, where 3:2 lies)."""
    smallest = side / resizing.ELONGATED_ASPECT
    readings = []
    for step in range(1, math.floor((side - smallest) / 2 / CENTRED_STEP) + 1):
        for shape in ("equal", "rows", "columns"):
            sizes = {row: centred_box_size(side, step * CENTRED_STEP, shape, aspect)
                     for row, aspect in enumerate(aspects)}
            fits = {row: (height, width) for row, (height, width) in sizes.items() if min(height, width) >= smallest}
            if fits:
                readings.append(([(height, width, (side - height) / 2, (side - width) / 2)
                                  for height, width in fits.values()], list(fits)))
    return readings


def centred_box_size(side, border, shape, aspect):
    """(height, width) of the centred box inside `border` canvas pixels of a
    canvas of `side` (squashed from width / height `aspect`): on every side
    (`shape` "equal": as many of the image's own pixels on each side,
    `border` canvas pixels along the longer side, more along the shorter,
    which the canvas squashed more), above and below only ("rows") or
    left and right only ("columns")."""
    if shape == "rows":
        return side - 2 * border, side
    if shape == "columns":
        return side, side - 2 * border
    long, short = side - 2 * border, side - 2 * border * max(aspect, 1 / aspect)
    return (short, long) if aspect > 1 else (long, short)


# --- mirror images and quarter turns (search_orientations) ----------------------------

# An additive pair reads a mirror image as it is at about 0.7 of the confidence
# it reads it the right way round, and through JPEG the two come closer: held
# to MARGIN over the view as it is, cifar10_32_robust read mirror + JPEG 75 at
# 0.95. The right way leads every other way, so the most confident way is
# kept where it leads the runner-up by LEAD: mirror + JPEG 75 then reads 0.97,
# and a crop to 0.67 or a blur, where every way reads weakly and alike, stays
# as it is (docs/robust_training.md).
LEAD = 1.1


def orientations():
    """(quarter_turns, mirrored) of the eight ways a view is laid back: each
    number of quarter turns, of the view as it is and mirrored; (0, False),
    the view as it is, first."""
    return [(quarter_turns, mirrored) for mirrored in (False, True) for quarter_turns in range(4)]


def oriented(views, quarter_turns, mirrored):
    """`views` (b c r r) mirrored left to right if `mirrored`, then turned
    `quarter_turns` times 90 degrees counter-clockwise: exact, no resampling.
    A squashed view turns as its image does (the squash's axes swap with it)."""
    return torch.rot90(views.flip(-1) if mirrored else views, quarter_turns, dims=(-2, -1))


def orientation_searched_logits(read, views, aspects, canvases=None):
    """Logits (b L) of `views` (of images with width / height `aspects`, b)
    read in each of `orientations` by `read(views, aspects, canvases)`, the
    most confident way kept where it leads every other by LEAD (`leading`)."""
    return leading(readings_in(read, views, aspects, orientations(), canvases), LEAD)


def mirror_searched_logits(read, views, aspects, canvases=None):
    """Logits (b L) of `views` read as they are and mirrored, the more
    confident kept: a GAN trained with mirror augmentation generates the
    fingerprint and its mirror image about as often, so neither is favoured."""
    return leading(readings_in(read, views, aspects, [(0, False), (0, True)], canvases), 1.0)


def readings_in(read, views, aspects, ways, canvases=None):
    """Logits (t b L) of `views` (and their `canvases`, a list or None) laid
    back each of `ways` ((quarter_turns, mirrored) each), read by
    `read(views, aspects, canvases)`."""
    return torch.stack([read(oriented(views, quarter_turns, mirrored),
                             aspects if quarter_turns % 2 == 0 else 1 / aspects,
                             None if canvases is None else [oriented(canvas, quarter_turns, mirrored)
                                                            for canvas in canvases])
                        for quarter_turns, mirrored in ways])


def leading(readings, lead):
    """Per image, the most confident of `readings` (t b L logits, the view as
    it is first) where it is `lead` times as confident as every other, else
    the view as it is: b L."""
    top = readings.abs().mean(2).topk(2, dim=0)
    chosen = torch.where(top.values[0] > lead * top.values[1], top.indices[0], torch.zeros_like(top.indices[0]))
    return readings[chosen, torch.arange(readings.shape[1], device=readings.device)]


# --- perspective warps (search_perspective) -------------------------------------------

# A perspective warp (a photo of a screen or a print, a keystone correction,
# the Perspective augmentation of VideoSeal's list) moves each corner on its
# own: eight numbers, too many to try on a grid, and the decoder reads its own
# warp back only within about a pixel of each corner. So the corners are
# found by gradient ascent on the reading's confidence, from each of
# PERSPECTIVE_STARTS (the view's corners moved inward by that share of its
# half side, as a warp that keeps the picture inside the frame moves them),
# first through a blur that widens the peak (PERSPECTIVE_SCHEDULE: blur
# sigma in view pixels, step size in half sides, steps). Eight free numbers
# lift any image's confidence, by 1.09-1.84x on clean faces
# (celeba_64_robust), but through warps no editor makes: a corner thrown far
# out of the frame (blurred faces read wrongly so went 0.68-1.08 of the half
# side out, and clean ones up to 0.9), where a warp undone moves each corner
# inward, at most 0.28 of the half side at RandomPerspective(0.2) and 0.04
# out (0.35 and 0.07 at 32 px, cifar10_32_robust). So an end counts
# only where every corner stays within PERSPECTIVE_REACH inward and
# PERSPECTIVE_SLACK outward, and the most confident of those is kept where
# it is PERSPECTIVE_MARGIN ahead of the readings before
# (docs/robust_training.md, "Perspective warps").
PERSPECTIVE_STARTS = (0.0, 0.05, 0.1)
PERSPECTIVE_SCHEDULE = ((2.0, 0.02, 30), (1.0, 0.02, 30), (0.5, 0.01, 20), (0.0, 0.005, 20))
PERSPECTIVE_REACH, PERSPECTIVE_SLACK = 0.35, 0.1
PERSPECTIVE_MARGIN = 1.3
VIEW_CORNERS = ((-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0))  # as grid_sample places them


def homographies(corners):
    """The 3x3 maps (b 3 3) taking VIEW_CORNERS to `corners` (b 4 2), in grid_sample's coordinates."""
    rows, targets = [], corners.reshape(len(corners), 8)
    for (x, y), corner in zip(VIEW_CORNERS, corners.unbind(1)):
        u, v = corner.unbind(1)
        one, zero = torch.ones_like(u), torch.zeros_like(u)
        rows.append(torch.stack([one * x, one * y, one, zero, zero, zero, -x * u, -y * u], 1))
        rows.append(torch.stack([zero, zero, zero, one * x, one * y, one, -x * v, -y * v], 1))
    coefficients = torch.linalg.solve(torch.stack(rows, 1), targets)
    return torch.cat([coefficients, torch.ones_like(coefficients[:, :1])], 1).reshape(-1, 3, 3)


def warped_back(views, corners):
    """`views` (b c r r) resampled so that the points at `corners` (b 4 2, in
    grid_sample's coordinates) become the view's corners: a perspective
    warp that moved them there, undone (bilinear, differentiable)."""
    resolution = views.shape[-1]
    steps = (torch.arange(resolution, dtype=views.dtype, device=views.device) * 2 + 1) / resolution - 1
    rows, columns = torch.meshgrid(steps, steps, indexing="ij")
    points = torch.stack([columns, rows, torch.ones_like(rows)], -1).reshape(-1, 3)
    mapped = torch.einsum("bij,nj->bni", homographies(corners), points)
    grid = (mapped[..., :2] / mapped[..., 2:]).reshape(len(views), resolution, resolution, 2)
    return F.grid_sample(views, grid, mode="bilinear", padding_mode="border", align_corners=False)


def perspective_climbed(logits_of, views, start):
    """The corners (b 4 2) gradient ascent on the confidence of
    `logits_of(warped_back(views, corners))` reaches from VIEW_CORNERS moved
    inward by `start`, through PERSPECTIVE_SCHEDULE."""
    view_corners = torch.tensor(VIEW_CORNERS, dtype=views.dtype, device=views.device)
    corners = (view_corners * (1 - start)).expand(len(views), 4, 2).clone().requires_grad_(True)
    for sigma, step, count in PERSPECTIVE_SCHEDULE:
        optimizer = torch.optim.Adam([corners], lr=step)
        for _ in range(count):
            warped = warped_back(views, corners)
            if sigma:
                warped = modulation.gaussian_blur(warped, sigma)
            confidence = logits_of(warped).abs().mean(1).sum()
            corners.grad, = torch.autograd.grad(-confidence, [corners])
            optimizer.step()
    return corners.detach()


def perspective_searched_logits(logits_of, views, before):
    """Logits (b L) of `views` warped back through the corners
    `perspective_climbed` reaches from each of PERSPECTIVE_STARTS that an
    editor's warp could have moved (`within_reach`), the most confident
    where it is PERSPECTIVE_MARGIN more confident than `before` (b L).
    `logits_of` must be differentiable; runs with gradients on whatever
    mode the caller is in (inference mode included)."""
    with torch.inference_mode(False), torch.enable_grad():
        views = views.clone()
        ends = [perspective_climbed(logits_of, views, start) for start in PERSPECTIVE_STARTS]
    best = MostConfident(before)
    with torch.no_grad():
        for corners in ends:
            rows = within_reach(corners).nonzero().flatten()
            if len(rows):
                best.offer(logits_of(warped_back(views[rows], corners[rows])), rows=rows)
    return clearly_better(best, before, PERSPECTIVE_MARGIN)


def within_reach(corners):
    """Per view (b), whether every corner of `corners` (b 4 2) moved at most
    PERSPECTIVE_REACH of the half side inward and PERSPECTIVE_SLACK outward."""
    view_corners = torch.tensor(VIEW_CORNERS, dtype=corners.dtype, device=corners.device)
    inward = (view_corners - corners) * view_corners.sign()
    return ((inward <= PERSPECTIVE_REACH) & (inward >= -PERSPECTIVE_SLACK)).flatten(1).all(1)
