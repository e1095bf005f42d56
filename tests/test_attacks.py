"""The averaging and copy attacks (attacks.py, fingerprinting/forgery.py and
attack_suite.py), and the pieces of the defence against them."""

import json
import os
import sys

import numpy as np
import pytest
import torch

import attacks
from fingerprinting import attack_suite, forgery, modulation, sample_images
from fingerprinting.api import Fingerprinter
from fingerprinting.bits import bit_accuracy


def test_averaging_estimate_recovers_a_planted_additive_pattern():
    generator = torch.Generator().manual_seed(0)
    pattern = 0.05 * torch.randn(3, 32, 32, generator=generator)
    images = torch.rand(2000, 3, 32, 32, generator=generator)
    estimate = forgery.averaging_estimate(images[:1000] + pattern, images[1000:])
    correlation = torch.corrcoef(torch.stack([estimate.flatten(), pattern.flatten()]))[0, 1]
    assert correlation > 0.95
    assert (estimate - pattern).pow(2).mean().sqrt() < 0.3 * pattern.pow(2).mean().sqrt()


@pytest.mark.parametrize("denoiser", attack_suite.DENOISERS)
def test_each_copy_estimate_recovers_a_planted_pattern_from_one_smooth_photo(denoiser):
    photo = torch.from_numpy(np.array(sample_images.sample_crops(1, 64)[0])).permute(2, 0, 1)[None].float() / 255
    smooth = modulation.gaussian_blur(photo, 2.0)
    pattern = 0.03 * torch.randn(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    estimate = attack_suite.copy_estimates((smooth + pattern).clamp(0, 1), denoiser)
    assert torch.nn.functional.cosine_similarity(estimate.flatten(), pattern.flatten(), dim=0) > 0.5


def test_the_dct_denoiser_halves_noise_and_keeps_a_smooth_photo():
    photo = torch.from_numpy(np.array(sample_images.sample_crops(4, 32))).permute(0, 3, 1, 2).float() / 255
    smooth = modulation.gaussian_blur(photo, 1.5)
    noise = 0.02 * torch.randn(smooth.shape, generator=torch.Generator().manual_seed(0))
    for step in (1, 2):
        assert (forgery.dct_denoise(smooth, step=step) - smooth).pow(2).mean().sqrt() < 0.006  # 0.0035, 0.0042
        left = forgery.dct_denoise(smooth + noise, step=step) - smooth
        assert left.pow(2).mean().sqrt() < 0.6 * noise.pow(2).mean().sqrt()  # 0.0067, 0.0072 of 0.02


class AdditiveToy:
    """A purely additive watermark (the same pattern on every image) with a
    correlation detector: what the averaging attack was made for."""

    length = 32

    def __init__(self):
        generator = torch.Generator().manual_seed(1)
        orthonormal, _ = torch.linalg.qr(torch.randn(3 * 16 * 16, self.length, generator=generator))
        self.patterns = orthonormal.T.reshape(self.length, 3, 16, 16) * (3 * 16 * 16) ** 0.5  # rms 1 each
        self.device = torch.device("cpu")
        self.fingerprint_length = self.length

    def encode(self, images, bits):
        signs = (bits * 2 - 1)[:, :, None, None, None]
        return (images + 0.025 * (signs * self.patterns).sum(1) / self.length ** 0.5).clamp(0, 1)

    def read_bits(self, images, searches=None):  # Fingerprinter.read_bits's searches: this toy has none
        return ((images - 0.5).unsqueeze(1) * self.patterns).flatten(2).sum(2).gt(0).to(torch.uint8)

    def score(self, bits, expected, fpr):
        return Fingerprinter.score(self, bits, expected, fpr)


def flat_images(count, seed):
    return (0.5 + 0.01 * torch.randn(count, 3, 16, 16, generator=torch.Generator().manual_seed(seed))).clamp(0, 1)


def test_the_averaging_attack_forges_and_strips_a_purely_additive_watermark_every_time():
    toy = AdditiveToy()
    fingerprint = torch.randint(0, 2, (toy.length,), generator=torch.Generator().manual_seed(2))
    victim = attack_suite.Victim(toy, fingerprint, fpr=1e-3)
    images = (flat_images(240, 3) * 255).round().to(torch.uint8)
    clean, marked = images[:40].float() / 255, victim.embed(images[:40]).float() / 255
    rows = attack_suite.averaging_attacks(victim, images[40:], clean, marked, sizes=[100])
    assert victim.score(clean)[0] == 0 and victim.score(marked)[0] == 1  # the toy works
    best = {entry["goal"]: entry for entry in attack_suite.best_attacks(rows)}
    assert best["forge"]["detected"] == 1.0 and best["remove"]["detected"] == 0.0
    assert best["forge"]["psnr_min"] >= attack_suite.ADMISSIBLE_PSNR


def test_agreement_ignores_the_scale_of_the_logits():
    bits = torch.randint(0, 2, (4, 100), generator=torch.Generator().manual_seed(0)).float()
    logits = (bits * 2 - 1) * 5
    assert torch.allclose(forgery.agreement(logits, bits), forgery.agreement(logits * 1e-3, bits))
    assert forgery.agreement(logits, bits).min() > 0.7
    assert forgery.agreement(-logits, bits).max() < -0.7


def test_without_group_mean_residuals_leaves_each_group_nothing_to_average():
    images = torch.rand(12, 3, 8, 8)
    residuals = torch.randn(12, 3, 8, 8) + torch.randn(1, 3, 8, 8)  # a shared pattern plus each image's own
    out = forgery.without_group_mean_residuals(images, images + residuals, 3) - images
    for part, original in zip(out.split(4), residuals.split(4)):
        assert part.mean(0).abs().max() < 1e-6
        assert torch.allclose(part[1:] - part[:1], original[1:] - original[:1], atol=1e-6)


def test_attack_batch_pastes_other_images_residuals_at_the_drawn_psnr():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(16, 3, 32, 32, generator=generator) * 0.5 + 0.25
    bits = forgery.grouped_bits(torch.randint(0, 2, (16, 100), generator=generator).float(), 4)
    assert all(len(torch.unique(part, dim=0)) == 1 for part in bits.split(4))
    fingerprinted = images + 0.02 * torch.randn(16, 3, 32, 32, generator=generator)
    forged, pasted_bits, stripped, kept = forgery.attack_batch(images, fingerprinted, bits, 4, (30.0, 30.0), generator)
    change = (forged - images).pow(2).mean((1, 2, 3)).sqrt()
    assert torch.allclose(change, torch.full_like(change, forgery.psnr_to_rms(30.0).item()), rtol=0.02)
    for index in range(16):  # each forgery carries another group's or another image's fingerprint
        assert not torch.equal(pasted_bits[index], bits[index]) or index // 4 != (index + 4) % 16 // 4
    assert torch.equal(kept, bits) and stripped.shape == images.shape


def test_attack_batch_with_fields_pastes_the_unsigned_group_residual_signed_by_the_target():
    """The scheme-aware kind: a shared pre-field residual, modulated on each
    image, is recovered from a group and re-signed by the target's own field."""
    generator = torch.Generator().manual_seed(0)
    images = modulation.gaussian_blur(torch.rand(16, 3, 32, 32, generator=generator), 1.0)
    fields = modulation.sign_field(images)
    shared = 0.03 * torch.randn(1, 3, 32, 32, generator=generator)
    fingerprinted = modulation.modulate(images, shared.expand(16, -1, -1, -1))
    bits = forgery.grouped_bits(torch.randint(0, 2, (16, 100), generator=generator).float(), 4)
    unsigned = forgery.unsigned_group_means(fingerprinted - images, fields, torch.arange(16).tensor_split(4))
    assert torch.nn.functional.cosine_similarity(unsigned.flatten(1), shared.flatten(1)).min() > 0.9
    signed_forgeries = 0
    for seed in range(8):
        forged, pasted_bits, _, _ = forgery.attack_batch(images, fingerprinted, bits, 4, (30.0, 30.0),
                                                         torch.Generator().manual_seed(seed), fields)
        pasted = (forged - images).flatten(1)
        like_target = torch.nn.functional.cosine_similarity(pasted, (shared * fields).flatten(1))
        signed_forgeries += int((like_target > 0.8).sum())
        assert not any(torch.equal(pasted_bits[i], bits[i]) for i in range(16))
    assert signed_forgeries > 8  # about one in five forgeries is the scheme-aware one


# The exact residual comes back whole; the DCT copy estimate keeps most of the
# noise-like residual (cosine 0.48-0.84 measured), where the batch mean keeps a
# sixteenth of it (cosine 0.25).
@pytest.mark.parametrize("option, likeness", [("look_alikes", 0.9), ("look_alike_dct", 0.4)])
def test_attack_batch_with_look_alikes_pastes_the_residual_of_the_most_alike_image(option, likeness):
    generator = torch.Generator().manual_seed(0)
    photos = torch.from_numpy(np.stack([np.array(crop) for crop in sample_images.sample_crops(8, 32)]))
    photos = photos.permute(0, 3, 1, 2).float() / 255
    twins = (photos + 0.01 * torch.randn(photos.shape, generator=generator)).clamp(0, 1)
    images = torch.cat([photos, twins])  # image i and i + 8 look alike
    assert torch.equal(forgery.look_alike_in_batch(images), torch.arange(16).roll(8))
    residuals = 0.02 * torch.randn(images.shape, generator=generator)
    bits = torch.randint(0, 2, (16, 100), generator=generator).float()
    found = 0
    for seed in range(8):
        forged, pasted_bits, _, _ = forgery.attack_batch(images, images + residuals, bits, 1, (30.0, 30.0),
                                                         torch.Generator().manual_seed(seed), **{option: True})
        pasted = (forged - images).flatten(1)
        from_twin = torch.nn.functional.cosine_similarity(pasted, residuals.roll(8, 0).flatten(1)) > likeness
        assert torch.equal(pasted_bits[from_twin], bits.roll(8, 0)[from_twin])
        found += int(from_twin.sum())
    assert found > 8  # about one forgery in five


@pytest.mark.parametrize("mode", modulation.BANDS)
def test_an_images_own_modulated_residual_comes_back_and_another_images_does_not(mode):
    generator = torch.Generator().manual_seed(0)
    images = modulation.gaussian_blur(torch.rand(64, 3, 32, 32, generator=generator), 1.0)
    residual = 0.03 * torch.randn(1, 3, 32, 32, generator=generator).expand(64, -1, -1, -1)

    def recovered(fingerprinted, clean):
        read = modulation.demodulate(fingerprinted, mode=mode) - modulation.demodulate(clean, mode=mode)
        embedded = modulation.smoothed(residual, mode)
        return torch.nn.functional.cosine_similarity(read.flatten(1), embedded.flatten(1)).mean().item()

    own = modulation.modulate(images, residual, mode=mode)
    copied = images + (own - images).roll(1, 0)  # image i gets image i-1's modulated residual
    averaged = images + (own - images).mean(0, keepdim=True)
    # A folded field spends more of the image near its turns, where field^2 is small.
    assert recovered(own, images) > (0.4 if mode in modulation.FOLDS else 0.6)
    assert abs(recovered(copied, images)) < 0.15
    assert abs(recovered(averaged, images)) < 0.3


def test_the_fine_field_agrees_by_chance_between_fewer_pairs_of_photos():
    """A copied residual comes back as much as the two images' fields agree:
    the spread of that agreement over pairs of real photos is what a copy
    forgery exploits, and fine_dog's finer field narrows it."""
    photos = torch.stack([torch.from_numpy(np.array(crop)).permute(2, 0, 1)
                          for crop in sample_images.sample_crops(200, 32)]).float() / 255

    def pair_spread(mode):
        fields = modulation.sign_field(photos, mode=mode)
        fields = (fields - fields.mean(0, keepdim=True)).flatten(1)
        fields = fields / fields.norm(dim=1, keepdim=True)
        pairs = fields @ fields.T
        return pairs[~torch.eye(len(pairs), dtype=torch.bool)].std().item()

    assert pair_spread("fine_dog") < 0.7 * pair_spread("dog")


@pytest.mark.parametrize("smooth, plain, size, bound", [("smooth_dog", "dog", 64, 0.6),
                                                        ("smooth_fine_dog", "fine_dog", 32, 0.85)])
@pytest.mark.parametrize("denoiser", ["median 3x3", "gaussian sigma 1", "tv 0.1"])
def test_a_copy_estimate_sees_less_of_a_smoothed_residual(denoiser, smooth, plain, size, bound):
    """The smoothed modes blur the residual before its field signs it: an
    image minus its denoised copy then holds mostly the image's own detail,
    and little of the fingerprint a copy attack would paste (less so at
    32 px, where the blur is half as wide)."""
    photos = sample_batch(16, size=size).float() / 255
    residual = 0.03 * torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))

    def captured(mode):
        embedded = modulation.modulate(photos, residual.expand_as(photos), mode=mode)
        true = forgery.at_rms(embedded - photos, 0.02)
        marked = (photos + true).clamp(0, 1)
        estimate = attack_suite.copy_estimates(marked, denoiser)
        return torch.nn.functional.cosine_similarity(estimate.flatten(1), true.flatten(1)).mean().item()

    assert captured(smooth) < bound * captured(plain)


