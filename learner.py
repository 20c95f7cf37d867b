"""The Learner: a training run's state and its loop.

It composes the project's pieces: data (`data.datasets`), backbone (`model`, built by `training.build`),
the sharded classifier with its margin (`partial_fc.PartialFC` + `heads`, also with one process, where it
equals a plain softmax), the LR schedule (`training.schedule`) and the hooks its loop calls
(`training.hooks`: logging, evaluation + best model, checkpointing, the LR range test). One process or
`torchrun` (DDP on the backbone; the class centres are sharded, never replicated); rank 0 alone logs,
evaluates and writes. Parts can be passed in (`Learner(config, dataset=..., val_sets=..., hooks=...)`):
a fold's subset of a data set, in-memory val sets, extra evaluators.

Exact resume: the sampler order is a function of (seed, epoch), augmentation of (seed, epoch, index), and
a checkpoint holds every rank's generator states (`training.run_state`), so with `--deterministic` a run
killed at any step and resumed from its last checkpoint repeats the losses of an uninterrupted run.
"""
from __future__ import annotations

import logging
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from config import Config
from data.datasets import ResumableSampler, build_loader, open_dataset
from heads import Margin
from inference.conventions import to_model_input
from inference.runtime import AMP_DTYPES, autocast, resolve_device
from partial_fc import SGD, PartialFC
from training import build, distributed, stability
from training.hooks import Evaluation, Hook, LRFinder, StepRecord, default_hooks
from training.run_log import RunLog
from training.run_state import check_work_path, restore_run, resume, save_run
from training.schedule import lr_at, peak_lr, set_lr
from utils import UserError, seed_everything

log = logging.getLogger(__name__)


@dataclass
class Progress:
    """Where the run is: saved in every checkpoint."""
    step: int = 0                # optimiser steps taken (skipped non-finite steps included)
    epoch: int = 0               # current epoch
    samples_in_epoch: int = 0    # global samples of the current epoch already trained on
    nonfinite_total: int = 0
    nonfinite_streak: int = 0
    best_value: float = -math.inf
    best_step: int = -1


