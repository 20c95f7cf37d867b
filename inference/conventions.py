"""The input conventions of a model and the one conversion of a uint8 batch into its input.

Images in memory are RGB uint8 (NCHW in batches). A model's conventions say what it was trained on:
`{"channel_order": "RGB"|"BGR", "mean": 0.5, "std": 0.5, "input_size": [112, 112]}`, input =
`(x/255 - mean) / std` in that channel order. Every checkpoint and exported model of ours records them;
TreB1eN's published weights were in effect trained on BGR (`SOURCE_CHANNEL_ORDER`).
"""
from __future__ import annotations

import torch

# What every checkpoint and exported model of ours records about its input.
INPUT_CONVENTIONS = {"channel_order": "RGB", "mean": 0.5, "std": 0.5, "input_size": [112, 112]}
# TreB1eN's prepare_data decoded the emore .rec with OpenCV (BGR) and saved the arrays through PIL as if
# they were RGB, so its published weights saw BGR images.
SOURCE_CHANNEL_ORDER = {"treb1en": "BGR", "arcface_torch": "RGB", "ours": "RGB"}


def to_channel_order(images_nchw: torch.Tensor, order: str) -> torch.Tensor:
    """An RGB batch (uint8 or normalised float) in the channel order a model expects: 'RGB' or 'BGR'."""
    if order == "RGB":
        return images_nchw
    if order == "BGR":
        return images_nchw.flip(1)
    raise ValueError(f"channel order must be 'RGB' or 'BGR', not {order!r}")


def to_model_input(images: torch.Tensor, device: torch.device | str = "cpu", channels_last: bool = False,
                   conventions: dict | None = None) -> torch.Tensor:
    """uint8 RGB NCHW batch -> float32 model input on `device`: channel order, then `(x/255 - mean) / std`.

    The one place this happens (training, evaluation, embedding); the float copy exists on the device only.
    """
    conventions = conventions or INPUT_CONVENTIONS
    images = to_channel_order(images, conventions["channel_order"]).to(device, non_blocking=True)
    if channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return images.float().div_(255.0).sub_(conventions["mean"]).div_(conventions["std"])
