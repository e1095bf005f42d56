"""What benchmarks/throughput.py compares our embed and detect with.

    python benchmarks/baselines.py published-embed --encoder_path E --data_dir D --output_dir O --image_resolution 32
    python benchmarks/baselines.py published-detect --decoder_path P --data_dir D --output_dir O --image_resolution 32
    python benchmarks/baselines.py floor-embed --data_dir D --output_dir O --image_resolution 32
    python benchmarks/baselines.py floor-detect --data_dir D --image_resolution 32

published-*: the 2021 scripts' loop, restated from their behaviour (not
their code): *.png/*.jpg/*.jpeg at the top of the folder, sorted; PIL
decoding in the main process (DataLoader, no workers); torchvision Resize,
CenterCrop and ToTensor (detect: ToTensor only); the published networks
(tests/published_models.py) with autograd on, as the scripts run them;
fingerprints drawn per batch with `random_`; every output kept in memory
until the end, then one torchvision `save_image` per image and one record
line each.

floor-*: the I/O floor. Decode and prepare the same inputs and (embed)
write the same PNG files with the same settings, spread over all cores
with a process pool, and nothing else: no network, no record. With
--pixels_dir (benchmarks/throughput.py gives it) the files written hold
the very pixels our embed wrote, read from uncompressed <stem>.npy copies
made before the timing (fingerprinted pixels compress slower than the
inputs: 101 vs 84 ms an image at 1024 px); else the decoded inputs.
"""

import argparse
import glob
import os
import sys
from multiprocessing import Pool

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))

FLOOR_CHUNK = 64  # at most this many images per task of the floor's process pool


def published_files(data_dir):
    files = []
    for pattern in ("*.png", "*.jpeg", "*.jpg"):
        files += glob.glob(os.path.join(data_dir, pattern))
    return sorted(files)


def published_device(cuda):
    import torch

    return torch.device("cpu") if cuda == -1 else torch.device("cuda:0")


class PublishedFolder:
    """(image tensor, 0) per file, decoded in the process that asks."""

    def __init__(self, data_dir, transform):
        self.filenames = published_files(data_dir)
        self.transform = transform

    def __len__(self):
        return len(self.filenames)

    def __getitem__(self, index):
        from PIL import Image

        return self.transform(Image.open(self.filenames[index])), 0


def published_embed(args):
    import torch
    from torch.utils.data import DataLoader
    from torchvision import transforms
    from torchvision.utils import save_image

    from published_models import PublishedEncoder

    state_dict = torch.load(args.encoder_path, map_location="cpu")
    length = state_dict["secret_dense.weight"].shape[-1]
    encoder = PublishedEncoder(args.image_resolution, 3, length)
    encoder.load_state_dict(state_dict)
    device = published_device(args.cuda)
    encoder = encoder.to(device)
    transform = transforms.Compose([transforms.Resize(args.image_resolution),
                                    transforms.CenterCrop(args.image_resolution), transforms.ToTensor()])
    dataset = PublishedFolder(args.data_dir, transform)
    torch.manual_seed(args.seed)
    outputs, fingerprints = [], []
    for images, _ in DataLoader(dataset, batch_size=args.batch_size, shuffle=False, num_workers=0):
        bits = torch.zeros((args.batch_size, length), dtype=torch.float).random_(0, 2).to(device)
        fingerprinted = encoder(bits[: images.size(0)], images.to(device))
        outputs.append(fingerprinted.detach().cpu())
        fingerprints.append(bits[: images.size(0)].detach().cpu())
    os.makedirs(os.path.join(args.output_dir, "fingerprinted_images"), exist_ok=True)
    outputs, fingerprints = torch.cat(outputs), torch.cat(fingerprints)
    with open(os.path.join(args.output_dir, "embedded_fingerprints.txt"), "w") as record:
        for index in range(len(outputs)):
            name = os.path.basename(dataset.filenames[index]).split(".")[0] + ".png"
            save_image(outputs[index], os.path.join(args.output_dir, "fingerprinted_images", name), padding=0)
            record.write(f"{name} {''.join(map(str, fingerprints[index].long().numpy().tolist()))}\n")
    print(f"published embed: {len(outputs)} images")