class Learner:
    def __init__(self, config: Config, dataset=None, val_sets=None, hooks: tuple[Hook, ...] = ()):
        """`dataset`: a training set (`data.datasets`' interface: `num_classes`, `side_info`, `set_epoch`,
        items `(uint8 CHW image, label, side)`), default `open_dataset(config.data_path)`; `val_sets`:
        `evaluation.ValSet`s or names of prepared sets, default the config's `val_sets`; `hooks`: called
        after the default ones (`training.hooks`)."""
        self.config = config
        check_work_path(config)
        self.device = resolve_device(config.device)
        self.dist = distributed.init_from_env(self.device.type)
        if self.device.type == "cuda" and config.device == "auto":
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        seed_everything(config.seed + self.dist.rank)
        build.set_determinism(config.deterministic)
        self.cpu = build.cpu_plan(config, self.device, self.dist.local_world_size)
        torch.set_num_threads(self.cpu.threads)
        self.work_path = Path(config.work_path)
        self.save_dir, self.history_dir = self.work_path / "save", self.work_path / "history"
        self.amp_dtype = AMP_DTYPES[config.amp]

        self.dataset = dataset if dataset is not None else open_dataset(config.data_path, config.augment, config.seed)
        self.num_classes = self.dataset.num_classes
        self._check_side_information()
        self.side_names = ("yaw", "height") if config.use_height else ("yaw",)
        self.backbone, self.conventions = build.backbone_for(config, self.device)
        self.head = PartialFC(config.embedding_size, self.num_classes, build.margin_for(config, self.num_classes),
                              config.sample_rate)
        self.head.to(self.device)
        self.model = build.wrap_for_training(self.backbone, self.device, self.dist.distributed, config.compile)
        self._backbone_params = [p for p in self.backbone.parameters() if p.requires_grad]  # clipped, measured
        self._batch_norms = [m for m in self.backbone.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        self._buffers = list(self.backbone.buffers())
        self._buffer_backup = [b.clone() for b in self._buffers]
        self.optimizer = SGD(build.param_groups(self.backbone, self.head.kernel, config), lr=config.lr,
                             momentum=config.momentum, fused=build.fused_sgd_for(config, self.device))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.amp == "fp16")
        self.sampler = ResumableSampler(len(self.dataset), config.batch_size, self.dist.rank,
                                        self.dist.world_size, config.seed)
        self.loader = build_loader(self.dataset, config.batch_size, self.cpu.workers, seed=config.seed,
                                   sampler=self.sampler, pin_memory=self.device.type == "cuda")
        self.progress = Progress()
        self.lr = config.lr
        self.last_step = 0               # the step the current run of the loop ends at
        # set by the log hook before a log step: that step records its figures (collective) in step_statistics
        self.record_statistics = False
        self.step_statistics: dict[str, float] = {}
        self.stop_reason: str | None = None
        main_val_sets = build.val_sets_for(config, val_sets) if self.dist.is_main else []
        self.hooks = default_hooks(self, main_val_sets) + list(hooks)
        resume_step = None
        if config.resume:  # a run resumed, or begun again where no checkpoint was left: its log from there
            resume_step = resume(self) or 0
        self.run_log = RunLog(self.work_path / "log", enabled=self.dist.is_main, resume_step=resume_step)

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.steps_per_epoch

    @property
    def global_batch(self) -> int:
        return self.sampler.global_batch

    @property
    def last_results(self) -> list:
        """`evaluation.SetResult` of each val set at the last evaluation (empty before the first)."""
        return next((h.results for h in self.hooks if isinstance(h, Evaluation)), [])

    def _check_side_information(self) -> None:
        if self.config.head == "pgaml" and "yaw" not in self.dataset.side_info.names:
            raise UserError(f"--head pgaml needs the yaw of every training image: {self.config.data_path}/pose.npy "
                            "(float32 (num_keys, 2) yaw, pitch in degrees by record key, NaN where unknown) "
                            "was not found; write it beside train.rec (data/synthetic.py does for its data)")

    # ------------------------------------------------------------------------------------------ the loop

    def train(self) -> Progress:
        """Train until `epochs` (or `max_steps`), with the hooks evaluating and saving on schedule."""
        total = self.steps_per_epoch * self.config.epochs
        last = min(total, self.config.max_steps) if self.config.max_steps else total
        self._log_start(total, last)
        if self.dist.is_main:  # only a run that starts records its settings (a failed resume leaves them)
            self.config.save(self.work_path / "config.json")
        try:
            return self._run(self.hooks, last)
        finally:
            self.run_log.close()

    def find_lr(self, num: int = 100, **options) -> tuple[list[float], list[float]]:
        """The LR range test (`training.hooks.LRFinder`, options as its): (log10 LRs, smoothed losses);
        the run's state is restored afterwards."""
        finder = LRFinder(num=num, **options)
        self._run([finder], num)
        self.stop_reason = None
        return finder.log_lrs, finder.losses

    def _run(self, hooks: list[Hook], last_step: int) -> Progress:
        self.last_step = last_step
        try:
            self._call(hooks, "before_train")
            with _StopOnSignals(self):
                while (self.progress.epoch < self.config.epochs and self.progress.step < last_step
                       and not self.stop_reason):
                    self._train_epoch(hooks, last_step)
            self._call(hooks, "after_train")
        finally:
            self._call(hooks, "close")
        return self.progress

    def _call(self, hooks: list[Hook], point: str, *args) -> None:
        for hook in hooks:
            getattr(hook, point)(self, *args)

    def _train_epoch(self, hooks: list[Hook], last_step: int) -> None:
        p = self.progress
        self.sampler.set_position(p.epoch, p.samples_in_epoch)
        self.dataset.set_epoch(p.epoch)
        waited_from = time.perf_counter()
        for images, labels, side in self.loader:
            started = time.perf_counter()
            self._follow_schedule()
            self._call(hooks, "before_step")
            loss = self._train_step(images, labels, side)
            p.step += 1
            p.samples_in_epoch += self.global_batch
            record = StepRecord(p.step, loss, self.global_batch, started - waited_from, time.perf_counter() - started)
            self._call(hooks, "after_step", record)
            self.stop_reason = self._stop_reason_agreed()
            if p.samples_in_epoch >= self.steps_per_epoch * self.global_batch:
                break  # the epoch's last batch: the epoch is complete even if the run ends here
            if p.step >= last_step or self.stop_reason:
                return
            waited_from = time.perf_counter()
        p.epoch, p.samples_in_epoch = p.epoch + 1, 0
        self._call(hooks, "after_epoch")

    def epoch_progress(self) -> float:
        """Epochs done, as a float (the LR schedule's and the margins' clock)."""
        return self.progress.epoch + self.progress.samples_in_epoch / (self.steps_per_epoch * self.global_batch)

    def _follow_schedule(self) -> None:
        progress = self.epoch_progress()
        self.set_lr(lr_at(self.config, progress, self.global_batch))
        self._set_backbone_mode()
        self.head.margin.set_epoch(progress)
        self.head.margin.set_step(self.progress.step)

    def backbone_frozen(self) -> bool:
        """--freeze_backbone_epochs: whether the backbone is a fixed feature extractor at this point."""
        return self.epoch_progress() < self.config.freeze_backbone_epochs

    def _set_backbone_mode(self) -> None:
        """Eval mode while frozen (no dropout, BatchNorm statistics kept); with --freeze_bn the BatchNorm layers
        stay in eval mode afterwards too (the small fine-tuning set never moves the pretrained statistics)."""
        frozen = self.backbone_frozen()
        self.backbone.train(not frozen)
        if self.config.freeze_bn and not frozen:
            for module in self._batch_norms:
                module.eval()

    def set_lr(self, lr: float) -> None:
        self.lr = lr
        set_lr(self.optimizer, lr)

    def _train_step(self, images, labels, side) -> float:
        """One optimiser step; returns the loss (non-finite: the update is skipped and counted). With
        `record_statistics`, the step's figures before its update go to `step_statistics`."""
        record, self.record_statistics = self.record_statistics, False
        self.head.record_statistics, self.step_statistics = record, {}
        self.optimizer.zero_grad(set_to_none=True)
        torch._foreach_copy_(self._buffer_backup, self._buffers)
        try:
            loss = self._forward(images, labels, side, record)
        finally:
            self.head.record_statistics = False
        value = float(loss.detach())
        if not math.isfinite(value):
            # the forward pass already moved BatchNorm's running statistics: take them back too
            torch._foreach_copy_(self._buffers, self._buffer_backup)
            self._count_nonfinite()
            return value
        self.progress.nonfinite_streak = 0
        self.scaler.scale(loss).backward()
        grad_norm = stability.backbone_grad_norm(self.scaler, self.optimizer, self._backbone_params,
                                                 self.config.clip_grad_norm, measure=record)
        if record:
            self.step_statistics["grad_norm"] = grad_norm
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return value

    def _forward(self, images, labels, side, record: bool = False):
        x = to_model_input(images, self.device, self.config.channels_last, self.conventions)
        labels = labels.to(self.device, non_blocking=True)
        if self.backbone_frozen():  # no graph through the backbone: only the centres learn (and it is cheaper)
            with torch.no_grad(), autocast(self.device, self.amp_dtype):
                embeddings, norms = self.backbone.forward_with_norm(x)
        else:
            with autocast(self.device, self.amp_dtype):
                embeddings, norms = self.model(x)
        extra = {name: side[name].to(self.device) for name in self.side_names if name in side}
        if _uses_norms(self.head.margin):
            extra["norms"] = norms.float()
        loss = self.head(embeddings.float(), labels, **extra)
        if record:  # the head's figures of this forward pass, and the features' norm before L2 normalisation
            self.step_statistics = {**self.head.statistics, "embedding_norm": stability.global_mean(norms)}
        return loss

    def _count_nonfinite(self) -> None:
        p = self.progress
        p.nonfinite_total += 1
        p.nonfinite_streak += 1
        log.warning("step %d: non-finite loss, update skipped (%d in a row)", p.step + 1, p.nonfinite_streak)
        if p.nonfinite_streak >= self.config.max_nonfinite:
            path = self.save_state()
            raise UserError(f"the loss was not finite in {p.nonfinite_streak} consecutive steps (at step {p.step}); "
                            f"stopped. The last good state is saved in {path}; lower --lr or use --amp bf16/off")

    def _log_start(self, total: int, last: int) -> None:
        c = self.config
        planned = f"{last} steps" if last == total else f"{last} of {total} steps (--max_steps)"
        log.info("%s + %s on %d images of %d classes (%s); %d processes x batch %d, %d steps/epoch, %s; "
                 "%s on %s; outputs in %s", c.backbone_name, c.head, len(self.dataset), self.num_classes, c.data_path,
                 self.dist.world_size, c.batch_size, self.steps_per_epoch, planned, self.cpu.describe(),
                 self.device, self.work_path)
        if c.lr_reference_batch:
            log.info("peak LR %.4g = --lr %g x global batch %d / --lr_reference_batch %d (linear scaling rule)",
                     peak_lr(c, self.global_batch), c.lr, self.global_batch, c.lr_reference_batch)
        if c.margin_warmup_steps:
            log.info("the margin ramps in linearly over the first %d steps (--margin_warmup_steps)",
                     c.margin_warmup_steps)
        if c.clip_grad_norm:
            log.info("the backbone's gradient norm is clipped to %g (--clip_grad_norm; the class centres are not)",
                     c.clip_grad_norm)

    # ------------------------------------------------------------------------------- state and stopping

    def save_state(self) -> Path:
        """Write a checkpoint of the whole run (collective: every rank calls it; rank 0 writes)."""
        return save_run(self)

    def load_state(self, path: str | Path) -> int:
        """Restore a checkpoint (any world size saved it); returns its step."""
        return restore_run(self, path)

    def request_stop(self, reason: str) -> None:
        """Ask the loop to stop after the current step (the hooks then save and report as at the end)."""
        if self.stop_reason is None:
            self.stop_reason = reason

    def _stop_reason_agreed(self) -> str | None:
        device = self.device if self.device.type == "cuda" else torch.device("cpu")
        stop = distributed.any_true(self.stop_reason is not None, device)
        return (self.stop_reason or "a signal on another process") if stop else None


class _StopOnSignals:
    """SIGINT / SIGTERM ask the loop to save and stop after the current step; a second one kills, unless it
    comes within DUPLICATE_WINDOW_S of the first: torchrun forwards the signal its process group got, so
    each rank sees the same stop twice."""

    DUPLICATE_WINDOW_S = 2.0

    def __init__(self, learner: Learner):
        self.learner = learner
        self.previous = {}
        self.first_at = None

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave the handlers alone
                pass
        return self

    def _handle(self, signum, frame):
        if self.first_at is not None:
            if time.monotonic() - self.first_at < self.DUPLICATE_WINDOW_S:
                return
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
        self.first_at = time.monotonic()
        self.learner.request_stop(signal.Signals(signum).name)
        if self.learner.dist.is_main:
            log.warning("%s: saving a checkpoint and stopping after this step", signal.Signals(signum).name)

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        return False


def _uses_norms(margin: nn.Module) -> bool:
    """Whether the margin reads the features' norms (AdaFace, MagFace, SphereFace without a fixed scale)."""
    return "norms" in margin.needs or type(margin).regularizer is not Margin.regularizer
