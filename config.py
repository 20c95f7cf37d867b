"""Run configuration: one dataclass that fully describes a run, saved as JSON beside its outputs.

train.py's long flags map one-to-one onto these field names; a saved `config.json` (or a YAML file with
the same keys) given to `--config` reproduces a run, and flags given beside it override its values.
Defaults follow TreB1eN/InsightFace_Pytorch (SGD, momentum 0.9, weight decay 5e-4, LR /10 at epochs
12, 15, 18 of 20) unless a comment says otherwise.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from utils import UserError, atomic_write_text

NET_MODES = ("ir_se", "ir", "mobilefacenet", "r50", "r100")
SCHEDULES = ("step", "cosine", "poly")
AMP_MODES = ("off", "fp16", "bf16")
FUSED_SGD_MODES = ("auto", "on", "off")
# TreB1eN's -d/--data_mode: the folder each of its data sets is prepared into (concat is not supported)
DATA_MODES = {"emore": "data/faces_emore", "ms1m": "data/faces_ms1m", "vgg": "data/faces_vgg_112x112"}


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
    # data
    data_path: str = "data/faces_emore"   # a RecordIO folder (train.rec) or an image folder (imgs/<class>/...)
    work_path: str = "work_space"         # outputs: config.json, save/, log/, history/
    num_workers: int | None = None        # DataLoader processes per training process (None: chosen from the cores)
    num_threads: int | None = None        # torch threads per training process (None: chosen from the free cores)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # model
    net_mode: str = "ir_se"
    depth: int = 50
    embedding_size: int = 512
    drop_ratio: float | None = None       # None: the backbone's own default (0.6 IR/IR-SE, 0 IResNet)
    pretrained: str | None = None         # backbone weights to start from (ours, TreB1eN or arcface_torch)
    # fine-tuning (with pretrained weights): the head always starts fresh for the new identities
    freeze_backbone_epochs: float = 0.0   # epochs during which only the class centres train (backbone fixed)
    backbone_lr_mult: float = 1.0         # the backbone's LR as a multiple of the centres' (e.g. 0.1)
    freeze_bn: bool = False               # keep the backbone's BatchNorm running statistics as loaded
    head: str = "arcface"
    head_options: dict = field(default_factory=dict)  # the head's keyword arguments (s, m, m1, m2, ...)
    pose_schedule: float = 0.0            # PGAML: epochs over which the pose term m2 ramps in (0 = at once)
    use_height: bool = True               # PGAML: include the capture height (height.npy) where the data has it
    sample_rate: float = 1.0              # Partial FC: fraction of the class centres used per step
    # optimisation
    batch_size: int = 96                  # per process
    epochs: int = 20
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "step"
    milestones: list = field(default_factory=lambda: [12, 15, 18])  # epochs ('step' schedule)
    lr_gamma: float = 0.1                 # LR factor at each milestone
    warmup_epochs: float = 0.0            # linear warm-up from 0 (any schedule)
    poly_power: float = 2.0               # 'poly': lr * (1 - progress) ** power (arcface_torch uses 2)
    # training stability (0 = off)
    margin_warmup_steps: int = 0          # the margin ramps linearly from 0 to its value over these first steps
    clip_grad_norm: float = 0.0           # clip the backbone's gradient norm to this (the class centres left out)
    lr_reference_batch: int = 0           # linear scaling rule: peak LR = lr * global batch / this
    amp: str = "off"
    channels_last: bool = False
    compile: bool = False
    fused_sgd: str = "auto"               # torch's fused SGD kernel for the dense parameters (auto: where torch has one)
    # schedule of the run
    max_steps: int | None = None          # stop after this many steps; the LR schedule is unchanged
    log_every: int = 0                    # steps between logged scalars (0: ~100 per epoch, TreB1eN's rate)
    eval_every: int = 0                   # steps between evaluations (0: 10 per epoch, TreB1eN's rate)
    save_every: int = 0                   # steps between checkpoints (0: 5 per epoch, TreB1eN's rate)
    keep_checkpoints: int = 2             # newest full checkpoints kept in save/
    val_sets: str = "lfw,agedb_30,cfp_fp"  # comma-separated, or 'all' (the prepared sets under data_path)
    val_batch_size: int = 256
    val_flip: bool = True                 # flip test-time augmentation during evaluation
    best_metric: str = "accuracy"         # mean accuracy over val_sets, or '<set>/<scalar>' e.g. cfp_fp/accuracy
    val_breakdowns: str = ""              # 'pose', 'resolution' or both: val/<set>/pose/<bins>/..., val/<set>/res<N>/...
    val_resolutions: list = field(default_factory=lambda: [112, 28, 14])  # face sizes of the resolution breakdown
    max_nonfinite: int = 20               # consecutive non-finite losses that stop the run
    resume: str | None = None             # 'auto' (newest valid checkpoint in save/) or a checkpoint path
    # reproducibility and placement
    device: str = "auto"                  # 'auto': cuda:<local rank> when CUDA is available, else cpu
    seed: int = 0
    deterministic: bool = False

    def __post_init__(self):
        self.validate()

    def validate(self) -> None:
        _choice("net_mode", self.net_mode, NET_MODES)
        _choice("schedule", self.schedule, SCHEDULES)
        _choice("amp", self.amp, AMP_MODES)
        _choice("fused_sgd", self.fused_sgd, FUSED_SGD_MODES)
        for name in ("batch_size", "epochs", "embedding_size", "depth", "keep_checkpoints", "max_nonfinite",
                     "val_batch_size"):
            if int(getattr(self, name)) < 1:
                raise UserError(f"--{name} must be at least 1, not {getattr(self, name)}")
        for name in ("log_every", "eval_every", "save_every"):
            if int(getattr(self, name)) < 0:
                raise UserError(f"--{name} must not be negative, not {getattr(self, name)}")
        if self.num_workers is not None and self.num_workers < 0:
            raise UserError(f"--num_workers must not be negative, not {self.num_workers}")
        if self.num_threads is not None and self.num_threads < 1:
            raise UserError(f"--num_threads must be at least 1, not {self.num_threads}")
        if self.max_steps is not None and self.max_steps < 1:
            raise UserError(f"--max_steps must be at least 1, not {self.max_steps}")
        if not self.lr > 0:
            raise UserError(f"--lr must be positive, not {self.lr}")
        if not 0.0 < self.sample_rate <= 1.0:
            raise UserError(f"--sample_rate must be in (0, 1], not {self.sample_rate}")
        if self.warmup_epochs < 0 or self.pose_schedule < 0:
            raise UserError("--warmup_epochs and --pose_schedule must not be negative")
        if sorted(self.milestones) != list(self.milestones) or any(m <= 0 for m in self.milestones):
            raise UserError(f"--milestones must be increasing positive epochs, not {self.milestones}")
        if not isinstance(self.head_options, dict):
            raise UserError("head_options must be a mapping of the head's keyword arguments")
        if self.freeze_backbone_epochs < 0 or self.backbone_lr_mult < 0:
            raise UserError("--freeze_backbone_epochs and --backbone_lr_mult must not be negative")
        if self.drop_ratio is not None and not 0.0 <= self.drop_ratio < 1.0:
            raise UserError(f"--drop_ratio must be in [0, 1), not {self.drop_ratio}")
        self._validate_stability()

    def _validate_stability(self) -> None:
        for name in ("margin_warmup_steps", "lr_reference_batch"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise UserError(f"--{name} must be a whole number >= 0 (0: off), not {value!r}")
        if isinstance(self.clip_grad_norm, bool) or not isinstance(self.clip_grad_norm, (int, float)) \
                or not 0.0 <= self.clip_grad_norm < float("inf"):
            raise UserError(f"--clip_grad_norm must be a finite number >= 0 (0: off), not {self.clip_grad_norm!r}")

    @property
    def backbone_name(self) -> str:
        """The `model.build_backbone` name: `-n ir_se --depth 50` -> 'ir_se_50'."""
        return f"{self.net_mode}_{self.depth}" if self.net_mode in ("ir_se", "ir") else self.net_mode

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
        if isinstance(augment, AugmentConfig):
            augment = dataclasses.asdict(augment)
        if not isinstance(augment, dict):
            raise UserError(f"{source}: 'augment' must be a mapping")
        augment_known = {f.name for f in dataclasses.fields(AugmentConfig)}
        unknown = sorted(set(augment) - augment_known)
        if unknown:
            raise UserError(f"{source}: unknown augment setting(s) {', '.join(unknown)}")
        try:
            return cls(augment=AugmentConfig(**augment), **values)
        except TypeError as err:  # a wrongly typed value that the checks trip over
            raise UserError(f"{source}: {err}") from None

    def replace(self, **changes) -> "Config":
        return Config.from_dict({**self.to_dict(), **changes})

    def save(self, path: str | os.PathLike) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Config":
        """A JSON file (as `save` writes), or YAML (.yaml/.yml) with the same keys."""
        return cls.from_dict(read_settings(path), source=str(path))


def read_settings(path: str | os.PathLike) -> dict:
    path = Path(path)
    try:
        text = path.read_text()
    except FileNotFoundError:
        raise UserError(f"{path}: config file not found") from None
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml
        try:
            values = yaml.safe_load(text)
        except yaml.YAMLError as err:
            raise UserError(f"{path}: not valid YAML ({' '.join(str(err).split())})") from None
    else:
        try:
            values = json.loads(text)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(values, dict):
        raise UserError(f"{path}: expected a mapping of settings")
    return values


def data_path_for(data_mode: str) -> str:
    """TreB1eN's -d/--data_mode as a folder."""
    if data_mode not in DATA_MODES:
        raise UserError(f"--data_mode {data_mode}: choose one of {', '.join(DATA_MODES)} (or give --data_path)")
    return DATA_MODES[data_mode]


def _choice(name: str, value, choices) -> None:
    if value not in choices:
        raise UserError(f"--{name} {value!r}: choose one of {', '.join(choices)}")
