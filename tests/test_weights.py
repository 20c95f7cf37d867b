"""Backbone weights files (inference.weights): every family recognised from its keys, round trips, our recorded
conventions, TreB1eN's BGR, checkpoints, and one-line errors for every kind of bad file."""
from __future__ import annotations

import json
import pickle

import pytest
import torch
from torch import nn

from inference.weights import load_backbone_weights, save_backbone_weights
from model import Backbone, IResNet, MobileFaceNet, build_backbone
from tests.test_model import NAMES
from utils import UserError


def light_state_dict(name: str, embedding_size: int = 512) -> dict[str, torch.Tensor]:
    """A state_dict with the right keys and shapes whose tensors share one small storage (tiny files)."""
    with torch.device("meta"):
        shapes = build_backbone(name, embedding_size=embedding_size).state_dict()
    value, count = torch.full((1,), 0.5), torch.zeros((), dtype=torch.long)
    return {k: (count if v.dtype == torch.long else value.expand(v.shape)) for k, v in shapes.items()}


def real_state_dict(name: str) -> dict[str, torch.Tensor]:
    """Distinct random values in every tensor, so that a load that mixes keys up is seen."""
    generator = torch.Generator().manual_seed(7)
    return {k: torch.randn(v.shape, generator=generator) if v.is_floating_point() else torch.tensor(3)
            for k, v in light_state_dict(name).items()}


def assert_same_state(model: nn.Module, state: dict) -> None:
    loaded = model.state_dict()
    assert loaded.keys() == state.keys()
    for key, value in state.items():
        assert torch.equal(loaded[key], value), key


@pytest.mark.parametrize("name", NAMES)
def test_backbone_is_recognised_from_the_keys_of_a_file(tmp_path, name):
    path = tmp_path / f"model_{name}.pth"
    torch.save(light_state_dict(name), path)
    model, meta = load_backbone_weights(None, path)
    assert meta["backbone"] == name and model.arch == name
    assert meta["source"] == ("arcface_torch" if name.startswith("r") else "treb1en")
    assert meta["channel_order"] == ("RGB" if name.startswith("r") else "BGR")
    assert {k: meta[k] for k in ("mean", "std", "input_size")} == {"mean": 0.5, "std": 0.5, "input_size": [112, 112]}
    assert torch.all(model.state_dict()[next(iter(model.state_dict()))] == 0.5)


@pytest.mark.parametrize("name, prefix", [("mobilefacenet", ""), ("mobilefacenet", "module."),
                                          ("ir_50", ""), ("r50", "module.")])
def test_state_dict_round_trip(tmp_path, name, prefix):
    state = real_state_dict(name)
    path = tmp_path / f"model_{name}.pth"
    torch.save({prefix + k: v for k, v in state.items()}, path)
    if not prefix:  # what the reference code does with a published file (meta + assign: no init cost)
        with torch.device("meta"):
            plain = build_backbone(name)
        plain.load_state_dict(torch.load(path, weights_only=True), strict=True, assign=True)
    else:
        assert next(iter(torch.load(path, weights_only=True))).startswith("module.")
    source, order = ("arcface_torch", "RGB") if name.startswith("r") else ("treb1en", "BGR")
    targets = [name] if name != "mobilefacenet" else [name, MobileFaceNet(512), nn.DataParallel(MobileFaceNet(512))]
    for model_or_name in targets:
        model, meta = load_backbone_weights(model_or_name, path)
        assert model is model_or_name or isinstance(model_or_name, str)
        assert (meta["source"], meta["channel_order"], meta["backbone"]) == (source, order, name)
        model = model.module if isinstance(model, nn.DataParallel) else model
        assert_same_state(model, state)
        assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
        if isinstance(model, IResNet):  # the frozen BN1d scale stays frozen
            assert [n for n, p in model.named_parameters() if not p.requires_grad] == ["features.weight"]


