"""The Python API (fingerprinting.Fingerprinter): the same pixels and bits as
the command-line scripts, every input type, gradients, clear errors."""

import os

import numpy as np
import pytest
import torch
from PIL import Image

from fingerprinting import Fingerprinter, data
from fingerprinting.bits import fingerprint_for, format_bits
from fingerprinting.errors import UserError
from fingerprinting.records import read_fingerprint_file

from test_pipeline import detect, embed

MODEL = "cifar10_32_robust"


@pytest.fixture(scope="module")
def fp():
    return Fingerprinter.load(MODEL)


@pytest.fixture(scope="module")
def mixed_folder(tmp_path_factory):
    """Real photographs of several sizes, one of them far from square."""
    from fingerprinting.sample_images import sample_crops

    folder = tmp_path_factory.mktemp("mixed")
    sizes = [(96, 96), (120, 80), (80, 130), (200, 60), (40, 40), (20, 28)]
    for number, (crop, size) in enumerate(zip(sample_crops(len(sizes), 256, seed=3), sizes)):
        crop.resize(size, Image.BILINEAR).save(folder / f"photo_{number}.png")
    return folder


def fingerprint_text(fp):
    return format_bits(fingerprint_for(0, fp.fingerprint_length, 42, identical=True))


def test_embed_gives_the_clis_pixels_and_detect_its_bits(tmp_path, fp, mixed_folder):
    encoder, decoder = (os.path.join("saved_models", f"{MODEL}_{part}.pth") for part in ("encoder", "decoder"))
    embed(mixed_folder, tmp_path / "out", encoder, "--keep_size", "--identical_fingerprints", "--batch_size", "6")
    detect(tmp_path / "out" / "fingerprinted_images", tmp_path / "det", decoder, "--keep_size")
    names = sorted(os.listdir(mixed_folder))
    originals = [data.load_rgb(mixed_folder / name) for name in names]
    marked = fp.embed(originals, fingerprint_text(fp))
    saved = [Image.open(tmp_path / "out" / "fingerprinted_images" / name).convert("RGB") for name in names]
    for mine, theirs, original in zip(marked, saved, originals):
        assert mine.size == theirs.size == original.size
        assert np.abs(np.asarray(mine, dtype=int) - np.asarray(theirs, dtype=int)).max() <= 1
    detected = read_fingerprint_file(tmp_path / "det" / "detected_fingerprints.txt")
    result = fp.detect(saved)
    assert [format_bits(row) for row in result.bits] == [format_bits(detected[name]) for name in names]


def test_at_the_models_size_embed_and_detect_are_the_plain_networks(fp):
    from fingerprinting.checkpoints import decode, encode

    images = torch.rand(5, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    bits = torch.randint(0, 2, (5, 100), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        plain = encode(fp.encoder, fp.config, bits.float(), images).clamp(0, 1)
        assert torch.equal(fp.embed(images, bits), plain)
        assert torch.equal(fp.detect(plain).bits, (decode(fp.decoder, fp.config, plain) > 0).to(torch.uint8))
        assert torch.equal(fp.detect(plain, center_crop=True).bits, fp.detect(plain).bits)


def test_one_image_a_list_and_a_tensor_agree(fp):
    tensor = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    images = [Image.fromarray(data.to_uint8(image).permute(1, 2, 0).numpy()) for image in tensor]
    quantised = data.to_float(torch.stack([data.pil_to_uint8(image) for image in images]))
    fingerprint = fingerprint_text(fp)
    from_tensor = data.to_uint8(fp.embed(quantised, fingerprint))
    from_list = torch.stack([data.pil_to_uint8(image) for image in fp.embed(images, fingerprint)])
    from_one = data.pil_to_uint8(fp.embed(images[1], fingerprint))
    assert torch.equal(from_tensor, from_list)  # the same batch
    assert (from_list[1].int() - from_one.int()).abs().max() <= 1  # a batch of one: float rounding may differ
    result = fp.detect(images, fingerprint=fingerprint, fpr=1e-6)
    assert torch.equal(result.bits, fp.detect(quantised).bits)
    assert result.matching.shape == (3,) and result.p_value.dtype == torch.float64
    assert torch.equal(result.detected, result.p_value <= 1e-6)


def test_detection_without_a_fingerprint_only_reads_bits(fp):
    result = fp.detect(torch.rand(2, 3, 40, 56))
    assert result.bits.shape == (2, 100) and result.matching is None and result.detected is None


def test_embedded_images_are_detected_and_clean_ones_are_not(fp, mixed_folder):
    images = [data.load_rgb(mixed_folder / name) for name in sorted(os.listdir(mixed_folder))]
    fingerprint = fingerprint_text(fp)
    marked = fp.detect(fp.embed(images, fingerprint), fingerprint=fingerprint)
    clean = fp.detect(images, fingerprint=fingerprint)
    assert marked.detected[:4].all() and not clean.detected.any()
    assert marked.upscaled.tolist() == [False, False, False, False, False, True]  # 20x28 < 32


def test_gradients_flow_in_differentiable_mode(fp):
    images = torch.rand(2, 3, 48, 40, requires_grad=True)
    marked = fp.embed(images, fingerprint_text(fp), differentiable=True)
    marked.sum().backward()
    assert images.grad is not None and images.grad.abs().sum() > 0
    assert fp.encoder.conv1.weight.grad is not None
    fp.encoder.zero_grad(set_to_none=True)
    assert not fp.embed(torch.rand(1, 3, 32, 32), fingerprint_text(fp)).requires_grad


@pytest.mark.parametrize("bad, message", [
    (dict(fingerprint="0101"), "expected 100 bits"),
    (dict(images=torch.zeros(1, 3, 32, 32, dtype=torch.uint8)), "float tensor"),
    (dict(images=torch.rand(1, 2, 32, 32)), r"3 \(RGB\) channels"),
    (dict(fingerprint="01" * 49 + "2x"), "not a bit string"),
    (dict(fingerprint=torch.randint(0, 2, (3, 100))), "3 fingerprints for 1 images"),
    (dict(images=np.zeros((32, 32, 3))), "a PIL image, a list of them or a float tensor"),
])
def test_bad_inputs_give_one_clear_error(fp, bad, message):
    arguments = dict(images=torch.rand(1, 3, 32, 32), fingerprint="01" * 50) | bad
    with pytest.raises(UserError, match=message):
        fp.embed(arguments["images"], arguments["fingerprint"])


def test_an_unknown_model_name_is_one_clear_error():
    with pytest.raises(UserError, match="neither a shipped model"):
        Fingerprinter.load("no_such_model")
