"""ONNX face-recognition models through onnxruntime: ours (exported by export.py) and those from elsewhere
(insightface's model zoo, OpenCV's SFace), usable wherever a PyTorch backbone is (`LoadedModel`, eval.py,
lfw_eval.py, megaface.py, embed.py, verify.py).

Input conventions: ours carry them in the file's metadata (`METADATA_KEY`, the checkpoint's JSON). Others are
recognised as insightface's `arcface_onnx.py` and OpenCV do: a Sub and a Mul applied to the input mean the
graph normalises itself and takes raw 0..255 pixels (`mean 0, std 1/255` in our terms, `(x/255 - mean)/std`);
otherwise `(x - 127.5) / 127.5` (`mean 0.5, std 0.5`). RGB unless the caller says otherwise.

Graphs as shipped are repaired where that is all they need: a batch dimension fixed to 1 becomes dynamic,
and declared graph inputs that nothing feeds or uses (OpenCV's quantised SFace declares one per
dequantised weight, which onnxruntime refuses) are dropped.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from utils import UserError

METADATA_KEY = "pgaml.input_conventions"
RAW_PIXELS = {"mean": 0.0, "std": 1.0 / 255.0}       # the graph takes 0..255 and normalises itself
HALF_RANGE = {"mean": 0.5, "std": 0.5}                # (x - 127.5) / 127.5, insightface's default


def _load_graph(path: Path):
    import onnx

    if not path.is_file():
        raise UserError(f"{path}: ONNX model file not found")
    try:
        model = onnx.load(str(path))
    except Exception as err:  # noqa: BLE001 - protobuf raises several types for a file that is not ONNX
        raise UserError(f"{path}: not an ONNX model ({type(err).__name__}: {' '.join(str(err).split())[:120]})") from None
    if not model.graph.node:
        raise UserError(f"{path}: an ONNX file without a graph")
    return model


def _image_input(model, path: Path):
    initializers = {init.name for init in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    used = {name for node in model.graph.node for name in node.input}
    fed = [i for i in inputs if i.name in used]
    if len(fed) != 1:
        raise UserError(f"{path}: expected one image input, the graph takes {len(fed)} "
                        f"({', '.join(i.name for i in fed)})")
    if len(model.graph.output) != 1:
        raise UserError(f"{path}: expected one output (the embedding), the graph has {len(model.graph.output)} "
                        f"({', '.join(o.name for o in model.graph.output)})")
    return fed[0], [i for i in inputs if i.name not in used]


def _repair(model, image_input, unused) -> None:
    for declared in unused:
        model.graph.input.remove(declared)
    dims = image_input.type.tensor_type.shape.dim
    if len(dims) == 4 and dims[0].dim_value == 1:
        dims[0].dim_param = "batch"   # clears dim_value: any batch size


def recognised_conventions(model, image_input) -> dict:
    """Ours from the metadata; else raw 0..255 input when a Sub and a Mul follow the input, else (x-127.5)/127.5."""
    recorded = {p.key: p.value for p in model.metadata_props}.get(METADATA_KEY)
    dims = [d.dim_value for d in image_input.type.tensor_type.shape.dim]
    size = dims[2:4] if len(dims) == 4 and all(dims[2:4]) else [112, 112]
    if recorded is not None:
        return {"channel_order": "RGB", **HALF_RANGE, "input_size": size, **json.loads(recorded), "source": "ours"}
    consumers = {node.input[0]: node for node in model.graph.node if node.input}
    first = consumers.get(image_input.name)
    second = consumers.get(first.output[0]) if first is not None and first.output else None
    normalises = first is not None and second is not None and {first.op_type, second.op_type} == {"Sub", "Mul"}
    return {"channel_order": "RGB", **(RAW_PIXELS if normalises else HALF_RANGE), "input_size": size,
            "source": "onnx"}


def graph_constants(model) -> dict[str, np.ndarray]:
    """Every constant tensor of a graph by name: initializers and Constant nodes' outputs."""
    import onnx
    from onnx import numpy_helper

    constants = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        for attribute in node.attribute if node.op_type == "Constant" else ():
            if attribute.name == "value":
                constants[node.output[0]] = numpy_helper.to_array(attribute.t)
            elif attribute.name in ("value_float", "value_floats"):
                constants[node.output[0]] = np.asarray(onnx.helper.get_attribute_value(attribute), np.float32)
    return constants


def conventions_without_the_graph(path: str | Path) -> dict:
    """The conventions of the file's weights once converted to PyTorch (`inference.onnx_import`): the graph's own
    input Sub/Mul is not carried over, so its constants become the mean and std (`(x - 127.5) * 0.0078125` ->
    mean 0.5, std 0.502); ours keep what they recorded."""
    path = Path(path)
    model = _load_graph(path)
    image_input, _ = _image_input(model, path)
    conventions = recognised_conventions(model, image_input)
    if conventions.pop("source") == "ours" or conventions["std"] != RAW_PIXELS["std"]:
        return conventions
    constants = graph_constants(model)
    first = next(node for node in model.graph.node if node.input and node.input[0] == image_input.name)
    second = next(node for node in model.graph.node if node.input and node.input[0] == first.output[0])
    values = {node.op_type: float(np.asarray(constants.get(node.input[1], np.nan)).mean()) for node in (first, second)}
    if not all(np.isfinite(list(values.values()))):
        raise UserError(f"{path}: the input's Sub/Mul constants could not be read")
    return {**conventions, "mean": values["Sub"] / 255.0, "std": 1.0 / (255.0 * values["Mul"])}


class OnnxBackbone:
    """An ONNX embedding model behind the interface `embed_images` uses of a backbone: `model(x)` on a float
    NCHW tensor -> (N, E) tensor; `eval()` / `train()` / `training` are accepted (an ONNX graph has no modes)."""

    def __init__(self, path: str | Path, threads: int | None = None):
        import onnxruntime

        self.path = Path(path)
        model = _load_graph(self.path)
        image_input, unused = _image_input(model, self.path)
        _repair(model, image_input, unused)
        self.conventions = recognised_conventions(model, image_input)
        options = onnxruntime.SessionOptions()
        options.log_severity_level = 3  # its warnings about unused initialisers are not the user's
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = onnxruntime.InferenceSession(model.SerializeToString(), options,
                                                        providers=["CPUExecutionProvider"])
        except Exception as err:  # noqa: BLE001 - onnxruntime raises its own types for graphs it refuses
            raise UserError(f"{self.path}: onnxruntime cannot run this graph ({' '.join(str(err).split())[:200]})") from None
        self.input_name = image_input.name
        self.input_type = np.float16 if "float16" in self.session.get_inputs()[0].type else np.float32
        self.training = False

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        batch = x.detach().cpu().numpy().astype(self.input_type)
        (out,) = self.session.run(None, {self.input_name: batch})
        return torch.from_numpy(np.asarray(out, dtype=np.float32).reshape(len(batch), -1))

    def eval(self):
        return self

    def train(self, mode: bool = True):
        return self

    def to(self, *args, **kwargs):
        return self
