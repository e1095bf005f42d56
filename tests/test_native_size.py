"""Images at their own size (--keep_size), sizes beyond the model's, output
formats, and the published README's commands."""

import csv
import os

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from test_api import mixed_folder  # noqa: F401  (a fixture)

from fingerprinting import Fingerprinter, data, resizing
from fingerprinting.records import read_fingerprint_file

from test_pipeline import detect, embed

CELEBA = [os.path.join("saved_models", f"celeba_64_robust_{part}.pth") for part in ("encoder", "decoder")]


def test_keep_size_returns_every_size_it_was_given_and_reads_it_back(tmp_path, mixed_folder):  # noqa: F811
    summary = embed(mixed_folder, tmp_path / "out", CELEBA[0], "--keep_size", "--batch_size", "4")
    names = sorted(os.listdir(mixed_folder))
    for name in names:
        original = Image.open(mixed_folder / name)
        saved = Image.open(tmp_path / "out" / "fingerprinted_images" / name)
        assert saved.size == original.size
    assert summary["psnr"] > 30
    detected = detect(tmp_path / "out" / "fingerprinted_images", tmp_path / "det", CELEBA[1], "--keep_size",
                      "--embedded_fingerprints", str(tmp_path / "out" / "embedded_fingerprints.txt"))
    assert detected["bit_accuracy"] > 0.95 and detected["upscaled"] == 3  # 60x60 box, 40x40, 20x28 < 64
    with open(tmp_path / "det" / "bit_accuracy.csv", encoding="utf-8") as file:
        rows = {row["image"]: row for row in csv.DictReader(file)}
    assert rows["photo_5.png"]["upscaled"] == "1" and rows["photo_0.png"]["upscaled"] == "0"


def test_an_elongated_image_carries_the_fingerprint_in_its_centred_square_only(tmp_path, mixed_folder):  # noqa: F811
    embed(mixed_folder, tmp_path / "out", CELEBA[0], "--keep_size")
    original = np.asarray(Image.open(mixed_folder / "photo_3.png").convert("RGB"), dtype=int)  # 200 x 60
    saved = np.asarray(Image.open(tmp_path / "out" / "fingerprinted_images" / "photo_3.png"), dtype=int)
    top, left, height, width = resizing.fingerprinted_box(*original.shape[:2])
    assert (height, width) == (60, 60) and left == 70
    changed = np.abs(saved - original).sum(2) > 0
    assert changed[:, left:left + width].mean() > 0.5
    assert not changed[:, :left].any() and not changed[:, left + width:].any()


@pytest.mark.parametrize("image_format, extension", [("jpeg", ".jpg"), ("webp", ".webp")])
def test_other_output_formats_keep_their_own_extension_in_files_and_record(tmp_path, mixed_folder,  # noqa: F811
                                                                           image_format, extension):
    sizes = {}
    for quality in ("60", "95"):
        out = tmp_path / quality
        embed(mixed_folder, out, CELEBA[0], "--keep_size", "--output_format", image_format, "--quality", quality)
        files = sorted(os.listdir(out / "fingerprinted_images"))
        assert files and all(name.endswith(extension) for name in files)
        assert list(read_fingerprint_file(out / "embedded_fingerprints.txt")) == files
        sizes[quality] = sum(os.path.getsize(out / "fingerprinted_images" / name) for name in files)
    assert sizes["60"] < sizes["95"]
    detected = detect(tmp_path / "95" / "fingerprinted_images", tmp_path / "det", CELEBA[1], "--keep_size",
                      "--embedded_fingerprints", str(tmp_path / "95" / "embedded_fingerprints.txt"))
    assert detected["scored"] == len(files) and detected["bit_accuracy"] > 0.9


def test_the_papers_celeba_command_runs_with_a_64_px_model(tmp_path, sample_folder):
    """--use_celeba_preprocessing (128 px) with a 64 px model: the residual method."""
    summary = embed(sample_folder, tmp_path / "out", CELEBA[0], "--use_celeba_preprocessing",
                    "--identical_fingerprints", "--fingerprint_size", "100")
    names = os.listdir(tmp_path / "out" / "fingerprinted_images")
    assert {Image.open(tmp_path / "out" / "fingerprinted_images" / name).size for name in names} == {(128, 128)}
    assert summary["psnr"] > 30
    detected = detect(tmp_path / "out" / "fingerprinted_images", tmp_path / "det", CELEBA[1],
                      "--image_resolution", "128", "--fingerprint_size", "100",
                      "--embedded_fingerprints", str(tmp_path / "out" / "embedded_fingerprints.txt"))
    assert detected["bit_accuracy"] > 0.97 and detected["detected_rate"] == 1


def test_strength_trades_psnr_for_signal(tmp_path, mixed_folder):  # noqa: F811
    weak = embed(mixed_folder, tmp_path / "weak", CELEBA[0], "--keep_size", "--strength", "0.5", "--min_read_back", "0")
    full = embed(mixed_folder, tmp_path / "full", CELEBA[0], "--keep_size", "--min_read_back", "0")
    assert weak["psnr"] > full["psnr"] + 4  # half the residual: about 6 dB


