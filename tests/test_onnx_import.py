"""inference/onnx_import.py: ONNX exports (BatchNorms fused into convolutions) mapped back onto our backbones by
graph order, with identical outputs; a graph's own input normalisation kept as conventions; fine-tuning
from an .onnx (export.py --format pth, --pretrained); a graph we have no backbone for is one clear line."""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from inference.embedding import embed_images
from inference.loader import load_model
from inference.weights import load_backbone_weights
from model import build_backbone
from tests.conftest import ROOT
from tests.test_onnx import SFACE
from utils import UserError

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch's TorchScript ONNX exporter


def trained_looking(name: str, embedding_size: int = 512) -> torch.nn.Module:
    """A backbone whose BatchNorms have non-trivial statistics (so a wrong fusion shows)."""
    torch.manual_seed(0)
    backbone = build_backbone(name, embedding_size=embedding_size).eval()
    for module in backbone.modules():
        if isinstance(module, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    return backbone


def export(module: torch.nn.Module, path) -> None:
    torch.onnx.export(module, torch.zeros(1, 3, 112, 112), str(path), dynamo=False)  # constant folding: fused BNs


@pytest.mark.parametrize("name, embedding_size", [("mobilefacenet", 128), ("r50", 512), ("ir_se_50", 256)])
def test_an_export_maps_back_onto_its_backbone(tmp_path, name, embedding_size):
    original = trained_looking(name, embedding_size)
    export(original, tmp_path / "model.onnx")
    converted, meta = load_backbone_weights(None, tmp_path / "model.onnx")
    assert (meta["backbone"], meta["source"]) == (name, "onnx")
    x = torch.randn(3, 3, 112, 112)
    with torch.no_grad():
        torch.testing.assert_close(converted.eval()(x), original(x), atol=1e-5, rtol=1e-4)


def test_the_graphs_own_normalisation_becomes_the_conventions(tmp_path):
    class RawPixels(torch.nn.Module):  # insightface's zoo models take 0..255 and normalise inside
        def __init__(self, backbone):
            super().__init__()
            self.backbone = backbone

        def forward(self, x):
            return self.backbone((x - 127.5) * 0.0078125)
    backbone = trained_looking("mobilefacenet", 64)
    export(RawPixels(backbone), tmp_path / "zoo.onnx")
    converted, meta = load_backbone_weights(None, tmp_path / "zoo.onnx")
    assert meta["mean"] == pytest.approx(0.5) and meta["std"] == pytest.approx(1 / (255 * 0.0078125))
    images = np.random.default_rng(0).integers(0, 256, (4, 3, 112, 112), dtype=np.uint8)
    as_onnx = load_model(tmp_path / "zoo.onnx").embed(images)
    as_torch = embed_images(converted, images, conventions={k: meta[k] for k in ("channel_order", "mean", "std")})
    np.testing.assert_allclose(as_torch, as_onnx, atol=1e-4)


def test_fine_tuning_from_an_onnx_file(tmp_path, train_data):
    from learner import Learner
    from tests.test_learner import small_config

    original = trained_looking("mobilefacenet", 64)
    export(original, tmp_path / "start.onnx")
    result = subprocess.run([sys.executable, "export.py", "--model", str(tmp_path / "start.onnx"), "--format", "pth",
                             "--out", str(tmp_path / "model_start.pth")], cwd=ROOT, capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 0, result.stderr
    assert "fine-tune with --pretrained" in result.stdout
    from_pth = load_backbone_weights(None, tmp_path / "model_start.pth")[0]
    learner = Learner(small_config(train_data, tmp_path / "run", pretrained=str(tmp_path / "start.onnx")))
    x = torch.randn(2, 3, 112, 112)
    with torch.no_grad():
        expected = original(x)
        torch.testing.assert_close(from_pth.eval()(x), expected, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(learner.backbone.eval()(x), expected, atol=1e-5, rtol=1e-4)


def test_a_graph_we_have_no_backbone_for(tmp_path):
    with pytest.raises(UserError, match="maps onto none of our backbones .* evaluated as ONNX but not fine-tuned"):
        load_backbone_weights(None, SFACE)
    original = trained_looking("mobilefacenet", 128)
    export(original, tmp_path / "m.onnx")
    with pytest.raises(UserError, match="maps onto none of our backbones \\(r50;"):
        load_backbone_weights("r50", tmp_path / "m.onnx")
