"""Named image perturbations, shared by the robustness evaluation (and by
training-time augmentation).

Each takes images (b c h w, float in [0, 1]) and one strength, and returns
images of the same shape in [0, 1]. All but `jpeg` (a real Pillow
encode/decode) are differentiable.
"""

import io
import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms import functional as TF

from fingerprinting import crop_search, data


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


def center_crop(images, fraction, top=None):
    """Keep the central `fraction` of each side, then resize back. `top`: the
    crop starts that many pixels from the top and left (default: centred as
    torchvision centres)."""
    size = images.shape[-1]
    kept = max(1, round(size * fraction))
    cropped = TF.center_crop(images, [kept, kept]) if top is None else images[..., top:top + kept, top:top + kept]
    return F.interpolate(cropped, size=images.shape[-2:], mode="bilinear", align_corners=False).clamp(0, 1)


def resize(images, scale):
    """Downscale by `scale`, then back to the original size."""
    return through_smaller(images, scale, lambda small: small)


def through_smaller(images, scale, change):
    """Downscaled by `scale` (antialiased), changed by `change` at that size,
    and scaled back up to the original size."""
    small = F.interpolate(images, size=max(1, round(images.shape[-1] * scale)), mode="bilinear", antialias=True,
                          align_corners=False)
    return F.interpolate(change(small), size=images.shape[-2:], mode="bilinear", align_corners=False).clamp(0, 1)


# Real-world chains: what a social-media upload does to an image.
CHAIN_JPEG_QUALITY = 75


def crop_then_jpeg(images, fraction):
    """Center crop (resized back), then saved as JPEG 75."""
    return jpeg(center_crop(images, fraction), CHAIN_JPEG_QUALITY)


def resize_then_jpeg(images, scale):
    """Downscaled by `scale` and saved as JPEG 75 at that size; the detector
    scales it back up."""
    return through_smaller(images, scale, lambda small: jpeg(small.clamp(0, 1), CHAIN_JPEG_QUALITY))


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
    "crop_then_jpeg75": (crop_then_jpeg, [1.0, 0.9, 0.75, 0.67, 0.5], "kept fraction, then JPEG 75"),
    "resize_then_jpeg75": (resize_then_jpeg, [1.0, 0.75, 0.5, 0.35, 0.25], "scale, then JPEG 75"),
}


def apply(name, images, strength):
    """Apply the perturbation `name` at `strength`."""
    function = PERTURBATIONS[name][0]
    return function(images, strength)


# --- training-time augmentation --------------------------------------------

# The standard (IJG) luminance and chrominance quantisation tables at quality 50.
LUMA_TABLE = torch.tensor([
    [16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55], [14, 13, 16, 24, 40, 57, 69, 56],
    [14, 17, 22, 29, 51, 87, 80, 62], [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99]], dtype=torch.float32)
CHROMA_TABLE = torch.full((8, 8), 99.0)
CHROMA_TABLE[:4, :4] = torch.tensor([[17, 18, 24, 47], [18, 21, 26, 66], [24, 26, 56, 99], [47, 66, 99, 99]])
RGB_TO_YCBCR = torch.tensor([[0.299, 0.587, 0.114], [-0.168736, -0.331264, 0.5], [0.5, -0.418688, -0.081312]])
YCBCR_TO_RGB = torch.linalg.inv(RGB_TO_YCBCR)


def chroma(images):
    """The Cb and Cr planes (b 2 h w) of RGB images or residuals (b 3 h w),
    without JPEG's offset: a grey change has none."""
    return torch.einsum("ij,bjhw->bihw", RGB_TO_YCBCR[1:].to(images), images)


def quantisation_table(table, quality):
    """IJG scaling of a quality-50 table to `quality` (as libjpeg/Pillow do)."""
    scale = 5000 / quality if quality < 50 else 200 - 2 * quality
    return torch.clamp(torch.floor((table * scale + 50) / 100), 1, 255)


def dct_matrix(size=8):
    """Orthonormal DCT-II matrix: coefficients = D @ block @ D.T."""
    k, n = torch.arange(size).unsqueeze(1).float(), torch.arange(size).float()
    matrix = torch.cos(math.pi * (2 * n + 1) * k / (2 * size)) * math.sqrt(2 / size)
    matrix[0] /= math.sqrt(2)
    return matrix


DCT_MATRIX = dct_matrix()


