"""Backbone weights files: export ours, load ours, TreB1eN's and arcface_torch's, recognising the architecture.

`save_backbone_weights` writes a plain state_dict (TreB1eN-style, loadable with `strict=True`) and its
input conventions in a JSON beside it; `load_backbone_weights` reads any of the three families (plain
state_dicts with or without DDP's `module.` prefix, our checkpoints, arcface_torch's checkpoints), with
`torch.load(weights_only=True)`: a weights file never runs code.
"""
from __future__ import annotations

import functools
import json
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from inference.conventions import INPUT_CONVENTIONS, SOURCE_CHANNEL_ORDER
from model import backbone_family, build_backbone, list_backbones
from utils import UserError, atomic_path, atomic_write_text


def metadata_path(weights_path: str | Path) -> Path:
    """The JSON beside an exported `model_*.pth` that records its input conventions (ours only)."""
    return Path(weights_path).with_suffix(".json")


def save_backbone_weights(model: nn.Module, path: str | Path, conventions: dict | None = None) -> None:
    """Export a plain state_dict (loadable TreB1eN-style, strict) and its input conventions beside it.

    The conventions go to `metadata_path(path)` rather than into the state_dict, so that the .pth
    keeps exactly the reference keys.
    """
    conventions = {**INPUT_CONVENTIONS, **(conventions or {})}
    with atomic_path(path) as tmp:
        torch.save(_unwrap(model).state_dict(), tmp)
    atomic_write_text(metadata_path(path), json.dumps({"source": "ours", **conventions}, indent=1) + "\n")


def _unwrap(model: nn.Module) -> nn.Module:
    """The model inside DataParallel / DistributedDataParallel / torch.compile wrappers."""
    while hasattr(model, "module") and isinstance(model.module, nn.Module):
        model = model.module
    return getattr(model, "_orig_mod", model)


def load_backbone_weights(model_or_name: nn.Module | str | None, path: str | Path):
    """Load a TreB1eN, arcface_torch or our weights file into a backbone; returns (model, metadata).

    `model_or_name`: a backbone (loaded in place), a registered name (built with the file's embedding
    size), or None (the architecture is recognised from the file's keys). The file may be a plain
    state_dict (keys with or without DataParallel's `module.` prefix; BatchNorm `num_batches_tracked`
    may be absent, as in files saved before torch 0.4.1), our checkpoint `{"model": state_dict,
    "input": conventions, ...}`, or arcface_torch's `{"state_dict_backbone": ...}` checkpoint.
    A model built here is on the CPU, in training mode. metadata = {"source", "backbone",
    "channel_order", "mean", "std", "input_size"}: "ours" where the file records its conventions (our
    checkpoint, or the JSON `save_backbone_weights` writes beside an exported state_dict), else the
    family recognised from the keys. Problems raise a one-line UserError naming the file and the first
    mismatching key.
    """
    path = Path(path)
    if path.suffix.lower() == ".onnx":
        return _load_onnx_weights(model_or_name, path)
    state, recorded = _read_weights_file(path)
    family = _family_of(state, path)
    build = isinstance(model_or_name, str) or model_or_name is None
    if build:
        name = model_or_name or _recognise_backbone(state, family, path)
        with torch.device("meta"):  # the file provides every value: skip the random initialisation
            model = build_backbone(name, embedding_size=_embedding_size_of(state))
    else:
        model = model_or_name
        name = getattr(_unwrap(model), "arch", type(_unwrap(model)).__name__)
    target = _unwrap(model)
    problem = _first_mismatch(state, target.state_dict())
    if problem:
        try:
            hint = f"; the file holds {_recognise_backbone(state, family, path)} weights"
        except UserError:
            hint = ""
        raise UserError(f"{path}: does not fit {name} ({family} keys): {problem}{hint}")
    state = _with_batch_counters(state, target.state_dict())
    if build:  # adopt the file's tensors (as float32, dense); requires_grad stays the model's
        state = {k: v.float().contiguous() if v.is_floating_point() else v.clone() for k, v in state.items()}
    target.load_state_dict(state, strict=True, assign=build)
    source = "ours" if recorded is not None else family
    conventions = {**INPUT_CONVENTIONS, "channel_order": SOURCE_CHANNEL_ORDER[source], **(recorded or {})}
    return model, {"source": source, "backbone": name, **conventions}


