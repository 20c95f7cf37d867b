"""The Learner: builds a run from a Config and trains it.

It composes the project's pieces and keeps only the loop: data (`data.datasets`), backbone (`model`), the
sharded classifier with its margin (`partial_fc.PartialFC` + `heads.build_margin`, also with one
process, where it equals a plain softmax), the LR schedule (`schedule`), checkpoints (`checkpoint`),
evaluation (`evaluation`) and reporting (`run_log`). One process or `torchrun` (DDP on the backbone;
the class centres are sharded, never replicated); rank 0 alone logs, evaluates and writes.

Exact resume: the sampler order is a function of (seed, epoch), augmentation of (seed, epoch, index), and
a checkpoint holds every rank's generator states, so with `--deterministic` a run killed at any step and
resumed from its last checkpoint repeats the losses of an uninterrupted run.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import math
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from tqdm import tqdm

import distributed
from checkpoint import (checkpoint_path, latest_checkpoint, load_checkpoint, prune_checkpoints, rng_state,
                        save_checkpoint, set_rng_state)
from config import Config
from data.datasets import ResumableSampler, build_loader, open_dataset, to_model_input
from evaluation import evaluate_valset, resolve_valsets
from heads import Margin, build_margin
from model import INPUT_CONVENTIONS, build_backbone, load_backbone_weights, save_backbone_weights, to_channel_order
from partial_fc import SGD, PartialFC
from run_log import RunLog
from schedule import lr_at, set_lr
from utils import UserError, atomic_write_text, seed_everything
from verification import roc_image_for_tensorboard

log = logging.getLogger(__name__)

AMP_DTYPES = {"off": None, "fp16": torch.float16, "bf16": torch.bfloat16}


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


class _Features(nn.Module):
    """The backbone's (unit embedding, feature norm): one forward for DDP to wrap (DDP hooks only forward)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.backbone.forward_with_norm(x)


