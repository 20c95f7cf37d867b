"""ONNX face model -> our matching PyTorch backbone, for fine-tuning (`export.py --format pth`,
`train.py --pretrained FILE.onnx`).

A torch export with constant folding fuses each BatchNorm that follows a convolution into the convolution's
weight and bias, so most state_dict names are gone from the graph. The mapping is therefore by order: the
graph's parametrised nodes (Conv, BatchNormalization, PRelu, Gemm / MatMul), in graph order, onto the
backbone's parametrised modules in the order its forward pass calls them. A Conv carrying a bias where the
backbone has a bias-free convolution followed by a BatchNorm is such a fused pair: the weight goes to the
convolution, and the BatchNorm becomes the identity plus that bias (weight 1, bias b, mean 0, var 1 - eps).
Every registered backbone is tried; the first onto which every node maps with matching shapes wins. A graph
that maps onto none (an architecture we do not have) is one clear error: such a model can still be evaluated
as ONNX, not fine-tuned.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from model import build_backbone, list_backbones
from utils import UserError

PARAMETRISED = (nn.Conv2d, nn.BatchNorm1d, nn.BatchNorm2d, nn.PReLU, nn.Linear)
NODE_TYPES = ("Conv", "BatchNormalization", "PRelu", "Gemm", "MatMul")


def call_order(backbone: nn.Module) -> list[tuple[str, nn.Module]]:
    """The parametrised modules in the order a forward pass first calls them (a meta-tensor pass: no compute)."""
    order, hooks = [], []
    for name, module in backbone.named_modules():
        if isinstance(module, PARAMETRISED):
            hooks.append(module.register_forward_pre_hook(
                lambda m, args, name=name: order.append((name, m)) if all(m is not n for _, n in order) else None))
    try:
        with torch.no_grad():
            backbone.eval()(torch.zeros((2, 3, 112, 112), device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    return order


def graph_nodes(onnx_path: Path) -> list[tuple[str, list[np.ndarray], dict]]:
    """(op type, its constant inputs as arrays, attributes) of the parametrised nodes, in graph order."""
    import onnx

    from inference.onnx_models import _load_graph, graph_constants

    model = _load_graph(onnx_path)
    constants = graph_constants(model)
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input[0] in constants:  # the exporter shares equal weights so
            constants[node.output[0]] = constants[node.input[0]]
        elif node.op_type == "DequantizeLinear" and all(name in constants for name in node.input):
            constants[node.output[0]] = _dequantize(node, constants)  # int8 weights (OpenCV's quantised models)
    nodes = []
    for node in model.graph.node:
        if node.op_type not in NODE_TYPES:
            continue
        arrays = [constants[name].astype(np.float32) for name in node.input[1:] if name in constants]
        if node.op_type == "MatMul" and not arrays:
            continue  # a product of two activations, not a layer
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        nodes.append((node.op_type, arrays, attributes))
    return nodes


def _dequantize(node, constants) -> np.ndarray:
    """(q - zero_point) * scale, per tensor or along the node's axis."""
    import onnx

    q = constants[node.input[0]].astype(np.float32)
    scale = constants[node.input[1]].astype(np.float32)
    zero = constants[node.input[2]].astype(np.float32) if len(node.input) > 2 else np.zeros_like(scale)
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    axis = attributes.get("axis", 1) % max(q.ndim, 1)
    block = attributes.get("block_size", 0)
    if block:  # blocked quantisation: one scale per `block` values along the axis
        scale = np.repeat(scale, block, axis=axis).take(range(q.shape[axis]), axis=axis)
        zero = np.repeat(zero, block, axis=axis).take(range(q.shape[axis]), axis=axis)
    elif scale.ndim == 1 and scale.size > 1:
        shape = [1] * q.ndim
        shape[axis] = scale.size
        scale, zero = scale.reshape(shape), zero.reshape(shape)
    return (q - zero) * scale


def map_onto(nodes, order) -> dict[str, torch.Tensor] | str:
    """The state_dict the nodes give the modules, or the first reason they do not fit."""
    state: dict[str, torch.Tensor] = {}
    position = 0
    for op_type, arrays, attributes in nodes:
        if position >= len(order):
            return f"the graph has more layers than the backbone ({op_type} left over)"
        name, module = order[position]
        problem = _assign(op_type, arrays, attributes, name, module, order, position, state)
        if isinstance(problem, str):
            return problem
        position += problem
    if position != len(order):
        return f"the backbone's {order[position][0]} and {len(order) - position - 1} more layers have no graph node"
    return state