def _load_onnx_weights(model_or_name, path: Path):
    """An ONNX export's weights in our matching backbone (`inference.onnx_import`), e.g. to fine-tune it."""
    from inference.onnx_import import backbone_from_onnx
    from inference.onnx_models import conventions_without_the_graph

    wanted = model_or_name if isinstance(model_or_name, str) or model_or_name is None else \
        getattr(_unwrap(model_or_name), "arch", None)
    converted, name = backbone_from_onnx(path, wanted)
    if isinstance(model_or_name, nn.Module):
        target = _unwrap(model_or_name)
        target.load_state_dict(converted.state_dict(), strict=True)
        converted = model_or_name
    conventions = conventions_without_the_graph(path)
    return converted, {"source": "onnx", "backbone": name, **{k: conventions[k] for k in INPUT_CONVENTIONS}}


def _read_weights_file(path: Path) -> tuple[dict[str, torch.Tensor], dict | None]:
    """(state_dict without `module.` prefixes, our recorded input conventions or None)."""
    if path.is_dir():
        raise UserError(f"{path}: a folder, not a weights file (give the file, e.g. {path / 'save' / 'model_latest.pth'} "
                        "or a checkpoint_step*.pt)")
    if not path.is_file():
        raise UserError(f"{path}: weights file not found")
    with open(path, "rb") as f:
        magic = f.read(4)
    # torch.save writes a zip archive; files from torch < 1.6 are a pickle (protocol byte 0x80 first)
    if not (magic.startswith(b"PK\x03\x04") or magic[:1] == b"\x80"):
        raise UserError(f"{path}: not a PyTorch weights file (neither a torch.save zip archive nor a pickle)")
    if magic.startswith(b"PK") and not zipfile.is_zipfile(path):
        raise UserError(f"{path}: a damaged or incomplete PyTorch file (its zip archive is cut short or "
                        "overwritten); copy it again or use another checkpoint")
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many types for truncated or foreign files
        raise UserError(f"{path}: not a PyTorch weights file loadable with weights_only=True "
                        f"({_one_line_reason(err)})") from None
    recorded = None
    if isinstance(content, Mapping) and isinstance(content.get("model"), Mapping):
        recorded = _check_conventions(content.get("input", INPUT_CONVENTIONS), path)
        content = content["model"]
    elif isinstance(content, Mapping) and isinstance(content.get("state_dict_backbone"), Mapping):
        content = content["state_dict_backbone"]
    elif metadata_path(path).is_file():
        recorded = _read_conventions(metadata_path(path))  # None unless written by save_backbone_weights
    if not isinstance(content, Mapping) or not content or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in content.items()):
        raise UserError(f"{path}: not a state_dict (expected a mapping of parameter names to tensors)")
    state = dict(content)
    if all(key.startswith("module.") for key in state):
        state = {key[len("module."):]: value for key, value in state.items()}
    return state, recorded


def _one_line_reason(err: Exception) -> str:
    """What torch.load's error says, in one complete line: its weights_only refusal spans a page whose
    informative part follows 'WeightsUnpickler error:'; other errors are cut after their first sentence."""
    text = " ".join(str(err).split())
    if "WeightsUnpickler error:" in text:
        reason = text.split("WeightsUnpickler error:", 1)[1].split(" Check the documentation")[0]
        reason = reason.split(" was not an allowed global")[0].strip()
    else:
        reason = text.split(". ")[0].rstrip(".")
    return f"{type(err).__name__}: {reason}"


def _read_conventions(path: Path) -> dict | None:
    try:
        values = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None  # some other file that happens to share the name
    if not isinstance(values, dict) or values.get("source") != "ours":
        return None
    return _check_conventions({k: values[k] for k in INPUT_CONVENTIONS if k in values}, path)


