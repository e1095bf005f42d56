"""Embed and detect through the scripts' functions: published checkpoints,
output files line by line, resume after a kill, the nasty folder."""

import os
import re

import numpy as np
import pytest
import torch
from PIL import Image

import detect_fingerprints
import embed_fingerprints
from fingerprinting import data
from fingerprinting.bits import bits_from_logits, fingerprint_for, format_bits, parse_bits
from fingerprinting.checkpoints import ModelConfig, save_model_config

from nasty_folder import build_nasty_folder
from published_models import PublishedDecoder, PublishedEncoder

LINE = re.compile(r"^(.+\.png) ([01]+)$")


def save_published_pair(folder, resolution=32, length=16, seed=0):
    torch.manual_seed(seed)
    encoder, decoder = PublishedEncoder(resolution, 3, length), PublishedDecoder(resolution, 3, length)
    paths = str(folder / "published_encoder.pth"), str(folder / "published_decoder.pth")
    torch.save(encoder.state_dict(), paths[0])
    torch.save(decoder.state_dict(), paths[1])
    return encoder.eval(), decoder.eval(), paths


def read_lines(path):
    lines = open(path, encoding="utf-8").read().splitlines()
    assert all(LINE.match(line) for line in lines), lines[:3]
    return lines


def embed(data_dir, output_dir, encoder_path, *extra):
    args = embed_fingerprints.parse_args(["--encoder_path", encoder_path, "--data_dir", str(data_dir),
                                          "--output_dir", str(output_dir), "--cuda", "-1",
                                          "--num_workers", "0", *extra])
    return embed_fingerprints.embed_folder(args)


def detect(data_dir, output_dir, decoder_path, *extra):
    args = detect_fingerprints.parse_args(["--decoder_path", decoder_path, "--data_dir", str(data_dir),
                                           "--output_dir", str(output_dir), "--cuda", "-1",
                                           "--num_workers", "0", *extra])
    return detect_fingerprints.detect_folder(args)


@pytest.mark.parametrize("resolution", [32, 128])  # 128 px: the CPU splits each batch (folders.sub_batch_size)
def test_published_checkpoints_give_published_pixels_and_bits(tmp_path, sample_folder, resolution):
    encoder, decoder, (encoder_path, decoder_path) = save_published_pair(tmp_path, resolution)
    embed(sample_folder, tmp_path / "out", encoder_path, "--image_resolution", str(resolution), "--batch_size", "7")
    lines = read_lines(tmp_path / "out" / "embedded_fingerprints.txt")
    files = sorted(os.listdir(sample_folder))
    assert [line.split()[0] for line in lines] == files
    for index, (name, line) in enumerate(zip(files, lines)):
        bits = parse_bits(line.split()[1])
        assert bits.tolist() == fingerprint_for(index, 16, 42).tolist()
        clean = data.to_float(data.preprocess(data.load_rgb(f"{sample_folder}/{name}"), resolution))[None]
        with torch.no_grad():
            expected = encoder(bits[None].float(), clean)[0].permute(1, 2, 0).numpy() * 255
        saved = np.asarray(Image.open(tmp_path / "out" / "fingerprinted_images" / name), dtype=np.float64)
        assert np.abs(saved - expected).max() <= 0.5 + 1e-3

    detect(tmp_path / "out" / "fingerprinted_images", tmp_path / "det", decoder_path)
    for line in read_lines(tmp_path / "det" / "detected_fingerprints.txt"):
        name, text = line.split()
        image = data.to_float(torch.from_numpy(np.asarray(
            Image.open(tmp_path / "out" / "fingerprinted_images" / name)).copy()).permute(2, 0, 1))[None]
        with torch.no_grad():
            assert text == format_bits(bits_from_logits(decoder(image))[0])


