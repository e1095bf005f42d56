"""Steganalysis attacks on fingerprinted images: can someone tell a
fingerprinted image from a clean one?

- SPAM features (Pevný, Bas & Fridrich 2010, "Steganalysis by subtractive
  pixel adjacency matrix"): second-order Markov transition probabilities of
  neighbouring pixel differences, truncated at T = 3, averaged over the four
  straight and the four diagonal directions: 686 numbers per colour channel.
- ATS (Lerch-Hostalot & Megías 2016, "Unsupervised steganalysis based on
  artificial training sets"; the paper's Appendix A.2): an attacker without
  labels embeds with his own encoder to build the training classes, trains an
  SVM on them and classifies the test images through one more embedding.
- A small CNN detector (fixed high-pass residual, then learned layers)
  trained on labelled clean / fingerprinted pairs.

Images are uint8 tensors (n c h w) throughout; labels are 1 = fingerprinted.
"""

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from tqdm import tqdm

from fingerprinting.data import to_float

SPAM_T = 3
SPAM_LEVELS = 2 * SPAM_T + 1


# --- features -------------------------------------------------------------------

def _transitions(triples):
    """P(d3 | d1, d2) per image from (n, k) arrays of truncated differences (0..2T)."""
    first, second, third = triples
    count = first.shape[0]
    codes = (first * SPAM_LEVELS + second) * SPAM_LEVELS + third
    codes = codes + (np.arange(count) * SPAM_LEVELS ** 3)[:, None]
    joint = np.bincount(codes.ravel(), minlength=count * SPAM_LEVELS ** 3).reshape(count, -1, SPAM_LEVELS)
    pairs = joint.sum(axis=2, keepdims=True)
    return (joint / np.maximum(pairs, 1)).reshape(count, -1)


def _straight(plane):
    """Left-to-right differences of (n h w) and their consecutive triples."""
    differences = np.clip(plane[:, :, :-1] - plane[:, :, 1:], -SPAM_T, SPAM_T) + SPAM_T
    return [part.reshape(len(plane), -1) for part in
            (differences[:, :, :-2], differences[:, :, 1:-1], differences[:, :, 2:])]


def _diagonal(plane):
    """Top-left to bottom-right differences of (n h w) and their triples."""
    differences = np.clip(plane[:, :-1, :-1] - plane[:, 1:, 1:], -SPAM_T, SPAM_T) + SPAM_T
    return [part.reshape(len(plane), -1) for part in
            (differences[:, :-2, :-2], differences[:, 1:-1, 1:-1], differences[:, 2:, 2:])]


def spam_features(images):
    """SPAM-686 per colour channel of uint8 images (n c h w): (n, 686 c) float64."""
    planes = images.numpy().astype(np.int16)
    features = []
    for channel in range(planes.shape[1]):
        plane = planes[:, channel]
        straight = [plane, plane[:, :, ::-1], plane.transpose(0, 2, 1), plane.transpose(0, 2, 1)[:, :, ::-1]]
        diagonal = [plane, plane[:, ::-1, ::-1], plane[:, :, ::-1], plane[:, ::-1, :]]
        features.append(np.mean([_transitions(_straight(view)) for view in straight], axis=0))
        features.append(np.mean([_transitions(_diagonal(view)) for view in diagonal], axis=0))
    return np.concatenate(features, axis=1)


# --- ATS ------------------------------------------------------------------------------

def svm_classifier(seed=0):
    """RBF SVM on standardised features, C picked by 5-fold cross-validation."""
    from sklearn.model_selection import GridSearchCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    return GridSearchCV(make_pipeline(StandardScaler(), SVC(kernel="rbf", gamma="scale", random_state=seed)),
                        {"svc__C": [0.1, 1, 10, 100]}, cv=5)


