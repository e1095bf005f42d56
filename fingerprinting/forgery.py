"""Forging and stripping a fingerprint without the model: averaging and
copy attacks (Yang et al. 2024, "Steganalysis on digital watermarking"),
and the training loss that defends against them.

An attacker who holds images that share one fingerprint estimates the
fingerprint as the mean of fingerprinted images minus the mean of clean
ones, or as one image minus a denoised copy of it; adding the estimate to a
clean image forges the fingerprint, subtracting it from a fingerprinted one
strips it. Both work when the embedded signal is the same additive pattern
on every image. Pure functions over float images (b c h w, in [0, 1]).
"""

import torch
import torch.nn.functional as F

from fingerprinting import modulation


def averaging_estimate(fingerprinted, clean):
    """The fingerprint as mean(fingerprinted) - mean(clean) (c h w); the two
    sets need not hold the same images."""
    return fingerprinted.mean(0) - clean.mean(0)


def median_filter(images, size=3):
    """Per-channel median over size x size windows (reflect-padded)."""
    pad = size // 2
    padded = F.pad(images, (pad, pad, pad, pad), mode="reflect")
    windows = padded.unfold(2, size, 1).unfold(3, size, 1)  # b c h w size size
    return windows.flatten(-2).median(-1).values


def gaussian_denoise(images, sigma=1.0):
    """The copy attack's Gaussian denoiser: taps out to two sigmas."""
    return modulation.gaussian_blur(images, sigma, truncate=2.0)


# BM3D's opponent colour transform (rows: the mean, red - blue, red + blue - 2 green).
OPPONENT = torch.tensor([[1 / 3, 1 / 3, 1 / 3], [1 / 2, 0.0, -1 / 2], [1 / 4, -1 / 2, 1 / 4]])


DCT_SIGMAS = (0.01, 0.05)  # the range of noise std the training's dct_denoise copies assume


def dct_basis(size):
    """The orthonormal DCT-II matrix (size x size): basis @ x is x's DCT."""
    k = torch.arange(size, dtype=torch.float32)
    basis = torch.cos(torch.pi * (2 * k[None] + 1) * k[:, None] / (2 * size)) * (2 / size) ** 0.5
    basis[0] /= 2 ** 0.5
    return basis


def dct_denoise(images, sigma=0.02, block=8, threshold=2.7, step=2):
    """A fast stand-in for BM3D's first stage, without its block matching:
    in BM3D's opponent colours, every block x block window's 2-D DCT is
    hard-thresholded at `threshold` x the noise's std there (`sigma` in RGB),
    and the estimates of each pixel by the windows (every `step` pixels) are
    averaged. Its copy estimate is close to BM3D's (cosine 0.9 on
    cifar10_32_v6, docs/security.md §27) in under a hundredth of the time,
    so training can forge with it."""
    opponent = OPPONENT.to(images)
    channels = torch.einsum("oc,bchw->bohw", opponent, images)
    b, c, h, w = channels.shape
    pad = block - 1
    windows = F.pad(channels, (pad, pad, pad, pad), mode="reflect").unfold(2, block, step).unfold(3, block, step)
    padded = (windows.shape[2] - 1) * step + block, (windows.shape[3] - 1) * step + block
    basis = dct_basis(block).to(images)
    basis = torch.kron(basis, basis)  # the 2-D DCT of a flattened window
    coefficients = windows.reshape(b, c, -1, block * block) @ basis.T  # b c windows block²
    kept = coefficients.abs() > threshold * sigma * opponent.norm(dim=1).reshape(1, c, 1, 1)
    kept[..., 0] = True
    estimates = (coefficients * kept) @ basis
    columns = estimates.reshape(b * c, -1, block * block).transpose(1, 2)
    summed = F.fold(columns, padded, block, stride=step)
    counts = F.fold(torch.ones_like(columns[:1]), padded, block, stride=step)
    denoised = (summed / counts)[..., pad:pad + h, pad:pad + w].reshape(b, c, h, w)
    return torch.einsum("co,bohw->bchw", torch.linalg.inv(opponent), denoised).clamp(0, 1)


