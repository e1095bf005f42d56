"""Artificial fingerprinting for generative models (Yu et al., ICCV 2021).

    from fingerprinting import Fingerprinter
    fp = Fingerprinter.load("celeba_64_robust")
    marked = fp.embed(images, fingerprint)
    result = fp.detect(marked, fingerprint=fingerprint)

The package's modules sit in layers; each imports only from layers below it
(and from the top-level `models.py`, the networks):

1. errors, bits (bit strings, bit accuracy, the detection test), records
   (atomic files, record lines), devices (CUDA, torchrun);
2. checkpoints (safe loading, shipped pairs, what a pair's numbers mean);
3. data (image files, preprocessing), resizing (any size through one model),
   perturbations (image edits), evaluation (metrics), forgery (averaging and
   copy attacks, the training defence against them);
4. api (Fingerprinter), training, generators (the DCGAN and DDPM of the
   transferability experiment), steganalysis;
5. folders (the folder pipeline), embedding, detection, attack_suite: the
   work behind the command-line scripts at the repository's top level.
"""

from fingerprinting.api import Detection, Fingerprinter

__all__ = ["Detection", "Fingerprinter"]