def test_a_folded_field_agrees_less_with_a_look_alike_and_keeps_through_jpeg():
    """folded_smooth_dog turns its sign over at several levels of the band:
    the field of the photo a look-alike copy attacker would pick agrees far
    less with the target's than smooth_dog's does, while JPEG 50 leaves it."""
    from fingerprinting import perturbations

    photos = sample_batch(64, size=64).float() / 255
    pool = sample_batch(256, size=64, seed=1).float() / 255
    look_alikes = pool[forgery.nearest_look_alikes(photos, pool)]

    def agreement(mode, others):
        fields = modulation.sign_field(photos, mode=mode)
        return torch.nn.functional.cosine_similarity(
            fields.flatten(1), modulation.sign_field(others, mode=mode).flatten(1)).mean().item()

    assert agreement("folded_smooth_dog", look_alikes) < 0.3 * agreement("smooth_dog", look_alikes)
    assert agreement("folded_smooth_dog", perturbations.jpeg(photos, 50)) > 0.9


def test_the_look_alike_search_finds_a_slightly_edited_copy_of_each_target():
    """The nearest-image copy attack's source choice: among other photos, an
    image's own copy under a little noise is the best match for it."""
    photos = sample_batch(64).float() / 255
    noisy = (photos + 0.02 * torch.randn(photos.shape, generator=torch.Generator().manual_seed(0))).clamp(0, 1)
    matches = (forgery.structure(noisy) @ forgery.structure(photos).T).argmax(1)
    assert (matches == torch.arange(len(photos))).float().mean() >= 0.95


