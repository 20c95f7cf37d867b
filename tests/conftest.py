import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def train_data(tmp_path_factory) -> Path:
    """A small prepared synthetic emore folder (10 identities x 8 images, pose.npy, four 40-pair val sets),
    made once per test session for the training tests."""
    from data.prepare_data import main as prepare
    from data.synthetic import generate
    folder = tmp_path_factory.mktemp("train_data") / "synthetic"
    generate(folder, num_classes=10, per_class=8, val_classes=8, val_pairs=40, seed=3)
    assert prepare(["--source", str(folder), "--workers", "1"]) == 0
    return folder
