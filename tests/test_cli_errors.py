"""Bad invocations: one readable line, non-zero exit, never a traceback."""

import os
import shutil
import subprocess
import sys

import pytest
import torch

from models import StegaStampDecoder, StegaStampEncoder

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(script, *args):
    return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], capture_output=True, text=True,
                          cwd=ROOT, timeout=120)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, sample_folder):
    folder = tmp_path_factory.mktemp("cli")
    torch.save(StegaStampEncoder(32, 3, 8).state_dict(), folder / "m_encoder.pth")
    torch.save(StegaStampDecoder(32, 3, 8).state_dict(), folder / "m_decoder.pth")
    (folder / "empty").mkdir()
    (folder / "garbage.pth").write_bytes(b"\x80\x04garbage")
    torch.save(StegaStampEncoder(32, 3, 8).state_dict(), folder / "r_encoder.pth")
    (folder / "r_config.json").write_text('{"resolution": 32, "fingerprint_length": 8}')
    shutil.copy(os.path.join(ROOT, "saved_models", "cifar10_32_encoder.pth"), folder / "moved_encoder.pth")
    return folder, sample_folder


def cases(folder, samples):
    encoder, decoder = str(folder / "m_encoder.pth"), str(folder / "m_decoder.pth")
    embed = ["embed_fingerprints.py", "--encoder_path", encoder, "--output_dir", str(folder / "o"), "--cuda", "-1"]
    detect = ["detect_fingerprints.py", "--decoder_path", decoder, "--output_dir", str(folder / "d"), "--cuda", "-1"]
    train = ["train.py", "--output_dir", str(folder / "t"), "--cuda", "-1", "--max_steps", "1"]
    return {
        "missing data_dir": (embed + ["--data_dir", str(folder / "nope")], "no such folder"),
        "empty data_dir": (detect + ["--data_dir", str(folder / "empty")], "no images"),
        "output inside data": (["embed_fingerprints.py", "--encoder_path", encoder, "--data_dir", samples,
                                "--output_dir", samples, "--recursive", "--cuda", "-1"],
                               "into --data_dir"),
        "missing checkpoint": (detect[:1] + ["--decoder_path", str(folder / "x.pth"), "--data_dir", samples,
                                             "--output_dir", str(folder / "d")], "not found"),
        "garbage checkpoint": (detect[:1] + ["--decoder_path", str(folder / "garbage.pth"), "--data_dir", samples,
                                             "--output_dir", str(folder / "d")], "checkpoint"),
        "encoder as decoder": (detect[:1] + ["--decoder_path", encoder, "--data_dir", samples,
                                             "--output_dir", str(folder / "d")], "not a fingerprint decoder"),
        "fingerprint of another length": (detect + ["--data_dir", samples, "--fingerprint", "0101"], "8"),
        "--fingerprint_size of another length (detect)": (detect + ["--data_dir", samples, "--fingerprint_size", "100"],
                                                          "the model's fingerprints have 8 bits"),
        "--fingerprint_size of another length (embed)": (["embed_fingerprints.py", "--encoder_path",
                                                          str(folder / "r_encoder.pth"), "--data_dir", samples,
                                                          "--output_dir", str(folder / "o"), "--fingerprint_size",
                                                          "100"], "the model's fingerprints have 8 bits"),
        "our encoder without its config": (["embed_fingerprints.py", "--encoder_path",
                                            str(folder / "moved_encoder.pth"), "--data_dir", samples, "--output_dir",
                                            str(folder / "o"), "--image_resolution", "32"],
                                           "moved_config.json beside it"),
        "published encoder at a size no model has": (embed + ["--data_dir", samples, "--image_resolution", "48"],
                                                     "power of two"),
        "keep_size with a resolution": (detect + ["--data_dir", samples, "--keep_size", "--image_resolution", "64"],
                                        "--keep_size keeps"),
        "celeba at 64": (train + ["--data_dir", samples, "--image_resolution", "64",
                                  "--use_celeba_preprocessing"], "128"),
        "not a power of two": (train + ["--data_dir", samples, "--image_resolution", "48"], "power of two"),
        "average decay of 1": (train + ["--data_dir", samples, "--ema_decay", "1"], "--ema_decay must be in [0, 1)"),
        "check without decoder": (embed + ["--data_dir", samples, "--check"], "--decoder_path"),
        "both orientation searches": (detect + ["--data_dir", samples, "--search_orientations", "--search_mirror"],
                                      "not allowed with argument"),
        "mirror for a DDPM": (["transferability.py", "--output_dir", str(folder / "x"), "--smoke", "--generator",
                               "ddpm", "--mirror"], "--mirror: for --generator gan only"),
    }


@pytest.mark.parametrize("case", list(cases(__import__("pathlib").Path("/x"), "/y")))
def test_bad_invocation(case, setup):
    folder, samples = setup
    argv, message = cases(folder, samples)[case]
    result = run(*argv)
    assert result.returncode != 0, result.stdout
    assert "Traceback" not in result.stderr, result.stderr
    assert message in result.stderr, result.stderr
    assert len(result.stderr.strip().splitlines()[-1]) < 300
