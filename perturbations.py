"""Named image perturbations, shared by the robustness evaluation (and by
training-time augmentation).

Each takes images (b c h w, float in [0, 1]) and one strength, and returns
images of the same shape in [0, 1]. All but `jpeg` (a real Pillow
encode/decode) are differentiable.
"""

import io

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import functional as TF

import data


def gaussian_noise(images, std, generator=None):
    noise = torch.randn(images.shape, generator=generator).to(images)
    return (images + std * noise).clamp(0, 1)


def gaussian_blur(images, kernel_size):
    """Blur with an odd kernel size (sigma as in torchvision); 1 = identity."""
    if kernel_size <= 1:
        return images
    return TF.gaussian_blur(images, [kernel_size, kernel_size])


def jpeg(images, quality):
    """Real JPEG at `quality` (1-100) through Pillow; rounds to 8 bits first."""
    out = []
    for image in data.to_uint8(images).cpu():
        buffer = io.BytesIO()
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(buffer, "JPEG", quality=int(quality))
        decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB"))
        out.append(torch.from_numpy(decoded.copy()).permute(2, 0, 1))
    return data.to_float(torch.stack(out)).to(images.device)


def center_crop(images, fraction):
    """Keep the central `fraction` of each side, then resize back."""
    size = images.shape[-1]
    kept = max(1, round(size * fraction))
    cropped = TF.center_crop(images, [kept, kept])
    return F.interpolate(cropped, size=images.shape[-2:], mode="bilinear", align_corners=False).clamp(0, 1)


def resize(images, scale):
    """Downscale by `scale`, then back to the original size."""
    size = images.shape[-1]
    small = F.interpolate(images, size=max(1, round(size * scale)), mode="bilinear", antialias=True,
                          align_corners=False)
    return F.interpolate(small, size=images.shape[-2:], mode="bilinear", align_corners=False).clamp(0, 1)


def rotation(images, degrees):
    return TF.rotate(images, float(degrees), interpolation=TF.InterpolationMode.BILINEAR)


def brightness(images, factor):
    return TF.adjust_brightness(images, factor)


def contrast(images, factor):
    return TF.adjust_contrast(images, factor)


# name: (function, strengths: the identity first, then mildest to strongest on each side, strength label)
PERTURBATIONS = {
    "gaussian_noise": (gaussian_noise, [0.0, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2], "std"),
    "gaussian_blur": (gaussian_blur, [1, 3, 5, 7, 9, 11], "kernel size"),
    "jpeg": (jpeg, [100, 90, 70, 50, 30, 20, 10], "quality"),
    "center_crop": (center_crop, [1.0, 0.9, 0.8, 0.75, 0.67, 0.6, 0.5], "kept fraction of the side"),
    "resize": (resize, [1.0, 0.9, 0.75, 0.5, 0.35, 0.25], "scale"),
    "rotation": (rotation, [0, 2, 5, 10, 15, 30], "degrees"),
    "brightness": (brightness, [1.0, 1.2, 1.5, 2.0, 0.8, 0.5], "factor"),
    "contrast": (contrast, [1.0, 1.2, 1.5, 2.0, 0.8, 0.5], "factor"),
}


def apply(name, images, strength):
    """Apply the perturbation `name` at `strength`."""
    function = PERTURBATIONS[name][0]
    return function(images, strength)


# --- training-time augmentation --------------------------------------------

def straight_through(function, images, strength):
    """Forward: the real `function`; backward: identity (for JPEG)."""
    return images + (function(images.detach(), strength) - images).detach()


# name: strength at ramp 0 (harmless) and at full ramp; chosen uniformly in between.
AUGMENTATIONS = {
    "none": None,
    "gaussian_noise": (0.0, 0.08),
    "gaussian_blur": (1, 7),
    "jpeg": (100, 40),
    "center_crop": (1.0, 0.7),
}


def augment(images, ramp, generator):
    """One random augmentation for the batch, its strength drawn up to
    `ramp` (0..1) of the way to the strongest setting. Differentiable: JPEG
    passes gradients straight through."""
    if ramp <= 0:
        return images
    names = list(AUGMENTATIONS)
    name = names[int(torch.randint(len(names), (1,), generator=generator))]
    if name == "none":
        return images
    mildest, strongest = AUGMENTATIONS[name]
    fraction = ramp * float(torch.rand((), generator=generator))
    strength = mildest + fraction * (strongest - mildest)
    if name == "gaussian_blur":
        return gaussian_blur(images, 2 * round((strength - 1) / 2) + 1)
    if name == "jpeg":
        return straight_through(jpeg, images, round(strength))
    if name == "gaussian_noise":
        return gaussian_noise(images, strength, generator)
    return center_crop(images, strength)
