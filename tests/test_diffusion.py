"""The DDPM (diffusion.py): it learns, it resumes exactly, and the
transferability experiment runs with it at smoke size."""

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("diffusers", reason="the DDPM extra: pip install -r requirements-diffusers.txt")

import transferability  # noqa: E402
from fingerprinting import data  # noqa: E402
from fingerprinting.generators import diffusion  # noqa: E402


def train_args(data_dir, output_dir, steps, *extra):
    return diffusion.parse_args(["train", "--data_dir", str(data_dir), "--output_dir", str(output_dir),
                                 "--resolution", "16", "--width", "8", "--batch_size", "16", "--cuda", "-1",
                                 "--steps", str(steps), "--log_interval", "2", "--sampling_steps", "10", *extra])


def test_ddpm_resumed_run_equals_an_uninterrupted_one(tmp_path, sample_folder):
    diffusion.train_ddpm(train_args(sample_folder, tmp_path / "a", 4))
    resumed = torch.load(diffusion.train_ddpm(train_args(sample_folder, tmp_path / "a", 6, "--resume")),
                         weights_only=True)
    straight = torch.load(diffusion.train_ddpm(train_args(sample_folder, tmp_path / "b", 6)), weights_only=True)
    assert resumed["step"] == straight["step"] == 6
    for key in ("model", "ema"):
        assert all(torch.equal(resumed[key][name], straight[key][name]) for name in straight[key])
    assert [json.loads(line)["step"] for line in open(tmp_path / "a" / "metrics.jsonl")] == [2, 4, 6]
    assert (tmp_path / "a" / "samples" / "6.png").exists()


class ExactNoisePredictor(torch.nn.Module):
    """The ideal network for a data set of one image: eps = (x_t - sqrt(a_t) x0) / sqrt(1 - a_t)."""

    def __init__(self, image):
        super().__init__()
        self.register_buffer("image", image)
        self.alphas = diffusion.noise_scheduler().alphas_cumprod
        self.config = SimpleNamespace(sample_size=image.shape[-1])

    def forward(self, sample, timestep):
        alpha = self.alphas[int(timestep)]
        return SimpleNamespace(sample=(sample - alpha.sqrt() * self.image) / (1 - alpha).sqrt())


def striped_image(size=16):
    stripes = np.zeros((size, size, 3), dtype=np.uint8)
    stripes[::4] = (230, 40, 40)
    stripes[1::4] = (40, 40, 230)
    return stripes


def test_ddim_sampling_with_the_exact_noise_predictor_returns_the_data():
    target = torch.from_numpy(striped_image()).permute(2, 0, 1)
    samples = diffusion.generate(ExactNoisePredictor(target.float() / 127.5 - 1), 3, seed=0, sampling_steps=10)
    assert samples.dtype == torch.uint8 and samples.shape == (3, 3, 16, 16)
    assert (samples.int() - target.int()).abs().max() <= 1


def test_ddpm_training_learns_to_predict_the_noise(tmp_path):
    os.makedirs(tmp_path / "data")
    for number in range(8):
        Image.fromarray(striped_image()).save(tmp_path / "data" / f"{number}.png")
    images = data.load_all(str(tmp_path / "data"), data.list_images(str(tmp_path / "data")), 16).float() / 127.5 - 1

    def loss(model):
        with torch.no_grad():
            return diffusion.diffusion_loss(model.eval(), diffusion.noise_scheduler(), images.repeat(8, 1, 1, 1),
                                            torch.Generator().manual_seed(0)).item()

    path = diffusion.train_ddpm(train_args(tmp_path / "data", tmp_path / "run", 150, "--lr", "2e-3",
                                           "--ema_decay", "0.9", "--sample_interval", "1000"))
    assert loss(diffusion.load_model(path)) < 0.2 * loss(diffusion.build(16, 8))


@pytest.mark.slow
def test_transferability_with_a_ddpm_reports_bit_accuracy_along_training(tmp_path):
    report = transferability.run(transferability.parse_args(["--smoke", "--generator", "ddpm", "--cuda", "-1",
                                                             "--output_dir", str(tmp_path)]))
    assert report["generator"] == "ddpm" and set(report["table"]) == {"clean", "fingerprinted"}
    steps = [row["step"] for row in report["along_training"]["fingerprinted"]]
    assert steps == [report["gan_steps"] // 2, report["gan_steps"]]
    assert all(0 <= row["bit_accuracy"] <= 1 for rows in report["along_training"].values() for row in rows)
    assert "model_robustness" not in report
    text = (tmp_path / "report.md").read_text()
    assert "Transferability of fingerprints to DDPM samples" in text and "along training" in text
    assert len(os.listdir(tmp_path / "generated_fingerprinted")) == report["num_generated"]
