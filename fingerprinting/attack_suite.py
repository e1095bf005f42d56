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

from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from fingerprinting import data, evaluation, forgery, modulation, removal
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

    def take_out_residual_mean(self, published):
        """Embed as embed_fingerprints.py does a folder with one fingerprint:
        less the mean residual over `published` (uint8 n c r r, the data set
        the attacker draws from). Returns its RMS."""
        batches = (data.to_float(published[start:start + 256]) for start in range(0, len(published), 256))
        return self.fingerprinter.fit_residual_mean(batches, self.fingerprint)

    def embed(self, images):
        """Fingerprinted uint8 images (n c r r) from clean uint8 ones, as the saved PNGs."""
        return evaluation.fingerprinted_images(self.fingerprinter, self.fingerprint.expand(len(images), -1), images)

    def score(self, images):
        """(detected rate, mean bit accuracy, tampered rate) of float images (n c r r) against the fingerprint."""
        bits = evaluation.decoded_bits(self.fingerprinter, data.to_uint8(images))
        expected = self.fingerprint.expand_as(bits)
        detection = self.fingerprinter.score(bits, expected, self.fpr)
        return (detection.detected.float().mean().item(), bit_accuracy(bits, expected).mean().item(),
                detection.tampered.float().mean().item())

    @property
    def field_mode(self):
        """The victim's sign field as its published config names it ("dog" for unmodulated pairs)."""
        return modulation.field_or_dog(self.fingerprinter.config.modulation)

    def logits(self, images):
        """Differentiable logits (b L), through the whole decoding (the white-box attacker's view)."""
        return self.fingerprinter.logits(images, field_gradient=True)


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
    detected, accuracy, tampered = victim.score(attacked)
    psnrs = evaluation.psnr(attacked, sources)
    return dict(attack=attack, goal=goal, setting=setting, strength=strength, detected=detected,
                bit_accuracy=accuracy, tampered=tampered, psnr=psnrs.mean().item(), psnr_min=psnrs.min().item(),
                ssim=evaluation.ssim(attacked, sources).mean().item(), images=len(sources))


# --- estimates of the fingerprint ------------------------------------------------------

def bm3d_denoise(images, sigma=0.02):
    """BM3D (the `bm3d` package; requirements-attacks.txt) per image, noise std `sigma`."""
    import bm3d

    return per_image(lambda image: bm3d.bm3d_rgb(image, sigma), images)


def tv_denoise(images, weight=0.1):
    """Total-variation denoising (Chambolle, scikit-image) per image: the
    strongest copy estimate of those tried on cifar10_32_v4 (docs/security.md §11)."""
    from skimage.restoration import denoise_tv_chambolle

    return per_image(lambda image: denoise_tv_chambolle(image, weight=weight, channel_axis=-1), images)


def dct_denoise(images, sigma):
    """BM3D's thresholding without its block matching (forgery.dct_denoise,
    every window): fast enough for every image (docs/security.md §27). A few
    images at a time, for its windows' memory."""
    return in_chunks(lambda chunk: forgery.dct_denoise(chunk, sigma, step=1), images, 16)


def per_image(denoise, images):
    """A NumPy denoiser of one h w c float64 image, applied to each float image of n c h w."""
    out = [denoise(image.permute(1, 2, 0).numpy().astype(np.float64)) for image in images]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float().clamp(0, 1)


DENOISERS = {
    "median 3x3": lambda images: forgery.median_filter(images, 3),
    "gaussian sigma 1": forgery.gaussian_denoise,
    "tv 0.1": tv_denoise,
    "bm3d sigma 0.02": bm3d_denoise,
    "dct sigma 0.02": lambda images: dct_denoise(images, 0.02),
    "dct sigma 0.04": lambda images: dct_denoise(images, 0.04),
}


def copy_estimates(images, denoiser):
    """Each image's fingerprint estimated as the image minus its denoised copy (n c h w)."""
    return images - DENOISERS[denoiser](images)


# --- the attacks -------------------------------------------------------------------------

def averaging_family(victim, pool, clean_targets, marked_targets, sizes):
    """The averaging attacks on the victim's own embeddings of the pool
    (embedded once, for the largest N): plain, of copy estimates, scheme-aware."""
    marked_pool = victim.embed(pool[:max(sizes)])
    return (averaging_attacks(victim, pool, clean_targets, marked_targets, sizes, marked_pool=marked_pool)
            + denoised_averaging_attacks(victim, marked_pool, clean_targets, marked_targets, sizes)
            + scheme_aware_attacks(victim, pool, marked_pool, clean_targets, marked_targets, sizes))