def test_2018_files_load(tmp_path):
    """TreB1eN's weights (2018) are in torch's legacy (pre-1.6, non-zip) format and may predate torch 0.4.1,
    which added BatchNorm's num_batches_tracked."""
    state = {k: v for k, v in real_state_dict("mobilefacenet").items() if not k.endswith("num_batches_tracked")}
    torch.save(state, tmp_path / "model_mobilefacenet.pth", _use_new_zipfile_serialization=False)
    assert (tmp_path / "model_mobilefacenet.pth").read_bytes()[:1] == b"\x80"
    model, meta = load_backbone_weights("mobilefacenet", tmp_path / "model_mobilefacenet.pth")
    assert meta["source"] == "treb1en" and model.bn.num_batches_tracked.item() == 0
    assert torch.equal(model.linear.weight, state["linear.weight"])


def test_embedding_size_is_taken_from_the_file(tmp_path):
    torch.save(light_state_dict("mobilefacenet", embedding_size=128), tmp_path / "m.pth")
    model, _ = load_backbone_weights("mobilefacenet", tmp_path / "m.pth")
    assert model.embedding_size == 128 and model.linear.weight.shape == (128, 512)


def test_our_exported_weights_record_rgb(tmp_path):
    model = build_backbone("mobilefacenet")
    save_backbone_weights(model, tmp_path / "model_final.pth")
    # the .pth is a plain state_dict with the reference keys: TreB1eN-style strict loading works
    MobileFaceNet(512).load_state_dict(torch.load(tmp_path / "model_final.pth", weights_only=True), strict=True)
    assert json.loads((tmp_path / "model_final.json").read_text())["channel_order"] == "RGB"
    loaded, meta = load_backbone_weights(None, tmp_path / "model_final.pth")
    assert meta == {"source": "ours", "backbone": "mobilefacenet", "channel_order": "RGB", "mean": 0.5,
                    "std": 0.5, "input_size": [112, 112]}
    assert_same_state(loaded, model.state_dict())


def test_an_unrelated_json_beside_a_file_is_ignored(tmp_path):
    torch.save(light_state_dict("mobilefacenet"), tmp_path / "model_a.pth")
    (tmp_path / "model_a.json").write_text('{"accuracy": 0.99, "channel_order": "RGB"}')
    assert load_backbone_weights(None, tmp_path / "model_a.pth")[1]["source"] == "treb1en"
    (tmp_path / "model_a.json").write_text('{"source": "ours", "channel_order": "BGR"}')
    assert load_backbone_weights(None, tmp_path / "model_a.pth")[1]["channel_order"] == "BGR"


@pytest.mark.parametrize("checkpoint, source, order", [
    (lambda s: {"model": s, "input": {"channel_order": "BGR", "mean": 0.5, "std": 0.5, "input_size": [112, 112]},
                "step": 10}, "ours", "BGR"),
    (lambda s: {"model": s, "step": 10}, "ours", "RGB"),
    (lambda s: {"state_dict_backbone": s, "global_step": 10}, "treb1en", "BGR"),
], ids=["ours-recorded-bgr", "ours-default", "arcface_torch-checkpoint-layout"])
def test_checkpoint_files_load(tmp_path, checkpoint, source, order):
    state = real_state_dict("mobilefacenet")
    torch.save(checkpoint(state), tmp_path / "checkpoint.pt")
    model, meta = load_backbone_weights(None, tmp_path / "checkpoint.pt")
    assert (meta["source"], meta["channel_order"]) == (source, order)
    assert_same_state(model, state)


def bad_file_message(tmp_path, write, model_or_name="mobilefacenet") -> str:
    path = tmp_path / "model_bad.pth"
    write(path)
    with pytest.raises(UserError) as err:
        load_backbone_weights(model_or_name, path)
    message = str(err.value)
    assert "\n" not in message and str(path) in message
    return message


class NotAllowed:  # a pickled class: refused by weights_only=True
    pass


def test_missing_file(tmp_path):
    with pytest.raises(UserError, match="model_none.pth: weights file not found"):
        load_backbone_weights("r50", tmp_path / "model_none.pth")