def test_attacks_smoke_run_writes_every_attack(tmp_path):
    args = attacks.parse_args(["--smoke", "--output_dir", str(tmp_path), "--cuda", "-1", "--bm3d_images", "1"])
    report = attacks.run(args)
    names = {entry["attack"] for entry in report["rows"]}
    assert {"averaging", "averaged copy estimates", "copy", "copy, nearest image"} <= names
    none = {entry["goal"]: entry for entry in report["rows"] if entry["attack"] == "none"}
    assert none["forge"]["detected"] == 0.0 and none["remove"]["detected"] >= 0.9
    assert {"forge", "remove"} == {entry["goal"] for entry in report["best"]}
    for name in ("attacks.json", "attacks.md", "attacks.png"):
        assert os.path.getsize(tmp_path / name) > 0
    assert json.loads((tmp_path / "attacks.json").read_text())["smoke"] is True


def test_attacks_refuses_bad_sizes(capsys):
    with pytest.raises(SystemExit):
        attacks.parse_args(["--output_dir", "x", "--model", "cifar10_32", "--sizes", "ten"])
    assert "--sizes" in capsys.readouterr().err


def sample_batch(count, size=32, seed=0):
    from fingerprinting import data
    from fingerprinting.sample_images import sample_crops

    return torch.stack([data.pil_to_uint8(crop) for crop in sample_crops(count, size, seed)])


