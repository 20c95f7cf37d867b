"""Training checkpoints: one file per save, written atomically, loaded with `weights_only=True`.

Contents (ARCHITECTURE.md, "Checkpoints"): `format`, `model` (backbone state_dict), `input` (channel order, mean, std, input
size), `head` (all class centres gathered whole, so any world size can resume), `margin` (the margin's
running statistics), `optimizer` (the backbone's part), `head_optimizer` (the centres' momentum, gathered
whole), `scaler`, `step`, `epoch`, `samples_in_epoch` (the sampler position), `rng` (every rank's
generator states), `config`, `best`, `world_size`. Only tensors, numbers, strings, lists and dicts, so
`torch.load(weights_only=True)` reads it: a checkpoint cannot run code.

Files are `save/checkpoint_step<step>.pt`; `latest_checkpoint` finds the newest one that loads.
"""
from __future__ import annotations

import logging
import random
import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from utils import UserError, atomic_path

log = logging.getLogger(__name__)

FORMAT = "pgaml-checkpoint-v1"
REQUIRED = ("format", "model", "head", "optimizer", "step", "epoch", "samples_in_epoch", "config")
_NAME = re.compile(r"checkpoint_step(\d+)\.pt$")


def checkpoint_path(save_dir: str | Path, step: int) -> Path:
    return Path(save_dir) / f"checkpoint_step{step:08d}.pt"


def save_checkpoint(state: dict, path: str | Path) -> Path:
    """Write `state` under a temporary name and rename it: a crash mid-write leaves the older files intact."""
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **state}, tmp)
    return Path(path)


def load_checkpoint(path: str | Path) -> dict:
    """A training checkpoint, memory-mapped (tensors are read when used); one clear error if it is not one."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: checkpoint not found")
    if not zipfile.is_zipfile(path):  # torch.save's format; anything else (or a truncated file) is not ours
        raise UserError(f"{path}: not a readable checkpoint (not a complete PyTorch zip file)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # noqa: BLE001 - torch raises many types for a damaged file
        raise UserError(f"{path}: not a readable checkpoint ({' '.join(str(err).split())[:200]})") from None
    missing = [key for key in REQUIRED if key not in state] if isinstance(state, dict) else list(REQUIRED)
    if missing or state.get("format") != FORMAT:
        raise UserError(f"{path}: not a training checkpoint of this project (missing {', '.join(missing) or 'format'}); "
                        "to start from backbone weights use --pretrained")
    return state


def checkpoint_step(path: str | Path) -> int:
    """The step a checkpoint file's name records."""
    return int(_NAME.search(Path(path).name).group(1))


def list_checkpoints(save_dir: str | Path) -> list[Path]:
    """Checkpoint files in `save_dir`, newest step first."""
    found = [(int(m.group(1)), p) for p in Path(save_dir).glob("checkpoint_step*.pt") if (m := _NAME.search(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def latest_checkpoint(save_dir: str | Path) -> tuple[Path, dict] | None:
    """The newest checkpoint in `save_dir` that loads (damaged ones are skipped with a warning)."""
    for path in list_checkpoints(save_dir):
        try:
            return path, load_checkpoint(path)
        except UserError as err:
            log.warning("skipping %s", err)
    return None


def prune_checkpoints(save_dir: str | Path, keep: int) -> None:
    for path in list_checkpoints(save_dir)[keep:]:
        path.unlink(missing_ok=True)


# ------------------------------------------------------------------------------------- RNG states

def rng_state() -> dict:
    """This process's generator states as tensors and numbers (weights_only-loadable)."""
    version, mt_state, gauss = random.getstate()
    _, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "python": [version, list(mt_state), gauss],
        "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached": float(cached)},
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    version, mt_state, gauss = state["python"]
    random.setstate((version, tuple(mt_state), gauss))
    numpy_state = state["numpy"]
    np.random.set_state(("MT19937", numpy_state["keys"].numpy().astype(np.uint32), numpy_state["pos"],
                         numpy_state["has_gauss"], numpy_state["cached"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