def test_identical_fingerprints_and_seed(tmp_path, sample_folder):
    _, _, (encoder_path, _) = save_published_pair(tmp_path)
    embed(sample_folder, tmp_path / "a", encoder_path, "--image_resolution", "32", "--identical_fingerprints")
    embed(sample_folder, tmp_path / "b", encoder_path, "--image_resolution", "32", "--seed", "7")
    identical = {line.split()[1] for line in read_lines(tmp_path / "a" / "embedded_fingerprints.txt")}
    distinct = {line.split()[1] for line in read_lines(tmp_path / "b" / "embedded_fingerprints.txt")}
    assert len(identical) == 1 and len(distinct) == len(os.listdir(sample_folder))


def test_nasty_folder_every_valid_image_once_every_invalid_one_reported(tmp_path):
    valid, invalid = build_nasty_folder(str(tmp_path / "in"))
    _, _, (encoder_path, decoder_path) = save_published_pair(tmp_path)
    summary = embed(tmp_path / "in", tmp_path / "out", encoder_path, "--image_resolution", "32",
                    "--recursive", "--batch_size", "4")
    assert summary["processed"] == len(valid) and summary["skipped"] == len(invalid)
    names = [line.rpartition(" ")[0] for line in read_lines(tmp_path / "out" / "embedded_fingerprints.txt")]
    assert len(names) == len(set(names)) == len(valid)
    written = sorted(str(path.relative_to(tmp_path / "out" / "fingerprinted_images"))
                     for path in (tmp_path / "out" / "fingerprinted_images").rglob("*.png"))
    assert written == sorted(names)
    skipped = open(tmp_path / "out" / "skipped.txt").read().splitlines()
    assert sorted(line.split("\t")[0] for line in skipped) == invalid
    assert all(len(line.split("\t")[1]) > 3 for line in skipped)

    detected = detect(tmp_path / "out" / "fingerprinted_images", tmp_path / "det", decoder_path,
                      "--recursive", "--embedded_fingerprints", str(tmp_path / "out" / "embedded_fingerprints.txt"))
    assert detected["processed"] == len(valid) and detected["scored"] == len(valid)