def test_pgd_with_a_large_budget_reaches_its_target_string():
    from fingerprinting import data, removal

    fp = Fingerprinter.load("cifar10_32")
    images = data.to_float(sample_batch(8))
    target = torch.randint(0, 2, (8, 100), generator=torch.Generator().manual_seed(5)).float()
    before = bit_accuracy(fp.read_bits(images), target).mean()
    adversarial = removal.pgd(removal.towards_bits(fp.logits, target), images, 16 / 255, steps=40)
    assert (adversarial - images).abs().max() <= 16.5 / 255
    assert before < 0.7 and bit_accuracy(fp.read_bits(adversarial), target).mean() > 0.95


def test_the_regeneration_networks_learn_from_clean_images():
    from fingerprinting import removal

    images = sample_batch(16, size=16)
    for train in (lambda: removal.train_autoencoder(images, 8, 40), lambda: removal.train_denoiser(images, 40)):
        _, losses = train()
        assert sum(losses[-5:]) < 0.6 * sum(losses[:5])


def test_an_inverted_fingerprint_is_flagged_as_tampered():
    fp = Fingerprinter.load("cifar10_32_robust")
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 0.5 + 0.25
    fingerprint = torch.randint(0, 2, (100,), generator=torch.Generator().manual_seed(1))
    marked = fp.embed(images, 1 - fingerprint)
    result = fp.detect(marked, fingerprint=fingerprint)
    assert result.tampered.all() and not result.detected.any()
    assert not fp.detect(images, fingerprint=fingerprint).tampered.any()


