"""Bits, fingerprints files, devices and safe checkpoint loading."""

import os
import pickle
from pathlib import Path

import pytest
import torch

from fingerprinting.bits import bit_accuracy, bits_from_logits, fingerprint_for, format_bits, parse_bits
from fingerprinting.checkpoints import (
    ModelConfig,
    config_path_for,
    encode,
    load_decoder,
    load_encoder,
    load_model_config,
    save_model_config,
)
from fingerprinting.devices import select_device
from fingerprinting.errors import UserError
from fingerprinting.records import append_lines, atomic_write, fingerprint_line, open_record, read_fingerprint_file
from models import StegaStampDecoder, StegaStampEncoder


def test_bits_round_trip_and_threshold():
    bits = torch.tensor([0, 1, 1, 0, 1], dtype=torch.uint8)
    assert format_bits(bits) == "01101"
    assert torch.equal(parse_bits("01101\n"), bits)
    assert torch.equal(bits_from_logits(torch.tensor([-1.0, 0.0, 0.5])), torch.tensor([0, 0, 1], dtype=torch.uint8))
    for text in ["", "0120", "10 1"]:
        with pytest.raises(ValueError):
            parse_bits(text)


def test_bit_accuracy_per_image():
    predicted = torch.tensor([[1, 1, 0, 0], [1, 0, 1, 0]])
    truth = torch.tensor([[1, 1, 0, 0], [0, 1, 1, 0]])
    assert bit_accuracy(predicted, truth).tolist() == [1.0, 0.5]


def test_fingerprints_depend_only_on_seed_and_index():
    first = fingerprint_for(7, 100, seed=42)
    assert first.tolist() == fingerprint_for(7, 100, seed=42).tolist()
    assert first.tolist() != fingerprint_for(8, 100, seed=42).tolist()
    assert first.tolist() != fingerprint_for(7, 100, seed=43).tolist()
    identical = {format_bits(fingerprint_for(i, 100, 42, identical=True)) for i in range(5)}
    assert len(identical) == 1
    assert 30 < sum(first) < 70  # uniform bits, not a constant


def test_fingerprint_file_round_trip_with_spaces_in_names(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text(fingerprint_line("my photo.png", [1, 0]) + fingerprint_line("b.png", [0, 0]))
    records = read_fingerprint_file(str(path))
    assert list(records) == ["my photo.png", "b.png"]
    assert records["my photo.png"].tolist() == [1, 0]
    path.write_text("a.png 01x\n")
    with pytest.raises(UserError, match="f.txt:1"):
        read_fingerprint_file(str(path))


def test_cpu_fallback():
    assert select_device(-1).type == "cpu"
    if not torch.cuda.is_available():
        assert select_device(0).type == "cpu"


class RunsCode:
    def __reduce__(self):
        return (os.system, ("touch pwned",))


def test_crafted_pickle_is_refused_without_running_code(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with open("evil_encoder.pth", "wb") as file:
        pickle.dump({"secret_dense.weight": RunsCode()}, file)
    torch.save({"secret_dense.weight": RunsCode()}, "evil2_encoder.pth")
    for path in ["evil_encoder.pth", "evil2_encoder.pth"]:
        with pytest.raises(UserError, match="refused|not a PyTorch checkpoint"):
            load_encoder(path, 32)
    assert not os.path.exists("pwned")


def test_wrong_kind_missing_and_garbage_checkpoints(tmp_path):
    torch.save(StegaStampEncoder(32, 3, 8).state_dict(), tmp_path / "a_encoder.pth")
    torch.save(StegaStampDecoder(32, 3, 8).state_dict(), tmp_path / "a_decoder.pth")
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(UserError, match="not a fingerprint decoder"):
        load_decoder(str(tmp_path / "a_encoder.pth"))
    with pytest.raises(UserError, match="not a fingerprint encoder"):
        load_encoder(str(tmp_path / "a_decoder.pth"), 32)
    with pytest.raises(UserError, match="not found"):
        load_decoder(str(tmp_path / "missing.pth"))
    with pytest.raises(UserError, match="not a PyTorch checkpoint"):
        load_decoder(str(tmp_path / "junk.pth"))
    with pytest.raises(UserError, match="reads 32x32"):
        load_decoder(str(tmp_path / "a_decoder.pth"), 64)
    decoder, config = load_decoder(str(tmp_path / "a_decoder.pth"))
    assert (decoder.resolution, decoder.fingerprint_size, config.encoder_output) == (32, 8, "image")


def test_config_file_sits_beside_checkpoints(tmp_path):
    prefix = str(tmp_path / "run")
    save_model_config(ModelConfig("residual", True, 32, 8, luma_residual=True), prefix)
    assert config_path_for(prefix + "_encoder.pth") == prefix + "_config.json"
    assert load_model_config(prefix + "_decoder.pth") == ModelConfig("residual", True, 32, 8, luma_residual=True)
    assert load_model_config(str(tmp_path / "other_decoder.pth")) == ModelConfig()


def test_a_luma_residual_has_no_chroma_for_jpeg_to_subsample():
    torch.manual_seed(0)
    encoder, images = StegaStampEncoder(32, 3, 8), torch.rand(4, 3, 32, 32)
    bits = torch.randint(0, 2, (4, 8)).float()
    colour = encode(encoder, ModelConfig("residual", True, 32, 8, "dog"), bits, images) - images
    grey = encode(encoder, ModelConfig("residual", True, 32, 8, "dog", luma_residual=True), bits, images) - images
    blue_difference = torch.tensor([-0.1687, -0.3313, 0.5]).view(1, 3, 1, 1)  # JPEG's Cb (Cr likewise sums to 0)
    assert (colour * blue_difference).sum(1).abs().mean() > 1e-3
    assert (grey * blue_difference).sum(1).abs().max() < 1e-6 and grey.abs().mean() > 1e-3
    assert torch.allclose(grey, grey[:, :1].expand_as(grey), atol=1e-6)


def test_record_resume_drops_a_half_written_line(tmp_path):
    path = str(tmp_path / "r.txt")
    with open(path, "w") as file:
        file.write("a.png 01\nb.png 1")
    done, record = open_record(path, resume=True)
    with record:
        append_lines(record, ["b.png 11\n"])
    assert done == ["a.png"]
    assert open(path).read() == "a.png 01\nb.png 11\n"


def test_atomic_write_leaves_the_old_file_or_the_new_one_and_no_temp_file(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")

    def failing_write(temp_path):
        with open(temp_path, "w") as file:
            file.write("half")
        raise OSError("disk full")

    for unique_name in (False, True):
        with pytest.raises(OSError):
            atomic_write(str(target), failing_write, unique_name=unique_name)
        assert target.read_text() == "old" and os.listdir(tmp_path) == ["out.txt"]
        atomic_write(str(target), lambda temp_path: Path(temp_path).write_text("new"), unique_name=unique_name)
        assert target.read_text() == "new" and os.listdir(tmp_path) == ["out.txt"]
        target.write_text("old")
