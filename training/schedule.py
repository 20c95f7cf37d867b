"""Learning-rate schedules as pure functions of training progress measured in epochs (a float).

Progress in epochs, not steps, so that a run resumed at a different world size (a different number
of steps per epoch) continues the same curve. The optimiser's LR is set from `lr_at` before every step.

- `step`   TreB1eN: lr * gamma ** (number of milestones passed)
- `cosine` lr * (1 + cos(pi * p)) / 2 over the run (p = progress / epochs)
- `poly`   arcface_torch: lr * (1 - p) ** power
Any of them after a linear warm-up from 0 over `warmup_epochs` (the curve starts after the warm-up, as
arcface_torch's PolyScheduler does).

The peak `lr` is the config's, or with `lr_reference_batch` N > 0 Goyal et al.'s linear scaling rule
(arXiv:1706.02677), `lr * global_batch / N`: the warm-up ramps to that value and the schedule starts there.
"""
from __future__ import annotations

import bisect
import math

from config import Config


def peak_lr(config: Config, global_batch: int | None = None) -> float:
    """The schedule's peak LR: `lr`, or `lr * global_batch / lr_reference_batch` (--lr_reference_batch)."""
    if not config.lr_reference_batch:
        return config.lr
    if global_batch is None:
        raise ValueError("--lr_reference_batch scales the LR to the global batch: pass global_batch")
    return config.lr * global_batch / config.lr_reference_batch


def lr_at(config: Config, epoch_progress: float, global_batch: int | None = None) -> float:
    """The learning rate at `epoch_progress` epochs into the run (`global_batch`: images per step over all
    processes, needed with --lr_reference_batch)."""
    lr = peak_lr(config, global_batch)
    warmup = config.warmup_epochs
    if warmup > 0 and epoch_progress < warmup:
        return lr * epoch_progress / warmup
    if config.schedule == "step":
        return lr * config.lr_gamma ** bisect.bisect_right(config.milestones, epoch_progress)
    span = max(config.epochs - warmup, 1e-12)
    p = min(max((epoch_progress - warmup) / span, 0.0), 1.0)
    if config.schedule == "cosine":
        return lr * 0.5 * (1.0 + math.cos(math.pi * p))
    return lr * (1.0 - p) ** config.poly_power


def set_lr(optimizer, lr: float) -> None:
    """Every group's LR: `lr`, times the group's `lr_mult` where it has one (--backbone_lr_mult)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
