"""Verification sets and evaluating a model on them: embed (streamed from the uint8 memmaps), verify.

A `ValSet` is a named set of pairs: uint8 RGB images `(2P, 3, H, W)` (pair i = rows 2i, 2i+1), `issame`
`(P,)` and optionally per-image pose `(2P, 2)` (yaw, pitch). `ValSet.load` opens a prepared one
(`data.valsets`, memory-mapped: nothing is held in RAM); one can also be built from arrays (a fold of a
data set, a user's own pairs). Where a set has poses, accuracy is also reported on frontal pairs (both
|yaw| < 30) and profile pairs (either |yaw| >= 60): the pairs PGAML is meant to help; finer pose bins and a
resolution sweep are `evaluation.breakdowns`.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data.valsets import KNOWN_VALSETS, convert_bin, is_converted, load_valset, load_valset_pose
from evaluation.strata import FRONTAL_YAW, PROFILE_YAW, pose_strata  # noqa: F401 (evaluation re-exports them)
from inference.embedding import embed_images
from utils import UserError
from verification import VerificationResult, verify

log = logging.getLogger(__name__)


@dataclass
class ValSet:
    name: str
    images: np.ndarray            # uint8 (2P, 3, H, W), RGB; a memmap for prepared sets
    issame: np.ndarray            # bool (P,)
    pose: np.ndarray | None = None  # float32 (2P, 2) yaw, pitch in degrees

    @classmethod
    def load(cls, data_path: str | Path, name: str) -> "ValSet":
        images, issame = load_valset(data_path, name)
        return cls(name, images, issame, load_valset_pose(data_path, name))


@dataclass
class SetResult:
    name: str
    result: VerificationResult
    frontal_accuracy: float = float("nan")
    profile_accuracy: float = float("nan")
    num_frontal: int = 0
    num_profile: int = 0

    def scalars(self) -> dict[str, float]:
        out = self.result.scalars()
        if self.num_frontal:
            out["accuracy_frontal"] = self.frontal_accuracy
        if self.num_profile:
            out["accuracy_profile"] = self.profile_accuracy
        return out


def _customary_first(names) -> list[str]:
    names = sorted(set(names))
    return [n for n in KNOWN_VALSETS if n in names] + [n for n in names if n not in KNOWN_VALSETS]


def available_valsets(data_path: str | Path) -> list[str]:
    """Val sets under `data_path`, prepared (<name>/issame.npy) or not yet (<name>.bin), the customary ones
    first."""
    root = Path(data_path)
    return _customary_first([p.parent.name for p in root.glob("*/issame.npy")] + [p.stem for p in root.glob("*.bin")])


def resolve_valsets(data_path: str | Path, requested: str) -> list[str]:
    """'all' or a comma-separated list, checked against what is there (one clear error otherwise); a set
    given only as <name>.bin is prepared on the fly (`prepare_valset`)."""
    available = available_valsets(data_path)
    if requested == "all":
        if not available:
            raise UserError(f"{data_path}: no val sets (<name>.bin, or <name>/images.npy + issame.npy prepared "
                            f"by python data/prepare_data.py --source {data_path})")
        names = available
    else:
        names = [n.strip() for n in requested.split(",") if n.strip()]
        missing = [n for n in names if n not in available]
        if missing:
            raise UserError(f"--val_sets: {', '.join(missing)} not found under {data_path} as <name>.bin or "
                            f"prepared <name>/ (available: {', '.join(available) or 'none'})")
    for name in names:
        prepare_valset(data_path, name)
    return names


def prepare_valset(data_path: str | Path, name: str) -> None:
    """Convert `<name>.bin` into the prepared uint8 layout beside it unless that is done (a few seconds: val
    sets are small); where the folder cannot be written, say which command prepares it elsewhere."""
    if is_converted(data_path, name):
        return
    bin_path = Path(data_path) / f"{name}.bin"
    log.info("%s: preparing %s once (uint8 images.npy + issame.npy beside it)", bin_path, name)
    try:
        convert_bin(bin_path, data_path)
    except OSError as err:
        raise UserError(f"{bin_path}: cannot prepare it here ({err.strerror}); run python data/prepare_data.py "
                        f"--source {data_path} --out DIR and use --data_path DIR") from None


def evaluate_set(model: torch.nn.Module, valset: ValSet, batch_size: int = 256, device: torch.device | str = "cpu",
             flip: bool = True, conventions: dict | None = None, num_folds: int = 10,
             amp_dtype: torch.dtype | None = None, progress=None) -> SetResult:
    """k-fold verification of `model` on `valset`, with the frontal / profile strata where it has poses."""
    embeddings = embed_images(model, valset.images, batch_size, device, flip, conventions, amp_dtype, progress)
    outcome = SetResult(valset.name, verify(embeddings, valset.issame, num_folds))
    if valset.pose is not None:
        frontal, profile = pose_strata(valset.pose)
        outcome.num_frontal, outcome.num_profile = int(frontal.sum()), int(profile.sum())
        outcome.frontal_accuracy = outcome.result.accuracy_on(frontal)
        outcome.profile_accuracy = outcome.result.accuracy_on(profile)
    return outcome


def evaluate_valset(model: torch.nn.Module, data_path: str | Path, name: str, **options) -> SetResult:
    """`evaluate_set` on the prepared set `name` under `data_path` (options as `evaluate_set`'s)."""
    return evaluate_set(model, ValSet.load(data_path, name), **options)
