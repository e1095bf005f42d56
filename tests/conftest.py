import os
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
SHARED_DATA = os.path.join(ROOT, "..", "shared", "data")


@pytest.fixture(scope="session")
def sample_folder(tmp_path_factory):
    """32 real photographs (crops of scikit-image's CC0 samples), 48x48 PNG."""
    from fingerprinting.sample_images import write_sample_images

    return write_sample_images(str(tmp_path_factory.mktemp("samples")), count=32, size=48)
