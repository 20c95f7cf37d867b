"""A Learner's whole state in a checkpoint and back (`training.checkpoint` owns the file format).

Saving is collective: every rank gathers its share of the class centres and its generator states, rank 0
writes. Restoring works at any world size; the generator streams continue exactly only at the same one.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

from inference.weights import save_backbone_weights
from training import distributed
from training.checkpoint import (checkpoint_path, checkpoint_step, latest_checkpoint, list_checkpoints, load_checkpoint,
                                 prune_checkpoints, rng_state, save_checkpoint, set_rng_state)
from utils import UserError, seed_everything

if TYPE_CHECKING:
    from learner import Learner

log = logging.getLogger(__name__)


def save_run(learner: "Learner") -> Path:
    """Write a checkpoint of the whole run and the exported model_latest.pth; returns the checkpoint's path."""
    head = learner.head.full_state_dict()
    head_optimizer = learner.head.full_optimizer_state(learner.optimizer)
    rngs = distributed.gather_objects(rng_state())
    path = checkpoint_path(learner.save_dir, learner.progress.step)
    if learner.dist.is_main:
        save_checkpoint({
            "model": learner.backbone.state_dict(), "input": learner.conventions, "head": head,
            "margin": learner.head.margin.state_dict(), "optimizer": _backbone_optimizer_state(learner),
            "head_optimizer": head_optimizer, "scaler": learner.scaler.state_dict(),
            **vars(learner.progress),
            "rng": rngs, "config": learner.config.to_dict(), "world_size": learner.dist.world_size,
        }, path)
        save_backbone_weights(learner.backbone, learner.save_dir / "model_latest.pth", learner.conventions)
        prune_checkpoints(learner.save_dir, learner.config.keep_checkpoints)
    distributed.barrier()
    return path


def _backbone_optimizer_state(learner: "Learner") -> dict:
    """The optimiser's state without the centres' momentum (that one is saved gathered, `head_optimizer`)."""
    state = learner.optimizer.state_dict()
    kernel_key = learner.head.optimizer_state_key(learner.optimizer)
    state["state"] = {k: v for k, v in state["state"].items() if k != kernel_key}
    return state


def restore_run(learner: "Learner", path: str | Path) -> int:
    """Restore a checkpoint (any world size saved it) into the learner; returns its step."""
    state = load_checkpoint(path)
    _check_compatible(learner, state, path)
    learner.backbone.load_state_dict(state["model"])
    learner.conventions = dict(state.get("input", learner.conventions))
    learner.head.load_full_state_dict(state["head"])
    learner.head.margin.load_state_dict(state["margin"])
    learner.optimizer.load_state_dict(state["optimizer"])
    learner.head.load_full_optimizer_state(learner.optimizer, state["head_optimizer"])
    learner.scaler.load_state_dict(state["scaler"])
    progress = learner.progress
    for name in vars(progress):
        setattr(progress, name, type(getattr(progress, name))(state[name]))
    dist = learner.dist
    if state["world_size"] == dist.world_size:
        set_rng_state(state["rng"][dist.rank])
    else:  # other ranks, other streams: exact repetition is not defined across world sizes
        seed_everything(learner.config.seed + 7919 * progress.step + dist.rank)
        log.info("%s was written by %d processes; continuing with %d", path, state["world_size"], dist.world_size)
    return progress.step


def _check_compatible(learner: "Learner", state: dict, path) -> None:
    saved, config = state["config"], learner.config
    for name in ("net_mode", "depth", "embedding_size", "head"):
        if saved.get(name) != getattr(config, name):
            raise UserError(f"{path}: trained with --{name} {saved.get(name)}, not {getattr(config, name)}")
    if state["head"]["kernel"].shape[1] != learner.num_classes:
        raise UserError(f"{path}: has {state['head']['kernel'].shape[1]} classes; "
                        f"{config.data_path} has {learner.num_classes}")


def check_work_path(config) -> None:
    """A run never writes into a folder that holds another run: without --resume, a work path with
    checkpoints or logged steps is refused (before anything is written), as is --resume PATH from elsewhere
    into it. `--resume auto` continues the run the folder holds."""
    work_path = Path(config.work_path)
    save_dir = work_path / "save"
    if config.resume == "auto":
        return
    found = list_checkpoints(save_dir)
    if config.resume is not None and (not found or Path(config.resume).resolve().parent == save_dir.resolve()):
        return
    scalars = work_path / "log" / "scalars.jsonl"
    if found:
        held = f"a run (checkpoint at step {checkpoint_step(found[0])})"
    elif scalars.is_file() and scalars.stat().st_size:
        held = f"the logs of a run ({scalars})"
    else:
        return
    raise UserError(f"{work_path} holds {held}; pass --resume auto to continue it, or a new --work_path "
                    "for a new run")


def resume(learner: "Learner") -> int | None:
    """`--resume auto` (the newest valid checkpoint in save/, if any) or `--resume PATH`; returns the step."""
    if learner.config.resume == "auto":
        found = latest_checkpoint(learner.save_dir)
        if found is None:
            log.info("--resume auto: no checkpoint in %s; starting afresh", learner.save_dir)
            return None
        path = found[0]
    else:
        path = Path(learner.config.resume)
    step = restore_run(learner, path)
    log.info("resumed from %s at step %d (epoch %d)", path, step, learner.progress.epoch)
    return step
