"""Backbones: TreB1eN's IR / IR-SE (50, 100, 152) and MobileFaceNet, arcface_torch's IResNet (r50, r100),
and a registry with `build_backbone(name)`. Weights files (ours, TreB1eN's, arcface_torch's) are read and
written by `inference.weights`.

Compatibility. `Backbone(num_layers, drop_ratio, mode)` and `MobileFaceNet(embedding_size)` have
TreB1eN/InsightFace_Pytorch's signatures, module names and state_dict keys and shapes; `iresnet50` /
`iresnet100` have arcface_torch's (recognition/arcface_torch/backbones/iresnet.py). Their published
weights load with `load_state_dict(strict=True)`; tests/fixtures/keys/ holds the reference key lists.

Normalisation, applied once. Every backbone subclasses `EmbeddingModel` and implements only
`forward_raw(x)`: the un-normalised embedding (B, E), i.e. the reference network's output before any
L2 normalisation. `EmbeddingModel.forward(x)` and `forward_with_norm(x)` pass it through the one
helper `l2_norm_with_norm`, which works in float32 (also under autocast) and returns the unit
embedding and the norm (B,) that AdaFace / MagFace heads need. For TreB1eN's models this *is* their
forward (it ended in `l2_norm`); arcface_torch's IResNet returned the raw feature and normalised in its
loss, so its reference output is our `forward_raw`. The base class adds no parameters or buffers.

Input: (B, 3, 112, 112) float, `(x/255 - 0.5) / 0.5`, in the channel order the weights were trained
on: RGB for ours and arcface_torch's, BGR for TreB1eN's published weights (`inference.conventions`).
"""
from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from utils import UserError

__all__ = [
    "EmbeddingModel", "Backbone", "MobileFaceNet", "IResNet", "iresnet50", "iresnet100", "PReLU",
    "l2_norm", "l2_norm_with_norm", "register_backbone", "build_backbone", "list_backbones",
    "backbone_family",
]


# ----------------------------------------------------------------------------- normalisation

def l2_norm_with_norm(features: torch.Tensor, axis: int = 1, eps: float = 1e-12):
    """(features / ||features||, ||features||) along `axis`, in float32; the norm has `axis` removed."""
    features = features.float()
    norm = torch.linalg.vector_norm(features, dim=axis, keepdim=True)
    return features / norm.clamp_min(eps), norm.squeeze(axis)


def l2_norm(features: torch.Tensor, axis: int = 1) -> torch.Tensor:
    """TreB1eN's `l2_norm(input, axis)`: unit vectors along `axis` (heads use axis=0 on their kernel)."""
    return l2_norm_with_norm(features, axis)[0]


