"""Shared definitions: fingerprints as bits, bit accuracy, devices, checkpoints.

Every script imports these, so each concept (how a fingerprint is drawn,
written, parsed, thresholded and scored; how a checkpoint is loaded) has
exactly one definition.
"""

import json
import os
import pickle
import tempfile
import zipfile
from dataclasses import asdict, dataclass

import numpy as np
import torch

from models import StegaStampDecoder, StegaStampEncoder, resolution_from_dense_inputs


class UserError(Exception):
    """A mistake in the user's input: reported as one line, exit code 2."""


def run_cli(main, args):
    """Run `main(args)`; user mistakes become one line on stderr and exit 1 (bad flags: argparse, exit 2)."""
    try:
        main(args)
    except UserError as error:
        raise SystemExit(f"error: {error}") from None


# --- fingerprints ---------------------------------------------------------

def fingerprint_for(index, length, seed, identical=False):
    """The fingerprint of the `index`-th image (uint8 0/1 array of `length`).

    Depends only on (seed, index), never on batch size, worker or rank, so
    resumed and sharded runs draw the same bits as one uninterrupted run.
    With `identical`, every image gets the fingerprint of seed alone.
    """
    key = [seed] if identical else [seed, index]
    return np.random.default_rng(key).integers(0, 2, length, dtype=np.uint8)


def random_bits(batch_size, length, generator=None, device="cpu"):
    """Fresh uniform random fingerprints for a training batch (b L, float 0/1)."""
    bits = torch.randint(0, 2, (batch_size, length), generator=generator)
    return bits.float().to(device)


def bits_from_logits(logits):
    """The one threshold of this project: a bit is 1 where its logit is > 0."""
    return (logits > 0).to(torch.uint8)


def bit_accuracy(predicted_bits, true_bits):
    """Fraction of matching bits per image (b L, b L -> b)."""
    return (predicted_bits.to(torch.uint8) == true_bits.to(torch.uint8)).float().mean(dim=1)


def psnr(images, reference):
    """PSNR in dB per image (b) of images in [0, 1] (b c h w); capped at 100 dB."""
    mse = (images.clamp(0, 1) - reference).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    return 10 * torch.log10(1 / mse)


def format_bits(bits):
    """A fingerprint (sequence of 0/1) as its text form, e.g. '0110'."""
    values = np.asarray(bits.cpu() if torch.is_tensor(bits) else bits).astype(np.int64) != 0
    return (values.astype(np.uint8) + ord("0")).tobytes().decode("ascii")


def parse_bits(text):
    """Inverse of `format_bits`: '0110' -> uint8 tensor; ValueError if not bits."""
    text = text.strip()
    if not text or set(text) - {"0", "1"}:
        raise ValueError(f"not a bit string: {text[:40]!r}")
    return torch.from_numpy(np.frombuffer(text.encode("ascii"), dtype=np.uint8) - ord("0"))


def fingerprint_line(name, bits):
    """One line of embedded/detected_fingerprints.txt: '<name> <bits>'."""
    return f"{name} {format_bits(bits)}\n"


def read_fingerprint_file(path):
    """Parse a fingerprints file into {name: bits tensor}, in file order.

    Names may contain spaces (the bits are the last field).
    """
    records = {}
    with open(path, encoding="utf-8") as file:
        for number, line in enumerate(file, 1):
            if not line.strip():
                continue
            name, _, text = line.rstrip("\n").rpartition(" ")
            try:
                records[name] = parse_bits(text)
            except ValueError as error:
                raise UserError(f"{path}:{number}: {error}") from None
    return records


# --- devices and seeds ----------------------------------------------------

def select_device(cuda_index):
    """torch.device for `--cuda N`: CUDA device N if present, else CPU; -1 = CPU."""
    if cuda_index >= 0 and torch.cuda.is_available():
        if cuda_index >= torch.cuda.device_count():
            raise UserError(f"--cuda {cuda_index}: only {torch.cuda.device_count()} CUDA device(s)")
        return torch.device(f"cuda:{cuda_index}")
    return torch.device("cpu")


# --- files ----------------------------------------------------------------

TEMP_PREFIX = ".tmp-"