def test_the_published_readmes_celeba_pair_is_shipped_as_celeba_64_robust():
    for part in ("encoder.pth", "decoder.pth", "config.json"):
        with open(os.path.join("saved_models", f"celeba_{part}"), "rb") as shipped, \
                open(os.path.join("saved_models", f"celeba_64_robust_{part}"), "rb") as robust:
            assert shipped.read() == robust.read()


@pytest.mark.parametrize("size", [(1024, 768), (218, 178), (40, 50), (64, 64)])
def test_the_file_path_adds_the_residual_as_the_float_path_does(size):
    """resizing.bilinear is F.interpolate's bilinear mode, and the uint8
    composition embed writes is the float one rounded (up to float rounding)."""
    generator = torch.Generator().manual_seed(0)
    residual = torch.randn(1, 3, 64, 64, generator=generator) * 0.02
    assert torch.allclose(resizing.bilinear(residual, *size),
                          F.interpolate(residual, size=size, mode="bilinear", align_corners=False), atol=1e-6)
    pixels = torch.randint(0, 256, (3, *size), dtype=torch.uint8, generator=generator)
    for strength in (1.0, 0.5):
        for layout in (pixels, pixels.permute(1, 2, 0).contiguous().permute(2, 0, 1)):  # a decoded file's: h w c
            stored, squared = resizing.add_residual_to_pixels(layout, residual[0], strength)
            rounded = data.to_uint8(resizing.add_residual(data.to_float(pixels).unsqueeze(0), residual, strength)[0])
            differ = (stored.int() - rounded.int()).abs()
            assert differ.max() <= 1 and (differ > 0).float().mean() < 1e-3
            assert (stored.int() - pixels.int()).abs().max() > 0  # the residual is there
            assert squared.item() == (stored.double() - pixels.double()).square().sum().item()
            assert squared.item() == resizing.squared_change(stored, layout).item()


@pytest.mark.parametrize("size", [(1024, 768), (218, 178), (40, 50), (64, 64), (100, 300)])
def test_the_view_of_pixels_is_the_float_view_in_8_bit_levels(size):
    """Files are shrunk for the networks by torch's uint8 kernels: the float
    path's view, rounded to 8 bits (their fixed-point weights: within one level)."""
    pixels = torch.randint(0, 256, (1, 3, *size), dtype=torch.uint8, generator=torch.Generator().manual_seed(1))
    channels_last = pixels.permute(0, 2, 3, 1).contiguous().permute(0, 3, 1, 2)  # the layout a decoded file has
    view = resizing.model_view(channels_last, 64)
    float_view = resizing.model_view(data.to_float(pixels), 64)
    assert view.dtype == torch.float32 and view.shape == float_view.shape == (1, 3, 64, 64)
    levels = (view * 255 - float_view * 255).abs()
    assert levels.max() <= 1 and levels.mean() < 0.35
    assert torch.equal(view * 255, (view * 255).round())  # 8-bit levels


def test_native_detection_decodes_on_every_core_and_embedding_leaves_one_for_the_networks(tmp_path):
    from fingerprinting import detection, embedding

    cores = os.cpu_count() or 1
    common = ["--data_dir", str(tmp_path), "--output_dir", str(tmp_path / "out")]
    native = detection.parse_args([*common, "--decoder_path", CELEBA[1], "--keep_size"])
    preprocessed = detection.parse_args([*common, "--decoder_path", CELEBA[1]])
    embedder = embedding.parse_args([*common, "--encoder_path", CELEBA[0], "--keep_size"])
    assert native.num_workers == min(8, cores)
    assert preprocessed.num_workers == embedder.num_workers == max(0, min(8, cores - 1))


def test_images_that_read_back_poorly_are_embedded_again_stronger_and_only_they(mixed_folder):  # noqa: F811
    fp = Fingerprinter.load("celeba_64_native2")
    images = [Image.open(mixed_folder / name).convert("RGB") for name in sorted(os.listdir(mixed_folder))]
    fingerprint = "01" * 50
    faint = fp.embed(images, fingerprint, strength=0.3, min_read_back=0)  # too faint to read well
    boosted = fp.embed(images, fingerprint, strength=0.3, min_read_back=0.99)

    def read_back(image):
        return fp.read_back_accuracy(data.pil_to_uint8(image), fp.fingerprint_bits(fingerprint, 1)[0])

    def change(marked, image):
        return np.abs(np.asarray(marked, dtype=int) - np.asarray(image, dtype=int)).sum()

    redone = 0
    for image, plain, stronger in zip(images, faint, boosted):
        if read_back(plain) >= 0.99:
            assert np.array_equal(np.asarray(plain), np.asarray(stronger))
        else:
            redone += 1
            assert change(stronger, image) > change(plain, image)
            assert read_back(stronger) >= read_back(plain)
    assert redone >= 2
    assert np.mean([read_back(image) for image in boosted]) > np.mean([read_back(image) for image in faint]) + 0.02