def test_an_attacker_who_knows_the_field_recovers_the_residual_that_blind_averaging_misses():
    generator = torch.Generator().manual_seed(0)
    images = modulation.gaussian_blur(torch.rand(2000, 3, 32, 32, generator=generator), 1.0)
    residual = 0.03 * torch.randn(3, 32, 32, generator=generator)
    marked = modulation.modulate(images[:1000], residual.expand(1000, -1, -1, -1))

    def correlation(estimate):
        return torch.corrcoef(torch.stack([estimate.flatten(), residual.flatten()]))[0, 1].item()

    assert abs(correlation(forgery.averaging_estimate(marked, images[1000:]))) < 0.3
    assert correlation(attack_suite.scheme_aware_estimate(marked, images[1000:])) > 0.9


def test_the_waves_classifier_transfer_reports_what_its_surrogate_sees(tmp_path):
    from test_secrecy import fake_transferability_dir

    transfer = fake_transferability_dir(tmp_path / "transfer", "01" * 50)
    args = attacks.parse_args(["--smoke", "--output_dir", str(tmp_path / "out"), "--cuda", "-1", "--attacks",
                               "transfer", "--transferability_dir", str(transfer)])
    report = attacks.run(args)
    assert {"transfer PGD, attacker's decoder", "transfer PGD, clean-vs-fingerprinted classifier"} <= {
        entry["attack"] for entry in report["rows"]}
    held_out = report["classifier"]["held_out"]
    assert held_out["low"] <= held_out["accuracy"] <= held_out["high"] and held_out["images"] == 2 * args.num_targets
    assert 0 <= report["classifier"]["fingerprinted_real_called_fingerprinted"] <= 1
    assert "WAVES surrogate" in (tmp_path / "out" / "attacks.md").read_text()


