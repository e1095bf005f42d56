"""Checkpoints and what their numbers mean: safe loading, the shipped pairs,
model configs, and encoding/decoding with a pair as its config says."""

import json
import os
import pickle
import zipfile
from dataclasses import asdict, dataclass

import torch

from fingerprinting import modulation
from fingerprinting.errors import UserError
from fingerprinting.records import atomic_write, write_json
from models import StegaStampDecoder, StegaStampEncoder, resolution_from_dense_inputs


def save_checkpoint(obj, path):
    """torch.save, atomically."""
    atomic_write(path, lambda temp_path: torch.save(obj, temp_path))


def load_checkpoint(path):
    """Load a checkpoint without ever executing code from it."""
    if not os.path.isfile(path):
        raise UserError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as error:
        if "Unsupported global" in str(error):
            raise UserError(f"{path}: refused to load, it holds code or objects beyond plain weights "
                            f"(only state_dicts of tensors load)") from None
        raise UserError(f"{path}: not a PyTorch checkpoint (unreadable content)") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as error:
        raise UserError(f"{path}: not a PyTorch checkpoint ({type(error).__name__})") from None


@dataclass
class ModelConfig:
    """What a checkpoint pair's numbers mean, saved as `<run>_config.json`.

    Published checkpoints have no config file and get the defaults: the
    encoder's sigmoid output is the fingerprinted image, inputs in [0, 1].
    """

    encoder_output: str = "image"  # "image" (published) or "residual" (image + output)
    centred_inputs: bool = False  # images and bits mapped to [-1, 1] before the networks
    resolution: int = 0
    fingerprint_length: int = 0
    modulation: str = "none"  # "dog" or "fine_dog": residual signed by the image's own field (modulation.py)
    modulation_mean: list = None  # the field's average over the training data (r x r), subtracted
    luma_residual: bool = False  # the residual is grey: one change on all three channels
    # embed a one-fingerprint folder less its mean residual (content-keyed pairs; docs/security.md §12)
    folder_mean_residual: bool = False
    # its decoder was trained on crops shrunk back: detection reads with crop_search.py unless told not to
    search_crops: bool = False


# Weights resolve relative to the repository, never the working folder.
SAVED_MODELS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "saved_models")


def shipped_models():
    """Names of the encoder/decoder pairs in saved_models/."""
    if not os.path.isdir(SAVED_MODELS):
        return []
    return sorted(name[: -len("_encoder.pth")] for name in os.listdir(SAVED_MODELS)
                  if name.endswith("_encoder.pth")
                  and os.path.exists(os.path.join(SAVED_MODELS, name.replace("_encoder.pth", "_decoder.pth"))))


def model_pair_paths(name_or_encoder_path):
    """(encoder, decoder) checkpoint paths of a shipped model's name, or of
    an `_encoder.pth` path and the `_decoder.pth` beside it."""
    if name_or_encoder_path in shipped_models():
        prefix = os.path.join(SAVED_MODELS, name_or_encoder_path)
    elif name_or_encoder_path.endswith("_encoder.pth"):
        prefix = name_or_encoder_path[: -len("_encoder.pth")]
    else:
        raise UserError(f"{name_or_encoder_path}: neither a shipped model ({', '.join(shipped_models()) or 'none'}) "
                        f"nor an _encoder.pth path")
    return prefix + "_encoder.pth", prefix + "_decoder.pth"


def config_path_for(checkpoint_path):
    """`x/run_encoder.pth` or `x/run_decoder.pth` -> `x/run_config.json`."""
    stem = checkpoint_path[:-4] if checkpoint_path.endswith(".pth") else checkpoint_path
    for suffix in ("_encoder", "_decoder"):
        if stem.endswith(suffix):
            stem = stem[: -len(suffix)]
    return stem + "_config.json"


def load_model_config(checkpoint_path):
    path = config_path_for(checkpoint_path)
    if not os.path.exists(path):
        return ModelConfig()
    with open(path, encoding="utf-8") as file:
        values = json.load(file)
    known = set(ModelConfig.__dataclass_fields__)
    return ModelConfig(**{key: value for key, value in values.items() if key in known})


def save_model_config(config, checkpoint_prefix):
    write_json(asdict(config), checkpoint_prefix + "_config.json")


def _state_dict(path, required_key, kind):
    state_dict = load_checkpoint(path)
    if not isinstance(state_dict, dict) or required_key not in state_dict:
        raise UserError(f"{path}: not a fingerprint {kind} checkpoint (no '{required_key}')")
    return state_dict


def _load_strict(model, state_dict, path):
    try:
        model.load_state_dict(state_dict, strict=True)
    except RuntimeError as error:
        raise UserError(f"{path}: does not match the {type(model).__name__} architecture "
                        f"({str(error).splitlines()[0]})") from None
    return model.eval()


