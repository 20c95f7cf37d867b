"""Exporting a backbone to ONNX with its input conventions, checked against PyTorch before the file appears.

The conventions (channel order, mean, std, input size) go into the ONNX metadata (`METADATA_KEY`), so the file
loads back through `inference.loader.load_model` fed as the weights were trained (TreB1eN's weights: BGR). The
export is written to a temporary name, run by onnxruntime and PyTorch on the same batch, and renamed into place
only when every embedding agrees (cosine >= `PARITY_COSINE`); otherwise nothing is written. An fp16 export
(weights, activations, input and output in float16: half the file, for runtimes with fp16 kernels) is held to
`PARITY_COSINE_FP16` against the float32 network.
"""
from __future__ import annotations

import copy
import json
import warnings
from pathlib import Path

import numpy as np
import torch

from inference.onnx_models import METADATA_KEY, OnnxBackbone
from utils import UserError, atomic_path

PARITY_COSINE = 0.9999
PARITY_COSINE_FP16 = 0.999
OPSET = 17


def export_onnx(network: torch.nn.Module, conventions: dict, out: str | Path, dynamic_batch: bool = True,
                check_batch: int = 4, seed: int = 0, fp16: bool = False) -> float:
    """Write `network` (an EmbeddingModel) as ONNX to `out` (float16 throughout with `fp16`); returns the smallest
    parity cosine against the float32 network."""
    import onnx

    network = network.float().eval().cpu()
    exported = copy.deepcopy(network).half() if fp16 else network
    height, width = conventions.get("input_size", [112, 112])
    batch = check_batch if dynamic_batch else 1
    images = torch.rand((batch, 3, height, width), generator=torch.Generator().manual_seed(seed)) * 2 - 1
    example = images[:1].half() if fp16 else images[:1]
    with atomic_path(out) as tmp:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice and tracer chatter
            torch.onnx.export(exported, example, str(tmp), input_names=["data"], output_names=["embedding"],
                              dynamic_axes={"data": {0: "batch"}, "embedding": {0: "batch"}} if dynamic_batch else None,
                              opset_version=OPSET, dynamo=False)
        model = onnx.load(str(tmp))
        entry = model.metadata_props.add()
        entry.key, entry.value = METADATA_KEY, json.dumps({k: conventions[k] for k in
                                                           ("channel_order", "mean", "std", "input_size")})
        onnx.save(model, str(tmp))
        with torch.inference_mode():
            expected = network(images).numpy()
        got = OnnxBackbone(tmp)(images).numpy()
        cosine = _parity(expected, got, out, "fp16 ONNX" if fp16 else "ONNX",
                         PARITY_COSINE_FP16 if fp16 else PARITY_COSINE)
    return cosine


TORCHSCRIPT_CONVENTIONS = "input_conventions.json"  # the extra file of a TorchScript export that holds them


def export_torchscript(network: torch.nn.Module, conventions: dict, out: str | Path, check_batch: int = 4,
                       seed: int = 0) -> float:
    """Trace `network` to TorchScript at `out` (the conventions in its extra file `input_conventions.json`), kept only
    when the reloaded module agrees with PyTorch on another batch size; returns the smallest cosine."""
    network = network.float().eval().cpu()
    height, width = conventions.get("input_size", [112, 112])
    images = torch.rand((check_batch, 3, height, width), generator=torch.Generator().manual_seed(seed)) * 2 - 1
    extra = {TORCHSCRIPT_CONVENTIONS: json.dumps({k: conventions[k] for k in ("channel_order", "mean", "std",
                                                                                "input_size")})}
    with atomic_path(out) as tmp:
        with torch.inference_mode(False), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the tracer's notes on data-dependent Python values
            traced = torch.jit.trace(network, images[:1])
            torch.jit.save(traced, str(tmp), _extra_files=extra)
            reloaded = torch.jit.load(str(tmp))
            expected, got = network(images).numpy(), reloaded(images).numpy()
        cosine = _parity(expected, got, out, "TorchScript")
    return cosine


def _parity(expected: np.ndarray, got: np.ndarray, out, kind: str, required: float = PARITY_COSINE) -> float:
    """The smallest cosine between PyTorch's and the export's embeddings; below `required` the export fails
    (inside `atomic_path`, so nothing is written)."""
    if not np.isfinite(got).all():
        raise UserError(f"{out}: the {kind} export gives non-finite embeddings (activations beyond float16's range "
                        "65504 overflow; export in float32); nothing written")
    cosine = float(np.min(np.sum(_unit(expected) * _unit(got), axis=1)))
    if not cosine >= required:
        raise UserError(f"{out}: the {kind} export disagrees with PyTorch (smallest cosine {cosine:.6f} < "
                        f"{required}); nothing written")
    return cosine


def _unit(x: np.ndarray) -> np.ndarray:
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