def averaging_attacks(victim, pool, clean_targets, marked_targets, sizes, label="averaging",
                      fingerprinted_pool=None, marked_pool=None):
    """mean(N fingerprinted) - mean(N other clean images), added to clean
    targets and subtracted from fingerprinted ones. `fingerprinted_pool`
    (uint8) replaces the victim's own embeddings of `pool` (GAN samples);
    `marked_pool` is those embeddings when already made."""
    if fingerprinted_pool is None and marked_pool is None:
        marked_pool = victim.embed(pool[:max(sizes)])
    rows = []
    for size in sizes:
        marked = data.to_float(fingerprinted_pool[:size] if fingerprinted_pool is not None else marked_pool[:size])
        clean = data.to_float(pool[size:2 * size] if fingerprinted_pool is None else pool[:size])
        estimate = forgery.averaging_estimate(marked, clean).unsqueeze(0)
        for goal, sources in (("forge", clean_targets), ("remove", marked_targets)):
            rows += sweep(victim, label, goal, f"N={size}", sources, estimate)
    return rows


def denoised_averaging_attacks(victim, marked_pool, clean_targets, marked_targets, sizes):
    """No clean images needed: the mean over N fingerprinted images (uint8
    `marked_pool`) of each one minus its median-filtered copy."""
    rows = []
    for size in sizes:
        estimate = copy_estimates(data.to_float(marked_pool[:size]), "median 3x3").mean(0, keepdim=True)
        for goal, sources in (("forge", clean_targets), ("remove", marked_targets)):
            rows += sweep(victim, "averaged copy estimates", goal, f"N={size}", sources, estimate)
    return rows


def scheme_aware_estimate(marked, clean, field_mean=None, mode="dog"):
    """The attacker who has read modulation.py (public code): the residual
    before its sign field, from N fingerprinted and N clean float images
    (n c h w). Each image's deviation from the clean mean, signed by its
    own field, averages to residual x field^2 plus a content term that the
    clean images' own signed deviations cancel. Returns c h w."""
    centre = clean.mean(0, keepdim=True)
    marked_field = modulation.sign_field(marked, field_mean, mode)
    signed = ((marked - centre) * marked_field).mean(0) - ((clean - centre) * modulation.sign_field(
        clean, field_mean, mode)).mean(0)
    return signed / marked_field.pow(2).mean(0).clamp_min(1e-3)


def scheme_aware_attacks(victim, pool, marked_pool, clean_targets, marked_targets, sizes):
    """Averaging by an attacker who knows the content-keyed modulation: the
    unsigned residual is estimated, then signed by each target's own field
    before it is added (forge) or subtracted (remove); with and without the
    field's mean over the attacker's clean images subtracted, as
    --modulation_mean does (he cannot tell which the victim used). The
    field is the one the victim's published config names."""
    rows, mode = [], victim.field_mode
    for size in sizes:
        marked = data.to_float(marked_pool[:size])
        clean = data.to_float(pool[size:2 * size])
        for attack, field_mean in (("scheme-aware averaging", None),
                                   ("scheme-aware averaging, mean field", modulation.mean_field(clean, mode=mode))):
            residual = scheme_aware_estimate(marked, clean, field_mean, mode)
            for goal, sources in (("forge", clean_targets), ("remove", marked_targets)):
                signed = residual * modulation.sign_field(sources, field_mean, mode)
                rows += sweep(victim, attack, goal, f"N={size}", sources, signed)
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
    return rows + nearest_copy_attacks(victim, pool, clean_targets, marked_targets)


NEAREST_POOL = 1000  # fingerprinted images the nearest-image copy attack chooses among


NEAREST_DENOISERS = ("median 3x3", "gaussian sigma 1", "tv 0.1", "dct sigma 0.04")  # BM3D over 1,000 is too slow


