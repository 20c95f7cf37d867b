"""Backbones: reference key lists, the uniform embedding interface, memory formats / autocast (weight files:
test_weights.py).

Every backbone runs forward + backward in fp32 and channels_last here. Under bf16 autocast the default run
covers MobileFaceNet end to end and every unit type (IR, IR-SE, IResNet block, output layers) on small
inputs; the full 50/100/152-layer networks under bf16 run when the CPU has native bf16 convolutions or
with MODEL_TESTS_FULL=1 (on AVX2-only CPUs PyTorch emulates them: ~10 s per 50-layer network).
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from torch import nn

import model as M
from model import Backbone, IResNet, MobileFaceNet, build_backbone, iresnet50, list_backbones
from utils import UserError, seed_everything

KEYS = Path(__file__).resolve().parent / "fixtures" / "keys"
NAMES = ["ir_se_50", "ir_50", "ir_se_100", "ir_100", "ir_se_152", "ir_152", "mobilefacenet", "r50", "r100"]
TREB1EN_NAMES = [n for n in NAMES if not n.startswith("r")]
FULL = os.environ.get("MODEL_TESTS_FULL") == "1"


def native_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


_built: dict[str, nn.Module] = {}


@pytest.fixture(autouse=True)
def _drop_gradients():
    yield
    for model in _built.values():
        model.zero_grad(set_to_none=True)


def seeded_model(name: str) -> nn.Module:
    """One model per name for the whole file (built with seed 0, no dropout, so that two training-mode
    passes compute the same function), in training mode with no gradients."""
    if name not in _built:
        seed_everything(0)
        _built[name] = build_backbone(name, **({} if name == "mobilefacenet" else {"drop_ratio": 0.0}))
    model = _built[name].train()
    model.zero_grad(set_to_none=True)
    return model


def faces(batch: int = 2, seed: int = 1) -> torch.Tensor:
    return torch.randn(batch, 3, 112, 112, generator=torch.Generator().manual_seed(seed))


def reference_keys(name: str) -> dict:
    return json.loads((KEYS / f"{name}.json").read_text())


def state_shapes(module: nn.Module) -> dict[str, list[int]]:
    return {key: list(value.shape) for key, value in module.state_dict().items()}


def assert_trainable_grads_finite(model: nn.Module) -> None:
    trainable = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    assert trainable
    for name, param in trainable:
        assert param.grad is not None, name
        assert torch.isfinite(param.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for _, p in trainable)


# ----------------------------------------------------------------------------- registry and signatures

def test_registry_lists_every_backbone():
    assert list_backbones() == NAMES


def test_unknown_backbone_is_a_user_error_naming_the_choices():
    with pytest.raises(UserError) as err:
        build_backbone("resnet9000")
    message = str(err.value)
    assert "resnet9000" in message and all(name in message for name in NAMES)


def test_treb1en_constructor_signatures():
    with torch.device("meta"):
        assert state_shapes(Backbone(50, 0.6, "ir_se")) == reference_keys("ir_se_50")["keys"]
        assert state_shapes(Backbone(100, 0.4)) == reference_keys("ir_100")["keys"]  # mode defaults to 'ir'
        assert state_shapes(MobileFaceNet(512)) == reference_keys("mobilefacenet")["keys"]
        assert state_shapes(iresnet50()) == reference_keys("r50")["keys"]
    with pytest.raises(ValueError):
        Backbone(34, 0.6)
    with pytest.raises(ValueError):
        Backbone(50, 0.6, "se")


# ----------------------------------------------------------------------------- reference key lists

@pytest.mark.parametrize("name", NAMES)
def test_state_dict_keys_and_shapes_match_the_reference(name):
    fixture = reference_keys(name)
    assert fixture["source"]["commit"] in fixture["header"] and fixture["num_keys"] == len(fixture["keys"])
    with torch.device("meta"):
        ours = state_shapes(build_backbone(name))
    reference = fixture["keys"]
    assert sorted(set(ours) - set(reference)) == [], "keys the reference does not have"
    assert sorted(set(reference) - set(ours)) == [], "reference keys we lack"
    assert {k: v for k, v in ours.items() if reference[k] != v} == {}, "shapes differ"
    assert any(k.endswith("num_batches_tracked") for k in ours)


def test_embedding_size_changes_only_the_embedding_layers():
    with torch.device("meta"):
        small = state_shapes(build_backbone("mobilefacenet", embedding_size=128))
        r50 = state_shapes(build_backbone("r50", embedding_size=256))
    reference = reference_keys("mobilefacenet")["keys"]
    assert {k for k in reference if small[k] != reference[k]} == {
        "linear.weight", "bn.weight", "bn.bias", "bn.running_mean", "bn.running_var"}
    assert small["linear.weight"] == [128, 512] and r50["fc.weight"] == [256, 512 * 7 * 7]


# ----------------------------------------------------------------------------- the embedding interface

def last_module(model: nn.Module) -> nn.Module:
    """The module whose output is the un-normalised embedding (the reference network's last layer)."""
    return {Backbone: lambda m: m.output_layer[-1], MobileFaceNet: lambda m: m.bn,
            IResNet: lambda m: m.features}[type(model)](model)


def first_conv(model: nn.Module) -> nn.Conv2d:
    return next(m for m in model.modules() if isinstance(m, nn.Conv2d))


@pytest.mark.parametrize("name", NAMES)
def test_forward_backward_fp32_contiguous_and_channels_last(name):
    """Training step in fp32: unit embeddings, norms of the raw features, finite gradients. Then eval
    mode, contiguous vs channels_last: the same embeddings, and gradients in channels_last.

    Training mode with a batch of 2 makes the last BatchNorm1d's output independent of its input, so
    the layout comparison runs in eval mode, on running statistics taken from the training pass
    (momentum None: a fresh IResNet's initial statistics overflow, see IResNet)."""
    model = seeded_model(name)
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    for bn in norms:
        bn.reset_running_stats()
        bn.momentum = None
    raw = []
    hook = last_module(model).register_forward_hook(lambda _m, _i, out: raw.append(out.detach()))
    try:
        embedding, norm = model.forward_with_norm(faces())
    finally:
        hook.remove()
        for bn in norms:
            bn.momentum = 0.1
    assert embedding.shape == (2, 512) and norm.shape == (2,)
    assert embedding.dtype == norm.dtype == torch.float32
    torch.testing.assert_close(embedding.norm(dim=1), torch.ones(2))
    assert not torch.allclose(norm, torch.ones(2))  # so that the next check means something
    torch.testing.assert_close(norm[:, None] * embedding, raw[0], rtol=1e-5, atol=1e-5)
    (embedding[:, :8].sum() + 0.01 * norm.sum()).backward()
    assert_trainable_grads_finite(model)

    model.eval().zero_grad(set_to_none=True)
    x = faces(batch=1, seed=2)
    with torch.no_grad():
        expected = model(x)
    model.to(memory_format=torch.channels_last)
    try:
        assert first_conv(model).weight.is_contiguous(memory_format=torch.channels_last)
        got = model(x.contiguous(memory_format=torch.channels_last))
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
        got[:, :8].sum().backward()
        assert_trainable_grads_finite(model)
        assert first_conv(model).weight.grad.abs().sum() > 0
    finally:
        model.to(memory_format=torch.contiguous_format)


@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_weights(name):
    seed_everything(0)
    again = build_backbone(name).state_dict()
    reference = seeded_model(name).state_dict()  # running statistics may have moved in other tests
    assert all(torch.equal(again[k], reference[k]) for k in reference if "running" not in k and "batches" not in k)


def test_embeddings_are_deterministic_for_a_seed():
    def embed(seed):
        seed_everything(seed)
        model = build_backbone("mobilefacenet").eval()
        with torch.no_grad():
            return model(faces(seed=3))
    torch.testing.assert_close(embed(0), embed(0), rtol=0, atol=0)
    assert not torch.allclose(embed(0), embed(1))


def test_iresnet_keeps_arcface_torch_training_details():
    model = seeded_model("r50")
    assert not model.features.weight.requires_grad and torch.equal(model.features.weight, torch.ones(512))
    assert 0.09 < model.layer1[0].conv1.weight.std().item() < 0.11


# ----------------------------------------------------------------------------- bf16 autocast

def bf16_forward_backward(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Forward + backward under bf16 autocast; checks that the convolutions did run in bf16."""
    conv_dtypes = []
    hooks = [m.register_forward_hook(lambda _m, _i, out: conv_dtypes.append(out.dtype))
             for m in module.modules() if isinstance(m, nn.Conv2d)]
    x = x.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(x)
    for hook in hooks:
        hook.remove()
    assert conv_dtypes and set(conv_dtypes) == {torch.bfloat16}
    out.float().square().mean().backward()
    assert torch.isfinite(x.grad).all()
    return out


UNITS = {
    "ir": lambda: M.BottleneckIR(32, 32, 2),
    "ir_shortcut_conv": lambda: M.BottleneckIR(16, 32, 2),
    "ir_se": lambda: M.BottleneckIR(32, 32, 1, use_se=True),
    "iresnet_block": lambda: M.IBasicBlock(16, 32, 2, nn.Sequential(nn.Conv2d(16, 32, 1, 2, bias=False),
                                                                       nn.BatchNorm2d(32))),
    "mobilefacenet_depthwise": lambda: M.DepthWise(32, 32, residual=True, stride=1, groups=64),
}


@pytest.mark.parametrize("unit", UNITS)
def test_units_run_under_bf16_autocast(unit):
    module = UNITS[unit]().train()
    in_channels = next(m for m in module.modules() if isinstance(m, nn.Conv2d)).in_channels
    out = bf16_forward_backward(module, torch.randn(2, in_channels, 14, 14))
    assert out.shape[:2] == (2, 32) and torch.isfinite(out.float()).all()
    assert_trainable_grads_finite(module)


@pytest.mark.parametrize("name", ["ir_50", "r50"])
def test_output_layers_run_under_bf16_autocast(name):
    model = seeded_model(name)
    head = model.output_layer if name.startswith("ir") else nn.Sequential(model.bn2, nn.Flatten(), model.fc,
                                                                          model.features)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        embedding, norm = M.l2_norm_with_norm(head(torch.randn(2, 512, 7, 7)))
    assert embedding.dtype == torch.float32
    (embedding.sum() + norm.sum()).backward()
    assert all(torch.isfinite(p.grad).all() for p in head.parameters() if p.requires_grad)


BF16_FULL = FULL or native_bf16()


@pytest.mark.parametrize("name", [n if n == "mobilefacenet" or BF16_FULL else pytest.param(
    n, marks=pytest.mark.skip(reason="emulated bf16 convolutions on this CPU; MODEL_TESTS_FULL=1 runs it"))
    for n in NAMES])
def test_full_network_forward_backward_under_bf16_autocast(name):
    model = seeded_model(name)
    conv_dtypes = []
    hook = first_conv(model).register_forward_hook(lambda _m, _i, out: conv_dtypes.append(out.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        embedding, norm = model.forward_with_norm(faces())
    hook.remove()
    assert conv_dtypes == [torch.bfloat16]
    assert embedding.dtype == torch.float32 and embedding.shape == (2, 512)
    torch.testing.assert_close(embedding.norm(dim=1), torch.ones(2))
    (embedding[:, :8].sum() + 0.01 * norm.sum()).backward()
    assert_trainable_grads_finite(model)


# ----------------------------------------------------------------------------- PReLU's CPU backward

@pytest.mark.parametrize("shape,parameters,channels_last", [
    ((4, 8, 6, 6), 8, True), ((4, 8, 6, 6), 8, False), ((4, 8, 6, 6), 1, False), ((5, 8), 8, False)])
def test_prelu_backward_is_torchs_to_the_bit(shape, parameters, channels_last):
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(shape, generator=generator)
    x[0, 0] = 0.0  # the x == 0 edge: the slope's side, as torch's
    grad = torch.randn(shape, generator=generator)
    if channels_last:  # and the gradient too, as in a channels_last network
        x, grad = (t.contiguous(memory_format=torch.channels_last) for t in (x, grad))
    ours, reference = M.PReLU(parameters), nn.PReLU(parameters)
    with torch.no_grad():
        ours.weight.uniform_(-0.5, 0.5, generator=generator)
        reference.weight.copy_(ours.weight)
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ya, yb = ours(xa), reference(xb)
    assert "_PReLUFunction" in type(ya.grad_fn).__name__  # our backward is the one under test
    ya.backward(grad)
    yb.backward(grad)
    assert torch.equal(ya, yb)
    assert torch.equal(xa.grad, xb.grad) and torch.equal(ours.weight.grad, reference.weight.grad)


def test_prelu_falls_back_to_torchs_where_its_backward_is_not_needed_or_not_ours():
    layer, x = M.PReLU(3), torch.randn(2, 3, 4, 4, requires_grad=True)
    with torch.no_grad():
        assert layer(x).grad_fn is None
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert "_PReLUFunction" not in type(layer(x.bfloat16()).grad_fn).__name__
    assert isinstance(layer, nn.PReLU) and list(layer.state_dict()) == ["weight"]  # TreB1eN's key


@pytest.mark.parametrize("channels_last", [True, False])
def test_a_training_step_with_our_prelu_gives_torchs_gradients(channels_last):
    torch.manual_seed(0)
    ours = build_backbone("mobilefacenet", embedding_size=16)
    reference = build_backbone("mobilefacenet", embedding_size=16)
    reference.load_state_dict(ours.state_dict())
    for module in reference.modules():
        if isinstance(module, M.PReLU):
            module.__class__ = nn.PReLU  # torch's forward and backward
    x = torch.randn(3, 3, 112, 112)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    for network in (ours, reference):
        network.to(memory_format=memory_format).train()
        network(x.contiguous(memory_format=memory_format)).sum().backward()
    for (name, a), b in zip(ours.named_parameters(), reference.parameters()):
        assert torch.equal(a.grad, b.grad), name
