"""k-fold cross-validation of fine-tuning: the folds (`fold_plan`) and the per-epoch loss a fold reports.

Three protocols (crossval.py --cv):
  * `identities` (the default): the identities are shuffled with the seed and cut into k parts; fold i
    trains on every other part's images and holds out part i's identities whole (open set);
  * `images`: stratified image folds: each identity's images, shuffled with the seed, are dealt in turn to
    the k folds (sklearn's StratifiedKFold in spirit), so every identity is trained on in every fold and
    held-out images are matched against class means of training images only (closed set, done right);
  * `seed_protocol`: the PGAML authors' folds, exactly (`evaluation.protocols.droneface.seed_protocol_folds`).
A fold is a pair of index arrays into the data set's images; the same seed gives the same folds, so every
head is trained and scored on identical folds (paired results).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from evaluation.protocols.droneface import seed_protocol_folds
from training.hooks import Hook, StepRecord
from utils import UserError
from verification import fold_sizes

CV_PROTOCOLS = ("identities", "images", "seed_protocol")


@dataclass
class Fold:
    index: int
    train: np.ndarray   # image indices
    test: np.ndarray


def identity_folds(identities, num_folds: int, seed: int) -> list[Fold]:
    """Whole identities held out: fold i's test part is the i-th of k seeded parts of the identities."""
    identities = np.asarray(identities)
    names = np.unique(identities)
    if not 2 <= num_folds <= len(names):
        raise UserError(f"--num_folds {num_folds}: --cv identities needs 2 <= folds <= the {len(names)} identities")
    shuffled = names[np.random.default_rng([seed, 21]).permutation(len(names))]
    folds, start = [], 0
    for index, size in enumerate(fold_sizes(len(names), num_folds)):
        held_out = np.isin(identities, shuffled[start:start + size])
        folds.append(Fold(index, np.flatnonzero(~held_out), np.flatnonzero(held_out)))
        start += size
    return folds


def image_folds(identities, num_folds: int, seed: int) -> list[Fold]:
    """Stratified image folds: each identity's shuffled images dealt to the folds in turn, starting where the
    previous identity stopped (balanced fold sizes); every identity keeps training images in every fold."""
    identities = np.asarray(identities)
    names, counts = np.unique(identities, return_counts=True)
    if num_folds < 2:
        raise UserError(f"--num_folds {num_folds}: at least 2 folds")
    if counts.min() < 2:
        raise UserError(f"--cv images: identity {str(names[counts.argmin()])!r} has one image; every identity needs two "
                        "(one to train on, one to test)")
    rng = np.random.default_rng([seed, 22])
    fold_of = np.empty(len(identities), dtype=np.int64)
    offset = 0
    for name in names:
        members = rng.permutation(np.flatnonzero(identities == name))
        fold_of[members] = (offset + np.arange(len(members))) % num_folds
        offset += len(members)
    return [Fold(i, np.flatnonzero(fold_of != i), np.flatnonzero(fold_of == i)) for i in range(num_folds)]


def fold_plan(cv: str, identities, num_folds: int, seed: int) -> list[Fold]:
    """The folds of protocol `cv` over images with these identities (in file order)."""
    if cv == "identities":
        return identity_folds(identities, num_folds, seed)
    if cv == "images":
        return image_folds(identities, num_folds, seed)
    if cv == "seed_protocol":
        return [Fold(i, train, test) for i, (train, test) in enumerate(seed_protocol_folds(list(identities), num_folds))]
    raise UserError(f"--cv {cv!r}: choose one of {', '.join(CV_PROTOCOLS)}")


class EpochLoss(Hook):
    """The mean training loss of every epoch (finite steps only), for the loss-per-epoch plot."""

    def __init__(self):
        self.per_epoch: list[float] = []
        self._losses: list[float] = []

    def after_step(self, learner, record: StepRecord) -> None:
        if np.isfinite(record.loss):
            self._losses.append(record.loss)

    def after_epoch(self, learner) -> None:
        self.per_epoch.append(float(np.mean(self._losses)) if self._losses else float("nan"))
        self._losses = []
