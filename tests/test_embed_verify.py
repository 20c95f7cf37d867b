"""embed.py and verify.py as users run them: aligned crops and photos, failures kept in the order, a real
face model (OpenCV's SFace) telling the same person from another."""
from __future__ import annotations


import numpy as np
import pytest

from faces.alignment import align_face
from faces.mtcnn import MTCNN
from tests.helpers import mtcnn_photos, run_command, skimage_photo, write_photo
from tests.test_onnx import SFACE


run, write = run_command, write_photo


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    root = tmp_path_factory.mktemp("pictures")
    photos, detector = mtcnn_photos(), MTCNN()
    for name in ("astronaut", "astronaut_rotated_20", "camera"):
        write(root / "photos" / f"{name}.jpg", photos[name])
        write(root / "aligned" / f"{name}.jpg", align_face(photos[name], detector.detect(photos[name])[0].landmarks))
    write(root / "photos" / "zz_coffee.jpg", skimage_photo("coffee"))
    (root / "aligned" / "broken.jpg").write_bytes(b"\xff\xd8 nope")
    return root


def test_embed_aligned_crops_keeps_failures_in_the_order(pictures, tmp_path):
    out = tmp_path / "feats.npy"
    result = run("embed.py", "--model", SFACE, "--input", pictures / "aligned", "--aligned", "--out", out)
    assert result.returncode == 0, result.stderr
    assert "4 images: 3 embedded (128-d, flip on), 1 failed" in result.stdout
    paths = (tmp_path / "paths.txt").read_text().splitlines()
    assert [p.rsplit("/", 1)[1] for p in paths] == ["astronaut.jpg", "astronaut_rotated_20.jpg", "broken.jpg",
                                                     "camera.jpg"]
    feats = np.load(out)
    assert feats.shape == (4, 128) and feats.dtype == np.float32 and np.isnan(feats[2]).all()
    np.testing.assert_allclose(np.linalg.norm(feats[[0, 1, 3]], axis=1), 1.0, atol=1e-5)
    assert feats[0] @ feats[1] > 0.363 > feats[0] @ feats[3]
    assert "broken.jpg: not a valid image" in (tmp_path / "failed.txt").read_text()


def test_embed_photos_detects_and_lists_the_faceless(pictures, tmp_path):
    result = run("embed.py", "--model", SFACE, "--input", pictures / "photos", "--out", tmp_path / "f.npy",
                 "--detector", "yunet")
    assert result.returncode == 0, result.stderr
    feats = np.load(tmp_path / "f.npy")
    assert np.isnan(feats[3]).all() and np.isfinite(feats[:3]).all()
    assert "zz_coffee.jpg: no face found" in (tmp_path / "failed.txt").read_text()


def test_verify_same_and_different(pictures):
    same = run("verify.py", "--model", SFACE, pictures / "photos" / "astronaut.jpg",
               pictures / "photos" / "astronaut_rotated_20.jpg", "--threshold", "0.363")
    assert same.returncode == 0, same.stderr
    assert "same person at threshold 0.3630" in same.stdout and "squared L2 distance" in same.stdout
    different = run("verify.py", "--model", SFACE, pictures / "aligned" / "astronaut.jpg",
                    pictures / "aligned" / "camera.jpg", "--aligned", "--threshold", "0.363")
    assert "different people" in different.stdout
    published = run("verify.py", "--model", SFACE, pictures / "aligned" / "astronaut.jpg",
                    pictures / "aligned" / "camera.jpg", "--aligned")
    assert "different people at threshold 0.3630" in published.stdout  # OpenCV's, published with SFace


@pytest.mark.parametrize("args, message", [
    (["embed.py", "--model", "missing.pth", "--input", "{p}/aligned", "--out", "{t}/f.npy"], "missing.pth: weights file not found"),
    (["embed.py", "--model", "README.md", "--input", "{p}/aligned", "--out", "{t}/f.npy"], "README.md: not a PyTorch weights file"),
    (["embed.py", "--model", SFACE, "--input", "{t}/nothing", "--out", "{t}/f.npy"], "nothing: --input not found"),
    (["verify.py", "--model", SFACE, "{p}/photos/zz_coffee.jpg", "{p}/photos/camera.jpg"], "zz_coffee.jpg: no face found"),
    (["verify.py", "--model", SFACE, "{p}/aligned/broken.jpg", "{p}/aligned/camera.jpg", "--aligned"], "broken.jpg: not a valid image"),
])
def test_bad_input_is_one_line(pictures, tmp_path, args, message):
    args = [str(a).format(p=pictures, t=tmp_path) for a in args]
    result = run(*args)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: ") and message in result.stderr
    assert not (tmp_path / "f.npy").exists()
