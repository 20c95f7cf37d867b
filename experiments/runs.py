"""One run of an experiment: train an arm with one seed (the Learner), evaluate its final model with the pose
bins and the resolution sweep, and keep what the report needs in the run's folder.

A finished run's folder holds `results.json` (written last, atomically: its presence means done) with the
config, every val set's scalars and breakdown levels and the learning curves (val accuracy at every
evaluation, read back from `log/scalars.jsonl`), and `pairs.npz` with each pair's correctness (overall and per
level) for McNemar's test. A folder without results.json is a run that did not finish: it is started again.
"""
from __future__ import annotations

import json
import logging
import math
import multiprocessing
import os
import shutil
import signal
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from evaluation.breakdown_reports import _clean  # JSON-ready: NaN -> null, NumPy -> Python
from experiments.plan import Run
from utils import UserError, atomic_path, atomic_write_text, setup_logging

log = logging.getLogger("experiments")
RESULTS, PAIRS = "results.json", "pairs.npz"
# settings that change how fast a run goes, not what it computes: a finished run is reused across them
MACHINE_SETTINGS = ("num_workers", "num_threads", "device", "val_batch_size", "fused_sgd")  # how, not what, it computes
OVERALL = "accuracy"
# the collapse diagnostics of every log step (training/hooks.py), kept beside the val curves: the report's stability
# figure shows whether the in-batch accuracy keeps rising, flattens or falls back to chance
TRAIN_CURVES = ("train/accuracy", "train/target_angle_deg", "train/loss")


@dataclass
class RunOutcome:
    arm: str
    seed: int
    steps: int
    seconds: float
    sets: dict             # set -> {"pairs", scalars of the final model, "pose": [level dicts], "resolution": [...]}
    curves: dict           # set -> [[step, val accuracy], ...]
    correct: dict          # "<set>/<metric>" -> (pairs,) bool, metric as `metrics` names it

    def metrics(self, set_name: str) -> list[str]:
        """'accuracy' (the whole set), 'pose/<category>', 'res<N>': the accuracies recorded for the set."""
        entry = self.sets[set_name]
        return [OVERALL] + [f"pose/{row['level']}" for row in entry.get("pose", [])] + \
            [row["level"] for row in entry.get("resolution", [])]

    def accuracy(self, set_name: str, metric: str) -> float:
        """The metric's accuracy, NaN where the level has no pair."""
        entry = self.sets[set_name]
        if metric == OVERALL:
            return float(entry["accuracy"])
        kind, level = ("pose", metric[5:]) if metric.startswith("pose/") else ("resolution", metric)
        value = next((row["accuracy"] for row in entry.get(kind, []) if row["level"] == level), None)
        return math.nan if value is None else float(value)


def comparable(config_dict: dict) -> dict:
    return {k: v for k, v in config_dict.items() if k not in MACHINE_SETTINGS}


def load_finished(run: Run) -> RunOutcome | None:
    """The run's outcome if it finished with the same settings, None if it did not finish. A finished run made
    with other settings is refused: reusing it would mix recipes in one table."""
    path = run.folder / RESULTS
    if not path.is_file() or not (run.folder / PAIRS).is_file():
        return None
    try:
        document = json.loads(path.read_text())
    except json.JSONDecodeError:
        return None
    planned, recorded = comparable(run.config.to_dict()), comparable(document.get("config", {}))
    if planned != recorded:
        differing = sorted(k for k in set(planned) | set(recorded) if planned.get(k) != recorded.get(k))
        shown = ", ".join(f"{k} {recorded.get(k)!r} (now {planned.get(k)!r})" for k in differing[:3])
        raise UserError(f"{run.folder}: finished with other settings ({shown}); give another --out or remove it")
    with np.load(run.folder / PAIRS) as pairs:
        correct = {key: pairs[key].astype(bool) for key in pairs.files}
    curves = {name: [tuple(p) for p in points] for name, points in document["curves"].items()}
    if not any(tag in curves for tag in TRAIN_CURVES) and (run.folder / "log").is_dir():  # finished before these
        curves.update(learning_curves(run.folder / "log", ()))                             # were recorded
    return RunOutcome(document["arm"], document["seed"], document["steps"], document["seconds"], document["sets"],
                      curves, correct)


def learning_curves(log_dir: Path, set_names) -> dict:
    """From the run's scalars.jsonl: each val set's accuracy at every evaluation (keyed by the set's name) and the
    TRAIN_CURVES at every log step (keyed by their tag)."""
    from training.run_log import read_scalars

    key_of = {f"val/{name}/accuracy": name for name in set_names} | {tag: tag for tag in TRAIN_CURVES}
    curves = {name: [] for name in set_names}
    for record in read_scalars(log_dir):
        key = key_of.get(record["tag"])
        if key is not None:
            curves.setdefault(key, []).append((record["step"], float(record["value"])))
    return curves