def published_detect(args):
    import torch
    from torch.utils.data import DataLoader
    from torchvision import transforms

    from published_models import PublishedDecoder

    state_dict = torch.load(args.decoder_path, map_location="cpu")
    decoder = PublishedDecoder(args.image_resolution, 3, state_dict["dense.2.weight"].shape[0])
    decoder.load_state_dict(state_dict)
    device = published_device(args.cuda)
    decoder = decoder.to(device)
    dataset = PublishedFolder(args.data_dir, transforms.ToTensor())
    detected = []
    for images, _ in DataLoader(dataset, batch_size=args.batch_size, shuffle=False, num_workers=0):
        detected.append((decoder(images.to(device)) > 0).long().detach().cpu())
    detected = torch.cat(detected)
    os.makedirs(args.output_dir, exist_ok=True)
    with open(os.path.join(args.output_dir, "detected_fingerprints.txt"), "w") as record:
        for index in range(len(detected)):
            name = os.path.basename(dataset.filenames[index]).split(".")[0] + ".png"
            record.write(f"{name} {''.join(map(str, detected[index].numpy().tolist()))}\n")
    print(f"published detect: {len(detected)} images")


def floor_task(task):
    """Decode and prepare a chunk of inputs; write each as PNG if an output folder is given."""
    import numpy as np
    from PIL import Image

    from fingerprinting import data

    paths, resolution, output_dir, pixels_dir = task
    for path in paths:
        image = data.load_rgb(path)
        image = data.pil_to_uint8(image) if resolution is None else data.preprocess(image, resolution)
        if output_dir:
            stem = os.path.splitext(os.path.basename(path))[0]
            pixels = (np.load(os.path.join(pixels_dir, stem + ".npy")) if pixels_dir
                      else image.permute(1, 2, 0).numpy())
            Image.fromarray(pixels).save(os.path.join(output_dir, stem + ".png"), format="PNG",
                                         compress_level=data.PNG_COMPRESS_LEVEL)
    return len(paths)


def save_pixels(images_dir, pixels_dir):
    """Uncompressed copies (<stem>.npy, h w c uint8) of the PNGs in images_dir, for floor-embed --pixels_dir."""
    import numpy as np

    from fingerprinting import data

    os.makedirs(pixels_dir, exist_ok=True)
    for name in os.listdir(images_dir):
        pixels = np.asarray(data.load_rgb(os.path.join(images_dir, name)))
        np.save(os.path.join(pixels_dir, os.path.splitext(name)[0] + ".npy"), pixels)


def io_floor(args, write):
    from fingerprinting import data

    paths = [os.path.join(args.data_dir, name) for name in data.list_images(args.data_dir)]
    output_dir = os.path.join(args.output_dir, "fingerprinted_images") if write else None
    if output_dir:
        os.makedirs(output_dir, exist_ok=True)
    resolution = None if args.keep_size else args.image_resolution
    # at least four tasks per core, so that a small folder still keeps every core busy
    chunk = max(1, min(FLOOR_CHUNK, len(paths) // (4 * os.cpu_count())))
    tasks = [(paths[start:start + chunk], resolution, output_dir, args.pixels_dir)
             for start in range(0, len(paths), chunk)]
    with Pool(os.cpu_count()) as pool:
        done = sum(pool.imap_unordered(floor_task, tasks))
    print(f"I/O floor: {done} images")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("job", choices=["published-embed", "published-detect", "floor-embed", "floor-detect"])
    parser.add_argument("--data_dir", required=True)
    parser.add_argument("--output_dir", default=None)
    parser.add_argument("--image_resolution", type=int, default=None)
    parser.add_argument("--keep_size", action="store_true", help="floor: the images at their own size")
    parser.add_argument("--pixels_dir", default=None,
                        help="floor-embed: write these pixels (<stem>.npy each) instead of the decoded inputs")
    parser.add_argument("--encoder_path", default=None)
    parser.add_argument("--decoder_path", default=None)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--cuda", type=int, default=0, help="-1 = CPU, as the published scripts")
    args = parser.parse_args()
    if args.job == "published-embed":
        published_embed(args)
    elif args.job == "published-detect":
        published_detect(args)
    else:
        io_floor(args, write=args.job == "floor-embed")


if __name__ == "__main__":
    main()
