"""The quick start: `make demo` on the built-in sample photographs."""

import demo


def test_demo_detects_the_fingerprints_from_png_and_after_a_jpeg_resave(tmp_path):
    detected, detected_jpeg, embedded = demo.run_demo(demo.parse_args(
        ["--output_dir", str(tmp_path), "--num_images", "64", "--cuda", "-1"]))
    assert detected["scored"] == detected_jpeg["scored"] == 64
    assert detected["bit_accuracy"] >= 0.99 and detected["detected_rate"] == 1.0
    assert detected_jpeg["bit_accuracy"] >= 0.95  # the default model is the robust one
    assert embedded["psnr"] >= 29
    assert len(list((tmp_path / "jpeg").glob("*.jpg"))) == 64