def train_and_evaluate(run: Run, spec) -> RunOutcome:
    """Train the run from scratch (an unfinished folder is cleared first) and evaluate its final model."""
    from evaluation.breakdowns import breakdown_set
    from evaluation.sets import evaluate_set
    from learner import Learner
    from training.hooks import Evaluation

    if run.folder.exists():
        log.info("%s: an unfinished run is there; starting it again", run.folder)
        shutil.rmtree(run.folder)
    started = time.perf_counter()
    learner = Learner(run.config)
    learner.train()
    if learner.stop_reason:
        raise UserError(f"{run.label}: stopped by {learner.stop_reason} at step {learner.progress.step}; run the "
                        "command again to redo it")
    evaluation = next(h for h in learner.hooks if isinstance(h, Evaluation))
    if not evaluation.val_sets:
        raise UserError(f"{run.config.data_path}: no prepared val sets to evaluate on (evaluation.val_sets "
                        f"{run.config.val_sets!r})")

    def evaluate(valset):  # the model and protocol of the Evaluation hook's final result
        return evaluate_set(learner.backbone, valset, run.config.val_batch_size, learner.device, run.config.val_flip,
                            learner.conventions, amp_dtype=learner.amp_dtype)

    sets, correct = {}, {}
    for valset, base in zip(evaluation.val_sets, evaluation.results):  # the final model's (after_train)
        breakdown = breakdown_set(evaluate, valset, base, spec)
        sets[valset.name] = {"pairs": int(base.result.issame.size), **base.scalars(),
                             **{kind: [row.as_dict() for row in rows] for kind, rows in breakdown.items()}}
        correct[f"{valset.name}/{OVERALL}"] = base.result.pair_correct
        for kind, rows in breakdown.items():
            for row in rows:
                correct[f"{valset.name}/{'pose/' if kind == 'pose' else ''}{row.level}"] = row.correct
    outcome = RunOutcome(run.arm.name, run.seed, learner.progress.step, round(time.perf_counter() - started, 1), sets,
                         learning_curves(run.folder / "log", sets), correct)
    save_outcome(run, outcome)
    return outcome


def save_outcome(run: Run, outcome: RunOutcome) -> None:
    with atomic_path(run.folder / PAIRS, keep_suffix=True) as tmp:
        np.savez_compressed(tmp, **{key: np.asarray(value, dtype=bool) for key, value in outcome.correct.items()})
    document = {"arm": outcome.arm, "seed": outcome.seed, "steps": outcome.steps, "seconds": outcome.seconds,
                "arm_settings": run.arm.as_dict(), "config": run.config.to_dict(), "sets": outcome.sets,
                "curves": outcome.curves}
    atomic_write_text(run.folder / RESULTS, json.dumps(_clean(document), indent=1) + "\n")  # last: the run is done


def console_log(run: Run) -> Path:
    """Where a run trained in its own process (jobs > 1) writes its console output: beside its folder, which a
    restart clears."""
    return run.folder.parent / f"{run.folder.name}.log"


def train_runs(runs: list[Run], spec, jobs: int = 1):
    """Train and evaluate `runs`, `jobs` at a time; yields (run, outcome) as each one finishes.

    jobs 1: one after another in this process, printing to the console. jobs > 1: each run in a fresh spawned
    process (its own torch threads, the recipe's num_threads), its console output in console_log(run). With the
    recipe's num_threads fixed a run computes the same numbers either way (the Learner seeds everything from the
    run's seed; CPU kernels sum in another order with another thread count). The first run that fails stops the
    others."""
    if jobs <= 1 or len(runs) <= 1:
        for index, run in enumerate(runs, 1):
            log.info("[%d/%d] %s: training %s, seed %d", index, len(runs), run.label, run.arm.describe(), run.seed)
            yield run, train_and_evaluate(run, spec)
        return
    log.info("training %d runs, %d at a time, each in its own process; each one's output goes to %s", len(runs),
             min(jobs, len(runs)), console_log(runs[0]).parent.parent / "<arm>" / "seed<k>.log")
    pool = multiprocessing.get_context("spawn").Pool(min(jobs, len(runs)), maxtasksperchild=1)
    previous = signal.signal(signal.SIGTERM, _stop_on_sigterm)  # killed, this process still stops its runs
    try:
        yield from pool.imap_unordered(_train_in_own_process, [(run, spec) for run in runs])
    finally:
        signal.signal(signal.SIGTERM, previous)
        pool.terminate()  # SIGTERM to the runs still training: each stops after its step (and restarts next time)
        pool.join()


def _stop_on_sigterm(signum, frame):
    raise UserError("stopped by SIGTERM; run the command again to train the unfinished runs")


def _train_in_own_process(task) -> tuple[Run, RunOutcome]:
    run, spec = task
    path = console_log(run)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as stream:
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(stream.fileno(), 1)  # the file descriptors, so that tqdm and native code write there too
        os.dup2(stream.fileno(), 2)
        setup_logging(logging.INFO)
        try:
            return run, train_and_evaluate(run, spec)
        except UserError as error:
            print(f"error: {error}", file=sys.stderr)
            named = str(error) if str(error).startswith(run.label) else f"{run.label}: {error}"
            raise UserError(f"{named} (its output: {path})") from None
        except BaseException:
            traceback.print_exc()
            raise
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
