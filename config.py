"""Run configuration: one dataclass that fully describes a run, saved as JSON beside its outputs.

The data layer reads `data_path`, `batch_size`, `num_workers`, `seed` and `augment`; the training fields
are filled in by the Learner issue (train.py flags map one-to-one onto these names).
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from utils import UserError, atomic_write_text


@dataclass
class AugmentConfig:
    """Probabilities and ranges of the training augmentation (the long-distance degradation is off by default)."""
    flip_prob: float = 0.5
    downscale_prob: float = 0.0        # shrink then enlarge back: the detail lost at distance
    downscale_min: float = 0.25        # smallest scale factor of that shrink
    blur_prob: float = 0.0             # Gaussian blur: defocus and motion at distance
    blur_sigma_max: float = 1.5
    jpeg_prob: float = 0.0             # re-compression artefacts of transmitted or stored frames
    jpeg_quality_min: int = 30

    def __post_init__(self):
        for name in ("flip_prob", "downscale_prob", "blur_prob", "jpeg_prob"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise UserError(f"augment.{name}={value} must be a probability in [0, 1]")
        if not 0.0 < self.downscale_min <= 1.0:
            raise UserError(f"augment.downscale_min={self.downscale_min} must be in (0, 1]")
        if not 0.3 <= self.blur_sigma_max <= 10.0:
            raise UserError(f"augment.blur_sigma_max={self.blur_sigma_max} must be in [0.3, 10]")
        if not 1 <= self.jpeg_quality_min <= 95:
            raise UserError(f"augment.jpeg_quality_min={self.jpeg_quality_min} must be in [1, 95]")


@dataclass
class Config:
    data_path: str = "data/faces_emore"   # a RecordIO folder (train.rec) or an image folder (imgs/<class>/...)
    work_path: str = "work_space"
    net_mode: str = "ir_se"
    depth: int = 50
    embedding_size: int = 512
    head: str = "arcface"
    batch_size: int = 100
    epochs: int = 20
    lr: float = 0.1
    num_workers: int = 3
    seed: int = 0
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict, source: str = "config") -> "Config":
        values = dict(values)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise UserError(f"{source}: unknown setting(s) {', '.join(unknown)}")
        augment = values.pop("augment", {})
        if not isinstance(augment, dict):
            raise UserError(f"{source}: 'augment' must be a mapping")
        augment_known = {f.name for f in dataclasses.fields(AugmentConfig)}
        unknown = sorted(set(augment) - augment_known)
        if unknown:
            raise UserError(f"{source}: unknown augment setting(s) {', '.join(unknown)}")
        return cls(augment=AugmentConfig(**augment), **values)

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Config":
        path = Path(path)
        try:
            values = json.loads(path.read_text())
        except FileNotFoundError:
            raise UserError(f"{path}: config file not found") from None
        except json.JSONDecodeError as err:
            raise UserError(f"{path}: not valid JSON ({err})") from None
        if not isinstance(values, dict):
            raise UserError(f"{path}: expected a JSON object of settings")
        return cls.from_dict(values, source=str(path))
