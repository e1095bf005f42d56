"""An independent re-statement of the published networks, written from the
layer-by-layer description in the project's reference notes (modules for
upsampling and padding, `view` before the dense head, as the published code
does). Tests use it as "the published classes" for compatibility checks.
"""

import torch
from torch import nn


class PublishedEncoder(nn.Module):
    def __init__(self, resolution, IMAGE_CHANNELS, fingerprint_size):
        super().__init__()
        self.IMAGE_CHANNELS = IMAGE_CHANNELS
        self.secret_dense = nn.Linear(fingerprint_size, 16 * 16 * IMAGE_CHANNELS)
        self.fingerprint_upsample = nn.Upsample(scale_factor=(resolution // 16, resolution // 16))
        self.conv1 = nn.Conv2d(2 * IMAGE_CHANNELS, 32, 3, 1, 1)
        self.conv2 = nn.Conv2d(32, 32, 3, 2, 1)
        self.conv3 = nn.Conv2d(32, 64, 3, 2, 1)
        self.conv4 = nn.Conv2d(64, 128, 3, 2, 1)
        self.conv5 = nn.Conv2d(128, 256, 3, 2, 1)
        self.pad6 = nn.ZeroPad2d((0, 1, 0, 1))
        self.up6 = nn.Conv2d(256, 128, 2, 1)
        self.upsample6 = nn.Upsample(scale_factor=(2, 2))
        self.conv6 = nn.Conv2d(128 + 128, 128, 3, 1, 1)
        self.pad7 = nn.ZeroPad2d((0, 1, 0, 1))
        self.up7 = nn.Conv2d(128, 64, 2, 1)
        self.upsample7 = nn.Upsample(scale_factor=(2, 2))
        self.conv7 = nn.Conv2d(64 + 64, 64, 3, 1, 1)
        self.pad8 = nn.ZeroPad2d((0, 1, 0, 1))
        self.up8 = nn.Conv2d(64, 32, 2, 1)
        self.upsample8 = nn.Upsample(scale_factor=(2, 2))
        self.conv8 = nn.Conv2d(32 + 32, 32, 3, 1, 1)
        self.pad9 = nn.ZeroPad2d((0, 1, 0, 1))
        self.up9 = nn.Conv2d(32, 32, 2, 1)
        self.upsample9 = nn.Upsample(scale_factor=(2, 2))
        self.conv9 = nn.Conv2d(32 + 32 + 2 * IMAGE_CHANNELS, 32, 3, 1, 1)
        self.conv10 = nn.Conv2d(32, 32, 3, 1, 1)
        self.residual = nn.Conv2d(32, IMAGE_CHANNELS, 1)
        self.relu = nn.ReLU()
        self.sigmoid = nn.Sigmoid()

    def forward(self, fingerprint, image):
        fingerprint = self.relu(self.secret_dense(fingerprint))
        fingerprint = fingerprint.view((-1, self.IMAGE_CHANNELS, 16, 16))
        fingerprint_enlarged = self.fingerprint_upsample(fingerprint)
        inputs = torch.cat([fingerprint_enlarged, image], dim=1)
        conv1 = self.relu(self.conv1(inputs))
        conv2 = self.relu(self.conv2(conv1))
        conv3 = self.relu(self.conv3(conv2))
        conv4 = self.relu(self.conv4(conv3))
        conv5 = self.relu(self.conv5(conv4))
        up6 = self.relu(self.up6(self.pad6(self.upsample6(conv5))))
        conv6 = self.relu(self.conv6(torch.cat([conv4, up6], dim=1)))
        up7 = self.relu(self.up7(self.pad7(self.upsample7(conv6))))
        conv7 = self.relu(self.conv7(torch.cat([conv3, up7], dim=1)))
        up8 = self.relu(self.up8(self.pad8(self.upsample8(conv7))))
        conv8 = self.relu(self.conv8(torch.cat([conv2, up8], dim=1)))
        up9 = self.relu(self.up9(self.pad9(self.upsample9(conv8))))
        conv9 = self.relu(self.conv9(torch.cat([conv1, up9, inputs], dim=1)))
        conv10 = self.relu(self.conv10(conv9))
        return self.sigmoid(self.residual(conv10))


class PublishedDecoder(nn.Module):
    def __init__(self, resolution, IMAGE_CHANNELS, fingerprint_size):
        super().__init__()
        self.resolution = resolution
        self.decoder = nn.Sequential(
            nn.Conv2d(IMAGE_CHANNELS, 32, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(32, 32, 3, 1, 1), nn.ReLU(),
            nn.Conv2d(32, 64, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(64, 64, 3, 1, 1), nn.ReLU(),
            nn.Conv2d(64, 64, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(64, 128, 3, 2, 1), nn.ReLU(),
            nn.Conv2d(128, 128, 3, 2, 1), nn.ReLU(),
        )
        self.dense = nn.Sequential(
            nn.Linear(resolution * resolution * 128 // 32 // 32, 512), nn.ReLU(),
            nn.Linear(512, fingerprint_size),
        )

    def forward(self, image):
        features = self.decoder(image)
        return self.dense(features.view(-1, self.resolution * self.resolution * 128 // 32 // 32))
