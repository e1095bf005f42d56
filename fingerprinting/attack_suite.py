"""The attacks on a fingerprint, swept and scored: the work behind attacks.py.

Every attack is a named function of the victim and the images, swept over
its strengths; each gives one row per strength with the goal (forge: clean
images made to carry the fingerprint; remove: fingerprinted images made to
lose it), the rate of images detected as carrying the fingerprint at the
FPR, their bit accuracy against it, and the PSNR and SSIM of the attacked
image against its source (the clean image for a forgery, the fingerprinted
one for a removal).

The attacker picks the scale of what he adds or subtracts: each estimate is
applied at its natural scale ("x1") and scaled to a PSNR of 30, 33, 36 and
40 dB; a strength counts for the attacker's best only while every attacked
image keeps at least 30 dB.
"""

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from fingerprinting import data, evaluation, forgery
from fingerprinting.bits import bit_accuracy

ATTACK_PSNRS = (30, 33, 36, 40)  # dB of the attacked image against its source
ADMISSIBLE_PSNR = 30.0  # the attacker must keep every image at least this close to its source
PSNR_MARGIN = 0.1  # scaled a little past the target, so that 8-bit rounding never drops an image below it
GOALS = ("forge", "remove")


class Victim:
    """The model under attack, holding one fingerprint (as a published dataset does)."""

    def __init__(self, fingerprinter, fingerprint, fpr):
        self.fingerprinter = fingerprinter
        self.fingerprint = fingerprint.to(torch.uint8)  # L
        self.fpr = fpr

    def embed(self, images):
        """Fingerprinted uint8 images (n c r r) from clean uint8 ones, as the saved PNGs."""
        out = []
        for start in range(0, len(images), 256):
            batch = data.to_float(images[start:start + 256]).to(self.fingerprinter.device)
            bits = self.fingerprint.float().expand(len(batch), -1).to(batch.device)
            out.append(data.to_uint8(torch.stack(list(self.fingerprinter.marked_images(batch, batch, bits)))).cpu())
        return torch.cat(out)

    def score(self, images):
        """(detected rate, mean bit accuracy) of float images (n c r r) against the fingerprint."""
        with torch.inference_mode():
            bits = self.fingerprinter.read_bits(images.to(self.fingerprinter.device)).cpu()
        expected = self.fingerprint.expand_as(bits)
        detection = self.fingerprinter.score(bits, expected, self.fpr)
        return detection.detected.float().mean().item(), bit_accuracy(bits, expected).mean().item()


def strengths():
    """(label, target PSNR or None for the natural scale) of the sweep."""
    return [("x1", None)] + [(f"{db} dB", db) for db in ATTACK_PSNRS]


def applied(sources, patterns, sign, target_psnr):
    """Sources (n c h w, float) plus `sign` x patterns (n or 1, c h w) at the
    strength asked for, clamped and rounded to 8 bits as a saved file."""
    patterns = patterns.expand_as(sources)
    if target_psnr is not None:
        patterns = forgery.at_rms(patterns, forgery.psnr_to_rms(target_psnr + PSNR_MARGIN))
    return data.to_float(data.to_uint8(sources + sign * patterns))


def sweep(victim, attack, goal, setting, sources, patterns):
    """Rows of one attack over the strengths: sources are the clean images
    (forge) or the fingerprinted ones (remove), patterns the estimate(s) of
    the fingerprint that are added or subtracted."""
    rows = []
    for label, target_psnr in strengths():
        attacked = applied(sources, patterns, 1 if goal == "forge" else -1, target_psnr)
        rows.append(row(victim, attack, goal, setting, label, attacked, sources))
    return rows


def row(victim, attack, goal, setting, strength, attacked, sources):
    detected, accuracy = victim.score(attacked)
    psnrs = evaluation.psnr(attacked, sources)
    return dict(attack=attack, goal=goal, setting=setting, strength=strength, detected=detected,
                bit_accuracy=accuracy, psnr=psnrs.mean().item(), psnr_min=psnrs.min().item(),
                ssim=evaluation.ssim(attacked, sources).mean().item(), images=len(sources))


# --- estimates of the fingerprint ------------------------------------------------------

