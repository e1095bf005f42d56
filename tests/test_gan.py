"""The DCGAN and the transferability experiment's plumbing (smoke size)."""

import json
import os

import pytest
import torch

import transferability
from fingerprinting import perturbations
from fingerprinting.generators import gan


@pytest.mark.parametrize("resolution", [32, 64])
def test_generator_and_discriminator_shapes(resolution):
    generator, discriminator = gan.build(resolution, 8)
    images = generator(torch.randn(3, gan.LATENT_SIZE))
    assert images.shape == (3, 3, resolution, resolution) and 0 <= images.min() and images.max() <= 1
    assert discriminator(images).shape == (3,)


def test_gan_training_resumes_and_generates_deterministically(tmp_path, sample_folder):
    common = ["train", "--data_dir", sample_folder, "--output_dir", str(tmp_path), "--width", "8",
              "--batch_size", "8", "--cuda", "-1", "--log_interval", "2"]
    gan.train_gan(gan.parse_args(common + ["--steps", "4"]))
    path = gan.train_gan(gan.parse_args(common + ["--steps", "6", "--resume"]))
    assert torch.load(path, weights_only=True)["step"] == 6
    assert [json.loads(line)["step"] for line in open(tmp_path / "metrics.jsonl")] == [2, 4, 6]
    generator = gan.load_generator(path)
    first, second = gan.generate(generator, 5, seed=1), gan.generate(generator, 5, seed=1)
    assert first.dtype == torch.uint8 and torch.equal(first, second)


def test_mirror_augmentation_flips_about_half_the_images_left_to_right():
    images = torch.rand(400, 3, 8, 8)
    mirrored = gan.mirrored_at_random(images, torch.Generator().manual_seed(0))
    flipped = torch.tensor([torch.equal(m, i.flip(-1)) for m, i in zip(mirrored, images)])
    kept = torch.tensor([torch.equal(m, i) for m, i in zip(mirrored, images)])
    assert bool((flipped ^ kept).all()) and 150 < int(flipped.sum()) < 250


def test_weight_perturbations_change_copies_only():
    generator, _ = gan.build(32, 8)
    before = [p.clone() for p in generator.parameters()]
    rounded = transferability.perturbed(generator, decimals=1)
    assert all(torch.equal(p, q) for p, q in zip(before, generator.parameters()))
    assert all(torch.equal(p, torch.round(p, decimals=1)) for p in rounded.parameters())
    noisy = transferability.perturbed(generator, noise_std=0.1)
    assert any(not torch.equal(p, q) for p, q in zip(noisy.parameters(), generator.parameters()))


@pytest.mark.slow
def test_transferability_smoke_run_writes_the_report(tmp_path):
    report = transferability.run(transferability.parse_args(["--smoke", "--output_dir", str(tmp_path),
                                                             "--cuda", "-1"]))
    assert set(report["table"]) == {"clean", "fingerprinted"}
    assert len(report["model_robustness"]) == len(transferability.QUANTISATION_DECIMALS) + len(
        transferability.WEIGHT_NOISE_STDS)
    assert 0 <= report["attribution"]["open_world_accuracy"] <= 1
    assert {row["perturbation"] for row in report["image_robustness"]} == set(perturbations.PERTURBATIONS)
    for name in ["report.md", "report.json", "image_robustness.csv", "model_robustness.csv", "model_robustness.png"]:
        assert os.path.getsize(tmp_path / name) > 0