def test_embed_resume_after_kill_equals_uninterrupted_run(tmp_path, sample_folder):
    _, _, (encoder_path, _) = save_published_pair(tmp_path)
    embed(sample_folder, tmp_path / "full", encoder_path, "--image_resolution", "32", "--batch_size", "5")
    embed(sample_folder, tmp_path / "cut", encoder_path, "--image_resolution", "32", "--batch_size", "5")
    record = tmp_path / "cut" / "embedded_fingerprints.txt"
    content = record.read_bytes()
    # A kill mid-run: the record stops within a line, and later images were never written.
    record.write_bytes(content[: len(content) // 3])
    kept = {line.split()[0] for line in record.read_text().splitlines()[:-1]}
    for path in (tmp_path / "cut" / "fingerprinted_images").iterdir():
        if path.name not in kept:
            path.unlink()
    summary = embed(sample_folder, tmp_path / "cut", encoder_path, "--image_resolution", "32",
                    "--batch_size", "3", "--resume")
    assert summary["processed"] == len(os.listdir(sample_folder)) - len(kept)
    assert record.read_bytes() == (tmp_path / "full" / "embedded_fingerprints.txt").read_bytes()
    for path in (tmp_path / "full" / "fingerprinted_images").iterdir():
        assert path.read_bytes() == (tmp_path / "cut" / "fingerprinted_images" / path.name).read_bytes()


def test_embed_killed_with_sigkill_then_resumed_equals_uninterrupted_run(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    from fingerprinting.sample_images import write_sample_images

    images = write_sample_images(str(tmp_path / "images"), count=120, size=32)
    _, _, (encoder_path, _) = save_published_pair(tmp_path)
    embed(images, tmp_path / "full", encoder_path, "--image_resolution", "32", "--batch_size", "4")
    command = [sys.executable, os.path.join(os.path.dirname(os.path.dirname(__file__)), "embed_fingerprints.py"),
               "--encoder_path", encoder_path, "--data_dir", images, "--output_dir", str(tmp_path / "cut"),
               "--image_resolution", "32", "--batch_size", "4", "--cuda", "-1", "--num_workers", "0"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    record = tmp_path / "cut" / "embedded_fingerprints.txt"
    deadline = time.time() + 120
    while time.time() < deadline and (not record.exists() or record.read_text().count("\n") < 20):
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    lines_at_kill = record.read_text().count("\n")
    assert 20 <= lines_at_kill < 120, "the run must be killed part-way"
    subprocess.run(command + ["--resume"], check=True, capture_output=True)
    assert record.read_bytes() == (tmp_path / "full" / "embedded_fingerprints.txt").read_bytes()
    for path in (tmp_path / "full" / "fingerprinted_images").iterdir():
        assert path.read_bytes() == (tmp_path / "cut" / "fingerprinted_images" / path.name).read_bytes()
    assert not [path for path in (tmp_path / "cut" / "fingerprinted_images").iterdir() if path.name.startswith(".tmp")]


def test_config_file_switches_semantics_without_flags(tmp_path, sample_folder):
    """A residual-mode checkpoint (config beside it) embeds as image + residual:
    with a zero last layer the output is the clean image, exactly."""
    from models import StegaStampEncoder

    encoder = StegaStampEncoder(32, 3, 16)
    torch.nn.init.zeros_(encoder.residual.weight)
    torch.nn.init.zeros_(encoder.residual.bias)
    prefix = str(tmp_path / "res")
    torch.save(encoder.state_dict(), prefix + "_encoder.pth")
    save_model_config(ModelConfig("residual", True, 32, 16), prefix)
    summary = embed(sample_folder, tmp_path / "out", prefix + "_encoder.pth")  # resolution from the config
    assert summary["psnr"] >= 99  # identical to the clean image
    name = sorted(os.listdir(sample_folder))[0]
    clean = data.preprocess(data.load_rgb(f"{sample_folder}/{name}"), 32).permute(1, 2, 0).numpy()
    assert (np.asarray(Image.open(tmp_path / "out" / "fingerprinted_images" / name)) == clean).all()
    # The same weights without the config are read the published way: sigmoid(0) = mid-grey.
    os.remove(prefix + "_config.json")
    embed(sample_folder, tmp_path / "published", prefix + "_encoder.pth", "--image_resolution", "32")
    grey = np.asarray(Image.open(tmp_path / "published" / "fingerprinted_images" / name))
    assert (grey == 128).all()


def test_a_failed_png_write_leaves_no_record_line_and_resume_redoes_it(tmp_path, sample_folder, monkeypatch):
    """PNGs are written in background threads; a batch's record lines follow
    only once all its files are on disk, so the record never names a missing file."""
    import pytest

    _, _, (encoder_path, _) = save_published_pair(tmp_path)
    save_image, written = data.save_image, []

    def failing_save_image(image, path, **options):
        if len(written) >= 9:
            raise OSError("disk full")
        save_image(image, path, **options)
        written.append(path)

    monkeypatch.setattr(data, "save_image", failing_save_image)
    with pytest.raises(OSError, match="disk full"):
        embed(sample_folder, tmp_path / "out", encoder_path, "--image_resolution", "32", "--batch_size", "4")
    recorded = [line.split()[0] for line in read_lines(tmp_path / "out" / "embedded_fingerprints.txt")]
    assert len(recorded) == 8  # two whole batches of 4; the third lost an image
    assert all((tmp_path / "out" / "fingerprinted_images" / name).exists() for name in recorded)
    monkeypatch.setattr(data, "save_image", save_image)
    embed(sample_folder, tmp_path / "out", encoder_path, "--image_resolution", "32", "--batch_size", "4", "--resume")
    embed(sample_folder, tmp_path / "full", encoder_path, "--image_resolution", "32", "--batch_size", "4")
    assert (tmp_path / "out" / "embedded_fingerprints.txt").read_bytes() == \
        (tmp_path / "full" / "embedded_fingerprints.txt").read_bytes()


def test_embed_and_detect_start_without_torchvision():
    """torchvision's import pulls in the compiler stack (seconds of start-up per run)."""
    import subprocess
    import sys

    code = ("import sys; from fingerprinting import embedding, detection; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torchvision', 'matplotlib', 'scipy'}))")
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    result = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