def atomic_write(path, write, unique_name=False):
    """Create `path` via `write(temp_path)` then rename, so readers never see half a file.

    With `unique_name` (the caller guarantees no other writer of `path`)
    the temp file is `.tmp-<name>` beside it instead of a random name:
    half the cost per file where many small files are written."""
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    if unique_name:
        temp_path = os.path.join(directory, TEMP_PREFIX + os.path.basename(path))
    else:
        handle, temp_path = tempfile.mkstemp(dir=directory, prefix=TEMP_PREFIX, suffix=os.path.splitext(path)[1])
        os.close(handle)
    try:
        write(temp_path)
        os.replace(temp_path, path)
    except BaseException:
        if os.path.exists(temp_path):
            os.remove(temp_path)
        raise


def save_checkpoint(obj, path):
    """torch.save, atomically."""
    atomic_write(path, lambda temp_path: torch.save(obj, temp_path))


def write_json(obj, path):
    def write(temp_path):
        with open(temp_path, "w", encoding="utf-8") as file:
            json.dump(obj, file, indent=2, sort_keys=True)
            file.write("\n")
    atomic_write(path, write)


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


# --- models with their meaning --------------------------------------------

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


SAVED_MODELS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "saved_models")


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
    encoder = StegaStampEncoder(resolution, channels, length,
                                return_residual=config.encoder_output == "residual")
    return _load_strict(encoder, state_dict, path), config


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
    return images + output if config.encoder_output == "residual" else output


def decode(decoder, config, images):
    """Logits (b L) from images (b c h w in [0, 1])."""
    return decoder(images * 2 - 1 if config.centred_inputs else images)


def open_record(path, resume):
    """Open a fingerprints file for appending; returns (names already done, file).

    With `resume`, keeps the complete lines (a killed run may leave half a
    line at the end) and reports their names; otherwise starts empty.
    """
    done = []
    if resume and os.path.exists(path):
        with open(path, "rb") as file:
            content = file.read()
        complete = content[: content.rfind(b"\n") + 1]
        with open(path, "wb") as file:
            file.write(complete)
        done = [line.rpartition(" ")[0] for line in complete.decode("utf-8").splitlines() if line.strip()]
    elif not resume:
        open(path, "w", encoding="utf-8").close()
    return done, open(path, "a", encoding="utf-8")


def append_lines(file, lines):
    """Append and flush to disk: a line on disk means its work is finished."""
    file.write("".join(lines))
    file.flush()
    os.fsync(file.fileno())


# --- distributed (torchrun) -----------------------------------------------

@dataclass
class Distributed:
    """Where this process sits in a torchrun job (rank 0 of 1 without one)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self):
        return self.rank == 0


def init_distributed(cuda_index):
    """Join the torchrun process group when launched by torchrun.

    Returns (Distributed, device): NCCL on CUDA (one GPU per local rank),
    Gloo on CPU. Plain `python script.py` gets rank 0 of 1 and no group.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return Distributed(), select_device(cuda_index)
    import torch.distributed as dist

    context = Distributed(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ["LOCAL_RANK"]))
    use_cuda = cuda_index >= 0 and torch.cuda.is_available()
    device = torch.device(f"cuda:{context.local_rank}") if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return context, device


def barrier(context):
    if context.world_size > 1:
        import torch.distributed as dist

        dist.barrier()


def close_distributed(context):
    if context.world_size > 1:
        import torch.distributed as dist

        dist.barrier()
        dist.destroy_process_group()


def gather(value, context):
    """[value of rank 0, value of rank 1, ...] on every rank ([value] alone)."""
    if context.world_size == 1:
        return [value]
    import torch.distributed as dist

    values = [None] * context.world_size
    dist.all_gather_object(values, value)
    return values


def shard_path(record_path, context):
    """Each torchrun rank appends to its own part file; merged at the end."""
    return record_path if context.world_size == 1 else f"{record_path}.rank{context.rank}"


def complete_lines(path):
    """{name: line} of the complete lines of a record file (read-only)."""
    if not os.path.exists(path):
        return {}
    with open(path, encoding="utf-8") as file:
        content = file.read()
    lines = content[: content.rfind("\n") + 1].splitlines(keepends=True)
    return {line.rpartition(" ")[0]: line for line in lines if line.strip()}


def merge_shards(record_path, names, resume):
    """Rank 0: write the record in listing order from all part files (and the
    record itself when resuming), then delete the parts."""
    import glob

    parts = sorted(glob.glob(glob.escape(record_path) + ".rank*"))
    lines = complete_lines(record_path) if resume else {}
    for part in parts:
        lines.update(complete_lines(part))

    def write(temp_path):
        with open(temp_path, "w", encoding="utf-8") as file:
            file.writelines(lines[name] for name in names if name in lines)
    atomic_write(record_path, write)
    for part in parts:
        os.remove(part)
