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


def attack_batch(images, fingerprinted, bits, groups, psnr_range, generator=None, fields=None, look_alikes=False):
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
    if look_alikes:
        nearest = look_alike_in_batch(images)
        forgeries.append(residuals[nearest])
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