def structure(images, sigma=3.0):
    """What an attacker compares to find a look-alike: the luminance minus its
    blur (a generic high-pass, not the victim's field), unit norm, n x hw."""
    luminance = images.mean(1, keepdim=True)
    detail = (luminance - gaussian_denoise(luminance, sigma)).flatten(1)
    return detail / detail.norm(dim=1, keepdim=True).clamp_min(1e-8)


def nearest_look_alikes(targets, sources):
    """For each target, the index of the source whose structure correlates
    best with its own: the attacker's choice of image to copy from."""
    return (structure(targets) @ structure(sources).T).argmax(1)


def rms(tensor, dims):
    """Root mean square over `dims`, kept for broadcasting."""
    return tensor.pow(2).mean(dims, keepdim=True).sqrt()


def at_rms(patterns, target_rms):
    """Scale each pattern (b c h w) to the given RMS (b, or a number)."""
    target = torch.as_tensor(target_rms, dtype=patterns.dtype, device=patterns.device).reshape(-1, 1, 1, 1)
    return patterns * target / rms(patterns, (1, 2, 3)).clamp_min(1e-8)


def psnr_to_rms(psnr_db):
    """The RMS pixel change of an edit at this PSNR (images in [0, 1])."""
    return 10 ** (-torch.as_tensor(psnr_db, dtype=torch.float32) / 20)


# --- the defence: training images must not lend their fingerprint ----------

def grouped_bits(bits, groups):
    """Give each of `groups` consecutive slices of the batch one fingerprint
    (the first row of the slice), as images of one published dataset share
    one fingerprint (b L -> b L)."""
    if groups <= 1:
        return bits
    return torch.cat([part[:1].expand_as(part) for part in bits.tensor_split(groups)])


def group_mean_residuals(images, fingerprinted, groups):
    """Each image's group mean residual (b c h w): the mean of fingerprinted
    minus clean over its slice of `groups` consecutive slices
    (`grouped_bits`'s: the images that share a fingerprint)."""
    return torch.cat([part.mean(0, keepdim=True).expand_as(part)
                      for part in (fingerprinted - images).tensor_split(groups)])


def without_group_mean_residuals(images, fingerprinted, groups):
    """Fingerprinted images (b c h w) less their group's mean residual, so
    that no average over a group holds the fingerprint."""
    return fingerprinted - group_mean_residuals(images, fingerprinted, groups)


def agreement(logits, bits):
    """Soft fraction of decoded bits that agree with `bits`, centred on 0:
    mean of tanh(logit / rms(logits)) * (+1 for a 1, -1 for a 0), per image.

    Normalising by the logits' own RMS makes it blind to their scale, so the
    decoder cannot satisfy a loss on it by shrinking the logits of a forged
    image while their signs still spell the fingerprint."""
    scale = logits.pow(2).mean(1, keepdim=True).sqrt().clamp_min(1e-6)
    return (torch.tanh(logits / scale) * (2 * bits - 1)).mean(1)