def soft_round(x):
    """Rounding that keeps a gradient: coefficients under half a step shrink
    as x**3 (JPEG zeroes them), larger ones pass through (StegaStamp's
    approximation)."""
    return torch.where(x.abs() < 0.5, x ** 3, x)


def quantise_blocks(planes, table):
    """8x8 block DCT of (... h w) planes centred on 0 (0..255 scale),
    soft-quantised by `table`, and back."""
    *lead, h, w = planes.shape
    dct = DCT_MATRIX.to(planes)
    blocks = planes.reshape(*lead, h // 8, 8, w // 8, 8).transpose(-3, -2)
    restored = dct.T @ (soft_round((dct @ blocks @ dct.T) / table) * table) @ dct
    return restored.transpose(-3, -2).reshape(*lead, h, w)


def jpeg_approximation(images, quality):
    """Differentiable stand-in for `jpeg`: YCbCr, 4:2:0 chroma, 8x8 DCT and
    soft quantisation with the tables libjpeg uses at `quality`."""
    h, w = images.shape[-2:]
    padded = F.pad(images, (0, -w % 16, 0, -h % 16), mode="replicate")
    ycbcr = torch.einsum("ij,bjhw->bihw", RGB_TO_YCBCR.to(images), padded * 255)  # chroma centred on 0
    luma = quantise_blocks(ycbcr[:, :1] - 128, quantisation_table(LUMA_TABLE, quality).to(images)) + 128
    chroma = quantise_blocks(F.avg_pool2d(ycbcr[:, 1:], 2), quantisation_table(CHROMA_TABLE, quality).to(images))
    chroma = F.interpolate(chroma, scale_factor=2, mode="bilinear", align_corners=False)
    rgb = torch.einsum("ij,bjhw->bihw", YCBCR_TO_RGB.to(images), torch.cat([luma, chroma], 1))
    return (rgb / 255).clamp(0, 1)[..., :h, :w]


def kornia_jpeg(images, quality):
    """kornia's differentiable JPEG (needs `pip install kornia`)."""
    from kornia.enhance import jpeg_codec_differentiable

    return jpeg_codec_differentiable(images, torch.tensor([float(quality)], device=images.device))


# --jpeg_gradient: the differentiable stand-in whose gradient the real JPEG takes.
JPEG_STAND_INS = {"approximation": jpeg_approximation, "kornia": kornia_jpeg}


def jpeg_with_gradient(images, quality, stand_in="approximation"):
    """Forward: real Pillow JPEG; backward: through the stand-in."""
    approximation = JPEG_STAND_INS[stand_in](images, quality)
    return approximation + (jpeg(images.detach(), quality) - approximation).detach()


def jpeg_off_grid(images, quality, offset, stand_in="approximation"):
    """`jpeg_with_gradient` with the image starting `offset` (rows, columns)
    pixels into JPEG's 8x8 blocks (and its 2x2 colour cells), as after a
    crop, a shift or a border: its edge is repeated into the margin."""
    top, left = offset
    padded = F.pad(images, (left, 0, top, 0), mode="replicate")
    return jpeg_with_gradient(padded, quality, stand_in)[..., top:, left:]


def resample(images, scale):
    """Enlarged `scale` times (bilinear) and shrunk back (antialiased): what
    the residual method does to a fingerprint embedded into, and read from,
    an image larger than the model (resizing.py)."""
    size = images.shape[-1]
    large = F.interpolate(images, size=max(size, round(size * scale)), mode="bilinear", align_corners=False)
    return F.interpolate(large, size=images.shape[-2:], mode="bilinear", align_corners=False,
                         antialias=True).clamp(0, 1)


# name: strength at ramp 0 (harmless) and at full ramp.
AUGMENTATIONS = {
    "none": None,
    "gaussian_noise": (0.0, 0.08),
    "gaussian_blur": (1, 7),
    "jpeg": (100, 40),
    "center_crop": (1.0, 0.7),
    "resample": (1.0, 4.0),  # only with --augment_resample
    "chain": (0.0, 1.0),  # only with --augment_chains: the share of the way to CHAIN_STRONGEST
}
# A crop (kept fraction) or a downscale (scale), then JPEG (quality): the
# social-media chains of PERTURBATIONS, at their strongest trained setting.
CHAIN_MILDEST = {"crop": 1.0, "downscale": 1.0, "quality": 95}
CHAIN_STRONGEST = {"crop": 0.7, "downscale": 0.5, "quality": 50}
# One batch slice each; JPEG, the hardest to survive, gets three. Measured
# at 6,000 steps, JPEG 50 bit accuracy: one slice of five 0.750 (at 31 dB),
# two of six 0.839, three of seven 0.882 (both at 30.3 dB); center crop 3/4
# 0.929, 0.901, 0.869.
AUGMENTATION_SLICES = [name for name in AUGMENTATIONS if name not in ("resample", "chain")] + ["jpeg", "jpeg"]


@dataclass(frozen=True)
class AugmentOptions:
    jpeg_stand_in: str = "approximation"  # a JPEG_STAND_INS name
    strongest_crop: float = AUGMENTATIONS["center_crop"][1]  # kept fraction of the side
    resample: bool = False  # one more slice: the residual method's enlarge-and-shrink, then a crop
    crops_shrunk_back: bool = False  # the crop slice read as detect --search_crops reads a crop (crop_search.py)
    # Two more slices cropped or downscaled, then saved as JPEG; every JPEG slice off the 8x8 grid.
    chains: bool = False

    def slices(self):
        return AUGMENTATION_SLICES + (["resample"] if self.resample else []) + (["chain"] * 2 if self.chains else [])


def augment(images, ramp, generator, options=AugmentOptions()):
    """Each augmentation (and none) on its own slice of the batch, in a
    random order, so that every step trains against all of them (JPEG on
    three slices).
    Differentiable: JPEG is real in the forward pass, approximated in the
    backward pass."""
    if ramp <= 0:
        return images
    kinds = options.slices()
    names = [kinds[i] for i in torch.randperm(len(kinds), generator=generator)]
    slices = images.tensor_split(len(names))  # sizes differ by at most 1; empty in batches under 7
    return torch.cat([augment_slice(part, name, ramp, generator, options)
                      for part, name in zip(slices, names) if len(part)])


def chain(images, fraction, generator, jpeg_stand_in="approximation"):
    """A center crop (resized back) or a downscale (JPEG at the small size,
    then scaled back up), either `fraction` of the way to CHAIN_STRONGEST,
    then JPEG: the chains an upload puts an image through."""
    def setting(name):
        return CHAIN_MILDEST[name] + fraction * (CHAIN_STRONGEST[name] - CHAIN_MILDEST[name])
    quality = round(setting("quality"))
    if torch.rand((), generator=generator) < 0.5:
        return jpeg_with_gradient(center_crop(images, setting("crop")), quality, jpeg_stand_in)
    return through_smaller(images, setting("downscale"),
                           lambda small: jpeg_with_gradient(small.clamp(0, 1), quality, jpeg_stand_in))


def augment_slice(images, name, ramp, generator, options=AugmentOptions()):
    """`name` at a strength drawn up to `ramp` (0..1) of the way to its
    strongest setting, favouring the strong end."""
    if name == "none":
        return images
    mildest, strongest = AUGMENTATIONS[name]
    if name == "center_crop":
        strongest = options.strongest_crop
    fraction = ramp * float(torch.rand((), generator=generator)) ** 0.5  # sqrt: strong settings come up more
    strength = mildest + fraction * (strongest - mildest)
    if name == "gaussian_blur":
        return gaussian_blur(images, 2 * round((strength - 1) / 2) + 1)
    if name == "jpeg" and options.chains:
        offset = torch.randint(8, (2,), generator=generator).tolist()
        return jpeg_off_grid(images, round(strength), offset, options.jpeg_stand_in)
    if name == "jpeg":
        return jpeg_with_gradient(images, round(strength), options.jpeg_stand_in)
    if name == "gaussian_noise":
        return gaussian_noise(images, strength, generator)
    if name == "chain":
        return chain(images, strength, generator, options.jpeg_stand_in)
    if name == "resample":
        # A crop of the large image comes on top of the resampling as often as not.
        crop = 1 - (1 - options.strongest_crop) * ramp * float(torch.rand((), generator=generator))
        return center_crop(resample(images, strength), crop)
    if not options.crops_shrunk_back:
        return center_crop(images, strength)
    # Centred either way where the margin is odd, shrunk back in place: as the search finds it.
    tops = crop_search.placements(images.shape[-1], round(images.shape[-1] * strength))
    top = tops[int(torch.randint(len(tops), (), generator=generator))]
    return crop_search.shrunk_back(center_crop(images, strength, top), strength, top)
