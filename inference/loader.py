"""One model loader for every consumer: eval.py, lfw_eval.py, megaface.py (and the facebank, embed.py).

`load_model(path, net, device)` opens a weights file of any family `inference.weights` reads and returns a
`LoadedModel`: the network on its device in eval mode, with the input conventions its weights were trained
with, so every consumer feeds it the same way (`LoadedModel.embed`). `add_model_arguments` gives each
command the same `--model / --net / --device` flags.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from inference.conventions import INPUT_CONVENTIONS
from inference.embedding import embed_images
from inference.runtime import default_device, resolve_device
from inference.weights import load_backbone_weights, metadata_path
from model import list_backbones


@dataclass
class LoadedModel:
    network: torch.nn.Module
    conventions: dict        # channel_order, mean, std, input_size
    device: torch.device
    name: str                # the backbone, e.g. 'ir_se_50'
    source: str              # 'ours', 'treb1en' or 'arcface_torch'
    path: Path

    def embed(self, images: np.ndarray, batch_size: int = 256, flip: bool = True,
              amp_dtype: torch.dtype | None = None, progress=None) -> np.ndarray:
        """L2-normalised float32 embeddings of uint8 RGB NCHW images (`inference.embedding.embed_images`)."""
        return embed_images(self.network, images, batch_size, self.device, flip, self.conventions, amp_dtype,
                            progress)

    def describe(self) -> str:
        return f"{self.path}: {self.name} ({self.source} weights, {self.conventions['channel_order']} input)"


def load_model(weights_path: str | Path, net: str | None = None, device: str = "cpu",
               overrides: dict | None = None) -> LoadedModel:
    """The model of a weights file (ours, TreB1eN's, arcface_torch's `.pth`/`.pt`, or any `.onnx` face model)
    on `device` (`--device` syntax, 'auto' allowed), in eval mode, with its input conventions; `overrides`
    (channel_order / mean / std) replace the recorded or recognised ones.

    `net` names the architecture where the file's keys cannot tell it; errors are one-line UserErrors."""
    path = Path(weights_path)
    if path.suffix.lower() == ".onnx":
        from inference.onnx_models import OnnxBackbone

        network = OnnxBackbone(path)
        conventions = {key: network.conventions[key] for key in INPUT_CONVENTIONS}
        loaded = LoadedModel(network, conventions, torch.device("cpu"), "onnx", network.conventions["source"], path)
    else:
        target = resolve_device(device)
        network, meta = load_backbone_weights(net, path)
        # channels_last weights: 1.8x the embeddings/s of contiguous ones for MobileFaceNet on 2 CPU cores, 1.2x
        # for IR-SE50 (perf/inference.py); the outputs are the same to float rounding
        network.to(target, memory_format=torch.channels_last).eval()
        conventions = {key: meta[key] for key in INPUT_CONVENTIONS}
        loaded = LoadedModel(network, conventions, target, meta["backbone"], meta["source"], path)
    loaded.conventions.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return loaded


# Thresholds published with a model (cosine), used when nothing is recorded with it: OpenCV's for SFace.
DOCUMENTED_THRESHOLDS = {"face_recognition_sface_2021dec": 0.363}


def model_threshold(model_path: str | Path) -> float | None:
    """The same-person cosine threshold of a model: a `"threshold"` recorded in the JSON beside its weights, else
    the one published with it (`DOCUMENTED_THRESHOLDS`, by file name), else None."""
    import json

    meta = metadata_path(model_path)
    try:
        value = json.loads(meta.read_text()).get("threshold") if meta.is_file() else None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError):
        value = None
    if isinstance(value, (int, float)):
        return float(value)
    return next((v for prefix, v in DOCUMENTED_THRESHOLDS.items() if Path(model_path).stem.startswith(prefix)), None)


def conventions_overrides(args) -> dict:
    """The `--channel_order / --input_mean / --input_std` a command was given (None where not)."""
    return {"channel_order": args.channel_order, "mean": args.input_mean, "std": args.input_std}


def add_flip_argument(parser, prefix: str = "", dest: str = "flip", aliases: tuple[str, ...] = ()) -> None:
    """`--no_flip`: the one protocol of every command and of training's evaluation: flip test-time
    augmentation on (TreB1eN's tta) unless turned off."""
    parser.add_argument("--no_flip", *aliases, dest=dest, action="store_false",
                        help=f"{prefix}no flip test-time augmentation (default: on, TreB1eN's tta: an embedding is "
                             "the normalised sum of the image's and its mirror's)")


def add_model_arguments(parser, required: bool = True, prefix: str = "", multiple: bool = False) -> None:
    """`--model`, `--net`, `--device` as every command that runs a model spells them (`prefix` starts the help,
    e.g. 'gen_features: '); with `multiple`, --model may be repeated and gives a list of paths."""
    parser.add_argument("--model", type=Path, required=required, action="append" if multiple else "store",
                        help=f"{prefix}weights file: a checkpoint or model_*.pth of ours, TreB1eN's or arcface_torch's, "
                             "or an .onnx face model" + ("; repeat it to evaluate several models on the same pairs"
                                                         if multiple else ""))
    parser.add_argument("--net", default=None, choices=list_backbones(),
                        help=f"{prefix}architecture, when it cannot be recognised from the file")
    parser.add_argument("--device", default=default_device(),
                        help=f"{prefix}where the model runs: cpu, cuda, cuda:N (default: %(default)s; ONNX models run on "
                             "the CPU through onnxruntime)")
    parser.add_argument("--channel_order", choices=("RGB", "BGR"), default=None,
                        help=f"{prefix}the model's input channel order (default: recorded in the file or recognised)")
    parser.add_argument("--input_mean", type=float, default=None,
                        help=f"{prefix}input = (x/255 - mean) / std: mean (default: recorded or recognised; 0.5 ours)")
    parser.add_argument("--input_std", type=float, default=None,
                        help=f"{prefix}input = (x/255 - mean) / std: std (default: recorded or recognised; 0.5 ours, "
                             "1/255 for a graph that takes raw 0..255 pixels)")
