"""torchrun with 2 CPU processes (Gloo): training, and sharded embed/detect
whose merged outputs equal a single-process run byte for byte."""

import os
import subprocess
import sys

import pytest
import torch

from published_models import PublishedDecoder, PublishedEncoder
from test_pipeline import save_published_pair

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def torchrun(script, *args, processes=2):
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}",
               os.path.join(ROOT, script), *args]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


def single(script, *args):
    result = subprocess.run([sys.executable, os.path.join(ROOT, script), *args], capture_output=True, text=True,
                            cwd=ROOT, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.slow
def test_two_process_training_writes_plain_loadable_checkpoints(tmp_path, sample_folder):
    torchrun("train.py", "--data_dir", sample_folder, "--output_dir", str(tmp_path), "--image_resolution", "16",
             "--fingerprint_length", "8", "--batch_size", "4", "--max_steps", "6", "--cuda", "-1",
             "--num_workers", "0", "--log_interval", "2", "--num_holdout", "4")
    checkpoints = sorted(os.listdir(tmp_path / "checkpoints"))
    assert len(checkpoints) == 4, checkpoints  # one run: encoder, decoder, config, optim
    prefix = str(tmp_path / "checkpoints" / checkpoints[0].rsplit("_", 1)[0])
    PublishedEncoder(16, 3, 8).load_state_dict(torch.load(prefix + "_encoder.pth", weights_only=True))
    PublishedDecoder(32, 3, 8).load_state_dict(torch.load(prefix + "_decoder.pth", weights_only=True))
    state = torch.load(prefix + "_optim.pth", weights_only=True)
    assert state["step"] == 6
    assert len(open(tmp_path / "metrics.jsonl").read().splitlines()) == 3  # rank 0 alone logs


@pytest.mark.slow
def test_two_process_embed_and_detect_equal_single_process_byte_for_byte(tmp_path, sample_folder):
    _, _, (encoder_path, decoder_path) = save_published_pair(tmp_path)
    common = ["--image_resolution", "32", "--batch_size", "5", "--cuda", "-1", "--num_workers", "0"]
    single("embed_fingerprints.py", "--encoder_path", encoder_path, "--data_dir", sample_folder,
           "--output_dir", str(tmp_path / "one"), *common)
    torchrun("embed_fingerprints.py", "--encoder_path", encoder_path, "--data_dir", sample_folder,
             "--output_dir", str(tmp_path / "two"), *common)
    for name in ["embedded_fingerprints.txt"] + [f"fingerprinted_images/{n}" for n in os.listdir(sample_folder)]:
        assert (tmp_path / "one" / name).read_bytes() == (tmp_path / "two" / name).read_bytes(), name
    assert sorted(os.listdir(tmp_path / "two")) == ["embedded_fingerprints.txt", "fingerprinted_images"]

    images = str(tmp_path / "one" / "fingerprinted_images")
    single("detect_fingerprints.py", "--decoder_path", decoder_path, "--data_dir", images,
           "--output_dir", str(tmp_path / "det_one"), *common)
    result = torchrun("detect_fingerprints.py", "--decoder_path", decoder_path, "--data_dir", images,
                      "--output_dir", str(tmp_path / "det_two"), *common,
                      "--embedded_fingerprints", str(tmp_path / "one" / "embedded_fingerprints.txt"))
    assert ((tmp_path / "det_one" / "detected_fingerprints.txt").read_bytes()
            == (tmp_path / "det_two" / "detected_fingerprints.txt").read_bytes())
    assert result.stdout.count("mean bit accuracy") == 1  # only rank 0 reports
