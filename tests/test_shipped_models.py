"""The pretrained pairs in saved_models/: they load, and embed -> PNG -> detect
recovers the bits, on built-in sample photos and on real dataset images."""

import os
import tarfile

import pytest

from fingerprinting import detection, embedding
from fingerprinting.checkpoints import shipped_models

import demo
from conftest import SHARED_DATA

MODELS = shipped_models()
CIFAR10, CELEBA = ("cifar10-train.tar.gz", []), ("celeba-small-89x109.tar.gz", ["--center_crop", "74"])
DATASET_FOR = {"cifar10_32": CIFAR10, "cifar10_32_robust": CIFAR10, "celeba_64": CELEBA, "celeba_64_robust": CELEBA}


def round_trip(model, images, output, *extra):
    embedding.embed_folder(embedding.parse_args(
        ["--model", model, "--data_dir", str(images), "--output_dir", str(output / "emb"), "--cuda", "-1",
         "--num_workers", "0", *extra]))
    return detection.detect_folder(detection.parse_args(
        ["--model", model, "--data_dir", str(output / "emb" / "fingerprinted_images"),
         "--output_dir", str(output / "det"), "--cuda", "-1", "--num_workers", "0",
         "--embedded_fingerprints", str(output / "emb" / "embedded_fingerprints.txt")]))


def test_a_model_is_shipped():
    assert {"cifar10_32", "cifar10_32_robust"} <= set(MODELS)


@pytest.mark.parametrize("model", [m for m in MODELS if m.endswith("_robust")])
def test_robust_model_survives_a_jpeg_50_resave_of_the_files(model, sample_folder, tmp_path):
    round_trip(model, sample_folder, tmp_path)
    jpegs = demo.save_as_jpeg(str(tmp_path / "emb" / "fingerprinted_images"), str(tmp_path / "jpeg"), 50)
    summary = detection.detect_folder(detection.parse_args(
        ["--model", model, "--data_dir", jpegs, "--output_dir", str(tmp_path / "det_jpeg"), "--cuda", "-1",
         "--num_workers", "0", "--embedded_fingerprints", str(tmp_path / "emb" / "embedded_fingerprints.txt")]))
    assert summary["bit_accuracy"] >= 0.9


@pytest.mark.parametrize("model", MODELS)
def test_shipped_model_on_sample_photos(model, sample_folder, tmp_path):
    summary = round_trip(model, sample_folder, tmp_path)
    assert summary["bit_accuracy"] >= 0.99


def extract_some(archive, count, destination):
    """The last `count` images of an archive (CelebA: its test split 9,001-10,000)."""
    with tarfile.open(archive) as tar:
        members = sorted((m for m in tar.getmembers() if m.isfile()), key=lambda m: m.name)[-count:]
        for member in members:
            member.name = os.path.basename(member.name)
            tar.extract(member, destination, filter="data")
    return destination


@pytest.mark.parametrize("model", [m for m in MODELS if m in DATASET_FOR])
def test_shipped_model_on_real_dataset_images(model, tmp_path):
    archive_name, extra = DATASET_FOR[model]
    archive = os.path.join(SHARED_DATA, archive_name)
    if not os.path.exists(archive):
        pytest.skip(f"needs ../shared/data/{archive_name} (present in CI, not in a fresh clone)")
    images = extract_some(archive, 64, tmp_path / "images")
    summary = round_trip(model, images, tmp_path, *extra)
    assert summary["bit_accuracy"] >= 0.99