def nearest_copy_attacks(victim, pool, clean_targets, marked_targets, denoisers=NEAREST_DENOISERS):
    """The copy attack from the look-alike: each target takes the estimate
    (each of `denoisers`) of the fingerprinted pool image whose
    structure correlates best with its own. A content-keyed residual
    transfers as far as the two images' fields agree, and look-alikes'
    fields agree most."""
    sources = data.to_float(victim.embed(pool[:NEAREST_POOL]))
    nearest = {goal: forgery.nearest_look_alikes(targets, sources)
               for goal, targets in (("forge", clean_targets), ("remove", marked_targets))}
    rows = []
    for denoiser in denoisers:
        estimates = copy_estimates(sources, denoiser)
        for goal, targets in (("forge", clean_targets), ("remove", marked_targets)):
            rows += sweep(victim, "copy, nearest image", goal, denoiser, targets, estimates[nearest[goal]])
    return rows


FAMILIES = ("averaging", "copy", "signal", "regeneration", "white-box", "transfer", "overwrite")


@dataclass
class Options:
    """What run_attacks runs (the attacks.py flags)."""

    families: tuple = FAMILIES
    sizes: tuple = (10, 100, 1000)  # N of the averaging attacks
    denoisers: tuple = tuple(DENOISERS)  # of the copy attack
    bm3d_images: int = 50  # BM3D is slow on a CPU: this many images
    regeneration_steps: int = 1500
    pgd_steps: int = 100
    generated: torch.Tensor = None  # uint8 samples of a generator trained on fingerprinted data
    surrogate: object = None  # the attacker's own Fingerprinter (transfer PGD, overwriting)
    classifier: object = None  # the attacker's clean-vs-fingerprinted classifier (transfer PGD)
    seed: int = 0


def run_attacks(victim, targets, pool, options=Options()):
    """The attacks of `options.families` on the targets, with the attacker's
    pool (uint8 images n c r r, clean). Returns (rows, what was trained)."""
    clean_targets = data.to_float(targets)
    marked_targets = data.to_float(victim.embed(targets))
    rows = [row(victim, "none", "forge", "", "", clean_targets, clean_targets),
            row(victim, "none", "remove", "", "", marked_targets, marked_targets)]
    trained = {}
    families = {
        "averaging": lambda: (averaging_family(victim, pool, clean_targets, marked_targets, options.sizes)
                              + (generated_attacks(victim, pool, clean_targets, options.generated, options.sizes,
                                                   len(targets)) if options.generated is not None else [])),
        "copy": lambda: copy_attacks(victim, pool, clean_targets, marked_targets, options.denoisers,
                                     options.bm3d_images),
        "signal": lambda: signal_processing_attacks(victim, marked_targets, options.bm3d_images),
        "regeneration": lambda: regeneration(),
        "white-box": lambda: whitebox_attacks(victim, marked_targets, options.pgd_steps, options.seed),
        "transfer": lambda: (transfer_attacks(victim, marked_targets, options.surrogate, options.pgd_steps,
                                              options.classifier, options.seed) if options.surrogate else []),
        "overwrite": lambda: overwrite_attacks(victim, marked_targets, options.surrogate, options.seed),
    }

    def regeneration():
        regenerated, networks = regeneration_attacks(victim, pool, marked_targets, options.regeneration_steps,
                                                     options.seed)
        trained.update(networks)
        return regenerated

    for family in tqdm(options.families, desc="attacks", unit="family"):
        rows += families[family]()
    return rows, trained


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


# --- removal beyond averaging (removal.py) -------------------------------------------------

MEDIAN_SIZES = (3, 5, 7)
BM3D_SIGMAS = (0.02, 0.05, 0.1)
AUTOENCODER_BOTTLENECKS = (16, 8, 4)  # channels of the code at a quarter of the side: 3/4, 3/8, 3/16 of the floats
PURIFICATION_SIGMAS = (0.05, 0.1, 0.2, 0.3)
PGD_BUDGETS = (1, 2, 4, 8)  # L-infinity, in 8-bit levels


def in_chunks(function, images, size=100):
    return torch.cat([function(images[start:start + size]) for start in range(0, len(images), size)])