class EmbeddingModel(nn.Module):
    """Base of every backbone: subclasses implement `forward_raw`; normalisation happens here only."""

    embedding_size: int
    arch: str  # the registered name of this architecture (state_dict layout), e.g. "ir_se_50"

    def forward_raw(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward_with_norm(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return l2_norm_with_norm(self.forward_raw(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_with_norm(x)[0]


# ----------------------------------------------------------------------------- PReLU

class _PReLUFunction(torch.autograd.Function):
    """PReLU whose backward is five of torch's fast kernels instead of its `_prelu_kernel_backward`.

    On a CPU torch's backward kernel was 31% of a MobileFaceNet training step (perf.profile_step, 2 threads): it
    writes a full-size weight gradient that is summed afterwards. This one computes the same gradients to the
    bit (tests/test_model.py): where x > 0 the input's gradient is g, elsewhere g * w (threshold_backward splits
    g into those parts), and the weight's is the sum of g * x over x <= 0. Measured, MobileFaceNet batch 32,
    channels_last, the whole step (best of 4 x 3 steps, A/B in one process): one thread 1.33 -> 1.14 s; two
    one-thread processes side by side (the experiments' jobs 2) 1.31-1.33 -> 1.16-1.26 s; two threads
    0.73 -> 0.70 s. It makes more passes over memory than torch's one kernel, so the gain is smallest where
    bandwidth is short; on a GPU torch's fused kernel is kept."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x, weight)
        return torch.nn.functional.prelu(x, weight)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight = ctx.saved_tensors
        per_channel = weight.numel() > 1
        shape = [1] * x.dim()
        if per_channel:
            shape[1] = weight.numel()
        positive = torch.ops.aten.threshold_backward(grad, x, 0)   # g where x > 0, else 0
        negative = grad - positive                                  # g where x <= 0, else 0
        dims = [d for d in range(x.dim()) if not (per_channel and d == 1)]
        grad_weight = (negative * x).sum(dims).reshape(weight.shape)
        return torch.addcmul(positive, negative, weight.reshape(shape)), grad_weight


class PReLU(nn.PReLU):
    """nn.PReLU (the same parameter, state_dict key and forward) with a faster backward on a CPU in float32;
    elsewhere (a GPU, autocast, no gradient, ONNX export) torch's own."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (x.device.type == "cpu" and x.dtype == self.weight.dtype == torch.float32 and torch.is_grad_enabled()
                and x.dim() >= 2 and not torch.compiler.is_compiling()):
            return _PReLUFunction.apply(x, self.weight)
        return super().forward(x)


# ----------------------------------------------------------------------------- TreB1eN IR / IR-SE

class Subsample(nn.Module):
    """The parameter-free shortcut of TreB1eN's IR units (its `MaxPool2d(1, stride)`): a strided view."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x):
        return x if self.stride == 1 else x[:, :, ::self.stride, ::self.stride]


class SEModule(nn.Module):
    """Squeeze-and-excitation with 1x1 convolutions named fc1 / fc2 (TreB1eN's keys)."""

    def __init__(self, channels: int, reduction: int):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, kernel_size=1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, kernel_size=1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x):
        scale = self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))
        return x * scale


class BottleneckIR(nn.Module):
    """Pre-activation IR unit: BN-conv3x3-PReLU-conv3x3(stride)-BN [-SE], plus a shortcut.

    res_layer indices 0..4 (5 = SE) and shortcut_layer 0 (conv) / 1 (BN) are TreB1eN's key names.
    """

    def __init__(self, in_channel: int, depth: int, stride: int, use_se: bool = False):
        super().__init__()
        if in_channel == depth:
            self.shortcut_layer = Subsample(stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channel, depth, 1, stride, bias=False), nn.BatchNorm2d(depth))
        layers = [nn.BatchNorm2d(in_channel),
                  nn.Conv2d(in_channel, depth, 3, 1, 1, bias=False),
                  PReLU(depth),
                  nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
                  nn.BatchNorm2d(depth)]
        if use_se:
            layers.append(SEModule(depth, 16))
        self.res_layer = nn.Sequential(*layers)

    def forward(self, x):
        return self.res_layer(x) + self.shortcut_layer(x)


# units per stage; TreB1eN's get_blocks
IR_STAGE_UNITS = {50: (3, 4, 14, 3), 100: (3, 13, 30, 3), 152: (3, 8, 36, 3)}
STAGE_WIDTHS = (64, 128, 256, 512)


def ir_unit_specs(num_layers: int) -> list[tuple[int, int, int]]:
    """(in_channel, depth, stride) of every unit: each stage opens with a stride-2 unit."""
    specs, in_channel = [], 64
    for width, units in zip(STAGE_WIDTHS, IR_STAGE_UNITS[num_layers]):
        specs.append((in_channel, width, 2))
        specs.extend((width, width, 1) for _ in range(units - 1))
        in_channel = width
    return specs


class Backbone(EmbeddingModel):
    """TreB1eN's IR (mode='ir') / IR-SE (mode='ir_se') network for 112x112 input.

    `embedding_size` (keyword, default 512 as TreB1eN's fixed width) sizes the last Linear + BN1d.
    """

    def __init__(self, num_layers: int, drop_ratio: float, mode: str = "ir", embedding_size: int = 512):
        super().__init__()
        if num_layers not in IR_STAGE_UNITS:
            raise ValueError(f"num_layers should be one of {sorted(IR_STAGE_UNITS)}, not {num_layers}")
        if mode not in ("ir", "ir_se"):
            raise ValueError(f"mode should be 'ir' or 'ir_se', not {mode!r}")
        self.embedding_size = embedding_size
        self.arch = f"{mode}_{num_layers}"
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), PReLU(64))
        self.output_layer = nn.Sequential(nn.BatchNorm2d(512),
                                          nn.Dropout(drop_ratio),
                                          nn.Flatten(),  # reshape: also right for channels_last input
                                          nn.Linear(512 * 7 * 7, embedding_size),
                                          nn.BatchNorm1d(embedding_size))
        self.body = nn.Sequential(*(BottleneckIR(*spec, use_se=mode == "ir_se")
                                    for spec in ir_unit_specs(num_layers)))

    def forward_raw(self, x):
        return self.output_layer(self.body(self.input_layer(x)))