def load_encoder(path, resolution):
    """Encoder from a state_dict file; fingerprint length comes from the file."""
    state_dict = _state_dict(path, "secret_dense.weight", "encoder")
    channels = state_dict["secret_dense.weight"].shape[0] // 256
    length = state_dict["secret_dense.weight"].shape[1]
    config = load_model_config(path)
    encoder = _load_strict(StegaStampEncoder(resolution, channels, length,
                                             return_residual=config.encoder_output == "residual"), state_dict, path)
    if not os.path.exists(config_path_for(path)):
        check_reads_as_published(encoder, path)
    return encoder, config


# An encoder's output this far from its input is no fingerprinted image (the
# shipped pairs embed at about 30-34 dB; read with the wrong config, ~11 dB).
MIN_PROBE_PSNR = 20.0
# How much closer the centred reading must come to call it the right one: the
# shipped pairs gain 5.6-21 dB; a random network's two readings differ by < 0.1.
CENTRED_GAIN_DB = 3.0


def check_reads_as_published(encoder, path):
    """A checkpoint with no `_config.json` is read as the published code's
    (`ModelConfig()`). One of this project's train.py read that way changes
    every image beyond recognition (its `fast` recipe centres the inputs):
    refuse it, naming the missing file, where that reading comes much closer."""
    published = probe_psnr(encoder, ModelConfig())
    if published >= MIN_PROBE_PSNR:
        return
    if probe_psnr(encoder, ModelConfig(centred_inputs=True)) >= published + CENTRED_GAIN_DB:
        raise UserError(f"{path}: no {os.path.basename(config_path_for(path))} beside it; read as a published "
                        f"checkpoint it makes {published:.0f} dB images: one of this train.py needs the "
                        f"_config.json saved with it")


def probe_psnr(encoder, config):
    """PSNR (dB) of what `encoder`, read as `config` says, makes of a smooth
    synthetic image (no data needed) with random bits."""
    side = encoder.resolution
    ramp = torch.linspace(0.2, 0.8, side)
    image = torch.stack([ramp[None, :].expand(side, side), ramp[:, None].expand(side, side),
                         0.5 + 0.2 * torch.sin(ramp[None, :] * 12) * torch.cos(ramp[:, None] * 9)])[None]
    bits = torch.randint(0, 2, (1, encoder.fingerprint_size), generator=torch.Generator().manual_seed(0)).float()
    with torch.inference_mode():
        error = (encode(encoder, config, bits, image).clamp(0, 1) - image).pow(2).mean()
    return (-10 * torch.log10(error.clamp_min(1e-10))).item()


def decoder_resolution(path):
    """The input size a decoder file was trained for (fixed by dense.0)."""
    state_dict = _state_dict(path, "dense.0.weight", "decoder")
    return resolution_from_dense_inputs(state_dict["dense.0.weight"].shape[1])


def load_decoder(path, resolution=None):
    """Decoder from a state_dict file; length and input size come from the file."""
    state_dict = _state_dict(path, "dense.0.weight", "decoder")
    native = resolution_from_dense_inputs(state_dict["dense.0.weight"].shape[1])
    if resolution is not None and resolution != native and not (resolution <= 32 and native == 32):
        raise UserError(f"{path}: decoder reads {native}x{native} images, "
                        f"but --image_resolution is {resolution}")
    channels = state_dict["decoder.0.weight"].shape[1]
    length = state_dict["dense.2.weight"].shape[0]
    decoder = StegaStampDecoder(resolution or native, channels, length)
    return _load_strict(decoder, state_dict, path), load_model_config(path)


def encode(encoder, config, fingerprints, images):
    """Fingerprinted images (b c h w in [0, 1]) from bits (b L, 0/1) and images.

    Unclamped in residual mode so training gradients flow; callers that
    save pixels clamp.
    """
    if config.centred_inputs:
        output = encoder(fingerprints * 2 - 1, images * 2 - 1)
    else:
        output = encoder(fingerprints, images)
    fingerprinted = images + output if config.encoder_output == "residual" else output
    if config.luma_residual:
        fingerprinted = images + (fingerprinted - images).mean(1, keepdim=True)
    if config.modulation != "none":
        fingerprinted = modulation.modulate(images, fingerprinted - images, field_mean(config, images),
                                            config.modulation)
    return fingerprinted


def decode(decoder, config, images, field_gradient=False):
    """Logits (b L) from images (b c h w in [0, 1]). `field_gradient`: let
    gradients flow through the sign field too (an attacker's full gradient;
    training stops them there)."""
    if config.modulation != "none":
        images = modulation.demodulate(images, not field_gradient, field_mean(config, images), config.modulation)
    return decoder(images * 2 - 1 if config.centred_inputs else images)


def field_mean(config, images):
    """The config's mean sign field as a tensor (1 1 r r) beside `images`, or None."""
    if config.modulation_mean is None:
        return None
    return torch.tensor(config.modulation_mean, dtype=images.dtype, device=images.device)[None, None]
