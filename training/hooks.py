"""Hooks: what a training run does besides optimiser steps, at fixed points of the Learner's loop.

`Learner.train` calls, for every hook in order (the defaults first, then the ones passed to the Learner):

    before_train(learner)           once, before the first step
    before_step(learner)            before each step, after the schedule has set the LR
    after_step(learner, record)     after each step, with its `StepRecord`
    after_epoch(learner)            when an epoch's last batch has been trained on
    after_train(learner)            once, when the run ends by reaching its last step or by a signal
    close(learner)                  always, also when an error ends the run

Every process calls every hook (so collectives inside them stay matched); only the main process writes.
The defaults, built from the config (`default_hooks`): `TrainLog` (scalars, progress bar), `Evaluation`
(periodic verification + the best model) and `Checkpointing`; `LRFinder` replaces them for the LR range test.
"""
from __future__ import annotations

import copy
import logging
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from tqdm import tqdm

from evaluation.breakdowns import BreakdownSpec, breakdown_scalars, breakdown_set, spec_from_config
from evaluation.sets import ValSet, evaluate_set
from inference.weights import save_backbone_weights
from training import distributed
from training.stability import collapse_suspected, collapse_warning
from utils import UserError, atomic_path, atomic_write_text
from verification import roc_image_for_tensorboard

if TYPE_CHECKING:
    from learner import Learner

log = logging.getLogger(__name__)


@dataclass
class StepRecord:
    step: int             # optimiser steps taken so far (this one included)
    loss: float           # NaN/inf: the update was skipped
    samples: int          # images in this step over all processes
    data_wait_s: float    # time spent waiting for the batch
    compute_s: float      # time of the forward, backward and update


class Hook:
    """The no-op hook: subclasses override the points they need."""

    def before_train(self, learner: "Learner") -> None: ...
    def before_step(self, learner: "Learner") -> None: ...
    def after_step(self, learner: "Learner", record: StepRecord) -> None: ...
    def after_epoch(self, learner: "Learner") -> None: ...
    def after_train(self, learner: "Learner") -> None: ...
    def close(self, learner: "Learner") -> None: ...


# Automatic evaluation (--eval_every 0): TreB1eN's 10 per epoch, but never more often than every
# MIN_AUTO_EVAL_STEPS steps, and skipped while evaluating has taken more than EVAL_TIME_FRACTION of the run.
# (On a 15-step epoch, 10 evaluations per epoch meant one after every step: 17 minutes for 15 steps.)
MIN_AUTO_EVAL_STEPS = 100
EVAL_TIME_FRACTION = 0.1