def _check_conventions(values, path: Path) -> dict:
    """Recorded conventions, completed with the defaults; anything malformed is the file's error."""
    if isinstance(values, Mapping):
        values = {**INPUT_CONVENTIONS, **values}
        order, mean, std, size = (values[k] for k in INPUT_CONVENTIONS)
        number = (int, float)
        if order in ("RGB", "BGR") and isinstance(mean, number) and isinstance(std, number) and std > 0 \
                and isinstance(size, (list, tuple)) and len(size) == 2 \
                and all(isinstance(v, int) and v > 0 for v in size):
            return {"channel_order": order, "mean": mean, "std": std, "input_size": list(size)}
    raise UserError(f"{path}: invalid input conventions {values!r}")


# a key that only one family's state_dict has
_FAMILY_MARKERS = {"input_layer.0.weight": "treb1en", "conv_6_dw.conv.weight": "treb1en",
                   "layer1.0.bn1.weight": "arcface_torch"}


def _family_of(state: dict, path: Path) -> str:
    for key, family in _FAMILY_MARKERS.items():
        if key in state:
            return family
    raise UserError(f"{path}: unknown key set, neither TreB1eN's nor arcface_torch's "
                    f"(first key {next(iter(state))!r}; expected one of {', '.join(_FAMILY_MARKERS)})")


def _embedding_size_of(state: dict) -> int:
    for key in ("output_layer.4.weight", "bn.weight", "features.weight"):  # the last BN1d of each model
        if key in state and state[key].dim() == 1:
            return int(state[key].shape[0])
    return 512


@functools.lru_cache(maxsize=None)
def _reference_state(name: str, embedding_size: int) -> dict[str, torch.Tensor]:
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        return build_backbone(name, embedding_size=embedding_size).state_dict()


def _recognise_backbone(state: dict, family: str, path: Path) -> str:
    embedding_size = _embedding_size_of(state)
    candidates = {name: _reference_state(name, embedding_size) for name in list_backbones()
                  if backbone_family(name) == family}
    for name, reference in candidates.items():
        if not _first_mismatch(state, reference):
            return name
    closest = min(candidates, key=lambda n: len(set(candidates[n]) ^ set(state)))
    raise UserError(f"{path}: no registered backbone fits these {family} keys; closest {closest}: "
                    f"{_first_mismatch(state, candidates[closest])}")


def _first_mismatch(state: dict, reference: dict) -> str | None:
    """The first difference (in the model's key order) between a file's state_dict and a model's."""
    for key, expected in reference.items():
        if key not in state:
            if key.endswith("num_batches_tracked"):
                continue  # absent in files written before torch 0.4.1; filled in by _with_batch_counters
            return f"key {key!r} is missing from the file"
        if tuple(state[key].shape) != tuple(expected.shape):
            return f"key {key!r} has shape {list(state[key].shape)} in the file, {list(expected.shape)} in the model"
    for key in state:
        if key not in reference:
            return f"unexpected key {key!r}"
    return None


def _with_batch_counters(state: dict, reference: dict) -> dict:
    state = dict(state)
    for key in reference:
        if key.endswith("num_batches_tracked") and key not in state:
            state[key] = torch.tensor(0, dtype=torch.long)
    return state



def record_threshold(weights_path: str | Path, threshold: float, source: str) -> Path:
    """Store a same-person cosine threshold with a model: `"threshold"` and `"threshold_source"` in the JSON
    beside its weights (`metadata_path`; for an .onnx file too), other keys kept, written atomically. It is what
    `inference.loader.model_threshold` reads (verify.py, face_verify.py, the facebank). A cosine t is TreB1eN's
    squared L2 distance 2 - 2t between unit embeddings."""
    path = metadata_path(weights_path)
    values = recorded_metadata(weights_path)
    values.update({"threshold": float(threshold), "threshold_source": str(source)})
    atomic_write_text(path, json.dumps(values, indent=1) + "\n")
    return path


def recorded_metadata(weights_path: str | Path) -> dict:
    """The JSON beside a weights file as a dict ({} when there is none); a file that is there but not a JSON
    object is a UserError rather than something to overwrite."""
    path = metadata_path(weights_path)
    if not path.is_file():
        return {}
    try:
        values = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UserError(f"{path}: not a readable JSON file ({err}); move it away to record a threshold") from None
    if not isinstance(values, dict):
        raise UserError(f"{path}: not a JSON object; move it away to record a threshold")
    return values