def test_a_pool_embedded_less_its_mean_residual_gives_the_averaging_attack_nothing():
    """The defence of docs/security.md §12 on a content-keyed pair: the mean of
    the fingerprinted pool minus the mean of the clean one (the averaging
    estimate) shrinks to the 8-bit rounding, while each image keeps its bits."""
    fingerprint = torch.randint(0, 2, (100,), generator=torch.Generator().manual_seed(1))
    victim = attack_suite.Victim(Fingerprinter.load("cifar10_32_v4"), fingerprint, fpr=1e-6)
    pool = torch.stack([torch.from_numpy(np.array(crop)).permute(2, 0, 1)
                        for crop in sample_images.sample_crops(96, 32, seed=4)])

    def estimate():
        marked = victim.embed(pool).float() / 255
        return (marked - pool.float() / 255).mean(0).pow(2).mean().sqrt().item(), victim.score(marked)

    (kept, kept_scores), rms = estimate(), victim.take_out_residual_mean(pool)
    taken, taken_scores = estimate()
    assert rms > 0 and taken < 0.3 * kept
    assert taken_scores[1] >= kept_scores[1] - 0.01 and taken_scores[0] >= 0.95


def test_a_genuine_residual_is_consistent_with_its_own_image_and_a_copied_one_is_not():
    """benchmarks/consistency_check.py's statistic: the encoder's bit-dependent
    residual for an image agrees with that image's detail when the image was
    fingerprinted, not when it is clean or carries another image's residual."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
    from consistency_check import consistency

    fingerprint = torch.randint(0, 2, (100,), generator=torch.Generator().manual_seed(2))
    victim = attack_suite.Victim(Fingerprinter.load("cifar10_32_v4"), fingerprint, fpr=1e-6)
    clean = torch.stack([torch.from_numpy(np.array(crop)).permute(2, 0, 1)
                         for crop in sample_images.sample_crops(32, 32, seed=5)]).float() / 255
    marked = victim.embed((clean * 255).round().to(torch.uint8)).float() / 255
    copied = (clean + (marked - clean).roll(1, 0)).clamp(0, 1)  # image i carries image i-1's residual
    bits = fingerprint.float().expand(len(clean), -1)
    scores = {name: consistency(victim.fingerprinter, images, bits) for name, images in
              (("clean", clean), ("marked", marked), ("copied", copied))}
    for high_pass in scores["marked"]:
        genuine, other, none = (scores[name][high_pass] for name in ("marked", "copied", "clean"))
        assert genuine.median() > 3 * max(other.median().abs(), none.median().abs(), 0.01)


def test_a_pool_drawn_from_a_folder_that_holds_the_targets_leaves_them_out(tmp_path):
    """--pool_dir may hold --data_dir's images; the attacker's pool must not
    hand him a target's own copy, or a look-alike copy is no forgery."""
    from fingerprinting import data

    targets_dir = sample_images.write_sample_images(str(tmp_path / "all" / "targets"), count=12, size=32)
    sample_images.write_sample_images(str(tmp_path / "all" / "others"), count=12, size=32, seed=1)
    args = attacks.parse_args(["--output_dir", str(tmp_path / "out"), "--data_dir", targets_dir,
                               "--pool_dir", str(tmp_path / "all"), "--recursive", "--num_images", "30",
                               "--model", "cifar10_32", "--num_targets", "6", "--cuda", "-1"])
    targets, pool = attacks.load_images(args, 32)
    everything = data.load_all(str(tmp_path / "all"), data.list_images(str(tmp_path / "all"), True), 32)
    assert len(targets) == 6 and len(pool) == len(everything) - 6
    assert not (pool.unsqueeze(1) == targets.unsqueeze(0)).flatten(2).all(2).any()
    args.num_images = 18  # a pool of 12 asked for: the copies dropped are made up from the folder
    targets, pool = attacks.load_images(args, 32)
    assert len(pool) == 12 and not (pool.unsqueeze(1) == targets.unsqueeze(0)).flatten(2).all(2).any()