@pytest.mark.parametrize("write", [
    lambda p: p.write_text("not a checkpoint\n"),
    lambda p: p.write_bytes(b""),
    lambda p: p.write_bytes(pickle.dumps({"x": NotAllowed()}, protocol=2)),
], ids=["text", "empty", "arbitrary-pickle"])
def test_not_a_torch_file(tmp_path, write):
    assert "not a PyTorch weights file" in bad_file_message(tmp_path, write)


def test_truncated_file(tmp_path):
    torch.save(real_state_dict("mobilefacenet"), tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    message = bad_file_message(tmp_path, lambda p: p.write_bytes(data[:len(data) // 2]))
    assert message.endswith("a damaged or incomplete PyTorch file (its zip archive is cut short or overwritten); "
                            "copy it again or use another checkpoint")


def test_overwritten_file_gives_a_complete_reason(tmp_path):
    torch.save(real_state_dict("mobilefacenet"), tmp_path / "full.pth")
    data = (tmp_path / "full.pth").read_bytes()
    message = bad_file_message(tmp_path, lambda p: p.write_bytes(data[:2000] + b"\0" * 5000 + data[7000:]))
    assert "loadable with weights_only=True (UnpicklingError: " in message and message.endswith(")")
    assert "file an issue" not in message and "high likelihood" not in message


def test_a_folder_is_not_a_weights_file(tmp_path):
    with pytest.raises(UserError, match=r"run: a folder, not a weights file \(give the file, e.g. .*model_latest.pth"):
        load_backbone_weights(None, tmp_path / "run" if (tmp_path / "run").mkdir() is None else None)


def test_not_a_state_dict(tmp_path):
    assert "not a state_dict" in bad_file_message(tmp_path, lambda p: torch.save([torch.zeros(3)], p))


def test_unknown_key_set(tmp_path):
    message = bad_file_message(tmp_path, lambda p: torch.save({"encoder.weight": torch.zeros(3)}, p), None)
    assert "unknown key set" in message and "'encoder.weight'" in message


def test_wrong_shape_names_the_first_mismatching_key(tmp_path):
    state = light_state_dict("mobilefacenet")
    state["conv_4.model.2.conv_dw.conv.weight"] = torch.zeros(256, 1, 5, 5)
    message = bad_file_message(tmp_path, lambda p: torch.save(state, p))
    assert "'conv_4.model.2.conv_dw.conv.weight' has shape [256, 1, 5, 5] in the file, [256, 1, 3, 3]" in message
    assert "mobilefacenet" in message


def test_missing_and_unexpected_keys_are_named(tmp_path):
    state = light_state_dict("mobilefacenet")
    del state["conv_5.model.1.project.bn.running_var"]
    assert "'conv_5.model.1.project.bn.running_var' is missing" in bad_file_message(
        tmp_path, lambda p: torch.save(state, p))
    state = {**light_state_dict("mobilefacenet"), "conv_7.weight": torch.zeros(1)}
    assert "unexpected key 'conv_7.weight'" in bad_file_message(tmp_path, lambda p: torch.save(state, p), None)


def test_weights_of_another_backbone_say_what_the_file_holds(tmp_path):
    message = bad_file_message(tmp_path, lambda p: torch.save(light_state_dict("ir_50"), p), "ir_se_50")
    assert "does not fit ir_se_50" in message and "'body.0.res_layer.5.fc1.weight' is missing" in message
    assert "the file holds ir_50 weights" in message
    message = bad_file_message(tmp_path, lambda p: torch.save(light_state_dict("r50"), p), Backbone(50, 0.6, "ir_se"))
    assert "does not fit ir_se_50 (arcface_torch keys)" in message and "the file holds r50 weights" in message


def test_invalid_recorded_conventions(tmp_path):
    state = light_state_dict("mobilefacenet")
    message = bad_file_message(tmp_path, lambda p: torch.save({"model": state, "input": {"channel_order": "GBR"}}, p))
    assert "invalid input conventions" in message


# ----------------------------------------------------------------------------- channel order

