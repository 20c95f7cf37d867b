"""inference/loader.py + runtime.py: one loader for every command, carrying each model's input conventions."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from inference.conventions import INPUT_CONVENTIONS
from inference.embedding import embed_images
from inference.loader import add_model_arguments, load_model
from inference.runtime import AMP_DTYPES, autocast, resolve_device
from inference.weights import save_backbone_weights
from model import build_backbone
from utils import CliParser, UserError


@pytest.fixture(scope="module")
def network():
    torch.manual_seed(0)
    return build_backbone("mobilefacenet", embedding_size=64).eval()


def faces(count: int = 3) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (count, 3, 112, 112), dtype=np.uint8)


def test_our_export_loads_with_its_conventions(tmp_path, network):
    save_backbone_weights(network, tmp_path / "model_final.pth")
    loaded = load_model(tmp_path / "model_final.pth", device="cpu")
    assert (loaded.name, loaded.source, loaded.device.type) == ("mobilefacenet", "ours", "cpu")
    assert loaded.conventions == INPUT_CONVENTIONS and not loaded.network.training
    assert "mobilefacenet (ours weights, RGB input)" in loaded.describe()
    convs = [m.weight for m in loaded.network.modules() if isinstance(m, torch.nn.Conv2d) and m.weight.shape[-1] > 1]
    assert convs and all(w.is_contiguous(memory_format=torch.channels_last) for w in convs)  # the faster CPU layout
    images = faces()  # ... giving the same embeddings as the contiguous network
    np.testing.assert_allclose(loaded.embed(images, batch_size=2), embed_images(network, images), atol=1e-5)


def test_treb1en_weights_are_fed_bgr(tmp_path, network):
    """A plain state_dict with TreB1eN's keys and no metadata: its published weights saw BGR images."""
    torch.save(network.state_dict(), tmp_path / "model_ir_se50.pth")
    loaded = load_model(tmp_path / "model_ir_se50.pth")
    assert loaded.source == "treb1en" and loaded.conventions["channel_order"] == "BGR"
    images = faces()
    bgr = np.ascontiguousarray(images[:, ::-1])
    np.testing.assert_allclose(loaded.embed(images, flip=False), embed_images(network, bgr, flip=False), atol=1e-5)


def test_model_flags_are_the_same_everywhere():
    parser = CliParser()
    add_model_arguments(parser, required=False, prefix="gen_features: ")
    args = parser.parse_args(["--model", "m.pth", "--net", "r50"])
    assert (str(args.model), args.net, args.device) == ("m.pth", "r50", "cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UserError, match="invalid choice"):
        parser.parse_args(["--net", "resnet9"])


def test_devices_and_precisions():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(UserError, match="--device gpu0"):
        resolve_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(UserError, match="CUDA is not available"):
            resolve_device("cuda:0")
    assert set(AMP_DTYPES) == {"off", "fp16", "bf16"}
    with autocast("cpu", torch.bfloat16):
        assert torch.is_autocast_enabled("cpu")
    with autocast("cpu", None):
        assert not torch.is_autocast_enabled("cpu")


def test_a_missing_file_is_one_line(tmp_path):
    with pytest.raises(UserError, match="weights file not found"):
        load_model(tmp_path / "none.pth")
