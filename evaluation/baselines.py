"""Reference rows for a results table: what a trained model must beat.

- `RawPixels`: the cosine between raw grey pixel vectors (each image minus its mean). On faces whose nuisance
  (background, light, pose) varies more than identity, it sits near chance; a model that does not clearly beat
  it has learnt nothing useful.
- `untrained(net)`: the backbone at its random initialisation, in eval mode. Random convolutional features keep
  some low-level similarity, so this is the floor of the architecture before any training.

Both are `torch.nn.Module`s taking the model input (normalised RGB, N x 3 x H x W), so `evaluation.evaluate_set`
scores them exactly as it scores a trained network.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from model import build_backbone


class RawPixels(nn.Module):
    """Grey-level pixels minus their mean, L2-normalised: the raw-pixel matcher."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        grey = x.float().mean(1).flatten(1)
        return F.normalize(grey - grey.mean(1, keepdim=True), dim=1)


def untrained(backbone_name: str, seed: int = 0, embedding_size: int = 512) -> nn.Module:
    """The backbone as its constructor initialises it under `seed` (the same start a run with that seed has)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = build_backbone(backbone_name, embedding_size=embedding_size)
    return net.eval()
