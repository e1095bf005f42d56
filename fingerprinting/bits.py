"""Fingerprints as bits: how one is drawn, thresholded, scored, written and parsed.

One definition of each, imported by training, embedding, detection and
evaluation.
"""

import math
from functools import lru_cache

import numpy as np
import torch


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


# --- the detection test ---------------------------------------------------

PAPER_MATCH_FRACTION = 0.75  # the paper: fingerprinted if >= 75% of the bits match


def binomial_p_value(matches, length):
    """P(at least `matches` of `length` random bits match): one-sided, p = 1/2."""
    return sum(math.comb(length, k) for k in range(matches, length + 1)) / 2 ** length


@lru_cache(maxsize=None)
def min_matching_bits(length, fpr):
    """Fewest matching bits whose p-value is <= `fpr` (the detection threshold)."""
    for matches in range(length + 1):
        if binomial_p_value(matches, length) <= fpr:
            return matches
    return length + 1  # no threshold reaches this false-positive rate


def binomial_p_values(matches, length):
    """`binomial_p_value` of each count in a tensor (b) -> float64 tensor (b)."""
    table = torch.tensor([binomial_p_value(count, length) for count in range(length + 1)], dtype=torch.float64)
    return table[matches.long().clamp(0, length)]


def max_tampered_matching_bits(length, fpr):
    """Most matching bits that still count as tampered: as few matches are as
    unlikely on a clean image as `min_matching_bits` are (the decoded string
    is the fingerprint inverted, which no clean image gives)."""
    return length - min_matching_bits(length, fpr)


def paper_min_matching_bits(length):
    return math.ceil(PAPER_MATCH_FRACTION * length)


def matching_bits(predicted_bits, true_bits):
    """Number of equal bits per image (b L, b L or L -> b)."""
    return (predicted_bits.to(torch.uint8) == true_bits.to(torch.uint8)).sum(dim=-1)


def detection_threshold(length, fpr=None):
    """Matching bits needed: from `fpr` (binomial test) or the paper's 75% rule."""
    return paper_min_matching_bits(length) if fpr is None else min_matching_bits(length, fpr)