def _assign(op_type, arrays, attributes, name, module, order, position, state) -> int | str:
    """Set `module`'s tensors from one node; returns how many modules it filled (a fused Conv: two)."""
    if not arrays:
        return f"{name}: the graph's {op_type} has no constant weights"
    def fits(tensor: np.ndarray, target: torch.Tensor, what: str) -> bool:
        return tuple(tensor.shape) == tuple(target.shape) or f"{name}.{what}: shape {list(tensor.shape)} in the graph, " \
            f"{list(target.shape)} in the backbone"

    if op_type == "Conv" and isinstance(module, nn.Conv2d):
        if (result := fits(arrays[0], module.weight, "weight")) is not True:
            return result
        state[f"{name}.weight"] = torch.from_numpy(arrays[0])
        bias = arrays[1] if len(arrays) > 1 else None
        if bias is None or module.bias is not None:
            if module.bias is not None:
                state[f"{name}.bias"] = torch.from_numpy(bias if bias is not None else np.zeros(module.out_channels, np.float32))
            return 1
        following = order[position + 1] if position + 1 < len(order) else (None, None)
        if not isinstance(following[1], nn.BatchNorm2d) or following[1].num_features != len(bias):
            return f"{name}: the graph's conv has a bias, the backbone's has none and no BatchNorm after it"
        bn_name, bn = following
        state.update({f"{bn_name}.weight": torch.ones(len(bias)), f"{bn_name}.bias": torch.from_numpy(bias),
                      f"{bn_name}.running_mean": torch.zeros(len(bias)),
                      f"{bn_name}.running_var": torch.full((len(bias),), 1.0 - bn.eps)})
        return 2
    if op_type == "BatchNormalization" and isinstance(module, (nn.BatchNorm1d, nn.BatchNorm2d)):
        if len(arrays) != 4 or arrays[0].shape != (module.num_features,):
            return f"{name}: a BatchNorm of {arrays[0].shape if arrays else '?'} in the graph, {module.num_features} here"
        for key, value in zip(("weight", "bias", "running_mean", "running_var"), arrays):
            state[f"{name}.{key}"] = torch.from_numpy(value.copy())
        if abs(attributes.get("epsilon", 1e-5) - module.eps) > 1e-9:
            # a different eps folds into the variance: (var + eps_graph) = (var' + eps_ours)
            state[f"{name}.running_var"] += attributes.get("epsilon", 1e-5) - module.eps
        return 1
    if op_type == "PRelu" and isinstance(module, nn.PReLU):
        slope = arrays[0].reshape(-1)
        if slope.shape != tuple(module.weight.shape):
            return f"{name}: PReLU of {slope.shape[0]} slopes in the graph, {module.weight.numel()} here"
        state[f"{name}.weight"] = torch.from_numpy(slope.copy())
        return 1
    if op_type in ("Gemm", "MatMul") and isinstance(module, nn.Linear):
        weight = arrays[0]
        if op_type == "MatMul" or not attributes.get("transB", 0):
            weight = weight.T
        if (result := fits(weight, module.weight, "weight")) is not True:
            return result
        state[f"{name}.weight"] = torch.from_numpy(np.ascontiguousarray(weight))
        if module.bias is not None:
            state[f"{name}.bias"] = torch.from_numpy(arrays[1] if len(arrays) > 1 else np.zeros(module.out_features,
                                                                                                np.float32))
        return 1
    return f"{name}: the graph has a {op_type} where the backbone has a {type(module).__name__}"


def embedding_size_of(nodes) -> int:
    for op_type, arrays, _ in reversed(nodes):
        if arrays:
            return int(arrays[0].shape[0]) if op_type != "MatMul" else int(arrays[0].shape[-1])
    return 512


def backbone_from_onnx(onnx_path: str | Path, name: str | None = None) -> tuple[nn.Module, str]:
    """Our backbone holding the ONNX file's weights (the architecture found by trying each, or `name`)."""
    path = Path(onnx_path)
    nodes = graph_nodes(path)
    embedding_size = embedding_size_of(nodes)
    reasons = {}
    for candidate in ([name] if name else list_backbones()):
        with torch.device("meta"):
            shape_only = build_backbone(candidate, embedding_size=embedding_size)
        mapped = map_onto(nodes, call_order(shape_only))
        if isinstance(mapped, str):
            reasons[candidate] = mapped
            continue
        backbone = build_backbone(candidate, embedding_size=embedding_size)
        full = backbone.state_dict()
        missing = [key for key in full if key not in mapped and not key.endswith("num_batches_tracked")]
        if missing:
            reasons[candidate] = f"{missing[0]} gets no value from the graph"
            continue
        backbone.load_state_dict({**full, **mapped}, strict=True)
        return backbone, candidate
    closest = min(reasons, key=lambda n: len(reasons[n]))
    raise UserError(f"{path}: maps onto none of our backbones ({name or 'tried ' + ', '.join(reasons)}; "
                    f"{closest}: {reasons[closest]}); it can be evaluated as ONNX but not fine-tuned")
