"""Content-keyed modulation: the fingerprint's residual is multiplied by a
sign field computed from the image itself, so that it adds up only on the
image it was made for.

Averaging the residuals of many images that share one fingerprint (Yang et
al. 2024), or copying one image's residual onto another, then pastes a
pattern whose signs follow *other* images' content: once the decoder
multiplies what it sees by the sign field of the image in front of it, that
pattern is scrambled, while an image's own residual comes back whole
(field x field >= 0).

The field is tanh of a difference of Gaussians of the luminance, normalised
per image. Mode "dog" (sigmas 2 and 6 pixels of the model's view) is coarse
enough to survive JPEG, noise and blur (agreement 0.997-0.998 on CIFAR-10
at 32 px) and local enough to follow a 3/4 crop (0.90). Its mean
correlation between two images is 0.003, but it holds few independent
blobs at 32 px: the correlation of a pair spreads with std 0.22, and a copy
forgery succeeds on just the pairs whose fields agree (rho 0.3-0.7; 8 % of
CIFAR-10 pairs exceed 0.3). Mode "fine_dog" (sigmas 1 and 3) halves that
spread (std 0.12, 0.8 % of pairs above 0.3) for a little robustness of the
field (JPEG 50 0.987, blur 0.971, crop 3/4 0.887; docs/security.md §10).
Mode "smooth_dog" signs by dog's field a residual first blurred (sigma 2):
the copy attack's estimate, an image minus its denoised copy, then holds
mostly the image's own detail and little of the fingerprint, so copies,
from a look-alike too, carry little of it (docs/security.md §15).
Mode "smooth_fine_dog" is the same at half the scale, for 32 px: fine_dog's
field over a residual blurred with sigma 1 (on CIFAR-10 a trade, not
released: docs/security.md §16).
Mode "folded_smooth_dog" is smooth_dog with a folded field: tanh of
sin(2.5 x band / rms band), whose sign turns over at several levels of the
band, not only at zero. A look-alike image, the one a copy attacker picks
for its similar structure, has a band that agrees roughly with the
target's, and so agreed in sign too (field correlation 0.37 on CelebA at
64 px, the nearest of 1,000); folded, it agrees at 0.12, while JPEG 50
keeps the field at 0.993 (0.998 unfolded). It costs a field that follows
a zoomed crop less (docs/security.md §17).
It is a fixed function, not a secret: an attacker who
reads this code can undo it (attacks.py measures that too); it stops the
attacks of the literature that need no knowledge of the scheme.

Pure functions over float images b c h w in [0, 1].
"""

import torch
import torch.nn.functional as F

# Each mode's difference of Gaussians: (fine, coarse) sigmas in pixels of the model's view.
BANDS = {"dog": (2.0, 6.0), "fine_dog": (1.0, 3.0), "smooth_dog": (2.0, 6.0), "smooth_fine_dog": (1.0, 3.0),
         "folded_smooth_dog": (2.0, 6.0)}
# Modes whose residual is smoothed (Gaussian sigma, pixels of the model's view)
# before its field signs it: what a copy estimate (image minus a denoised
# copy) can see of it is then mostly the image's own detail.
RESIDUAL_BLUR = {"smooth_dog": 2.0, "smooth_fine_dog": 1.0, "folded_smooth_dog": 2.0}
# Modes whose field folds the band through sin(FOLDS x band / rms band) before the tanh (see above).
FOLDS = {"folded_smooth_dog": 2.5}
# tanh(h / (SHARPNESS_SCALE x rms h)): sign-like where the band is strong.
SHARPNESS_SCALE = 0.5
MODES = ("none",) + tuple(BANDS)


def gaussian_blur(images, sigma, truncate=3.0):
    """Separable Gaussian blur (reflect padding) of b c h w images, its taps
    out to `truncate` sigmas."""
    radius = max(1, round(truncate * sigma))
    radius = min(radius, images.shape[-1] - 1, images.shape[-2] - 1)
    coords = torch.arange(-radius, radius + 1, dtype=images.dtype, device=images.device)
    kernel = torch.exp(-coords ** 2 / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    channels = images.shape[1]
    padded = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    blurred = F.conv2d(padded, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
    return F.conv2d(blurred, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)


def field_or_dog(mode):
    """The field a pair's `modulation` names, or "dog" for a pair without one:
    the field the scheme-aware attacker signs residuals by (a learned
    dependence may follow it: docs/security.md section 25)."""
    return mode if mode in BANDS else "dog"


def sign_field(images, mean=None, mode="dog"):
    """The image's own sign field (b 1 h w, in (-1, 1)), from its luminance,
    minus `mean` (1 1 h w, the field's average over the training data) when
    given: aligned faces share much of their field (a bias of rms 0.35 over
    CelebA at 64 px, 0.08 over CIFAR-10), which averaging would pick up.
    `mode`: one of BANDS."""
    fine, coarse = BANDS[mode]
    luminance = images.mean(1, keepdim=True)
    band = gaussian_blur(luminance, fine) - gaussian_blur(luminance, coarse)
    level = band / band.pow(2).mean((1, 2, 3), keepdim=True).sqrt().clamp_min(1e-6)
    if mode in FOLDS:
        level = torch.sin(FOLDS[mode] * level)
    field = torch.tanh(level / SHARPNESS_SCALE)
    return field if mean is None else field - mean


def mean_field(images, batch_size=256, mode="dog"):
    """The average sign field of float images (n c h w): 1 1 h w."""
    total = sum(sign_field(images[start:start + batch_size], mode=mode).sum(0, keepdim=True)
                for start in range(0, len(images), batch_size))
    return total / len(images)


def modulate(images, residuals, mean=None, mode="dog"):
    """The fingerprinted image: `residuals` (b c h w), smoothed where the
    mode says (RESIDUAL_BLUR), signed by the field of `images`."""
    return images + smoothed(residuals, mode) * sign_field(images, mean, mode)


def smoothed(residuals, mode):
    """The residual as `mode` embeds it, before its field: blurred for the
    modes of RESIDUAL_BLUR, as it is for the others."""
    return gaussian_blur(residuals, RESIDUAL_BLUR[mode]) if mode in RESIDUAL_BLUR else residuals


def demodulate(images, detach_field=True, mean=None, mode="dog"):
    """What the decoder reads: the image multiplied by its own sign field
    around mid-grey. An image's own modulated residual comes back as
    residual x field^2; another image's stays scrambled. Training passes no
    gradient through the field (`detach_field`)."""
    field = sign_field(images, mean, mode)
    return 0.5 + (images - 0.5) * (field.detach() if detach_field else field)