def signal_processing_attacks(victim, marked_targets, bm3d_images):
    """Median filters, BM3D at several noise levels, JPEG 50 then BM3D (BM3D on the first `bm3d_images`)."""
    rows = [row(victim, "median filter", "remove", f"{size}x{size}", "",
                data.to_float(data.to_uint8(removal.median(marked_targets, size))), marked_targets)
            for size in MEDIAN_SIZES]
    if bm3d_images:
        few = marked_targets[:bm3d_images]
        for sigma in tqdm(BM3D_SIGMAS, desc="BM3D", unit="sigma", leave=False):
            rows.append(row(victim, "BM3D", "remove", f"sigma {sigma:g}", "",
                            data.to_float(data.to_uint8(removal.bm3d(few, sigma))), few))
        rows.append(row(victim, "JPEG 50, then BM3D", "remove", "sigma 0.05", "",
                        data.to_float(data.to_uint8(removal.jpeg_then_bm3d(few, 0.05))), few))
    return rows


def regeneration_attacks(victim, pool, marked_targets, steps, seed=0):
    """Autoencoders and a one-step denoiser trained on the attacker's clean
    pool; returns (rows, the first and last training losses of each)."""
    rows, trained = [], {}
    for bottleneck in AUTOENCODER_BOTTLENECKS:
        autoencoder, losses = removal.train_autoencoder(pool, bottleneck, steps, seed)
        trained[f"autoencoder {bottleneck} channels"] = dict(first_loss=losses[0], last_loss=losses[-1])
        regenerated = data.to_float(data.to_uint8(in_chunks(lambda x: removal.regenerate(autoencoder, x),
                                                            marked_targets)))
        rows.append(row(victim, "autoencoder", "remove", f"{bottleneck} channels at 1/4 side", "", regenerated,
                        marked_targets))
    denoiser, losses = removal.train_denoiser(pool, steps, seed)
    trained["denoiser"] = dict(first_loss=losses[0], last_loss=losses[-1])
    for sigma in PURIFICATION_SIGMAS:
        purified = data.to_float(data.to_uint8(in_chunks(lambda x: removal.purify(denoiser, x, sigma, seed),
                                                         marked_targets)))
        rows.append(row(victim, "denoiser purification", "remove", f"noise sigma {sigma:g}", "", purified,
                        marked_targets))
    return rows, trained


def pgd_rows(victim, attack, marked_targets, loss_for, steps, seed=0):
    """PGD at every budget; `loss_for(images, generator)` gives the loss of a chunk."""
    rows = []
    for budget in tqdm(PGD_BUDGETS, desc=attack, unit="budget", leave=False):
        generator = torch.Generator().manual_seed(seed + budget)
        adversarial = in_chunks(lambda x: removal.pgd(loss_for(x, generator), x, budget / 255, steps),
                                marked_targets)
        rows.append(row(victim, attack, "remove", f"{steps} steps", f"{budget}/255", adversarial, marked_targets))
    return rows


def whitebox_attacks(victim, marked_targets, steps, seed=0):
    """PGD with our decoder in hand, towards a fresh random string per image."""
    length = victim.fingerprinter.fingerprint_length
    return pgd_rows(victim, "white-box PGD", marked_targets, lambda x, generator: removal.towards_bits(
        victim.logits, torch.randint(0, 2, (len(x), length), generator=generator).float()), steps, seed)


def transfer_attacks(victim, marked_targets, surrogate, steps, classifier=None, seed=0):
    """PGD against the attacker's own decoder (towards random strings) and,
    given one, a clean-vs-fingerprinted classifier (towards clean): no
    access to our weights."""
    length = surrogate.fingerprint_length
    rows = pgd_rows(victim, "transfer PGD, attacker's decoder", marked_targets,
                    lambda x, generator: removal.towards_bits(
                        lambda images: surrogate.logits(images, field_gradient=True),
                        torch.randint(0, 2, (len(x), length), generator=generator).float()), steps, seed)
    if classifier is not None:
        rows += pgd_rows(victim, "transfer PGD, clean-vs-fingerprinted classifier", marked_targets,
                         lambda x, generator: removal.towards_clean(classifier), steps, seed)
    return rows


def overwrite_attacks(victim, marked_targets, surrogate, seed=0):
    """A new random fingerprint embedded over ours, with our encoder and with the attacker's."""
    rows = []
    for who, pair in (("our encoder (insider)", victim.fingerprinter), ("the attacker's encoder", surrogate)):
        if pair is None or pair.encoder is None:
            continue
        rewritten = in_chunks(lambda x: removal.overwrite(pair.encode, x, pair.fingerprint_length, seed),
                              marked_targets)
        rows.append(row(victim, "overwrite", "remove", who, "", rewritten, marked_targets))
    return rows
