"""training/hooks.py and the Learner's parts: hooks called at fixed points, a dataset and val sets passed in,
stops asked for by a hook, and the bar closed whatever ends the run."""
from __future__ import annotations

import numpy as np
import pytest

from data.datasets import open_dataset
from evaluation import ValSet
from learner import Learner
from tests.test_learner import small_config
from training.checkpoint import list_checkpoints
from training.hooks import Evaluation, Hook, Intervals, TrainLog


class Recorder(Hook):
    def __init__(self, stop_at: int | None = None, fail_at: int | None = None):
        self.calls: list[str] = []
        self.stop_at, self.fail_at = stop_at, fail_at

    def before_train(self, learner):
        self.calls.append("before_train")

    def before_step(self, learner):
        self.calls.append("before_step")

    def after_step(self, learner, record):
        assert record.samples == learner.global_batch and record.compute_s > 0 and record.data_wait_s >= 0
        self.calls.append(f"after_step {record.step}")
        if record.step == self.stop_at:
            learner.request_stop("the recorder")
        if record.step == self.fail_at:
            raise RuntimeError("hook failed")

    def after_epoch(self, learner):
        self.calls.append(f"after_epoch {learner.progress.epoch}")

    def after_train(self, learner):
        self.calls.append("after_train")

    def close(self, learner):
        self.calls.append("close")


class FirstImages:
    """A data set limited to its first `count` images: what a fold's subset looks like to the Learner."""

    def __init__(self, dataset, count: int):
        self.dataset, self.count = dataset, count
        self.num_classes, self.side_info = dataset.num_classes, dataset.side_info

    def set_epoch(self, epoch: int) -> None:
        self.dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):
        return self.dataset[index]


def in_memory_valset(train_data) -> ValSet:
    lfw = ValSet.load(train_data, "lfw")
    return ValSet("mine", np.array(lfw.images[:40]), np.array(lfw.issame[:20]), None)


def test_hooks_are_called_at_fixed_points_with_parts_passed_in(train_data, tmp_path):
    config = small_config(train_data, tmp_path / "run", epochs=2, save_every=100, eval_every=3)
    recorder = Recorder()
    dataset = FirstImages(open_dataset(train_data, config.augment, config.seed), 40)
    learner = Learner(config, dataset=dataset, val_sets=[in_memory_valset(train_data)], hooks=[recorder])
    assert learner.steps_per_epoch == 5
    learner.train()
    steps = [c for step in range(1, 11) for c in ("before_step", f"after_step {step}")]
    assert recorder.calls == (["before_train"] + steps[:10] + ["after_epoch 1"] + steps[10:] + ["after_epoch 2"]
                              + ["after_train", "close"])
    assert [r.name for r in learner.last_results] == ["mine"] and learner.last_results[0].result.num_positive == 10
    assert (tmp_path / "run" / "save" / "model_best.pth").is_file()


def test_a_hook_can_stop_the_run_and_the_checkpoint_is_written(train_data, tmp_path):
    recorder = Recorder(stop_at=3)
    learner = Learner(small_config(train_data, tmp_path / "run", save_every=100), hooks=[recorder])
    progress = learner.train()
    assert progress.step == 3 and learner.stop_reason == "the recorder"
    assert [p.name for p in list_checkpoints(tmp_path / "run" / "save")] == ["checkpoint_step00000003.pt"]
    assert recorder.calls[-2:] == ["after_train", "close"]


def test_close_runs_when_a_hook_fails(train_data, tmp_path):
    recorder = Recorder(fail_at=2)
    learner = Learner(small_config(train_data, tmp_path / "run"), hooks=[recorder])
    with pytest.raises(RuntimeError, match="hook failed"):
        learner.train()
    assert recorder.calls[-1] == "close" and "after_train" not in recorder.calls
    train_log = next(h for h in learner.hooks if isinstance(h, TrainLog))
    assert train_log.bar.disable or train_log.bar.n == 2


def test_default_intervals_follow_treb1en_rates_within_limits():
    config = small_config("unused", "unused", log_every=0, eval_every=0, save_every=0)
    assert Intervals.from_config(config, 29000) == Intervals(log=290, eval=2900, save=5800)  # emore, batch 200
    # a small set: not an evaluation after every step (15 steps/epoch: only the final one)
    assert Intervals.from_config(config, 15) == Intervals(log=1, eval=100, save=3)
    assert Intervals.from_config(small_config("u", "u", eval_every=7), 1000).eval == 7


def test_automatic_evaluation_stays_within_its_share_of_the_run():
    hook = Evaluation([], every=1, time_budget=0.1)
    hook.seconds_spent = 5.0
    assert hook.within_budget(60.0) and not hook.within_budget(40.0)
    assert Evaluation([], every=1).within_budget(0.0)  # an interval the user chose is kept


def test_default_hooks_budget_only_the_automatic_cadence(train_data, tmp_path):
    automatic = Learner(small_config(train_data, tmp_path / "a", eval_every=0))
    chosen = Learner(small_config(train_data, tmp_path / "b", eval_every=2))
    assert next(h for h in automatic.hooks if isinstance(h, Evaluation)).time_budget == 0.1
    assert next(h for h in chosen.hooks if isinstance(h, Evaluation)).time_budget is None


def test_evaluation_logs_the_breakdowns_the_config_asks_for(train_data, tmp_path):
    from training.run_log import read_scalars

    work = tmp_path / "run"
    config = small_config(train_data, work, max_steps=1, val_sets="cfp_fp", val_breakdowns="pose,resolution",
                          val_resolutions=[112, 28])
    Learner(config).train()
    values = {r["tag"]: r["value"] for r in read_scalars(work / "log") if r["tag"].startswith("val/cfp_fp/")}
    # cfp_fp pairs one near-frontal and one profile image each: one pose category holds every pair
    assert values["val/cfp_fp/pose/frontal-profile/accuracy"] == values["val/cfp_fp/accuracy_profile"]
    assert not any(tag.startswith("val/cfp_fp/pose/half-half") for tag in values)  # an empty category logs nothing
    assert values["val/cfp_fp/res112/accuracy"] == values["val/cfp_fp/accuracy"]
    assert 0 <= values["val/cfp_fp/res28/accuracy"] <= 1


def test_an_unknown_breakdown_fails_before_training(train_data, tmp_path):
    from utils import UserError

    with pytest.raises(UserError, match="--val_breakdowns pose,age: unknown breakdown age"):
        Learner(small_config(train_data, tmp_path / "run", max_steps=1, val_sets="lfw", val_breakdowns="pose,age"))
