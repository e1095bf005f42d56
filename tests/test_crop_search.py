"""Reading through a centred crop zoomed back (fingerprinting/crop_search.py,
detect_fingerprints.py --search_crops), a crop taken anywhere or a shift
(--search_positions), a rotation (--search_rotations), and a mirror image or a quarter turn
(--search_orientations), an image on a larger canvas (--search_borders), or a
perspective warp (--search_perspective)."""

import os
import sys

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from PIL import Image

from fingerprinting import crop_search, data, detection, embedding, file_changes, perturbations, resizing
from fingerprinting.api import Fingerprinter, pixels_to_pil
from fingerprinting.errors import UserError
from fingerprinting.sample_images import sample_crops

FINGERPRINT = "01" * 50


def smooth_images(count, size, seed=0):
    noise = torch.rand(count, 3, size // 8, size // 8, generator=torch.Generator().manual_seed(seed))
    return torch.nn.functional.interpolate(noise, size=(size, size), mode="bicubic", align_corners=False).clamp(0, 1)


def test_shrinking_back_undoes_a_zoomed_crop_at_the_centre():
    images = smooth_images(4, 64)
    cropped = perturbations.center_crop(images, 0.75)
    restored = crop_search.shrunk_back(cropped, 0.75)
    centre = (slice(None), slice(None), slice(16, 48), slice(16, 48))
    assert restored.shape == images.shape
    assert (restored - images)[centre].abs().mean() < 0.2 * (cropped - images)[centre].abs().mean()


def test_the_view_as_it_is_wins_unless_another_reading_is_clearly_more_confident():
    as_is = torch.full((2, 4), 2.0)
    shrunk = torch.tensor([[2.1] * 4, [3.0] * 4])  # 5 % more confident, then 50 %
    chosen = crop_search.most_confident(torch.stack([as_is, -shrunk]))
    assert torch.equal(chosen[0], as_is[0]) and torch.equal(chosen[1], -shrunk[1])


def test_a_zoomed_crop_reads_better_searched_and_clean_images_stay_clean():
    """celeba_64_v5 on 64 sample photos: crop 0.67 zoomed back reads 0.724
    of the bits as is, 0.777 searched (53 % -> 75 % detected); uncropped
    images read 0.958 / 0.955, clean ones stay undetected."""
    fingerprinter = Fingerprinter.load("celeba_64_v5")
    photos = data.to_float(torch.stack([data.pil_to_uint8(image) for image in sample_crops(64, 64, seed=3)]))
    marked = data.to_float(data.to_uint8(fingerprinter.embed(photos, FINGERPRINT)))
    cropped = perturbations.center_crop(marked, 0.67)

    def accuracy(images, search):
        return fingerprinter.detect(images, FINGERPRINT, search_crops=search).matching.float().mean().item() / 100

    assert accuracy(cropped, True) >= accuracy(cropped, False) + 0.05
    assert abs(accuracy(marked, True) - accuracy(marked, False)) <= 0.01
    assert not fingerprinter.detect(photos, FINGERPRINT, search_crops=True).detected.any()


def embedded_then_changed(model, sample_folder, tmp_path, change, *flags):
    """A reader of files changed after embedding (embed and detect both given
    `flags`): detect(*more flags) -> the detect_fingerprints.py summary."""
    embedding.embed_folder(embedding.parse_args(
        ["--model", model, "--data_dir", str(sample_folder), "--output_dir", str(tmp_path / "emb"),
         "--cuda", "-1", "--num_workers", "0", *flags]))
    changed = tmp_path / "changed"
    file_changes.change_files(str(tmp_path / "emb" / "fingerprinted_images"), str(changed), file_changes.png(change))

    def detect(*extra):
        return detection.detect_folder(detection.parse_args(
            ["--model", model, "--data_dir", str(changed), "--output_dir", str(tmp_path / str(extra)),
             "--cuda", "-1", "--num_workers", "0", "--embedded_fingerprints",
             str(tmp_path / "emb" / "embedded_fingerprints.txt"), *flags, *extra]))
    return detect


def test_detect_fingerprints_searches_crops_of_files(sample_folder, tmp_path):
    """cifar10_32_v4: the 32 sample files cropped to 0.67 and resized back
    (Pillow) read 0.627 of the bits as is, 0.778 searched."""
    detect = embedded_then_changed("cifar10_32_v4", sample_folder, tmp_path, file_changes.center_crop(0.67))
    assert detect("--search_crops")["bit_accuracy"] >= detect()["bit_accuracy"] + 0.08


def test_an_additive_pair_refuses_to_search_crops(sample_folder, tmp_path):
    """An additive pair's decoder reads crops better as they are (docs/security.md §19),
    unless it was trained for the search (test_train's group mean-out test)."""
    with pytest.raises(UserError, match="content-keyed"):
        Fingerprinter.load("cifar10_32_robust").detect(torch.rand(1, 3, 32, 32), search_crops=True)
    with pytest.raises(UserError, match="content-keyed"):
        detection.detect_folder(detection.parse_args(
            ["--model", "cifar10_32_robust", "--data_dir", str(sample_folder), "--output_dir", str(tmp_path),
             "--cuda", "-1", "--num_workers", "0", "--search_crops"]))


def test_training_can_show_the_decoder_crops_as_the_search_reads_them():
    """train.py --augment_crops_shrunk_back: the crop slice comes shrunk back to
    the scale it was embedded at, the centre close to the uncropped image."""
    images = smooth_images(2, 64, seed=1).requires_grad_()
    options = perturbations.AugmentOptions(crops_shrunk_back=True)
    generator, same = torch.Generator().manual_seed(0), torch.Generator().manual_seed(0)
    shrunk = perturbations.augment_slice(images, "center_crop", 1.0, generator, options)
    zoomed = perturbations.augment_slice(images, "center_crop", 1.0, same)
    centre = (slice(None), slice(None), slice(24, 40), slice(24, 40))
    assert shrunk.shape == images.shape and shrunk.requires_grad
    assert (shrunk - images)[centre].abs().mean() < 0.5 * (zoomed - images)[centre].abs().mean()


def test_every_whole_size_is_searched_where_a_pixel_is_a_large_share_of_the_side(monkeypatch):
    """At 32 px a shrink-back off by one pixel misses: cifar10_32_v5 reads a
    23-pixel crop, between the fractions 0.7 and 0.75, only when 23/32 is tried."""
    assert [round(32 * fraction) for fraction in crop_search.searched_fractions(32)] == list(range(31, 20, -1))
    assert crop_search.searched_fractions(64) == crop_search.FRACTIONS
    fingerprinter = Fingerprinter.load("cifar10_32_v5")
    photos = data.to_float(torch.stack([data.pil_to_uint8(image) for image in sample_crops(64, 32, seed=3)]))
    marked = data.to_float(data.to_uint8(fingerprinter.embed(photos, FINGERPRINT)))
    cropped = perturbations.center_crop(marked, 23 / 32)

    def accuracy():
        return fingerprinter.detect(cropped, FINGERPRINT).matching.float().mean().item() / 100

    every_size = accuracy()
    monkeypatch.setattr(crop_search, "FINEST_PIXEL", 1.0)  # the five fractions only
    assert every_size >= accuracy() + 0.1  # measured 0.795 against 0.550


def test_a_crop_with_an_odd_margin_is_shrunk_back_in_its_own_place():
    """A 45-pixel crop of 64 leaves 19 pixels: 9 before or 10 (torchvision's
    rounding); each is undone best where it was taken."""
    images = smooth_images(2, 64, seed=2)
    assert crop_search.placements(64, 45) == [9, 10] and crop_search.placements(64, 48) == [8]
    centre = (slice(None), slice(None), slice(20, 44), slice(20, 44))
    for top, other in ((9, 10), (10, 9)):
        cropped = perturbations.center_crop(images, 45 / 64, top)
        error = (crop_search.shrunk_back(cropped, 45 / 64, top) - images)[centre].abs().mean()
        assert error < 0.7 * (crop_search.shrunk_back(cropped, 45 / 64, other) - images)[centre].abs().mean()


def test_a_crop_centred_either_way_is_read(monkeypatch):
    """cifar10_32_v5 on sample photos cropped to 25 px as torchvision centres
    it (4 pixels before, not 3): 0.844 of the bits searched both ways, 0.699
    with the crop placed only as Pillow scripts place it (0.841 there)."""
    fingerprinter = Fingerprinter.load("cifar10_32_v5")
    photos = data.to_float(torch.stack([data.pil_to_uint8(image) for image in sample_crops(64, 32, seed=3)]))
    marked = data.to_float(data.to_uint8(fingerprinter.embed(photos, FINGERPRINT)))
    torchvision_crop, pillow_crop = (perturbations.center_crop(marked, 25 / 32, top) for top in (None, 3))

    def accuracy(images):
        return fingerprinter.detect(images, FINGERPRINT).matching.float().mean().item() / 100

    both_ways, pillow = accuracy(torchvision_crop), accuracy(pillow_crop)
    monkeypatch.setattr(crop_search, "placements", lambda resolution, size: [(resolution - size) // 2])
    assert both_ways >= accuracy(torchvision_crop) + 0.08
    assert both_ways >= pillow - 0.03


# --- crops anywhere and shifts (search_positions) ----------------------------------------

def test_a_crop_taken_anywhere_is_undone_in_its_own_place_and_a_shift_is_moved_back():
    images = smooth_images(2, 64, seed=4)
    cropped = images[..., 2:50, 14:62]  # 48 px, 2 from the top, 14 from the left, zoomed back
    zoomed = torch.nn.functional.interpolate(cropped, size=(64, 64), mode="bilinear", align_corners=False)
    kept = (slice(None), slice(None), slice(4, 48), slice(16, 60))
    in_place = (crop_search.shrunk_into(zoomed, 48, 2, 14) - images)[kept].abs().mean()
    assert in_place < 0.3 * (crop_search.shrunk_back(zoomed, 0.75) - images)[kept].abs().mean()
    shifted = crop_search.moved(images, 3, -2)
    assert torch.equal(shifted[..., 3:, :62], images[..., :61, 2:])
    assert torch.equal(crop_search.moved(shifted, -3, 2)[..., 3:61, 2:62], images[..., 3:61, 2:62])


def test_the_position_search_tries_every_place_at_32_px_and_every_other_at_64():
    crops = crop_search.crops_anywhere(32)
    assert len(crops) == sum((32 - size + 1) ** 2 for size in range(21, 32)) == 649
    assert set(crops) >= {(24, 0, 8), (24, 8, 0), (31, 1, 1)}
    coarse = crop_search.crops_anywhere(64)
    assert {size for size, _, _ in coarse} == set(range(43, 64, 2))
    assert all(place % 2 == 0 or place == 64 - size for size, top, left in coarse for place in (top, left))
    assert (47, 17, 17) in coarse and (47, 15, 3) not in coarse
    near = [crop_search.nudged((47, 10, 16), nudge, 64) for nudge in crop_search.nudges(64)]
    assert (48, 11, 15) in near and (45, 9, 17) in near and (47, 10, 16) not in near and len(near) == 44
    outside = [((62, 2, 0), (1, 0, 0)), ((63, 0, 1), (1, 0, 0)), ((62, 2, 0), (0, 0, -1))]
    assert all(crop_search.nudged(crop, nudge, 64) is None for crop, nudge in outside)
    assert crop_search.nudged((62, 2, 0), (1, -1, 0), 64) == (63, 1, 0)
    assert (-3, 3) in crop_search.shifts_back(32) and (-6, 4) in crop_search.shifts_back(64)


def test_crops_anywhere_and_shifts_read_with_search_positions_and_clean_images_stay_clean():
    """cifar10_32_v5 on 48 sample photos: 3/4 crops off the centre read
    0.528 of the bits as before, 0.757 searched anywhere; a 2-pixel shift
    0.525 and 0.941. Unchanged images read as before; clean ones stay
    undetected."""
    fingerprinter = Fingerprinter.load("cifar10_32_v5")
    photos = list(sample_crops(48, 32, seed=5))
    marked = fingerprinter.embed(photos, FINGERPRINT)
    places = [(0, 0), (8, 8), (0, 8), (8, 0), (1, 6), (7, 2)]  # (left, top) of a 24-pixel crop
    changed = {"crop": [image.crop((left, top, left + 24, top + 24)).resize((32, 32))
                        for image, (left, top) in zip(marked, places * 8)],
               "shift": [file_changes.shift(2)(image) for image in marked]}

    def accuracy(images, anywhere):
        return fingerprinter.detect(images, FINGERPRINT, search_positions=anywhere).matching.float().mean().item() / 100

    for name, images in changed.items():
        assert accuracy(images, True) >= accuracy(images, False) + 0.15, name
    assert abs(accuracy(marked, True) - accuracy(marked, False)) <= 0.01
    assert not fingerprinter.detect(photos, FINGERPRINT, search_positions=True).detected.any()


def test_detect_fingerprints_searches_positions_for_an_additive_pair_too(sample_folder, tmp_path):
    """cifar10_32_robust, the 32 sample files cropped to 0.8 of the side at
    random places and resized back: 0.512 of the bits as before, 0.834
    with --search_positions."""
    detect = embedded_then_changed("cifar10_32_robust", sample_folder, tmp_path, file_changes.crop_anywhere(0.8))
    assert detect("--search_positions")["bit_accuracy"] >= detect()["bit_accuracy"] + 0.15


@pytest.mark.parametrize("search, change", [("positions", "shift 2 px"), ("rotations", "rotation 10°")])
def test_the_geometry_benchmark_reads_every_change_both_ways(sample_folder, search, change):
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
    import geometry

    args = geometry.parse_args(["--model", "cifar10_32_v5", "--data_dir", str(sample_folder), "--num_images", "6",
                                "--search", search])
    rows, false_positives = geometry.measure(args)
    assert set(rows) == set(geometry.CHANGES[search]) and false_positives == 0
    before, searched, _ = rows[change]
    assert searched.matching.float().mean() > before.matching.float().mean()
    assert f"| {change} |" in geometry.table(args, rows, false_positives)


def test_the_edits_benchmark_reads_every_edit_and_flags_a_negative_as_tampered(sample_folder):
    """benchmarks/edits.py on 6 sample photos with cifar10_32_robust: a row per
    edit; a negative reads the additive pair's fingerprint inverted, every image
    flagged as tampered; a palette keeps it; no clean image detected."""
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
    import edits

    args = edits.parse_args(["--model", "cifar10_32_robust", "--data_dir", str(sample_folder), "--num_images", "6"])
    rows = edits.measure(args)
    assert set(rows) == {"unchanged", *edits.edits(0)}
    assert rows["invert"][0].tampered.all() and rows["palette 256 (GIF)"][0].detected.all()
    assert not any(clean.detected.any() for _, clean, _ in rows.values())
    assert "| grayscale |" in edits.table(args, rows)


# --- rotations (search_rotations) -------------------------------------------------------

def pillow_turned(images, degrees):
    """float images (b c h w) turned by Pillow, their size kept, as floats again."""
    pils = [file_changes.rotation(degrees)(pixels_to_pil(data.to_uint8(image))) for image in images]
    return torch.stack([data.to_float(data.pil_to_uint8(image)) for image in pils])


def test_a_rotation_is_turned_back_in_the_images_own_geometry():
    """A 96 x 144 image turned 8 degrees by Pillow, squashed into a 64-pixel
    view: turned back with its aspect (1.5), the view's centre comes back;
    taken for a square, much less of it."""
    images = smooth_images(2, 144, seed=6)[..., 24:120, :]  # 96 high, 144 wide
    view = resizing.model_view(images, 64)
    turned = resizing.model_view(pillow_turned(images, 8), 64)
    centre = (slice(None), slice(None), slice(16, 48), slice(16, 48))
    aspects = torch.full((2,), 1.5)

    def error(candidate):
        return (candidate - view)[centre].abs().mean()

    assert error(crop_search.rotated_back(turned, 8, aspects)) < 0.2 * error(turned)
    assert error(crop_search.rotated_back(turned, 8, aspects)) < 0.5 * error(crop_search.rotated_back(
        turned, 8, torch.ones(2)))
    assert error(crop_search.rotated_back(turned, -8, aspects)) > error(turned)  # the other way turns it further
    assert torch.allclose(crop_search.rotated_back(view, 0, aspects), view, atol=1e-5)
    assert crop_search.rotations_back() == [d for d in range(-30, 31) if d]


def test_a_turned_reading_is_kept_only_where_it_stands_out_from_the_other_turns():
    confidences = torch.tensor([[3.0, 3.0, 3.0], [1.0, 2.9, 1.0], [1.0, 2.8, 1.0], [1.0, 2.7, 1.0]])  # turns x images
    readings = -confidences.unsqueeze(2).expand(4, 3, 5)  # every turn reads the other way, this confidently
    before = torch.tensor([2.0, 2.0, 2.8]).unsqueeze(1).expand(3, 5)
    best = crop_search.MostConfident(readings[0])
    for reading in readings[1:]:
        best.offer(reading)
    chosen = crop_search.standing_out(best, before, confidences)
    assert torch.equal(chosen[0], readings[0, 0])  # 3x the median turn, 1.5x the reading before
    assert torch.equal(chosen[1], before[1])  # 1.5x before, but the other turns read nearly as well
    assert torch.equal(chosen[2], before[2])  # stands out, but not clearly above the reading before


def test_rotations_read_with_search_rotations_and_clean_images_stay_clean():
    """cifar10_32_robust on 48 sample photos turned 10 degrees (Pillow, size
    kept): near chance as before, most bits with the search; unchanged
    images and crops to 0.67 (where some turn reads more confidently, but
    does not stand out) read as before; clean ones stay undetected."""
    fingerprinter = Fingerprinter.load("cifar10_32_robust")
    photos = list(sample_crops(48, 32, seed=7))
    marked = fingerprinter.embed(photos, FINGERPRINT)
    turned = [file_changes.rotation(10)(image) for image in marked]

    def accuracy(images, search):
        return fingerprinter.detect(images, FINGERPRINT, search_rotations=search).matching.float().mean().item() / 100

    assert accuracy(turned, False) < 0.7 and accuracy(turned, True) >= 0.9
    for unturned in (marked, [file_changes.center_crop(0.67)(image) for image in marked]):
        assert abs(accuracy(unturned, True) - accuracy(unturned, False)) <= 0.01
    assert not fingerprinter.detect(photos, FINGERPRINT, search_rotations=True).detected.any()


def test_detect_fingerprints_searches_rotations_of_photos_at_their_own_size(tmp_path):
    """celeba_64_native2 with --keep_size on twelve 144 x 96 photos, turned
    8 degrees after embedding: the search reads them in their own
    (non-square) geometry."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for number, image in enumerate(sample_crops(12, 144, seed=8)):
        image.crop((0, 24, 144, 120)).save(photos / f"{number:02d}.png")
    detect = embedded_then_changed("celeba_64_native2", photos, tmp_path, file_changes.rotation(8), "--keep_size")
    before, searched = detect()["bit_accuracy"], detect("--search_rotations")["bit_accuracy"]
    assert before < 0.8 and searched >= 0.95


# --- mirror images and quarter turns (search_orientations) ------------------------------

PILLOW_ORIENTATIONS = [None, *Image.Transpose]  # as it is, mirrored, upside down, turned, transposed


def test_the_eight_orientations_undo_every_mirror_and_quarter_turn_exactly():
    """Each of Pillow's seven transposes of a 48 x 72 image, squashed into a
    32-pixel view, is laid back exactly by one of the eight orientations."""
    image = pixels_to_pil(data.to_uint8(smooth_images(1, 72, seed=9)[0, :, 12:60, :]))  # 48 high, 72 wide
    view = resizing.model_view(data.to_float(data.pil_to_uint8(image)).unsqueeze(0), 32)
    assert crop_search.orientations()[0] == (0, False) and len(set(crop_search.orientations())) == 8
    for transpose in PILLOW_ORIENTATIONS:
        changed = image if transpose is None else image.transpose(transpose)
        changed_view = resizing.model_view(data.to_float(data.pil_to_uint8(changed)).unsqueeze(0), 32)
        errors = [(crop_search.oriented(changed_view, *way) - view).abs().max().item()
                  for way in crop_search.orientations()]
        assert min(errors) < 1e-5 and sorted(errors)[1] > 0.01, transpose


def test_an_orientation_is_kept_only_where_it_leads_every_other_way():
    confidences = torch.tensor([[2.0, 2.0, 3.0], [3.0, 3.0, 1.0], [1.0, 2.9, 1.0]])  # ways x images
    readings = confidences.unsqueeze(2).expand(3, 3, 5) * torch.tensor([1.0, -1.0, 1.0]).view(3, 1, 1)
    chosen = crop_search.leading(readings, 1.1)
    assert torch.equal(chosen[0], readings[1, 0])  # 1.5x the view as it is and every other way
    assert torch.equal(chosen[1], readings[0, 1])  # the lead over the third way is under 1.1: as it is
    assert torch.equal(chosen[2], readings[0, 2])  # the view as it is leads
    assert torch.equal(crop_search.leading(readings, 1.0)[1], readings[1, 1])  # no lead asked: the most confident


def test_mirror_images_and_quarter_turns_read_with_search_orientations_and_clean_images_stay_clean():
    """cifar10_32_robust on 48 sample photos: mirrored, upside down or
    turned, at chance as before and every bit with the search (mirrored
    then JPEG 75 most); unchanged images read as before; clean ones stay
    undetected."""
    fingerprinter = Fingerprinter.load("cifar10_32_robust")
    photos = list(sample_crops(48, 32, seed=10))
    marked = fingerprinter.embed(photos, FINGERPRINT)

    def accuracy(images, search):
        detection = fingerprinter.detect(images, FINGERPRINT, search_orientations=search)
        return detection.matching.float().mean().item() / 100

    for transpose in (Image.Transpose.FLIP_LEFT_RIGHT, Image.Transpose.FLIP_TOP_BOTTOM, Image.Transpose.ROTATE_90,
                      Image.Transpose.TRANSVERSE):
        changed = [image.transpose(transpose) for image in marked]
        assert accuracy(changed, False) < 0.65 and accuracy(changed, True) >= 0.98, transpose
    mirrored_jpeg = [file_changes.jpeg_in_memory(75)(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
                     for image in marked]
    assert accuracy(mirrored_jpeg, True) >= 0.85  # 0.89; JPEG 75 alone 0.98
    assert accuracy(marked, True) == accuracy(marked, False)
    assert not fingerprinter.detect(photos, FINGERPRINT, search_orientations=True).detected.any()


def test_samples_mirrored_half_the_time_read_with_search_mirror(tmp_path):
    """cifar10_32_robust on 48 sample photos, every other one mirrored and
    all then saved as JPEG 75 (a GAN trained with mirror augmentation,
    its samples shared online): about half read as before, nearly all
    searched; clean photos stay undetected."""
    fingerprinter = Fingerprinter.load("cifar10_32_robust")
    photos = list(sample_crops(48, 32, seed=12))
    marked = fingerprinter.embed(photos, FINGERPRINT)
    samples = [file_changes.jpeg_in_memory(75)(image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if number % 2 else
                                               image) for number, image in enumerate(marked)]

    def detected(images, search):
        return fingerprinter.detect(images, FINGERPRINT, search_mirror=search).detected.float().mean().item()

    assert detected(samples, False) <= 0.55 and detected(samples, True) >= 0.95
    assert not fingerprinter.detect(photos, FINGERPRINT, search_mirror=True).detected.any()


def test_detect_fingerprints_searches_orientations_with_rotations_at_the_images_own_size(tmp_path):
    """celeba_64_native2 with --keep_size on twelve 144 x 96 photos, given a
    quarter turn (now 96 x 144) and then a turn of 8 degrees: the rotation
    search inside the quarter turn back uses the photos' own shape."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for number, image in enumerate(sample_crops(12, 144, seed=11)):
        image.crop((0, 24, 144, 120)).save(photos / f"{number:02d}.png")

    def turned(image):
        return file_changes.rotation(8)(image.transpose(Image.Transpose.ROTATE_90))

    detect = embedded_then_changed("celeba_64_native2", photos, tmp_path, turned, "--keep_size")
    assert detect("--search_rotations")["bit_accuracy"] < 0.7
    assert detect("--search_orientations", "--search_rotations")["bit_accuracy"] >= 0.95


# --- an image on a larger canvas (search_borders) ---------------------------------------

# cifar10_32_robust on the sample photos, a 10 % border then JPEG 75, searched:
# 0.81 of the bits through windows of the image's own pixels, 0.52 through the view's.
BORDER_THEN_JPEG = 0.75


def test_enlarging_the_window_an_image_sits_in_undoes_a_border():
    """A 64-pixel image with a 32-pixel border, viewed at 64 (the image is
    its middle 32 pixels): that window, enlarged back, comes back close; the
    view as it is does not."""
    images = smooth_images(2, 64, seed=13)
    on_canvas = torch.nn.functional.pad(images, (32, 32, 32, 32), value=1.0)
    view = resizing.model_view(on_canvas, 64)
    assert (crop_search.zoomed_into(view, 32, 16, 16) - images).abs().mean() < 0.2 * (view - images).abs().mean()


def test_a_window_of_the_canvas_holds_a_model_size_image_on_a_border_exactly(tmp_path):
    """A 32-pixel image on a 3-pixel border (38 px): the API's canvas, the
    CLI's canvas and the window where the image sits all keep its pixels as
    they are, where the 32-pixel view would resample them twice."""
    image = (smooth_images(1, 32, seed=15)[0] * 255).round().to(torch.uint8)
    framed = pixels_to_pil(torch.nn.functional.pad(image, (3, 3, 3, 3), value=255))
    framed.save(tmp_path / "framed.png")
    fingerprinter = Fingerprinter.load("cifar10_32_robust")
    files = data.ImageFiles(str(tmp_path), ["framed.png"], 32, canvases=True)
    for canvas in (fingerprinter.canvas_for_detection(data.pil_to_uint8(framed)),
                   fingerprinter.canvas_for_detection(data.pil_to_uint8(framed), center_crop=True),
                   data.to_float(files[0][1][1])):
        assert canvas.shape == (3, 38, 38)
        window = crop_search.zoomed_into(canvas.unsqueeze(0), 32, 3, 3, resolution=32)[0]
        assert torch.equal((window * 255).round().to(torch.uint8), image)


def test_a_canvas_at_its_own_pixels_is_searched_for_a_model_size_window_at_every_pixel():
    """At 64 px the windows lie on a 2-pixel grid of odd sizes: a 64-pixel
    image on a 76-pixel canvas is also looked for at every pixel, where a
    canvas shrunk to 1.5 times the model (a large image) is not."""
    windows = set(crop_search.canvas_windows(76, 64))
    assert set(crop_search.crops_anywhere(76)) <= windows
    assert {(64, top, left) for top in range(13) for left in range(13)} <= windows
    assert (64, 5, 6) not in crop_search.crops_anywhere(76)
    assert crop_search.canvas_windows(96, 64) == crop_search.crops_anywhere(96)
    assert crop_search.canvas_windows(64, 64) == crop_search.crops_anywhere(64)


def test_a_centred_border_lies_within_a_fraction_of_a_pixel_of_a_centred_box():
    """A 4:3 image (144 x 96) on a 14-pixel border is a larger share of its
    height than of its width, and 128 x 96 padded to a square has bars
    above and below only: on the 96-pixel canvas each sits within a fifth
    of a canvas pixel of a centred box, where the windows' grid is 3 pixels."""
    def nearest(true_box, aspect):
        return min(max(abs(a - b) for a, b in zip(box, true_box))
                   for boxes, rows in crop_search.centred_boxes(96, [aspect]) for box in boxes)

    framed = (96 * 96 / 124, 96 * 144 / 172, 96 * 14 / 124, 96 * 14 / 172)
    assert nearest(framed, 172 / 124) < 0.2
    assert nearest((72, 96, 12, 0), 1.0) < 1e-9
    assert min(max(abs(a - b) for a, b in zip((size, size, top, left), framed))
               for size, top, left in crop_search.canvas_windows(96, 64)) > 1


def test_a_box_at_whole_pixels_and_the_model_size_holds_the_canvas_pixels():
    canvases = torch.rand(2, 3, 76, 76, generator=torch.Generator().manual_seed(3))
    zoomed = crop_search.boxes_zoomed(canvases, [(64, 64, 6, 5), (64, 64, 0, 12)], 64)
    assert torch.allclose(zoomed[0], canvases[0, :, 6:70, 5:69], atol=1e-4)
    assert torch.allclose(zoomed[1], canvases[1, :, 0:64, 12:76], atol=1e-4)


def test_centred_borders_of_non_square_images_read_through_jpeg(monkeypatch):
    """celeba_64_native2 on sixteen 4:3 photos (128 x 96), on a 10 % border
    and padded to a square (bars above and below), then JPEG 75: the
    windows' grid read them at 0.88 and 0.55 of the bits, the centred
    boxes at 0.96."""
    fingerprinter = Fingerprinter.load("celeba_64_native2")
    photos = [image.crop((0, 16, 128, 112)) for image in sample_crops(16, 128, seed=17)]
    marked = fingerprinter.embed(photos, FINGERPRINT)

    def accuracy(first_change):
        changed = [file_changes.then(first_change, file_changes.jpeg_in_memory(75))(image) for image in marked]
        return fingerprinter.detect(changed, FINGERPRINT, search_borders=True).matching.float().mean().item() / 100

    assert accuracy(file_changes.border(0.1)) >= 0.93 and accuracy(file_changes.padded_to_square) >= 0.93
    monkeypatch.setattr(crop_search, "centred_boxes", lambda side, aspects: [])
    assert accuracy(file_changes.padded_to_square) < 0.7


def test_images_with_a_border_read_with_search_borders_and_clean_images_stay_clean(tmp_path, sample_folder):
    """cifar10_32_robust on 48 sample photos on a 10 % white border, and
    that saved as JPEG 75 (a screenshot shared): near chance as before,
    nearly every bit with the search (the border then JPEG only where the
    windows hold the image's own pixels: read on the 32-pixel view, 0.52);
    unchanged images and crops to 0.67 (where some window reads more
    confidently, but does not stand out) read as before; clean ones stay
    undetected; the CLI reads the sample files so too."""
    fingerprinter = Fingerprinter.load("cifar10_32_robust")
    photos = list(sample_crops(48, 32, seed=14))
    marked = fingerprinter.embed(photos, FINGERPRINT)
    border_then_jpeg = file_changes.then(file_changes.border(0.1), file_changes.jpeg_in_memory(75))

    def accuracy(images, search):
        return fingerprinter.detect(images, FINGERPRINT, search_borders=search).matching.float().mean().item() / 100

    for change, searched in ((file_changes.border(0.1), 0.95), (border_then_jpeg, BORDER_THEN_JPEG)):
        changed = [change(image) for image in marked]
        assert accuracy(changed, False) < 0.7 and accuracy(changed, True) >= searched
    for unbordered in (marked, [file_changes.center_crop(0.67)(image) for image in marked]):
        assert abs(accuracy(unbordered, True) - accuracy(unbordered, False)) <= 0.01
    assert not fingerprinter.detect(photos, FINGERPRINT, search_borders=True).detected.any()
    detect = embedded_then_changed("cifar10_32_robust", sample_folder, tmp_path, border_then_jpeg)
    assert detect()["bit_accuracy"] < 0.7 and detect("--search_borders")["bit_accuracy"] >= BORDER_THEN_JPEG


def test_detect_fingerprints_searches_borders_at_the_images_own_size(tmp_path):
    """celeba_64_native2 with --keep_size on twelve 4:3 photos (128 x 96),
    padded to a square then saved as JPEG 75: the CLI cuts its windows from
    each file's own pixels (a 128-pixel canvas shrunk to 96) and reads the
    centred boxes in each file's own shape, as the API does, reading what
    it read as is at chance."""
    photos = tmp_path / "photos"
    photos.mkdir()
    for number, image in enumerate(sample_crops(12, 128, seed=16)):
        image.crop((0, 16, 128, 112)).save(photos / f"{number:02d}.png")
    padded_then_jpeg = file_changes.then(file_changes.padded_to_square, file_changes.jpeg_in_memory(75))
    detect = embedded_then_changed("celeba_64_native2", photos, tmp_path, padded_then_jpeg, "--keep_size")
    assert detect()["bit_accuracy"] < 0.7
    searched = detect("--search_borders")["bit_accuracy"]
    embedded = dict(line.split() for line in (tmp_path / "emb" / "embedded_fingerprints.txt").read_text().splitlines())
    fingerprinter = Fingerprinter.load("celeba_64_native2")
    matching = [fingerprinter.detect(data.load_rgb(str(tmp_path / "changed" / name)), bits,
                                     search_borders=True).matching.item() for name, bits in embedded.items()]
    assert searched == pytest.approx(sum(matching) / len(matching) / 100) and searched >= 0.9


# --- perspective warps (search_perspective) --------------------------------------------

def test_warping_back_through_the_moved_corners_undoes_a_perspective_warp():
    """A 64-pixel image warped by torchvision (each corner moved inward up to
    6 px) is put back by `warped_back` through the corners it moved them to,
    inside the part the warp kept."""
    image = pixels_to_pil(data.to_uint8(smooth_images(1, 64, seed=11)[0]))
    moved = [[3, 5], [58, 2], [60, 59], [4, 62]]
    warped = TF.perspective(image, [[0, 0], [63, 0], [63, 63], [0, 63]], moved)
    corners = (torch.tensor(moved, dtype=torch.float32) + 0.5) / 32 - 1  # pixel centres in grid_sample's terms
    restored = crop_search.warped_back(data.to_float(data.pil_to_uint8(warped)).unsqueeze(0), corners.unsqueeze(0))
    original = data.to_float(data.pil_to_uint8(image)).unsqueeze(0)
    inside = (slice(None), slice(None), slice(8, 56), slice(8, 56))
    as_warped = (data.to_float(data.pil_to_uint8(warped)).unsqueeze(0) - original)[inside].abs().mean()
    assert (restored - original)[inside].abs().mean() < 0.15 * as_warped


def test_perspective_warps_read_with_search_perspective_and_clean_images_stay_clean():
    """celeba_64_robust on 24 sample photos warped in perspective (corners
    moved up to a tenth of the side): 0.61 of the bits as before, 0.98 with
    the search; unchanged and JPEG 50 images read as before; clean warped
    photos stay undetected."""
    fingerprinter = Fingerprinter.load("celeba_64_robust")
    photos = list(sample_crops(24, 64, seed=12))
    marked = fingerprinter.embed(photos, FINGERPRINT)
    warp = file_changes.perspective(0.2, seed=3)

    def accuracy(images, search):
        return fingerprinter.detect(images, FINGERPRINT, search_perspective=search).matching.float().mean().item() / 100

    warped = [warp(image) for image in marked]
    assert accuracy(warped, False) < 0.8 and accuracy(warped, True) >= 0.9
    for unwarped in (marked, [file_changes.jpeg_in_memory(50)(image) for image in marked]):
        assert abs(accuracy(unwarped, True) - accuracy(unwarped, False)) <= 0.01
    assert not fingerprinter.detect([warp(image) for image in photos], FINGERPRINT,
                                    search_perspective=True).detected.any()


def test_only_warps_an_editor_makes_count():
    """Corners moved inward by up to PERSPECTIVE_REACH of the half side (and a
    little outward) count; a corner thrown out of the frame, as the climb
    throws them on blurred or clean images, does not."""
    corners = torch.tensor(crop_search.VIEW_CORNERS)
    inward = [corners * (1 - 0.3), corners * (1 + 0.05), corners * (1 - 0.3) + torch.tensor([0.3, 0.0]),
              corners * (1 + 0.5), corners * (1 - 0.5)]
    assert crop_search.within_reach(torch.stack(inward)).tolist() == [True, True, False, False, False]


def test_detect_fingerprints_searches_perspective_warps_of_files(sample_folder, tmp_path):
    """cifar10_32_robust: the 32 sample files warped in perspective (corners
    moved up to a tenth of the side) read 0.63 of the bits as before, 0.92
    with --search_perspective."""
    detect = embedded_then_changed("cifar10_32_robust", sample_folder, tmp_path, file_changes.perspective(0.2, seed=5))
    before, searched = detect()["bit_accuracy"], detect("--search_perspective")["bit_accuracy"]
    assert before < 0.75 and searched >= 0.85