def gaussian_denoise(images, sigma=1.0):
    size = 2 * round(2 * sigma) + 1
    coords = torch.arange(size, dtype=torch.float32) - size // 2
    kernel = torch.exp(-coords ** 2 / (2 * sigma ** 2))
    kernel = (kernel / kernel.sum()).to(images)
    channels = images.shape[1]
    padded = F.pad(images, (size // 2,) * 4, mode="reflect")
    blurred = F.conv2d(padded, kernel.view(1, 1, 1, -1).repeat(channels, 1, 1, 1), groups=channels)
    return F.conv2d(blurred, kernel.view(1, 1, -1, 1).repeat(channels, 1, 1, 1), groups=channels)


def bm3d_denoise(images, sigma=0.02):
    """BM3D (the `bm3d` package; requirements-attacks.txt) per image, noise std `sigma`."""
    import bm3d

    out = [bm3d.bm3d_rgb(image.permute(1, 2, 0).numpy().astype(np.float64), sigma) for image in images]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float().clamp(0, 1)


DENOISERS = {
    "median 3x3": lambda images: forgery.median_filter(images, 3),
    "gaussian sigma 1": gaussian_denoise,
    "bm3d sigma 0.02": bm3d_denoise,
}


def copy_estimates(images, denoiser):
    """Each image's fingerprint estimated as the image minus its denoised copy (n c h w)."""
    return images - DENOISERS[denoiser](images)


# --- the attacks -------------------------------------------------------------------------

def averaging_attacks(victim, pool, clean_targets, marked_targets, sizes, label="averaging",
                      fingerprinted_pool=None):
    """mean(N fingerprinted) - mean(N other clean images), added to clean
    targets and subtracted from fingerprinted ones. `fingerprinted_pool`
    (uint8) replaces the victim's own embeddings of `pool` (GAN samples)."""
    rows = []
    for size in sizes:
        marked = data.to_float(fingerprinted_pool[:size] if fingerprinted_pool is not None
                               else victim.embed(pool[:size]))
        clean = data.to_float(pool[size:2 * size] if fingerprinted_pool is None else pool[:size])
        estimate = forgery.averaging_estimate(marked, clean).unsqueeze(0)
        for goal, sources in (("forge", clean_targets), ("remove", marked_targets)):
            rows += sweep(victim, label, goal, f"N={size}", sources, estimate)
    return rows


def denoised_averaging_attacks(victim, pool, clean_targets, marked_targets, sizes):
    """No clean images needed: the mean over N fingerprinted images of each
    one minus its median-filtered copy."""
    rows = []
    for size in sizes:
        estimate = copy_estimates(data.to_float(victim.embed(pool[:size])), "median 3x3").mean(0, keepdim=True)
        for goal, sources in (("forge", clean_targets), ("remove", marked_targets)):
            rows += sweep(victim, "averaged copy estimates", goal, f"N={size}", sources, estimate)
    return rows


def copy_attacks(victim, pool, clean_targets, marked_targets, denoisers, bm3d_images):
    """One fingerprinted image's estimate (image - denoised image) pasted on a
    clean target, or subtracted from another fingerprinted image; target i
    takes source i (cycling over the sources)."""
    rows = []
    for denoiser in denoisers:
        count = min(len(pool), bm3d_images if denoiser.startswith("bm3d") else len(clean_targets))
        sources = data.to_float(victim.embed(pool[:count]))
        estimates = copy_estimates(sources, denoiser)
        paired = estimates[torch.arange(len(clean_targets)) % count]
        for goal, targets in (("forge", clean_targets), ("remove", marked_targets)):
            rows += sweep(victim, "copy", goal, denoiser, targets, paired)
    return rows


def run_attacks(victim, targets, pool, sizes, denoisers, bm3d_images, generated=None):
    """Every attack of this module on the targets, with the attacker's pool
    (uint8 images n c r r, clean). `generated`: uint8 samples of a generator
    trained on fingerprinted data (the attacker averages those too). Returns the rows."""
    num_targets = len(targets)
    clean_targets = data.to_float(targets)
    marked_targets = data.to_float(victim.embed(targets))
    rows = [row(victim, "none", "forge", "", "", clean_targets, clean_targets),
            row(victim, "none", "remove", "", "", marked_targets, marked_targets)]
    steps = [lambda: averaging_attacks(victim, pool, clean_targets, marked_targets, sizes),
             lambda: denoised_averaging_attacks(victim, pool, clean_targets, marked_targets, sizes),
             lambda: copy_attacks(victim, pool, clean_targets, marked_targets, denoisers, bm3d_images)]
    if generated is not None:
        steps.append(lambda: generated_attacks(victim, pool, clean_targets, generated, sizes, num_targets))
    for step in tqdm(steps, desc="attacks", unit="family"):
        rows += step()
    return rows


def generated_attacks(victim, pool, clean_targets, generated, sizes, num_targets):
    """Averaging with a generator's samples (all carry the fingerprint) against
    real clean images: forged onto real images, and subtracted from samples
    the attacker did not average."""
    held_out, samples = data.to_float(generated[:num_targets]), generated[num_targets:]
    usable = [size for size in sizes if size <= min(len(samples), len(pool))]
    rows = [row(victim, "none", "remove", "generated images", "", held_out, held_out)]
    for size in usable:
        averaged = data.to_float(samples[:size])
        estimates = {"averaging generated images": forgery.averaging_estimate(averaged, data.to_float(pool[:size])),
                     "averaged copy estimates, generated images":
                         copy_estimates(averaged, "median 3x3").mean(0)}
        for attack, estimate in estimates.items():
            rows += sweep(victim, attack, "forge", f"N={size}", clean_targets, estimate.unsqueeze(0))
            rows += sweep(victim, attack, "remove", f"N={size}", held_out, estimate.unsqueeze(0))
    return rows


# --- the attacker's best ------------------------------------------------------------------

def best_attacks(rows):
    """Per attack and goal, the attacker's best admissible row (every image
    >= 30 dB): the most forged (forge) or the fewest still detected (remove)."""
    best = {}
    for entry in rows:
        if entry["attack"] == "none" or entry["psnr_min"] < ADMISSIBLE_PSNR:
            continue
        key = (entry["attack"], entry["goal"])
        better = (entry["detected"] > best[key]["detected"] if entry["goal"] == "forge"
                  else entry["detected"] < best[key]["detected"]) if key in best else True
        if better:
            best[key] = entry
    return [best[key] for key in sorted(best)]