# ----------------------------------------------------------------------------- TreB1eN MobileFaceNet

class ConvBlock(nn.Module):
    """conv-BN-PReLU, keys conv / bn / prelu (TreB1eN's Conv_block)."""

    def __init__(self, in_c, out_c, kernel=1, stride=1, padding=0, groups=1):
        super().__init__()
        self.conv = nn.Conv2d(in_c, out_c, kernel, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_c)
        self.prelu = PReLU(out_c)

    def forward(self, x):
        return self.prelu(self.bn(self.conv(x)))


class LinearBlock(nn.Module):
    """conv-BN without activation, keys conv / bn (TreB1eN's Linear_block)."""

    def __init__(self, in_c, out_c, kernel=1, stride=1, padding=0, groups=1):
        super().__init__()
        self.conv = nn.Conv2d(in_c, out_c, kernel, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_c)

    def forward(self, x):
        return self.bn(self.conv(x))


class DepthWise(nn.Module):
    """Inverted residual: 1x1 expand to `groups` channels, depthwise 3x3, 1x1 project (TreB1eN's Depth_Wise)."""

    def __init__(self, in_c, out_c, residual=False, stride=2, groups=1):
        super().__init__()
        self.conv = ConvBlock(in_c, groups)
        self.conv_dw = ConvBlock(groups, groups, kernel=3, stride=stride, padding=1, groups=groups)
        self.project = LinearBlock(groups, out_c)
        self.residual = residual

    def forward(self, x):
        out = self.project(self.conv_dw(self.conv(x)))
        return x + out if self.residual else out


class Residual(nn.Module):
    """`num_block` residual DepthWise units in `self.model` (TreB1eN's key name)."""

    def __init__(self, c, num_block, groups):
        super().__init__()
        self.model = nn.Sequential(*(DepthWise(c, c, residual=True, stride=1, groups=groups)
                                     for _ in range(num_block)))

    def forward(self, x):
        return self.model(x)


class MobileFaceNet(EmbeddingModel):
    """TreB1eN's MobileFaceNet for 112x112 input (the 7x7 depthwise conv_6_dw needs a 7x7 map)."""

    def __init__(self, embedding_size: int = 512):
        super().__init__()
        self.embedding_size = embedding_size
        self.arch = "mobilefacenet"
        self.conv1 = ConvBlock(3, 64, kernel=3, stride=2, padding=1)
        self.conv2_dw = ConvBlock(64, 64, kernel=3, stride=1, padding=1, groups=64)
        self.conv_23 = DepthWise(64, 64, stride=2, groups=128)
        self.conv_3 = Residual(64, num_block=4, groups=128)
        self.conv_34 = DepthWise(64, 128, stride=2, groups=256)
        self.conv_4 = Residual(128, num_block=6, groups=256)
        self.conv_45 = DepthWise(128, 128, stride=2, groups=512)
        self.conv_5 = Residual(128, num_block=2, groups=256)
        self.conv_6_sep = ConvBlock(128, 512)
        self.conv_6_dw = LinearBlock(512, 512, kernel=7, groups=512)
        self.conv_6_flatten = nn.Flatten()
        self.linear = nn.Linear(512, embedding_size, bias=False)
        self.bn = nn.BatchNorm1d(embedding_size)

    def forward_raw(self, x):
        x = self.conv2_dw(self.conv1(x))
        x = self.conv_3(self.conv_23(x))
        x = self.conv_4(self.conv_34(x))
        x = self.conv_5(self.conv_45(x))
        x = self.conv_6_flatten(self.conv_6_dw(self.conv_6_sep(x)))
        return self.bn(self.linear(x))


# ----------------------------------------------------------------------------- arcface_torch IResNet

