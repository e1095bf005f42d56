"""Generative models for the transferability experiment: a DCGAN (gan.py) and
a DDPM (diffusion.py), each a module with its own `train`/`generate` CLI:

    python -m fingerprinting.generators.gan train --data_dir ... --output_dir ...
    python -m fingerprinting.generators.diffusion generate --checkpoint ... --output_dir ...

and the runs of transferability.py read back.
"""

import os
from functools import partial

from fingerprinting.errors import UserError
from fingerprinting.records import read_fingerprint_file


def load_sampler(transferability_dir, name):
    """generate(num_images, seed, device) for transferability.py's `<kind>_<name>` run, and its kind."""
    from fingerprinting.generators import gan

    for kind, file in (("gan", "gan.pth"), ("ddpm", "ddpm.pth")):
        path = os.path.join(transferability_dir, f"{kind}_{name}", file)
        if os.path.isfile(path):
            if kind == "gan":
                return partial(gan.generate, gan.load_generator(path)), kind
            from fingerprinting.generators import diffusion

            return partial(diffusion.generate, diffusion.load_model(path)), kind
    raise UserError(f"--transferability_dir {transferability_dir}: no gan_{name}/gan.pth or ddpm_{name}/ddpm.pth")


def data_fingerprint(transferability_dir):
    """The one fingerprint the generators' training data carried (L uint8)."""
    record = os.path.join(transferability_dir, "fingerprinted_data", "embedded_fingerprints.txt")
    if not os.path.isfile(record):
        raise UserError(f"--transferability_dir {transferability_dir}: no fingerprinted_data/embedded_fingerprints.txt")
    return next(iter(read_fingerprint_file(record).values()))