def ats_predictions(test_images, embed, seed=0):
    """Unsupervised ATS: 1 where a test image is judged fingerprinted.

    `embed(images)` fingerprints uint8 images with the attacker's own
    encoder. A test image holds 0 (clean) or 1 (fingerprinted) victim
    fingerprints; the training classes are the test set itself (0-1
    embeddings, label 0) and the test set embedded twice (2-3, label 1);
    the test set embedded once (1-2) is classified: an image that lands
    in the 2-3 class had one to begin with.
    """
    once = embed(test_images)
    twice_more = embed(embed(test_images))
    classifier = svm_classifier(seed)
    features = np.concatenate([spam_features(test_images), spam_features(twice_more)])
    labels = np.concatenate([np.zeros(len(test_images)), np.ones(len(test_images))])
    classifier.fit(features, labels)
    return classifier.predict(spam_features(once)).astype(int), classifier.best_params_["svc__C"]


# --- CNN detector ---------------------------------------------------------------------

# The "KV" high-pass kernel of the spatial rich model (Fridrich & Kodovský
# 2012), the fixed first layer of CNN steganalysers since Qian et al. 2015:
# it removes the image content and keeps the residual a fingerprint lives in.
KV_KERNEL = torch.tensor([[-1, 2, -2, 2, -1],
                          [2, -6, 8, -6, 2],
                          [-2, 8, -12, 8, -2],
                          [2, -6, 8, -6, 2],
                          [-1, 2, -2, 2, -1]], dtype=torch.float32) / 12


class Detector(nn.Module):
    """Clean (logit < 0) vs fingerprinted (> 0): a fixed high-pass filter,
    then a small fully convolutional network; any image size."""

    def __init__(self, width=32):
        super().__init__()
        self.register_buffer("high_pass", KV_KERNEL.expand(3, 1, 5, 5).clone())
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, 1, 1), nn.ReLU(),
            nn.Conv2d(width, width, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(width, 2 * width, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(2 * width, 2 * width, 3, 2, 1), nn.ReLU(),
        )
        self.head = nn.Linear(2 * width, 1)

    def forward(self, images):
        """Logits (b) of images in [0, 1] (b c h w)."""
        residual = F.conv2d(images * 255, self.high_pass, padding=2, groups=3)
        return self.head(self.features(residual).mean(dim=(2, 3))).squeeze(1)


def train_detector(clean, fingerprinted, steps, seed=0, batch_size=64, device="cpu", description="detector"):
    """A Detector trained on uint8 clean (label 0) and fingerprinted (label 1) images."""
    torch.manual_seed(seed)
    images = torch.cat([clean, fingerprinted])
    labels = torch.cat([torch.zeros(len(clean)), torch.ones(len(fingerprinted))])
    detector = Detector().to(device)
    optimizer = torch.optim.Adam(detector.parameters(), lr=1e-3)
    generator = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(steps), desc=description, unit="step", mininterval=1.0):
        batch = torch.randint(0, len(images), (batch_size,), generator=generator)
        logits = detector(to_float(images[batch]).to(device))
        loss = F.binary_cross_entropy_with_logits(logits, labels[batch].to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return detector.eval()


@torch.no_grad()
def detector_predictions(detector, images, device="cpu", batch_size=256):
    return torch.cat([(detector(to_float(images[start:start + batch_size]).to(device)) > 0).long().cpu()
                      for start in range(0, len(images), batch_size)]).numpy()


# --- scoring --------------------------------------------------------------------------

def accuracy_with_interval(predictions, labels, z=1.96):
    """Accuracy and its 95 % Wilson score interval."""
    predictions, labels = np.asarray(predictions), np.asarray(labels)
    count = len(labels)
    accuracy = float((predictions == labels).mean())
    centre = (accuracy + z * z / (2 * count)) / (1 + z * z / count)
    half = z * math.sqrt(accuracy * (1 - accuracy) / count + z * z / (4 * count * count)) / (1 + z * z / count)
    return dict(accuracy=accuracy, low=max(0.0, centre - half), high=min(1.0, centre + half), images=count)
