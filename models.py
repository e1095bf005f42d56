"""The fingerprint encoder and decoder (StegaStamp-style), and nothing else.

Parameter names and shapes match the published implementation of Yu et al.
(ICCV 2021), so its released ``state_dict``s load here with ``strict=True``
and ours load into its classes.
"""

import math

import torch
import torch.nn.functional as F
from torch import nn

# The fingerprint is spread over a 16x16 plane per image channel, then
# upsampled to the image resolution.
FINGERPRINT_PLANE = 16
# Width of the decoder's last feature map (channels) before the dense head.
DECODER_FEATURES = 128


def check_resolution(resolution):
    """Raise ValueError unless `resolution` is a power of two >= 16."""
    if resolution < FINGERPRINT_PLANE or 2 ** int(math.log2(resolution)) != resolution:
        raise ValueError(f"image resolution must be a power of two >= 16, got {resolution}")


def decoder_dense_inputs(resolution):
    """Number of features the decoder's dense head sees at `resolution`.

    The convolutions halve the size five times (ceil-style), so at 32 and
    above this is resolution**2 * 128 / 1024, as in the published code.
    """
    side = max(1, resolution // 32)
    return DECODER_FEATURES * side * side


def resolution_from_dense_inputs(in_features):
    """Inverse of `decoder_dense_inputs` for resolutions >= 32."""
    return math.isqrt(in_features * 1024 // DECODER_FEATURES)


class StegaStampEncoder(nn.Module):
    """U-Net that hides a bit string in an image.

    Args:
        resolution: image height and width (power of two, >= 16).
        IMAGE_CHANNELS: image channels (3 for RGB).
        fingerprint_size: number of bits.
        return_residual: if True, return the last layer's raw output instead
            of its sigmoid (published semantics: the sigmoid output *is* the
            fingerprinted image).
    """

    def __init__(self, resolution=128, IMAGE_CHANNELS=3, fingerprint_size=100, return_residual=False):
        super().__init__()
        check_resolution(resolution)
        self.resolution = resolution
        self.IMAGE_CHANNELS = IMAGE_CHANNELS
        self.fingerprint_size = fingerprint_size
        self.return_residual = return_residual
        self.upsample_factor = resolution // FINGERPRINT_PLANE

        self.secret_dense = nn.Linear(fingerprint_size, FINGERPRINT_PLANE * FINGERPRINT_PLANE * IMAGE_CHANNELS)
        self.conv1 = nn.Conv2d(2 * IMAGE_CHANNELS, 32, 3, 1, 1)
        self.conv2 = nn.Conv2d(32, 32, 3, 2, 1)
        self.conv3 = nn.Conv2d(32, 64, 3, 2, 1)
        self.conv4 = nn.Conv2d(64, 128, 3, 2, 1)
        self.conv5 = nn.Conv2d(128, 256, 3, 2, 1)
        self.up6 = nn.Conv2d(256, 128, 2, 1)
        self.conv6 = nn.Conv2d(128 + 128, 128, 3, 1, 1)
        self.up7 = nn.Conv2d(128, 64, 2, 1)
        self.conv7 = nn.Conv2d(64 + 64, 64, 3, 1, 1)
        self.up8 = nn.Conv2d(64, 32, 2, 1)
        self.conv8 = nn.Conv2d(32 + 32, 32, 3, 1, 1)
        self.up9 = nn.Conv2d(32, 32, 2, 1)
        self.conv9 = nn.Conv2d(32 + 32 + 2 * IMAGE_CHANNELS, 32, 3, 1, 1)
        self.conv10 = nn.Conv2d(32, 32, 3, 1, 1)
        self.residual = nn.Conv2d(32, IMAGE_CHANNELS, 1)

    def widest_activation(self):
        """Floats per image in the largest tensor of a forward pass (conv9's input)."""
        return (32 + 32 + 2 * self.IMAGE_CHANNELS) * self.resolution ** 2

    @staticmethod
    def _up(conv, features):
        # Published upsampling: nearest x2, pad right/bottom by one, 2x2 conv.
        features = F.interpolate(features, scale_factor=2, mode="nearest")
        return F.relu(conv(F.pad(features, (0, 1, 0, 1))))

    def forward(self, fingerprint, image):
        """Embed `fingerprint` (b L, values 0/1) into `image` (b c h w).

        Returns the fingerprinted image (b c h w) in [0, 1], or the raw
        pre-sigmoid output if `return_residual`.
        """
        plane = F.relu(self.secret_dense(fingerprint))
        plane = plane.view(-1, self.IMAGE_CHANNELS, FINGERPRINT_PLANE, FINGERPRINT_PLANE)
        plane = F.interpolate(plane, scale_factor=self.upsample_factor, mode="nearest")
        # In the image's memory layout: a mixed cat falls back to NCHW and
        # every later convolution pays a layout copy (a third of a CPU step).
        if image.is_contiguous(memory_format=torch.channels_last):
            plane = plane.contiguous(memory_format=torch.channels_last)
        inputs = torch.cat([plane, image], dim=1)  # b 2c h w: fingerprint first

        conv1 = F.relu(self.conv1(inputs))
        conv2 = F.relu(self.conv2(conv1))
        conv3 = F.relu(self.conv3(conv2))
        conv4 = F.relu(self.conv4(conv3))
        conv5 = F.relu(self.conv5(conv4))
        conv6 = F.relu(self.conv6(torch.cat([conv4, self._up(self.up6, conv5)], dim=1)))
        conv7 = F.relu(self.conv7(torch.cat([conv3, self._up(self.up7, conv6)], dim=1)))
        conv8 = F.relu(self.conv8(torch.cat([conv2, self._up(self.up8, conv7)], dim=1)))
        merge9 = torch.cat([conv1, self._up(self.up9, conv8), inputs], dim=1)
        conv9 = F.relu(self.conv9(merge9))
        conv10 = F.relu(self.conv10(conv9))
        output = self.residual(conv10)
        return output if self.return_residual else torch.sigmoid(output)


class StegaStampDecoder(nn.Module):
    """CNN that reads the bit string back from an image.

    Args:
        resolution: image height and width the dense head is sized for.
        IMAGE_CHANNELS: image channels (3 for RGB).
        fingerprint_size: number of bits.
    """

    def __init__(self, resolution=128, IMAGE_CHANNELS=3, fingerprint_size=100):
        super().__init__()
        check_resolution(resolution)
        self.resolution = resolution
        self.IMAGE_CHANNELS = IMAGE_CHANNELS
        self.fingerprint_size = fingerprint_size
        self.decoder = nn.Sequential(
            nn.Conv2d(IMAGE_CHANNELS, 32, 3, 2, 1),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3, 1, 1),
            nn.ReLU(),
            nn.Conv2d(32, 64, 3, 2, 1),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, 1, 1),
            nn.ReLU(),
            nn.Conv2d(64, 64, 3, 2, 1),
            nn.ReLU(),
            nn.Conv2d(64, DECODER_FEATURES, 3, 2, 1),
            nn.ReLU(),
            nn.Conv2d(DECODER_FEATURES, DECODER_FEATURES, 3, 2, 1),
            nn.ReLU(),
        )
        self.dense = nn.Sequential(
            nn.Linear(decoder_dense_inputs(resolution), 512),
            nn.ReLU(),
            nn.Linear(512, fingerprint_size),
        )

    def widest_activation(self):
        """Floats per image in the largest tensor of a forward pass (the first conv's output)."""
        return 32 * ((self.resolution + 1) // 2) ** 2

    def forward(self, image):
        """Decode `image` (b c h w, in [0, 1]) into logits (b L); bit = logit > 0."""
        return self.dense(self.decoder(image).flatten(1))
