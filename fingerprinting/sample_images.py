"""The built-in image source: real CC0 photographs shipped with scikit-image.

Works on a fresh clone with no dataset: square crops at several scales from
scikit-image's sample photos (astronaut, coffee, rocket, hubble, ...),
written as PNG files into a folder.

    python -m fingerprinting.sample_images --output_dir samples --count 256 --size 64
"""

import argparse
import os

import numpy as np
from PIL import Image

PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field",
          "retina", "immunohistochemistry")


def sample_photos():
    """The RGB sample photographs as uint8 arrays (h w 3)."""
    import skimage.data

    photos = [getattr(skimage.data, name)() for name in PHOTOS]
    photos.extend(skimage.data.stereo_motorcycle()[:2])
    return [photo[..., :3] for photo in photos]


def sample_crops(count, size, seed=0):
    """`count` PIL images of size x size: random square crops, random scale."""
    rng = np.random.default_rng(seed)
    photos = sample_photos()
    crops = []
    for number in range(count):
        photo = photos[number % len(photos)]
        height, width = photo.shape[:2]
        side = int(rng.integers(min(height, width) // 8, min(height, width) // 2 + 1))
        top = int(rng.integers(0, height - side + 1))
        left = int(rng.integers(0, width - side + 1))
        crop = Image.fromarray(photo[top:top + side, left:left + side])
        crops.append(crop.resize((size, size), Image.Resampling.LANCZOS))
    return crops


def write_sample_images(output_dir, count=256, size=64, seed=0):
    """Write the sample crops as `sample_0000.png`...; returns the folder."""
    os.makedirs(output_dir, exist_ok=True)
    for number, crop in enumerate(sample_crops(count, size, seed)):
        crop.save(os.path.join(output_dir, f"sample_{number:04d}.png"))
    return output_dir


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True, help="folder to write PNG files into")
    parser.add_argument("--count", type=int, default=256, help="number of images (default 256)")
    parser.add_argument("--size", type=int, default=64, help="side in pixels (default 64)")
    parser.add_argument("--seed", type=int, default=0, help="crop positions seed (default 0)")
    return parser.parse_args(argv)


def main(args):
    write_sample_images(args.output_dir, args.count, args.size, args.seed)
    print(f"wrote {args.count} sample images to {args.output_dir}")


if __name__ == "__main__":
    main(parse_args())
