"""Artificial fingerprinting for generative models (Yu et al., ICCV 2021).

    from fingerprinting import Fingerprinter
    fp = Fingerprinter.load("celeba_64_robust")
    marked = fp.embed(images, fingerprint)
    result = fp.detect(marked, fingerprint=fingerprint)

The package's modules sit in layers; each imports only from the layers
below it (tests/test_layout.py checks), and from the top-level `models.py`
(the networks, pure):

1. errors; bits (bit strings, bit accuracy, the detection test); modulation
   (the content-keyed sign field); resizing (any size through one model);
   sample_images (the built-in photographs);
2. records (atomic files, record lines, torchrun parts); devices (CUDA, torchrun);
   forgery (averaging and copy attacks, the training defence against them);
   crop_search (reading through a crop zoomed back, a shift, a turn, a border,
   a perspective warp);
3. checkpoints (safe loading, shipped pairs, what a pair's numbers mean); data
   (image files, preprocessing, output formats);
4. api (Fingerprinter); perturbations (image edits); evaluation (metrics);
   steganalysis; folders (the folder pipeline); generators (the DCGAN and
   DDPM of the transferability experiment);
5. training; embedding and detection (the work behind the two scripts);
   removal (regeneration, adversarial examples, overwriting);
6. attack_suite (every attack, swept and scored); file_changes (robustness
   through real files).
"""

from fingerprinting.api import Detection, Fingerprinter

__all__ = ["Detection", "Fingerprinter"]