class Learner:
    def __init__(self, config: Config):
        self.config = config
        self.device = _resolve_device(config.device)
        self.dist = distributed.init_from_env(self.device.type)
        if self.device.type == "cuda" and config.device == "auto":
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        seed_everything(config.seed + self.dist.rank)
        _set_determinism(config.deterministic)
        self.work_path = Path(config.work_path)
        self.save_dir, self.history_dir = self.work_path / "save", self.work_path / "history"
        self.amp_dtype = AMP_DTYPES[config.amp]

        self.dataset = open_dataset(config.data_path, config.augment, config.seed)
        self.num_classes = self.dataset.num_classes
        self._check_side_information()
        self._side_names = ("yaw", "height") if config.use_height else ("yaw",)
        self.backbone, self.conventions = self._build_backbone()
        self.head = PartialFC(config.embedding_size, self.num_classes, self._build_margin(), config.sample_rate)
        self.head.to(self.device)
        self.model = self._wrap(self.backbone)
        self._buffers = list(self.backbone.buffers())
        self._buffer_backup = [b.clone() for b in self._buffers]
        self.optimizer = SGD(self._param_groups(), lr=config.lr, momentum=config.momentum)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=config.amp == "fp16")
        self.sampler = ResumableSampler(len(self.dataset), config.batch_size, self.dist.rank,
                                        self.dist.world_size, config.seed)
        self.loader = build_loader(self.dataset, config.batch_size, config.num_workers, seed=config.seed,
                                   sampler=self.sampler, pin_memory=self.device.type == "cuda")
        self.val_sets = self._resolve_val_sets()
        self._check_best_metric()
        self.intervals = _Intervals(config, self.steps_per_epoch)
        self.progress = Progress()
        self.evaluated_at = -1
        self.last_results = []   # evaluation.SetResult of each val set at the last evaluation
        self._stop_reason: str | None = None
        resume_step = self._resume() if config.resume else None
        self.run_log = RunLog(self.work_path / "log", enabled=self.dist.is_main, resume_step=resume_step)
        if self.dist.is_main:
            config.save(self.work_path / "config.json")

    # ------------------------------------------------------------------------------------------ building

    @property
    def steps_per_epoch(self) -> int:
        return self.sampler.steps_per_epoch

    @property
    def global_batch(self) -> int:
        return self.sampler.global_batch

    def _check_side_information(self) -> None:
        if self.config.head == "pgaml" and "yaw" not in self.dataset.side_info.names:
            raise UserError(f"--head pgaml needs the yaw of every training image: {self.config.data_path}/pose.npy "
                            "(float32 (num_keys, 2) yaw, pitch in degrees by record key, NaN where unknown) "
                            "was not found; write it beside train.rec (data/synthetic.py does for its data)")

    def _build_backbone(self) -> tuple[nn.Module, dict]:
        c = self.config
        options = {} if c.drop_ratio is None or c.net_mode == "mobilefacenet" else {"drop_ratio": c.drop_ratio}
        backbone = build_backbone(c.backbone_name, embedding_size=c.embedding_size, **options)
        conventions = dict(INPUT_CONVENTIONS)
        if c.pretrained:
            backbone, meta = load_backbone_weights(backbone, c.pretrained)
            # keep feeding the channel order the weights were trained on (TreB1eN's are BGR)
            conventions.update({k: meta[k] for k in INPUT_CONVENTIONS})
            log.info("starting from %s (%s weights, %s input)", c.pretrained, meta["source"], meta["channel_order"])
        backbone.to(self.device)
        if c.channels_last:
            backbone.to(memory_format=torch.channels_last)
        return backbone, conventions

    def _build_margin(self) -> nn.Module:
        options = dict(self.config.head_options)
        if self.config.head == "pgaml" and self.config.pose_schedule:
            options.setdefault("warmup_epochs", self.config.pose_schedule)
        elif self.config.pose_schedule:
            raise UserError("--pose_schedule applies to --head pgaml only")
        return build_margin(self.config.head, **options)

    def _wrap(self, backbone: nn.Module) -> nn.Module:
        model = _Features(backbone)
        if self.dist.distributed:
            ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
        if self.config.compile:
            model = torch.compile(model)
        return model

    def _param_groups(self) -> list[dict]:
        """TreB1eN's weight decay: none on BatchNorm and biases; MobileFaceNet's layers before its embedding
        layer get a tenth of it (TreB1eN: 4e-5 there, 4e-4 on the embedding layer and the centres)."""
        decay, no_decay = [], []
        for module in self.backbone.modules():
            for name, param in module.named_parameters(recurse=False):
                is_norm = isinstance(module, nn.modules.batchnorm._BatchNorm)
                (no_decay if is_norm or name == "bias" else decay).append(param)
        wd = self.config.weight_decay
        if self.config.net_mode == "mobilefacenet":
            return [{"params": decay[:-1], "weight_decay": wd / 10},
                    {"params": decay[-1:] + [self.head.kernel], "weight_decay": wd},
                    {"params": no_decay, "weight_decay": 0.0}]
        return [{"params": decay + [self.head.kernel], "weight_decay": wd},
                {"params": no_decay, "weight_decay": 0.0}]

    def _resolve_val_sets(self) -> list[str]:
        """The val sets evaluated during training (main process only; 'none' disables evaluation)."""
        c = self.config
        if not self.dist.is_main or c.val_sets == "none":
            return []
        if c.val_sets != Config.val_sets:
            return resolve_valsets(c.data_path, c.val_sets)
        # the default list: whichever of TreB1eN's three are prepared
        try:
            prepared = resolve_valsets(c.data_path, "all")
        except UserError:
            prepared = []
        chosen = [name for name in c.val_sets.split(",") if name in prepared]
        if not chosen:
            log.warning("%s: none of %s is prepared; training without evaluation", c.data_path, c.val_sets)
        return chosen

    # ------------------------------------------------------------------------------------------ training

    def train(self) -> Progress:
        """Train until `epochs` (or `max_steps`), evaluating and saving on schedule; returns the progress."""
        c = self.config
        total = self.steps_per_epoch * c.epochs
        last = min(total, c.max_steps) if c.max_steps else total
        self._log_start(total)
        bar = tqdm(total=last, initial=min(self.progress.step, last), disable=not self.dist.is_main,
                   desc="train", dynamic_ncols=True)
        meter = _Meter()
        try:
            with _StopOnSignals(self):
                while self.progress.epoch < c.epochs and self.progress.step < last and not self._stop_reason:
                    self._train_epoch(last, meter, bar)
            self._finish()
        finally:
            bar.close()
            self.run_log.close()
        return self.progress

    def _train_epoch(self, last: int, meter: "_Meter", bar) -> None:
        p = self.progress
        self.sampler.set_position(p.epoch, p.samples_in_epoch)
        self.dataset.set_epoch(p.epoch)
        waited_from = time.perf_counter()
        for images, labels, side in self.loader:
            meter.data_wait += time.perf_counter() - waited_from
            loss = self._train_step(images, labels, side)
            meter.add(loss, self.global_batch)
            p.step += 1
            p.samples_in_epoch += self.global_batch
            bar.update(1)
            self._after_step(meter, bar)
            if p.step >= last or self._stop_reason:
                return
            waited_from = time.perf_counter()
        p.epoch, p.samples_in_epoch = p.epoch + 1, 0

    def epoch_progress(self) -> float:
        """Epochs done, as a float (the LR schedule's and the margins' clock)."""
        return self.progress.epoch + self.progress.samples_in_epoch / (self.steps_per_epoch * self.global_batch)

    def _train_step(self, images, labels, side) -> float:
        """One optimiser step; returns the loss (non-finite: the update is skipped and counted)."""
        progress = self.epoch_progress()
        self.lr = lr_at(self.config, progress)
        set_lr(self.optimizer, self.lr)
        self.head.margin.set_epoch(progress)
        self.head.margin.set_step(self.progress.step)
        self.optimizer.zero_grad(set_to_none=True)
        torch._foreach_copy_(self._buffer_backup, self._buffers)
        loss, self._last_batch = self._forward(images, labels, side)
        value = float(loss.detach())
        if not math.isfinite(value):
            # the forward pass already moved BatchNorm's running statistics: take them back too
            torch._foreach_copy_(self._buffers, self._buffer_backup)
            self._count_nonfinite()
            return value
        self.progress.nonfinite_streak = 0
        self.scaler.scale(loss).backward()
        self.scaler.step(self.optimizer)
        self.scaler.update()
        return value

    def _forward(self, images, labels, side):
        x = to_model_input(to_channel_order(images, self.conventions["channel_order"]), self.device,
                           self.config.channels_last)
        labels = labels.to(self.device, non_blocking=True)
        with self._autocast():
            embeddings, norms = self.model(x)
        extra = {name: side[name].to(self.device) for name in self._side_names if name in side}
        if _uses_norms(self.head.margin):
            extra["norms"] = norms.float()
        loss = self.head(embeddings.float(), labels, **extra)
        return loss, (embeddings.detach(), labels)

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    def _count_nonfinite(self) -> None:
        p = self.progress
        p.nonfinite_total += 1
        p.nonfinite_streak += 1
        log.warning("step %d: non-finite loss, update skipped (%d in a row)", p.step + 1, p.nonfinite_streak)
        if p.nonfinite_streak >= self.config.max_nonfinite:
            path = self.save_state()
            raise UserError(f"the loss was not finite in {p.nonfinite_streak} consecutive steps (at step {p.step}); "
                            f"stopped. The last good state is saved in {path}; lower --lr or use --amp bf16/off")

    def _after_step(self, meter: "_Meter", bar) -> None:
        step, every = self.progress.step, self.intervals
        self.run_log.scalar("train/loss", meter.last_loss, step)
        if step % every.log == 0:
            self._log_train(meter, bar)
        paused = time.perf_counter()
        if every.eval and step % every.eval == 0:
            self.evaluate_all()
        if step % every.save == 0:
            self.save_state()
        meter.started += time.perf_counter() - paused  # images/s counts training time only
        self._stop_reason = self._stop_reason_agreed()

    def _log_train(self, meter: "_Meter", bar) -> None:
        embeddings, labels = self._last_batch
        accuracy = self.head.accuracy(embeddings, labels)  # collective: every rank calls it
        seconds = meter.elapsed()
        values = {"train/lr": self.lr,
                  "train/accuracy": accuracy, "train/nonfinite_steps": self.progress.nonfinite_total,
                  "perf/images_per_s": meter.samples / seconds, "perf/data_wait_fraction": meter.data_wait / seconds}
        if self.device.type == "cuda":
            values["perf/gpu_memory_gib"] = torch.cuda.max_memory_allocated(self.device) / 2**30
        self.run_log.scalars(values, self.progress.step)
        bar.set_postfix(loss=f"{meter.mean_loss():.3f}", lr=f"{values['train/lr']:.2e}",
                        acc=f"{accuracy:.3f}", img_s=f"{values['perf/images_per_s']:.0f}")
        meter.reset()

    def _log_start(self, total: int) -> None:
        c = self.config
        log.info("%s + %s on %d images of %d classes (%s); %d processes x batch %d, %d steps/epoch, %d steps; "
                 "outputs in %s", c.backbone_name, c.head, len(self.dataset), self.num_classes, c.data_path,
                 self.dist.world_size, c.batch_size, self.steps_per_epoch, total, self.work_path)

    def _finish(self) -> None:
        p = self.progress
        if not self._stop_reason and self.evaluated_at != p.step:
            self.evaluate_all()  # the final model is always evaluated
        if p.step % self.intervals.save or self._stop_reason:
            self.save_state()
        if self.dist.is_main:
            if self._stop_reason:
                log.info("stopped by %s at step %d; resume with --resume auto", self._stop_reason, p.step)
            elif p.step >= self.steps_per_epoch * self.config.epochs:
                save_backbone_weights(self.backbone, self.save_dir / "model_final.pth", self.conventions)

    # ---------------------------------------------------------------------------------------- evaluation

    def evaluate(self, val_set: str):
        """Verification on one prepared val set with the current backbone (`evaluation.SetResult`)."""
        return evaluate_valset(self.backbone, self.config.data_path, val_set, self.config.val_batch_size,
                               self.device, self.config.val_flip, self.conventions["channel_order"],
                               amp_dtype=self.amp_dtype)

    def evaluate_all(self) -> dict[str, float]:
        """Evaluate every val set (main process), log it, keep the best model; returns the scalars."""
        values: dict[str, float] = {}
        self.evaluated_at = self.progress.step
        if self.dist.is_main and self.val_sets:
            step = self.progress.step
            self.last_results = []
            for name in self.val_sets:
                outcome = self.evaluate(name)
                self.last_results.append(outcome)
                scalars = outcome.scalars()
                values.update({f"{name}/{k}": v for k, v in scalars.items()})
                self.run_log.scalars(scalars, step, prefix=f"val/{name}/")
                self.run_log.image(f"val/{name}/roc", roc_image_for_tensorboard(outcome.result, name), step)
                log.info("step %d %s: accuracy %.4f +- %.4f, threshold %.3f", step, name, outcome.result.accuracy,
                         outcome.result.accuracy_std, outcome.result.best_threshold)
            self._keep_best(values)
            self.run_log.flush()
        distributed.barrier()
        return values

    def _check_best_metric(self) -> None:
        """Fail before training, not at the first evaluation, when --best_metric cannot be computed."""
        metric = self.config.best_metric
        if metric == "accuracy" or not self.val_sets:
            return
        name, _, scalar = metric.partition("/")
        known = ("accuracy", "accuracy_std", "best_threshold", "auc", "eer", "accuracy_frontal", "accuracy_profile")
        if name not in self.val_sets or not (scalar in known or scalar.startswith("tar@far=")):
            raise UserError(f"--best_metric {metric}: expected 'accuracy' or <set>/<scalar> with <set> one of "
                            f"{', '.join(self.val_sets)} and <scalar> one of {', '.join(known)}, tar@far=<far>")

    def _keep_best(self, values: dict[str, float]) -> None:
        metric = self.config.best_metric
        if metric == "accuracy":
            value = sum(values[f"{n}/accuracy"] for n in self.val_sets) / len(self.val_sets)
        elif metric in values:
            value = values[metric]
        else:
            raise UserError(f"--best_metric {metric}: not among the evaluated values ({', '.join(values)})")
        p = self.progress
        if value > p.best_value:
            p.best_value, p.best_step = value, p.step
            path = self.save_dir / "model_best.pth"
            save_backbone_weights(self.backbone, path, self.conventions)
            atomic_write_text(self.save_dir / "best.json",
                              f'{{"metric": "{metric}", "value": {value:.6f}, "step": {p.step}}}\n')

    # --------------------------------------------------------------------------------------- checkpoints

    def save_state(self) -> Path:
        """Write a checkpoint of the whole run (collective: every rank calls it; rank 0 writes)."""
        head = self.head.full_state_dict()
        head_optimizer = self.head.full_optimizer_state(self.optimizer)
        rngs = distributed.gather_objects(rng_state())
        path = checkpoint_path(self.save_dir, self.progress.step)
        if self.dist.is_main:
            save_checkpoint({
                "model": self.backbone.state_dict(), "input": self.conventions, "head": head,
                "margin": self.head.margin.state_dict(), "optimizer": self._backbone_optimizer_state(),
                "head_optimizer": head_optimizer, "scaler": self.scaler.state_dict(),
                **vars(self.progress),
                "rng": rngs, "config": self.config.to_dict(), "world_size": self.dist.world_size,
            }, path)
            save_backbone_weights(self.backbone, self.save_dir / "model_latest.pth", self.conventions)
            prune_checkpoints(self.save_dir, self.config.keep_checkpoints)
        distributed.barrier()
        return path

    def _backbone_optimizer_state(self) -> dict:
        """The optimiser's state without the centres' momentum (that one is saved gathered, `head_optimizer`)."""
        state = self.optimizer.state_dict()
        kernel_key = self.head.optimizer_state_key(self.optimizer)
        state["state"] = {k: v for k, v in state["state"].items() if k != kernel_key}
        return state

    def load_state(self, path: str | Path) -> int:
        """Restore a checkpoint (any world size saved it); returns its step."""
        state = load_checkpoint(path)
        self._check_compatible(state, path)
        self.backbone.load_state_dict(state["model"])
        self.conventions = dict(state.get("input", self.conventions))
        self.head.load_full_state_dict(state["head"])
        self.head.margin.load_state_dict(state["margin"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.head.load_full_optimizer_state(self.optimizer, state["head_optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        for name in vars(self.progress):
            setattr(self.progress, name, type(getattr(self.progress, name))(state[name]))
        if state["world_size"] == self.dist.world_size:
            set_rng_state(state["rng"][self.dist.rank])
        else:  # other ranks, other streams: exact repetition is not defined across world sizes
            seed_everything(self.config.seed + 7919 * self.progress.step + self.dist.rank)
            log.info("%s was written by %d processes; continuing with %d", path, state["world_size"],
                     self.dist.world_size)
        return self.progress.step

    def _check_compatible(self, state: dict, path) -> None:
        saved = state["config"]
        for name in ("net_mode", "depth", "embedding_size", "head"):
            if saved.get(name) != getattr(self.config, name):
                raise UserError(f"{path}: trained with --{name} {saved.get(name)}, not {getattr(self.config, name)}")
        if state["head"]["kernel"].shape[1] != self.num_classes:
            raise UserError(f"{path}: has {state['head']['kernel'].shape[1]} classes; "
                            f"{self.config.data_path} has {self.num_classes}")

    def _resume(self) -> int | None:
        if self.config.resume == "auto":
            found = latest_checkpoint(self.save_dir)
            if found is None:
                log.info("--resume auto: no checkpoint in %s; starting afresh", self.save_dir)
                return None
            path = found[0]
        else:
            path = Path(self.config.resume)
        step = self.load_state(path)
        log.info("resumed from %s at step %d (epoch %d)", path, step, self.progress.epoch)
        return step

    # ---------------------------------------------------------------------------------------- LR finder

    def find_lr(self, init_value: float = 1e-8, final_value: float = 10.0, beta: float = 0.98,
                num: int = 100, blowup: float = 4.0) -> tuple[list[float], list[float]]:
        """TreB1eN's LR range test: the LR grows geometrically from `init_value` to `final_value` over `num`
        steps while the smoothed loss is recorded, stopping when it exceeds `blowup` x its best. The model,
        centres and optimiser are restored afterwards; the plot goes to history/lr_finder.png."""
        saved = copy.deepcopy((self.backbone.state_dict(), self.head.state_dict(), self.optimizer.state_dict()))
        multiplier = (final_value / init_value) ** (1 / max(num - 1, 1))
        lr, average, best = init_value, 0.0, math.inf
        log_lrs, losses = [], []
        self.sampler.set_position(0, 0)
        for i, (images, labels, side) in enumerate(self.loader):
            if i >= num:
                break
            set_lr(self.optimizer, lr)
            self.optimizer.zero_grad(set_to_none=True)
            loss, _ = self._forward(images, labels, side)
            value = float(loss.detach())
            average = beta * average + (1 - beta) * value
            smoothed = average / (1 - beta ** (i + 1))
            if not math.isfinite(smoothed) or (i > 0 and smoothed > blowup * best):
                break
            best = min(best, smoothed)
            log_lrs.append(math.log10(lr))
            losses.append(smoothed)
            loss.backward()
            self.optimizer.step()
            lr *= multiplier
        self.backbone.load_state_dict(saved[0])
        self.head.load_state_dict(saved[1])
        self.optimizer.load_state_dict(saved[2])
        if self.dist.is_main and log_lrs:
            _plot_lr_finder(log_lrs, losses, self.history_dir / "lr_finder.png")
        return log_lrs, losses

    def _stop_reason_agreed(self) -> str | None:
        stop = distributed.any_true(self._stop_reason is not None, self._collective_device())
        return (self._stop_reason or "a signal on another process") if stop else None

    def _collective_device(self) -> torch.device:
        return self.device if self.device.type == "cuda" else torch.device("cpu")


# ------------------------------------------------------------------------------------------------ helpers

class _Intervals:
    """Steps between logs, evaluations and saves (0 in the config: TreB1eN's rates per epoch)."""

    def __init__(self, config: Config, steps_per_epoch: int):
        self.log = config.log_every or max(1, steps_per_epoch // 100)
        self.eval = config.eval_every or max(1, steps_per_epoch // 10)
        self.save = config.save_every or max(1, steps_per_epoch // 5)


class _Meter:
    def __init__(self):
        self.reset()

    def reset(self) -> None:
        self.losses: list[float] = []
        self.samples = 0
        self.data_wait = 0.0
        self.started = time.perf_counter()

    def add(self, loss: float, samples: int) -> None:
        self.last_loss = loss
        if math.isfinite(loss):
            self.losses.append(loss)
        self.samples += samples

    def mean_loss(self) -> float:
        return sum(self.losses) / len(self.losses) if self.losses else math.nan

    def elapsed(self) -> float:
        return max(time.perf_counter() - self.started, 1e-9)


class _StopOnSignals:
    """SIGINT / SIGTERM ask the loop to save and stop after the current step (a second one kills)."""

    def __init__(self, learner: Learner):
        self.learner = learner
        self.previous = {}

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self.previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave the handlers alone
                pass
        return self

    def _handle(self, signum, frame):
        if self.learner._stop_reason is not None:
            signal.signal(signum, signal.SIG_DFL)
            signal.raise_signal(signum)
        self.learner._stop_reason = signal.Signals(signum).name
        log.warning("%s: saving a checkpoint and stopping after this step", signal.Signals(signum).name)

    def __exit__(self, *exc):
        for sig, handler in self.previous.items():
            signal.signal(sig, handler)
        return False


def _uses_norms(margin: nn.Module) -> bool:
    """Whether the margin reads the features' norms (AdaFace, MagFace, SphereFace without a fixed scale)."""
    return "norms" in margin.needs or type(margin).regularizer is not Margin.regularizer


def _resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UserError(f"--device {name}: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: CUDA is not available here (torch {torch.__version__})")
    return device


def _set_determinism(deterministic: bool) -> None:
    if torch.backends.cudnn.is_available():
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic
    if deterministic:
        import os
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)


def _plot_lr_finder(log_lrs: list[float], losses: list[float], path: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from utils import atomic_path
    figure, axis = plt.subplots(figsize=(6, 4))
    axis.plot(log_lrs, losses)
    axis.set_xlabel("log10(learning rate)")
    axis.set_ylabel("smoothed loss")
    axis.set_title("LR range test")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
    plt.close(figure)