class IBasicBlock(nn.Module):
    """arcface_torch's IResNet unit: BN-conv3x3-BN-PReLU-conv3x3(stride)-BN, plus `downsample`."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes)
        self.conv1 = nn.Conv2d(inplanes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.prelu = PReLU(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x):
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        identity = x if self.downsample is None else self.downsample(x)
        return out + identity


IRESNET_ARCHS = {(3, 4, 14, 3): "r50", (3, 13, 30, 3): "r100"}


class IResNet(EmbeddingModel):
    """arcface_torch's IResNet for 112x112 input; `forward_raw` is its reference (un-normalised) output.

    As there, the final BN1d `features` has its scale fixed at 1 (not trained) and convolutions start
    from N(0, 0.1) -- so an untrained IResNet in eval mode (BatchNorm on its initial running statistics)
    overflows; training mode, or BN statistics from some training steps, gives finite features.
    """

    def __init__(self, layers: tuple[int, int, int, int], dropout: float = 0.0, num_features: int = 512,
                 zero_init_residual: bool = False):
        super().__init__()
        self.embedding_size = num_features
        self.arch = IRESNET_ARCHS.get(tuple(layers), f"iresnet{tuple(layers)}")
        self.conv1 = nn.Conv2d(3, 64, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.prelu = PReLU(64)
        inplanes = 64
        for index, (planes, blocks) in enumerate(zip(STAGE_WIDTHS, layers), start=1):
            downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, 2, bias=False), nn.BatchNorm2d(planes))
            units = [IBasicBlock(inplanes, planes, 2, downsample)]
            units += [IBasicBlock(planes, planes) for _ in range(blocks - 1)]
            setattr(self, f"layer{index}", nn.Sequential(*units))
            inplanes = planes
        self.bn2 = nn.BatchNorm2d(512)
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(512 * 7 * 7, num_features)
        self.features = nn.BatchNorm1d(num_features)
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0, 0.1)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_residual:
            for module in self.modules():
                if isinstance(module, IBasicBlock):
                    nn.init.zeros_(module.bn2.weight)  # as arcface_torch (bn2, not the last bn3)
        nn.init.ones_(self.features.weight)
        self.features.weight.requires_grad = False

    def forward_raw(self, x):
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))


def iresnet50(**kwargs) -> IResNet:
    return IResNet((3, 4, 14, 3), **kwargs)


def iresnet100(**kwargs) -> IResNet:
    return IResNet((3, 13, 30, 3), **kwargs)


# ----------------------------------------------------------------------------- registry

_REGISTRY: dict[str, Callable[..., EmbeddingModel]] = {}
# which published code base a backbone's state_dict layout comes from
_FAMILY: dict[str, str] = {}


def register_backbone(name: str, family: str):
    """Decorator: `fn(embedding_size=..., **kw) -> EmbeddingModel` becomes `build_backbone(name)`."""
    def decorator(fn):
        _REGISTRY[name] = fn
        _FAMILY[name] = family
        return fn
    return decorator


def _register_ir(mode: str, depth: int) -> None:
    # drop_ratio 0.6: TreB1eN's training default (config.py)
    def create(embedding_size: int = 512, drop_ratio: float = 0.6) -> Backbone:
        return Backbone(depth, drop_ratio, mode, embedding_size=embedding_size)
    register_backbone(f"{mode}_{depth}", "treb1en")(create)


for _depth in (50, 100, 152):
    for _mode in ("ir_se", "ir"):
        _register_ir(_mode, _depth)


@register_backbone("mobilefacenet", "treb1en")
def _mobilefacenet(embedding_size: int = 512) -> MobileFaceNet:
    return MobileFaceNet(embedding_size)


def _register_iresnet(name: str, create_iresnet: Callable[..., IResNet]) -> None:
    # drop_ratio 0: arcface_torch's default; the same keyword as the IR models' for a uniform factory
    def create(embedding_size: int = 512, drop_ratio: float = 0.0, zero_init_residual: bool = False) -> IResNet:
        return create_iresnet(num_features=embedding_size, dropout=drop_ratio, zero_init_residual=zero_init_residual)
    register_backbone(name, "arcface_torch")(create)


_register_iresnet("r50", iresnet50)
_register_iresnet("r100", iresnet100)


def list_backbones() -> list[str]:
    return list(_REGISTRY)


def build_backbone(name: str, embedding_size: int = 512, **kwargs) -> EmbeddingModel:
    """A registered backbone by name (`list_backbones()`); keyword arguments go to its constructor.

    `drop_ratio` (dropout before the embedding layer) is accepted by the IR / IR-SE (default 0.6, as
    TreB1eN) and IResNet (default 0, as arcface_torch) models; MobileFaceNet has no dropout.
    """
    if name not in _REGISTRY:
        raise UserError(f"unknown backbone {name!r}; choose one of {', '.join(_REGISTRY)}")
    return _REGISTRY[name](embedding_size=embedding_size, **kwargs)


def backbone_family(name: str) -> str:
    """Which published code base a registered backbone's state_dict layout comes from: 'treb1en' or 'arcface_torch'."""
    return _FAMILY[name]
