"""Image discovery, decoding of every pixel format, names, preprocessing."""

import numpy as np
import pytest
import torch
from PIL import Image

from fingerprinting import data
from fingerprinting.errors import UserError

from nasty_folder import build_nasty_folder


@pytest.fixture
def nasty(tmp_path):
    root = tmp_path / "nasty"
    root.mkdir()
    valid, invalid = build_nasty_folder(str(root))
    return str(root), valid, invalid


def test_listing_is_sorted_case_insensitive_and_optionally_recursive(nasty):
    root, valid, invalid = nasty
    top_level = [path for path in valid + invalid if "/" not in path]
    assert data.list_images(root) == sorted(top_level)
    assert data.list_images(root, recursive=True) == sorted(valid + invalid)


def test_missing_and_empty_folders_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="no such folder"):
        data.list_images(str(tmp_path / "missing"))
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.png").write_bytes(b"")
    with pytest.raises(UserError, match="--recursive"):
        data.list_images(str(tmp_path))


def test_every_pixel_format_becomes_upright_rgb(nasty):
    root, valid, _ = nasty
    for path in valid:
        image = data.load_rgb(f"{root}/{path}")
        assert image.mode == "RGB", path
    assert data.load_rgb(f"{root}/rotated.jpeg").size == (20, 40)  # portrait after EXIF rotation
    sixteen = np.asarray(data.load_rgb(f"{root}/sixteen.png"))
    assert sixteen.max() == round(1199 * 50 / 257)  # scaled to 8 bits, not clipped to white
    gray = np.asarray(data.load_rgb(f"{root}/gray.png"))
    assert (gray[..., 0] == gray[..., 1]).all()


def test_invalid_files_become_error_records_not_exceptions(nasty):
    root, valid, invalid = nasty
    paths = data.list_images(root, recursive=True)
    dataset = data.ImageFiles(root, paths, 16)
    records = [dataset[i] for i in range(len(paths))]
    failed = {paths[index] for index, image, error in records if error is not None}
    assert failed == set(invalid)
    shapes = {tuple(image.shape) for _, image, error in records if error is None}
    assert shapes == {(3, 16, 16)}


def test_output_names_are_unique_and_keep_the_published_stem_rule():
    names = data.output_names(["x.jpg", "x.png", "a.b.png", "a.png", "c.jpg", "sub/x.png", "X.PNG"])
    assert len(set(name.lower() for name in names)) == len(names)
    assert names[2:6] == ["a.b.png", "a.png", "c.png", "sub/x.png"]
    assert all(name.endswith(".png") for name in names)


def test_preprocessing_resizes_shorter_side_then_crops():
    image = Image.fromarray(np.zeros((30, 60, 3), np.uint8))
    assert tuple(data.preprocess(image, 16).shape) == (3, 16, 16)
    # CelebA-style crop: the centre 148 of 178x218, then 128.
    face = Image.fromarray(np.full((218, 178, 3), 7, np.uint8))
    out = data.preprocess(face, 128, center_crop=data.CELEBA_CROP)
    assert out.shape == (3, 128, 128) and out.dtype == torch.uint8
    with pytest.raises(UserError, match="128"):
        data.check_preprocessing(64, True)


def test_uint8_quantisation_matches_png(tmp_path):
    images = torch.rand(1, 3, 8, 8)
    saved = data.to_uint8(images)
    data.save_png(saved[0], str(tmp_path / "a.png"))
    reloaded = np.asarray(Image.open(tmp_path / "a.png"))
    assert (reloaded == saved[0].permute(1, 2, 0).numpy()).all()
    assert (data.to_float(saved) - images).abs().max() <= 0.5 / 255 + 1e-6


def test_preprocess_matches_torchvision_pixel_for_pixel():
    """data.preprocess avoids importing torchvision (start-up) but must give its exact pixels."""
    from torchvision.transforms import functional as TF

    def torchvision_preprocess(image, resolution, center_crop):
        if center_crop:
            image = TF.resize(TF.center_crop(image, [center_crop, center_crop]), [resolution, resolution],
                              antialias=True)
        else:
            image = TF.center_crop(TF.resize(image, resolution, antialias=True), [resolution, resolution])
        return torch.from_numpy(np.array(image, dtype=np.uint8)).permute(2, 0, 1)

    rng = np.random.default_rng(0)
    for width, height in [(32, 32), (89, 109), (5, 8), (8, 5), (33, 31), (100, 17), (129, 128)]:
        image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
        for resolution in (16, 32, 64):
            for center_crop in (0, 16, 31, 74, 148):
                assert torch.equal(data.preprocess(image, resolution, center_crop),
                                   torchvision_preprocess(image, resolution, center_crop)), (width, height)
