"""Builds a folder of every kind of file users' datasets contain."""

import io
import os

import numpy as np
from PIL import Image


def photo(size=(40, 30), seed=0):
    rng = np.random.default_rng(seed)
    gradient = np.linspace(0, 255, size[0] * size[1] * 3).reshape(size[1], size[0], 3)
    return Image.fromarray((gradient * 0.5 + rng.integers(0, 128, gradient.shape)).astype(np.uint8))


def exif_rotated_jpeg(path):
    """A landscape JPEG whose EXIF says 'rotate 90': upright it is portrait."""
    image = photo((40, 20), seed=9)
    exif = Image.Exif()
    exif[0x0112] = 6
    image.save(path, "JPEG", exif=exif.tobytes())


def build_nasty_folder(root):
    """Returns (valid relative paths, invalid relative paths)."""
    os.makedirs(os.path.join(root, "sub", "deeper"), exist_ok=True)
    os.makedirs(os.path.join(root, "other"), exist_ok=True)
    valid = {
        "rgb.png": lambda p: photo().save(p),
        "UPPER.JPG": lambda p: photo(seed=1).save(p, "JPEG"),
        "x.jpg": lambda p: photo(seed=2).save(p, "JPEG"),
        "x.png": lambda p: photo(seed=3).save(p),
        "a.b.png": lambda p: photo(seed=4).save(p),
        "a.png": lambda p: photo(seed=5).save(p),
        "gray.png": lambda p: photo(seed=6).convert("L").save(p),
        "gray_alpha.png": lambda p: photo(seed=7).convert("LA").save(p),
        "rgba.png": lambda p: photo(seed=8).convert("RGBA").save(p),
        "palette.gif.bmp": lambda p: photo(seed=10).convert("P").save(p, "BMP"),
        "palette.png": lambda p: photo(seed=11).convert("P").save(p),
        "cmyk.jpg": lambda p: photo(seed=12).convert("CMYK").save(p, "JPEG"),
        "sixteen.png": lambda p: Image.fromarray((np.arange(1200).reshape(30, 40) * 50).astype(np.uint16)).save(p),
        "rotated.jpeg": exif_rotated_jpeg,
        "web.webp": lambda p: photo(seed=13).save(p, "WEBP"),
        "tiff.TIF": lambda p: photo(seed=14).save(p, "TIFF"),
        "with space.png": lambda p: photo(seed=15).save(p),
        "sub/x.png": lambda p: photo(seed=16).save(p),
        "sub/deeper/y.png": lambda p: photo(seed=17).save(p),
        "other/x.png": lambda p: photo(seed=18).save(p),
    }
    invalid = {
        "empty.png": b"",
        "text.jpg": b"this is not an image at all",
        "truncated.png": None,
        "sub/broken.jpeg": b"\xff\xd8\xff\xe0 broken jpeg",
    }
    for name, write in valid.items():
        write(os.path.join(root, name))
    buffer = io.BytesIO()
    photo((200, 200), seed=19).save(buffer, "PNG")
    invalid["truncated.png"] = buffer.getvalue()[: len(buffer.getvalue()) // 2]
    for name, content in invalid.items():
        with open(os.path.join(root, name), "wb") as file:
            file.write(content)
    for ignored in ["notes.txt", ".hidden.png", "model.pth"]:
        with open(os.path.join(root, ignored), "wb") as file:
            file.write(b"ignored")
    return sorted(valid), sorted(invalid)
