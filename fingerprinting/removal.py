"""Removal attacks beyond averaging: what the field uses to strip watermarks
(WAVES, An et al. 2024; Zhao et al. 2023; UnMarker, Kassis & Hengartner 2025).

- signal processing: median filters, BM3D, JPEG then BM3D;
- regeneration: a compression autoencoder the attacker trains on clean
  images, and purification by a one-step denoiser the attacker trains on
  clean images (noise to a level, then denoise);
- adversarial examples: L-infinity PGD pushing a decoder's output towards a
  fresh random string (white-box with our decoder; black-box with a
  surrogate decoder), or pushing a clean-vs-fingerprinted classifier
  towards "clean" (WAVES's surrogate attack);
- overwriting: a new fingerprint embedded over the old one.

Pure functions over float images (b c h w, in [0, 1]); networks are small
and trained here, from the attacker's clean images, nothing downloaded.
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from fingerprinting import data, forgery, perturbations

# --- signal processing -------------------------------------------------------------------

def median(images, size):
    return forgery.median_filter(images, size)


def bm3d(images, sigma):
    """BM3D (the `bm3d` package, requirements-attacks.txt) per image, noise std `sigma`."""
    import bm3d as package

    out = [package.bm3d_rgb(image.permute(1, 2, 0).cpu().numpy().astype(np.float64), sigma) for image in images]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).float().clamp(0, 1).to(images.device)


def jpeg_then_bm3d(images, sigma, quality=50):
    return bm3d(perturbations.jpeg(images, quality), sigma)


# --- regeneration ------------------------------------------------------------------------

class Autoencoder(nn.Module):
    """A small compression autoencoder: two stride-2 stages down to a
    `bottleneck`-channel code at a quarter of the side, and back."""

    def __init__(self, bottleneck, width=64):
        super().__init__()
        self.encode = nn.Sequential(
            nn.Conv2d(3, width, 3, 1, 1), nn.ReLU(), nn.Conv2d(width, width, 4, 2, 1), nn.ReLU(),
            nn.Conv2d(width, width, 4, 2, 1), nn.ReLU(), nn.Conv2d(width, bottleneck, 3, 1, 1))
        self.decode = nn.Sequential(
            nn.Conv2d(bottleneck, width, 3, 1, 1), nn.ReLU(), nn.ConvTranspose2d(width, width, 4, 2, 1), nn.ReLU(),
            nn.ConvTranspose2d(width, width, 4, 2, 1), nn.ReLU(), nn.Conv2d(width, 3, 3, 1, 1))

    def forward(self, images):
        """Reconstructed images (b c h w in [0, 1]; h and w multiples of 4)."""
        return torch.sigmoid(self.decode(self.encode(images * 2 - 1)))


class Denoiser(nn.Module):
    """A one-step denoiser for Gaussian noise of a known level: a small
    residual CNN told the level in a constant extra channel."""

    def __init__(self, width=64, depth=6):
        super().__init__()
        layers = [nn.Conv2d(4, width, 3, 1, 1), nn.ReLU()]
        for _ in range(depth - 2):
            layers += [nn.Conv2d(width, width, 3, 1, 1), nn.ReLU()]
        self.body = nn.Sequential(*layers, nn.Conv2d(width, 3, 3, 1, 1))

    def forward(self, noisy, sigma):
        """noisy images (b c h w) and their noise std (b): the denoised images."""
        level = sigma.view(-1, 1, 1, 1).expand(-1, 1, *noisy.shape[-2:])
        return noisy - self.body(torch.cat([noisy * 2 - 1, level], 1))


def train_network(network, loss_of_batch, images, steps, seed=0, batch_size=64, description="training"):
    """Adam on batches of uint8 `images`; returns (network, [loss per step])."""
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.Adam(network.parameters(), lr=1e-3)
    losses = []
    for _ in tqdm(range(steps), desc=description, unit="step", mininterval=1.0, leave=False):
        batch = data.to_float(images[torch.randint(0, len(images), (min(batch_size, len(images)),),
                                                   generator=generator)])
        loss = loss_of_batch(network, batch, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return network.eval(), losses


def train_autoencoder(images, bottleneck, steps, seed=0):
    """An Autoencoder trained to reconstruct clean uint8 images (MSE)."""
    torch.manual_seed(seed)
    return train_network(Autoencoder(bottleneck), lambda net, batch, _: F.mse_loss(net(batch), batch), images,
                         steps, seed, description=f"autoencoder ({bottleneck} channels)")


DENOISER_SIGMAS = (0.02, 0.4)  # the noise levels the denoiser is trained over


def train_denoiser(images, steps, seed=0):
    """A Denoiser trained on clean uint8 images noised at levels drawn in DENOISER_SIGMAS."""
    torch.manual_seed(seed)

    def loss(network, batch, generator):
        low, high = DENOISER_SIGMAS
        sigma = low + (high - low) * torch.rand(len(batch), generator=generator)
        noisy = batch + sigma.view(-1, 1, 1, 1) * torch.randn(batch.shape, generator=generator)
        return F.mse_loss(network(noisy, sigma), batch)
    return train_network(Denoiser(), loss, images, steps, seed, description="denoiser")


def regenerate(autoencoder, images):
    """The images through the autoencoder (padded to a multiple of 4)."""
    height, width = images.shape[-2:]
    padded = F.pad(images, (0, -width % 4, 0, -height % 4), mode="replicate")
    with torch.no_grad():
        return autoencoder(padded)[..., :height, :width]


def purify(denoiser, images, sigma, seed=0):
    """Diffusion-style purification in one step: noise of std `sigma`, then the denoiser."""
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(seed)).to(images)
    with torch.no_grad():
        return denoiser(images + sigma * noise, torch.full((len(images),), float(sigma))).clamp(0, 1)


# --- adversarial examples ----------------------------------------------------------------

def pgd(loss_of, images, epsilon, steps=100, step_size=None):
    """L-infinity projected gradient descent: minimise `loss_of(adversarial)`
    (per-image losses, b) within `epsilon` of `images` by signed gradient
    steps; returns the adversarial images rounded to 8 bits as a saved file
    (at most half a level beyond the budget). The default step travels five
    budgets in all: stronger than Madry et al.'s 2.5 at 100 steps here (at
    4/255 on 100 cifar10_32_robust images, with the hinge loss below: 0.45
    still detected, against 0.65 at 2.5 budgets)."""
    step_size = step_size or 5 * epsilon / steps
    adversarial = images.clone()
    for _ in range(steps):
        adversarial.requires_grad_(True)
        loss = loss_of(adversarial).sum()
        gradient, = torch.autograd.grad(loss, adversarial)
        with torch.no_grad():
            adversarial = adversarial - step_size * gradient.sign()
            adversarial = (images + (adversarial - images).clamp(-epsilon, epsilon)).clamp(0, 1)
    return data.to_float(data.to_uint8(adversarial.detach()))


PGD_MARGIN = 2.0  # logits past which a bit counts as moved


def towards_bits(logits_of, target_bits, margin=PGD_MARGIN):
    """The PGD loss of pushing decoded bits to `target_bits` (b L): a hinge
    (Carlini & Wagner) on each bit's logit, so that bits already at the
    target by `margin` cost nothing and the budget goes to the others
    (with pgd's default step, at 4/255 on 100 cifar10_32_robust images: 0.45
    still detected, where a cross-entropy over all bits left 0.87)."""
    signs = target_bits * 2 - 1
    return lambda images: F.relu(margin - signs * logits_of(images)).mean(1)


def towards_clean(classifier):
    """The PGD loss of pushing a clean-vs-fingerprinted classifier (logit > 0:
    fingerprinted) towards clean."""
    return lambda images: F.softplus(classifier(images))


# --- overwriting -------------------------------------------------------------------------

def overwrite(embed, images, length, seed=0):
    """A fresh random fingerprint embedded over the images with `embed(images, bits)`."""
    bits = torch.randint(0, 2, (len(images), length), generator=torch.Generator().manual_seed(seed)).float()
    with torch.no_grad():
        return data.to_float(data.to_uint8(embed(images, bits.to(images.device))))