def attack_batch(images, fingerprinted, bits, groups, psnr_range, generator=None, fields=None, look_alikes=False,
                 dct_copies=False, look_alike_dct=False):
    """Forged and stripped images for the defence's loss, from one training
    batch whose `groups` slices each share a fingerprint (`grouped_bits`).

    Returns (forged b c h w, the bits pasted into them b L, stripped
    b c h w, the bits they still carry b L). Each clean image is forged with
    one of: the mean residual of another group (the averaging attack),
    another image's exact residual (the copy attack by someone holding clean
    and fingerprinted copies) or another image minus its median-filtered or
    Gaussian-blurred (sigma 1) copy (the copy attack, estimated). Each
    fingerprinted image is stripped of its group's mean residual or of a
    group-mate's residual. Every
    pattern is scaled to a PSNR drawn from `psnr_range`: the attacker picks
    the scale.

    `fields` (b 1 h w, each clean image's sign field as the model uses it):
    the attacker who has read modulation.py is trained against too, forging
    with another group's residual unsigned by its own fields and re-signed
    by the target's, and stripping with his own group's (attack_suite's
    scheme-aware averaging).

    `look_alikes`: also forge each image with the exact residual of the
    batch's image whose structure looks most like it (attack_suite's copy
    from the nearest look-alike, whose field agrees most).

    `dct_copies`: also forge with another image minus its `dct_denoise`d copy
    (noise std drawn from DCT_SIGMAS), a stand-in for the BM3D copy attack.

    `look_alike_dct`: also forge each image with its look-alike (as
    `look_alikes` picks it) minus the look-alike's `dct_denoise`d copy
    (attack_suite's look-alike copy through the DCT estimate).
    """
    b, device = len(images), images.device
    # Groups of at least two, or a group-mate would be the image itself.
    slices = torch.arange(b, device=device).tensor_split(max(1, min(groups, b // 2)))
    group_of = torch.cat([torch.full((len(part),), g, device=device) for g, part in enumerate(slices)])
    # A group-mate (the next image of the same slice) and an image of other content (the next slice's).
    mate = torch.cat([part.roll(-1) for part in slices])
    stranger = torch.arange(b, device=device).roll(-len(slices[0]) if len(slices) > 1 else -1)
    residuals = fingerprinted - images
    group_means = torch.stack([residuals[part].mean(0) for part in slices])
    group_bits = torch.stack([bits[part[0]] for part in slices])
    other_group = (group_of + 1) % len(slices)
    median_estimate = fingerprinted - median_filter(fingerprinted.detach())
    blur_estimate = fingerprinted - modulation.gaussian_blur(fingerprinted.detach(), 1.0)

    forgeries = [group_means[other_group], residuals[stranger], median_estimate[stranger], blur_estimate[stranger]]
    removals = [group_means[group_of], residuals[mate]]
    pasted_from = [group_bits[other_group]] + [bits[stranger]] * 3  # the bits each forgery carries
    if fields is not None:
        unsigned = unsigned_group_means(residuals, fields, slices)
        forgeries.append(unsigned[other_group] * fields)
        pasted_from.append(group_bits[other_group])
        removals.append(unsigned[group_of] * fields)
    nearest = look_alike_in_batch(images) if look_alikes or look_alike_dct else None
    if look_alikes:
        forgeries.append(residuals[nearest])
        pasted_from.append(bits[nearest])
    if dct_copies or look_alike_dct:
        sigma = uniform(DCT_SIGMAS, 1, generator).item()
        dct_estimate = fingerprinted - dct_denoise(fingerprinted.detach(), sigma)
    if dct_copies:
        forgeries.append(dct_estimate[stranger])
        pasted_from.append(bits[stranger])
    if look_alike_dct:
        forgeries.append(dct_estimate[nearest])
        pasted_from.append(bits[nearest])

    rows = torch.arange(b, device=device)
    kind = torch.randint(0, len(forgeries), (b,), generator=generator).to(device)
    pasted = torch.stack(forgeries)[kind, rows]
    pasted_bits = torch.stack(pasted_from)[kind, rows]
    forged = images + at_rms(pasted, psnr_to_rms(uniform(psnr_range, b, generator)).to(images))

    kind = torch.randint(0, len(removals), (b,), generator=generator).to(device)
    removed = torch.stack(removals)[kind, rows]
    stripped = fingerprinted - at_rms(removed, psnr_to_rms(uniform(psnr_range, b, generator)).to(images))
    return forged.clamp(0, 1), pasted_bits, stripped.clamp(0, 1), bits


def look_alike_in_batch(images):
    """For each image, the index of the other image of the batch whose structure correlates best (b)."""
    details = structure(images)
    similarity = details @ details.T
    return similarity.fill_diagonal_(-2.0).argmax(1)


def unsigned_group_means(residuals, fields, slices):
    """Each group's residual before its sign field, as the scheme-aware
    attacker estimates it: mean(residual x field) / mean(field^2) (groups c h w)."""
    return torch.stack([(residuals[part] * fields[part]).mean(0) / fields[part].pow(2).mean(0).clamp_min(1e-3)
                        for part in slices])


def uniform(bounds, count, generator=None):
    low, high = bounds
    return low + (high - low) * torch.rand(count, generator=generator)
