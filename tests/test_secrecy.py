"""Steganalysis attacks: the features, the ATS logic, the CNN detector, and
secrecy.py end to end at smoke size."""

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from fingerprinting import steganalysis
from fingerprinting.generators import gan
from fingerprinting.sample_images import sample_crops

pytest.importorskip("sklearn", reason="the secrecy extra: pip install -r requirements-secrecy.txt")


def photos(count, size=32, seed=0):
    return torch.stack([torch.from_numpy(np.array(crop)).permute(2, 0, 1) for crop in sample_crops(count, size, seed)])


def noise_embedder(seed=0, amplitude=3):
    """A stand-in for an encoder whose every embedding adds detectable noise."""
    generator = torch.Generator().manual_seed(seed)

    def embed(images):
        noise = torch.randint(-amplitude, amplitude + 1, images.shape, generator=generator)
        return (images.long() + noise).clamp(0, 255).to(torch.uint8)
    return embed


def test_spam_features_are_transition_probabilities():
    images = photos(6)
    features = steganalysis.spam_features(images)
    assert features.shape == (6, 3 * 686)
    # Per (d1, d2) and direction the probabilities sum to 1 where the pair occurs, else 0;
    # the features average four directions.
    quarters = features.reshape(6, 3 * 2, 49, 7).sum(axis=3) * 4
    assert np.allclose(quarters, np.round(quarters)) and quarters.min() >= 0 and quarters.max() <= 4 + 1e-9
    assert np.isclose(quarters, 4).mean() > 0.5
    flat = steganalysis.spam_features(torch.full((1, 3, 16, 16), 100, dtype=torch.uint8))
    zero = (3 * 7 + 3) * 7 + 3  # differences (0, 0) -> 0 with certainty
    assert np.allclose(flat[0, [zero, 343 + zero]], 1) and flat.sum() == 6


def test_ats_finds_an_embedding_that_adds_noise_and_not_one_that_does_nothing():
    images = photos(120, seed=1)
    embed = noise_embedder()
    labels = np.array([1] * 60 + [0] * 60)
    test = torch.cat([embed(images[:60]), images[60:]])
    predictions, _ = steganalysis.ats_predictions(test, embed)
    assert steganalysis.accuracy_with_interval(predictions, labels)["accuracy"] >= 0.65  # measured 0.725
    # Nothing to find: the same test set, but the victim embedded nothing.
    predictions, _ = steganalysis.ats_predictions(images, embed)
    assert steganalysis.accuracy_with_interval(predictions, labels)["low"] <= 0.5


def test_cnn_detector_learns_a_fixed_pattern_and_generalises_to_new_images():
    pattern = torch.randint(-6, 7, (3, 32, 32), generator=torch.Generator().manual_seed(0))
    add = lambda images: (images.long() + pattern).clamp(0, 255).to(torch.uint8)  # noqa: E731
    train, test = photos(200, seed=2), photos(100, seed=3)
    detector = steganalysis.train_detector(train, add(train), steps=150)
    predictions = steganalysis.detector_predictions(detector, torch.cat([add(test[:50]), test[50:]]))
    assert steganalysis.accuracy_with_interval(predictions, [1] * 50 + [0] * 50)["accuracy"] >= 0.9


def test_wilson_interval():
    result = steganalysis.accuracy_with_interval([1] * 50 + [0] * 50, [1] * 100)
    assert result["accuracy"] == 0.5 and result["images"] == 100
    assert result["low"] == pytest.approx(0.4038, abs=1e-3) and result["high"] == pytest.approx(0.5962, abs=1e-3)
    assert steganalysis.accuracy_with_interval([1] * 10, [1] * 10)["high"] == 1.0


def fake_transferability_dir(folder, bits):
    """Two untrained GANs and the fingerprint record, laid out as transferability.py writes them."""
    for name in ("gan_fingerprinted", "gan_clean"):
        generator, discriminator = gan.build(32, 8)
        os.makedirs(folder / name)
        optimizers = [torch.optim.Adam(generator.parameters()), torch.optim.Adam(discriminator.parameters())]
        gan.save(str(folder / name / "gan.pth"), generator, discriminator, optimizers, 0,
                 SimpleNamespace(resolution=32, width=8))
    os.makedirs(folder / "fingerprinted_data")
    (folder / "fingerprinted_data" / "embedded_fingerprints.txt").write_text(f"x.png {bits}\n")
    return folder


@pytest.mark.slow
def test_secrecy_smoke_run_writes_the_report(tmp_path):
    import secrecy

    transfer = fake_transferability_dir(tmp_path / "transfer", "01" * 50)
    args = secrecy.parse_args(["--smoke", "--output_dir", str(tmp_path / "out"), "--cuda", "-1",
                               "--transferability_dir", str(transfer)])
    report = secrecy.run(args)
    assert set(report["results"]) == {"real images", "GAN images"}
    for result in report["results"].values():
        for attacker in ("ats", "outsider", "insider"):
            assert result[attacker]["low"] <= result[attacker]["accuracy"] <= result[attacker]["high"]
            assert result[attacker]["images"] == 40
    # The shipped model's fingerprint is really in the real test set's fingerprinted half.
    assert report["results"]["real images"]["victim_decoder_bit_accuracy"] > 0.95
    assert set(report["detectors_on_own_encoder"]) == {"outsider", "insider"}
    assert report["attacker_encoder"]["command"].startswith("python train.py --data_dir")
    assert json.loads((tmp_path / "out" / "secrecy.json").read_text())["smoke"] is True
    assert "| real images |" in (tmp_path / "out" / "secrecy.md").read_text()


def test_secrecy_uses_the_images_it_has_and_refuses_too_few(tmp_path):
    import secrecy
    from fingerprinting.errors import UserError
    from fingerprinting.sample_images import write_sample_images

    folder = write_sample_images(str(tmp_path / "images"), count=150, size=32)
    args = secrecy.parse_args(["--model", "cifar10_32", "--data_dir", folder, "--output_dir", str(tmp_path / "out"),
                               "--num_images", "40", "--cuda", "-1"])
    test, train, attacker_dir = secrecy.split_real_images(args, str(tmp_path / "out"), 32)
    assert (len(test), len(train), args.num_train, len(os.listdir(attacker_dir))) == (40, 110, 110, 110)
    args = secrecy.parse_args(["--model", "cifar10_32", "--data_dir", folder, "--output_dir", str(tmp_path / "o2"),
                               "--num_images", "60", "--cuda", "-1"])
    with pytest.raises(UserError, match="at least 100"):
        secrecy.split_real_images(args, str(tmp_path / "o2"), 32)