@dataclass
class Intervals:
    """Steps between logs, evaluations and saves (0 in the config: TreB1eN's rates per epoch)."""
    log: int
    eval: int
    save: int

    @classmethod
    def from_config(cls, config, steps_per_epoch: int) -> "Intervals":
        return cls(log=config.log_every or max(1, steps_per_epoch // 100),
                   eval=config.eval_every or max(MIN_AUTO_EVAL_STEPS, steps_per_epoch // 10),
                   save=config.save_every or max(1, steps_per_epoch // 5))


def default_hooks(learner: "Learner", val_sets: list[ValSet]) -> list[Hook]:
    config = learner.config
    every = Intervals.from_config(config, learner.steps_per_epoch)
    budget = None if config.eval_every else EVAL_TIME_FRACTION  # an interval the user chose is kept exactly
    return [TrainLog(every.log), Evaluation(val_sets, every.eval, config.best_metric, budget, spec_from_config(config)),
            Checkpointing(every.save)]


# ----------------------------------------------------------------------------------------- logging

class _Meter:
    """Losses and time over the steps since the last log line; time is the steps' own (data wait +
    compute), so images/s leaves out what evaluation and checkpoints cost."""

    def __init__(self):
        self.losses: list[float] = []
        self.samples = 0
        self.data_wait = 0.0
        self.busy = 0.0

    def add(self, record: StepRecord) -> None:
        if math.isfinite(record.loss):
            self.losses.append(record.loss)
        self.samples += record.samples
        self.data_wait += record.data_wait_s
        self.busy += record.data_wait_s + record.compute_s

    def mean_loss(self) -> float:
        return sum(self.losses) / len(self.losses) if self.losses else math.nan


# what a log step records from its own forward pass, before its update (training.stability says why)
STEP_STATISTICS = ("accuracy", "target_angle_deg", "target_cos", "max_other_cos", "embedding_norm",
                   "batch_pair_cos", "centre_pair_cos", "grad_norm")


class TrainLog(Hook):
    """train/loss every step; every `every` steps LR, non-finite count, images/s, the data-wait fraction and
    the figures that expose a collapse (`STEP_STATISTICS`: in-batch accuracy, target angle, ...), all from that
    step's own forward pass before its update (TensorBoard + scalars.jsonl), and the progress bar's figures.
    Warns once when the loss has fallen while the accuracy stays near chance (`training.stability`)."""

    def __init__(self, every: int):
        self.every = every
        self.meter = _Meter()
        self.bar = None
        self.losses: list[float] = []       # mean loss of each log interval, for the collapse warning
        self.accuracies: list[float] = []
        self.warned = False

    def before_train(self, learner: "Learner") -> None:
        last = learner.last_step
        self.bar = tqdm(total=last, initial=min(learner.progress.step, last), disable=not learner.dist.is_main,
                        desc="train", dynamic_ncols=True)

    def before_step(self, learner: "Learner") -> None:
        # the step about to run records its figures (every rank: collectives) only when it is a log step
        learner.record_statistics = (learner.progress.step + 1) % self.every == 0

    def after_step(self, learner: "Learner", record: StepRecord) -> None:
        learner.run_log.scalar("train/loss", record.loss, record.step)
        self.meter.add(record)
        self.bar.update(1)
        if record.step % self.every == 0:
            self._log(learner, record.step)

    def _log(self, learner: "Learner", step: int) -> None:
        statistics = {f"train/{name}": learner.step_statistics[name] for name in STEP_STATISTICS
                      if learner.step_statistics.get(name) is not None}
        accuracy = statistics.get("train/accuracy", math.nan)
        self._watch_for_collapse(learner, step, accuracy)
        seconds = max(self.meter.busy, 1e-9)
        values = {"train/lr": learner.lr, **statistics,
                  "train/nonfinite_steps": learner.progress.nonfinite_total,
                  "perf/images_per_s": self.meter.samples / seconds,
                  "perf/data_wait_fraction": self.meter.data_wait / seconds}
        if learner.device.type == "cuda":
            values["perf/gpu_memory_gib"] = torch.cuda.max_memory_allocated(learner.device) / 2**30
        learner.run_log.scalars(values, step)
        self.bar.set_postfix(loss=f"{self.meter.mean_loss():.3f}", lr=f"{learner.lr:.2e}", acc=f"{accuracy:.3f}",
                             img_s=f"{values['perf/images_per_s']:.0f}")
        self.meter = _Meter()

    def _watch_for_collapse(self, learner: "Learner", step: int, accuracy: float) -> None:
        self.losses.append(self.meter.mean_loss())
        self.accuracies.append(accuracy)
        # chance among the columns the accuracy chooses from (all classes at --sample_rate 1)
        choices = min(learner.num_classes, learner.head.num_sample * learner.head.world_size)
        if not self.warned and collapse_suspected(self.losses, self.accuracies, choices):
            self.warned = True
            if learner.dist.is_main:
                log.warning(collapse_warning(step, self.losses, self.accuracies, choices))

    def close(self, learner: "Learner") -> None:
        if self.bar is not None:
            self.bar.close()


# -------------------------------------------------------------------------------------- evaluation

BEST_METRIC_SCALARS = ("accuracy", "accuracy_std", "best_threshold", "auc", "eer", "accuracy_frontal",
                       "accuracy_profile")


class Evaluation(Hook):
    """Verification on `val_sets` every `every` steps and at the end (main process); logs `val/<set>/...`
    scalars and ROC images, and keeps the best model by `best_metric` (save/model_best.pth, best.json).

    With a `time_budget` (a fraction), a scheduled evaluation is skipped while the evaluations so far have
    taken more than that fraction of the run's time; the final one always runs.

    With `breakdowns` (`evaluation.breakdowns.BreakdownSpec`), each set is also broken down by pose bins
    (`val/<set>/pose/<bins>/...`, from the same embeddings: free) and by resolution (`val/<set>/res<N>/...`: one
    more embedding of the set per size below full size; the time budget counts it)."""

    def __init__(self, val_sets: list[ValSet], every: int, best_metric: str = "accuracy",
                 time_budget: float | None = None, breakdowns: BreakdownSpec | None = None):
        self.val_sets, self.every, self.best_metric, self.time_budget = val_sets, every, best_metric, time_budget
        self.breakdowns = breakdowns
        self.results = []          # evaluation.sets.SetResult of each val set at the last evaluation
        self.evaluated_at = -1
        self.started_at = time.perf_counter()
        self.seconds_spent = 0.0   # in evaluations so far
        self.skipped = 0
        self._check_best_metric()

    def _check_best_metric(self) -> None:
        """Fail before training, not at the first evaluation, when --best_metric cannot be computed."""
        metric, names = self.best_metric, [v.name for v in self.val_sets]
        if metric == "accuracy" or not names:
            return
        name, _, scalar = metric.partition("/")
        if name not in names or not (scalar in BEST_METRIC_SCALARS or scalar.startswith("tar@far=")):
            raise UserError(f"--best_metric {metric}: expected 'accuracy' or <set>/<scalar> with <set> one of "
                            f"{', '.join(names)} and <scalar> one of {', '.join(BEST_METRIC_SCALARS)}, tar@far=<far>")

    def before_train(self, learner: "Learner") -> None:
        self.started_at = time.perf_counter()

    def after_step(self, learner: "Learner", record: StepRecord) -> None:
        if self.every and record.step % self.every == 0:
            if self.within_budget(time.perf_counter() - self.started_at):
                self.evaluate(learner)
            else:
                self.skipped += 1
                if self.skipped == 1:
                    log.info("step %d: evaluation skipped: evaluations have taken %.0f s, more than %.0f%% of the "
                             "run; evaluating less often (give --eval_every to choose)", record.step,
                             self.seconds_spent, 100 * self.time_budget)

    def within_budget(self, elapsed_s: float) -> bool:
        return self.time_budget is None or self.seconds_spent <= self.time_budget * elapsed_s

    def after_train(self, learner: "Learner") -> None:
        if not learner.stop_reason and self.evaluated_at != learner.progress.step:
            self.evaluate(learner)  # the final model is always evaluated

    def evaluate(self, learner: "Learner") -> dict[str, float]:
        """Evaluate every val set (main process), log it, keep the best model; returns the scalars."""
        values: dict[str, float] = {}
        began = time.perf_counter()
        step = self.evaluated_at = learner.progress.step
        if learner.dist.is_main and self.val_sets:
            self.results = []
            for valset in self.val_sets:
                outcome = self._evaluate_set(learner, valset)
                self.results.append(outcome)
                scalars = outcome.scalars()
                if self.breakdowns:
                    breakdown = breakdown_set(lambda pairs: self._evaluate_set(learner, pairs), valset, outcome,
                                              self.breakdowns)
                    scalars.update(breakdown_scalars(breakdown, self.breakdowns))
                values.update({f"{valset.name}/{k}": v for k, v in scalars.items()})
                learner.run_log.scalars(scalars, step, prefix=f"val/{valset.name}/")
                learner.run_log.image(f"val/{valset.name}/roc", roc_image_for_tensorboard(outcome.result, valset.name),
                                      step)
                r = outcome.result
                log.info("step %d %s: accuracy %.4f +- %.4f, threshold %.3f", step, valset.name, r.accuracy,
                         r.accuracy_std, r.best_threshold)
            self._keep_best(learner, values)
            learner.run_log.flush()
        distributed.barrier()
        self.seconds_spent += time.perf_counter() - began
        return values

    @staticmethod
    def _evaluate_set(learner: "Learner", valset: ValSet):
        return evaluate_set(learner.backbone, valset, learner.config.val_batch_size, learner.device,
                            learner.config.val_flip, learner.conventions, amp_dtype=learner.amp_dtype)

    def _keep_best(self, learner: "Learner", values: dict[str, float]) -> None:
        metric = self.best_metric
        if metric == "accuracy":
            value = sum(values[f"{v.name}/accuracy"] for v in self.val_sets) / len(self.val_sets)
        elif metric in values:
            value = values[metric]
        else:
            raise UserError(f"--best_metric {metric}: not among the evaluated values ({', '.join(values)})")
        p = learner.progress
        if value > p.best_value:
            p.best_value, p.best_step = value, p.step
            save_backbone_weights(learner.backbone, learner.save_dir / "model_best.pth", learner.conventions)
            atomic_write_text(learner.save_dir / "best.json",
                              f'{{"metric": "{metric}", "value": {value:.6f}, "step": {p.step}}}\n')


# ------------------------------------------------------------------------------------- checkpoints

class Checkpointing(Hook):
    """A full checkpoint every `every` steps and at the end (also when a signal stopped the run); the
    exported model_final.pth once every epoch is done."""

    def __init__(self, every: int):
        self.every = every

    def after_step(self, learner: "Learner", record: StepRecord) -> None:
        if record.step % self.every == 0:
            learner.save_state()

    def after_train(self, learner: "Learner") -> None:
        p = learner.progress
        if p.step % self.every or learner.stop_reason:
            learner.save_state()
        if learner.dist.is_main:
            if learner.stop_reason:
                log.info("stopped by %s at step %d; resume with --resume auto", learner.stop_reason, p.step)
            elif p.step >= learner.steps_per_epoch * learner.config.epochs:
                save_backbone_weights(learner.backbone, learner.save_dir / "model_final.pth", learner.conventions)


# ---------------------------------------------------------------------------------------- LR finder

class LRFinder(Hook):
    """TreB1eN's LR range test: the LR grows geometrically from `init_value` to `final_value` over `num`
    steps while the smoothed loss is recorded, stopping when it exceeds `blowup` x its best. The model,
    centres, optimiser and progress are restored afterwards; the plot goes to history/lr_finder.png."""

    def __init__(self, init_value: float = 1e-8, final_value: float = 10.0, beta: float = 0.98,
                 num: int = 100, blowup: float = 4.0):
        self.init_value, self.beta, self.num, self.blowup = init_value, beta, num, blowup
        self.multiplier = (final_value / init_value) ** (1 / max(num - 1, 1))
        self.log_lrs: list[float] = []
        self.losses: list[float] = []
        self._saved = None

    def before_train(self, learner: "Learner") -> None:
        self._saved = copy.deepcopy((learner.backbone.state_dict(), learner.head.state_dict(),
                                     learner.optimizer.state_dict(), learner.progress))
        self.lr, self.average, self.best = self.init_value, 0.0, math.inf
        learner.progress.step = learner.progress.epoch = learner.progress.samples_in_epoch = 0

    def before_step(self, learner: "Learner") -> None:
        learner.set_lr(self.lr)

    def after_step(self, learner: "Learner", record: StepRecord) -> None:
        self.average = self.beta * self.average + (1 - self.beta) * record.loss
        smoothed = self.average / (1 - self.beta ** record.step)
        if not math.isfinite(smoothed) or (self.losses and smoothed > self.blowup * self.best):
            learner.request_stop("the LR range test")
            return
        self.best = min(self.best, smoothed)
        self.log_lrs.append(math.log10(self.lr))
        self.losses.append(smoothed)
        self.lr *= self.multiplier

    def after_train(self, learner: "Learner") -> None:
        backbone, head, optimizer, progress = self._saved
        learner.backbone.load_state_dict(backbone)
        learner.head.load_state_dict(head)
        learner.optimizer.load_state_dict(optimizer)
        learner.progress = progress
        if learner.dist.is_main and self.log_lrs:
            plot_lr_finder(self.log_lrs, self.losses, learner.history_dir / "lr_finder.png")


def plot_lr_finder(log_lrs: list[float], losses: list[float], path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(6, 4), dpi=100)
    FigureCanvasAgg(figure)
    axis = figure.add_subplot()
    axis.plot(log_lrs, losses)
    axis.set_xlabel("log10(learning rate)")
    axis.set_ylabel("smoothed loss")
    axis.set_title("LR range test")
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
