"""Learning-rate schedules as pure functions of training progress measured in epochs (a float).

Progress in epochs, not steps, so that a run resumed at a different world size (a different number
of steps per epoch) continues the same curve. The optimiser's LR is set from `lr_at` before every step.

- `step`   TreB1eN: lr * gamma ** (number of milestones passed)
- `cosine` lr * (1 + cos(pi * p)) / 2 over the run (p = progress / epochs)
- `poly`   arcface_torch: lr * (1 - p) ** power
Any of them after a linear warm-up from 0 over `warmup_epochs` (the curve starts after the warm-up, as
arcface_torch's PolyScheduler does).
"""
from __future__ import annotations

import bisect
import math

from config import Config


def lr_at(config: Config, epoch_progress: float) -> float:
    """The learning rate at `epoch_progress` epochs into the run."""
    warmup = config.warmup_epochs
    if warmup > 0 and epoch_progress < warmup:
        return config.lr * epoch_progress / warmup
    if config.schedule == "step":
        return config.lr * config.lr_gamma ** bisect.bisect_right(config.milestones, epoch_progress)
    span = max(config.epochs - warmup, 1e-12)
    p = min(max((epoch_progress - warmup) / span, 0.0), 1.0)
    if config.schedule == "cosine":
        return config.lr * 0.5 * (1.0 + math.cos(math.pi * p))
    return config.lr * (1.0 - p) ** config.poly_power


def set_lr(optimizer, lr: float) -> None:
    """Every group's LR: `lr`, times the group's `lr_mult` where it has one (--backbone_lr_mult)."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
