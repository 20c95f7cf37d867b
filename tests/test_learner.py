"""The Learner on a small synthetic emore folder: outputs, exact resume, faults, LR finder, distributed runs."""
from __future__ import annotations

import logging
import math
import os
import shutil
import socket

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from config import Config
from inference.weights import load_backbone_weights
from learner import Learner
from training import schedule
from training.checkpoint import latest_checkpoint, list_checkpoints, load_checkpoint
from training.hooks import Checkpointing, Evaluation, Hook
from training.run_log import read_scalars
from utils import UserError


def small_config(data, work, **changes) -> Config:
    """MobileFaceNet with 64-d embeddings, batch 8: about a quarter of a second per step on one core."""
    values = dict(data_path=str(data), work_path=str(work), net_mode="mobilefacenet", embedding_size=64,
                  batch_size=8, epochs=3, lr=0.05, milestones=[2], num_workers=0, head="pgaml",
                  head_options={"s": 16.0, "m1": 0.3, "m2": 0.1}, log_every=1, eval_every=0, save_every=2,
                  val_sets="none", deterministic=True, seed=5)
    values.update(changes)
    return Config(**values)


def losses(work) -> dict[int, float]:
    return {r["step"]: r["value"] for r in read_scalars(os.path.join(work, "log"), "train/loss")}


def test_train_writes_checkpoints_models_and_logs(train_data, tmp_path):
    work = tmp_path / "run"
    config = small_config(train_data, work, max_steps=4, eval_every=2, val_sets="lfw,cfp_fp")
    progress = Learner(config).train()
    assert progress.step == 4 and progress.epoch == 0 and progress.samples_in_epoch == 32
    assert Config.load(work / "config.json") == config
    assert [p.name for p in list_checkpoints(work / "save")] == ["checkpoint_step00000004.pt",
                                                                 "checkpoint_step00000002.pt"]
    state = load_checkpoint(work / "save" / "checkpoint_step00000004.pt")
    assert state["head"]["kernel"].shape == (64, 10)
    assert state["input"]["channel_order"] == "RGB" and state["world_size"] == 1
    # the exported weights load the TreB1eN way (plain state_dict, strict) and through eval.py's loader
    model, meta = load_backbone_weights(None, work / "save" / "model_latest.pth")
    assert meta["backbone"] == "mobilefacenet" and meta["source"] == "ours"
    assert (work / "save" / "model_best.pth").is_file()
    assert set(losses(work)) == {1, 2, 3, 4}
    tags = {r["tag"] for r in read_scalars(work / "log")}
    assert {"train/lr", "train/accuracy", "perf/images_per_s", "perf/data_wait_fraction",
            "val/lfw/accuracy", "val/lfw/best_threshold", "val/cfp_fp/accuracy_profile"} <= tags
    assert any(t.startswith("val/lfw/tar@far=") for t in tags)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = EventAccumulator(str(work / "log")).Reload()
    assert "val/lfw/roc" in events.Tags()["images"]
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2, 3, 4]
    # a damaged newest checkpoint (say, a copy cut short) is skipped by --resume auto
    newest = work / "save" / "checkpoint_step00000004.pt"
    newest.write_bytes(newest.read_bytes()[:5000])
    assert latest_checkpoint(work / "save")[1]["step"] == 2
    with pytest.raises(UserError, match="not a complete PyTorch zip file"):
        load_checkpoint(newest)


def test_resume_repeats_the_uninterrupted_losses(train_data, tmp_path):
    whole = small_config(train_data, tmp_path / "whole", max_steps=7)
    Learner(whole).train()
    first = small_config(train_data, tmp_path / "parts", max_steps=3)  # saves at 2, and at 3 on stopping
    Learner(first).train()
    os.remove(tmp_path / "parts" / "save" / "checkpoint_step00000003.pt")  # resume from step 2
    resumed = Learner(first.replace(max_steps=7, resume="auto"))
    assert resumed.progress.step == 2
    resumed.train()
    expected, got = losses(tmp_path / "whole"), losses(tmp_path / "parts")
    assert sorted(got) == list(range(1, 8))  # the log was cut back to the checkpoint, then continued
    np.testing.assert_array_equal([got[s] for s in range(1, 8)], [expected[s] for s in range(1, 8)])


def test_training_lowers_the_loss(train_data, tmp_path):
    config = small_config(train_data, tmp_path / "run", head="arcface", head_options={"s": 16.0, "m": 0.2},
                          batch_size=16, lr=0.1, epochs=5, milestones=[4], save_every=100)
    Learner(config).train()
    values = losses(tmp_path / "run")
    steps = sorted(values)
    assert len(steps) == 25
    assert np.mean([values[s] for s in steps[-5:]]) < 0.8 * np.mean([values[s] for s in steps[:5]])
    assert (tmp_path / "run" / "save" / "model_final.pth").is_file()


def test_nonfinite_losses_are_skipped_then_stop_the_run(train_data, tmp_path):
    learner = Learner(small_config(train_data, tmp_path / "run", max_steps=8, max_nonfinite=3))
    forward = learner.head.forward
    calls = []

    def sometimes_nan(*args, **kwargs):
        calls.append(1)
        loss = forward(*args, **kwargs)
        return loss * math.nan if len(calls) == 2 or len(calls) >= 4 else loss

    learner.head.forward = sometimes_nan
    with pytest.raises(UserError, match="not finite in 3 consecutive steps"):
        learner.train()
    # steps 1 and 3 trained; 2, 4, 5, 6 were skipped; the run stopped during the 6th (5 steps done)
    assert learner.progress.nonfinite_total == 4 and learner.progress.step == 5
    # the last good state was saved; steps 4 and 5 changed nothing
    path, state = latest_checkpoint(tmp_path / "run" / "save")
    assert path.name == "checkpoint_step00000005.pt" and state["nonfinite_total"] == 4
    after_step3 = load_checkpoint(tmp_path / "run" / "save" / "checkpoint_step00000004.pt")
    for key, value in state["model"].items():
        torch.testing.assert_close(value, after_step3["model"][key], rtol=0, atol=0)
    assert read_scalars(tmp_path / "run" / "log", "train/nonfinite_steps")[-1]["value"] >= 1


def test_pgaml_without_pose_is_a_clear_error(train_data, tmp_path):
    data = tmp_path / "no_pose"
    shutil.copytree(train_data, data)
    (data / "pose.npy").unlink()
    with pytest.raises(UserError, match=r"--head pgaml needs the yaw .*pose.npy"):
        Learner(small_config(data, tmp_path / "run"))


def test_resume_refuses_another_architecture_and_leaves_config_json(train_data, tmp_path):
    Learner(small_config(train_data, tmp_path / "run", max_steps=2)).train()
    saved = (tmp_path / "run" / "config.json").read_text()
    with pytest.raises(UserError, match="trained with --embedding_size 64, not 128"):
        Learner(small_config(train_data, tmp_path / "run", embedding_size=128, epochs=5, resume="auto"))
    assert (tmp_path / "run" / "config.json").read_text() == saved  # a run that did not start records nothing


def folder_contents(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_a_new_run_never_writes_into_another_runs_folder(train_data, tmp_path):
    work = tmp_path / "run"
    first = small_config(train_data, work, max_steps=4)
    Learner(first).train()
    before = folder_contents(work)
    with pytest.raises(UserError, match=r"run holds a run \(checkpoint at step 4\); pass --resume auto to continue it"):
        Learner(first.replace(lr=0.01))
    other = tmp_path / "other"
    Learner(small_config(train_data, other, max_steps=2)).train()
    with pytest.raises(UserError, match="holds a run"):  # another run's checkpoint, resumed into this folder
        Learner(first.replace(resume=str(other / "save" / "checkpoint_step00000002.pt")))
    assert folder_contents(work) == before
    # --resume auto continues the run the folder holds, and only that one
    resumed = Learner(first.replace(max_steps=6, resume="auto"))
    assert resumed.progress.step == 4
    resumed.train()
    assert sorted(losses(work)) == [1, 2, 3, 4, 5, 6]


def test_a_run_killed_before_its_first_checkpoint_is_refused_then_begun_again(train_data, tmp_path):
    work = tmp_path / "run"
    first = small_config(train_data, work, max_steps=3, save_every=100)
    learner = Learner(first)
    learner.hooks = [h for h in learner.hooks if not isinstance(h, Checkpointing)]  # as if killed before a save
    learner.train()
    assert not list_checkpoints(work / "save") and sorted(losses(work)) == [1, 2, 3]
    with pytest.raises(UserError, match="holds the logs of a run"):
        Learner(first)
    Learner(first.replace(max_steps=2, resume="auto")).train()  # no checkpoint: begun again, its log afresh
    assert sorted(losses(work)) == [1, 2]


def test_find_lr_restores_the_model_and_plots(train_data, tmp_path):
    learner = Learner(small_config(train_data, tmp_path / "run"))
    before = {k: v.clone() for k, v in learner.backbone.state_dict().items()}
    log_lrs, smoothed = learner.find_lr(init_value=1e-4, final_value=1.0, num=6)
    assert 2 <= len(log_lrs) <= 6 and log_lrs[0] == pytest.approx(-4)
    assert all(math.isfinite(v) for v in smoothed)
    for key, value in learner.backbone.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)
    assert (tmp_path / "run" / "history" / "lr_finder.png").stat().st_size > 1000


@pytest.mark.parametrize("name, at, expected", [
    ("step", 0.5, 0.1), ("step", 12.0, 0.01), ("step", 15.5, 0.001), ("step", 19.9, 0.0001),
    ("cosine", 0.0, 0.1), ("cosine", 10.0, 0.05), ("cosine", 20.0, 0.0),
    ("poly", 10.0, 0.025), ("poly", 20.0, 0.0),
])
def test_lr_schedules(name, at, expected):
    config = Config(lr=0.1, epochs=20, schedule=name)
    assert schedule.lr_at(config, at) == pytest.approx(expected, abs=1e-12)


def test_lr_warmup_then_schedule():
    config = Config(lr=0.1, epochs=20, schedule="poly", warmup_epochs=2)
    assert schedule.lr_at(config, 0.0) == 0.0
    assert schedule.lr_at(config, 1.0) == pytest.approx(0.05)
    assert schedule.lr_at(config, 2.0) == pytest.approx(0.1)
    assert schedule.lr_at(config, 11.0) == pytest.approx(0.1 * 0.5 ** 2)


# ------------------------------------------------------------------------------------ distributed (gloo)

def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_rank(rank: int, world_size: int, port: int, config: Config, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        learner = Learner(config)
        learner.train()
        torch.save({"model": _parameters(learner), "kernel": learner.head.kernel.detach().clone(),
                    "step": learner.progress.step, "statistics": learner.step_statistics},
                   os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        torch.distributed.destroy_process_group()


def _parameters(learner: Learner) -> dict:
    """The backbone's weights (BatchNorm's running statistics are per rank under DDP; rank 0's are saved)."""
    return {name: p.detach().clone() for name, p in learner.backbone.named_parameters()}


def _run(world_size: int, config: Config, out_dir) -> list[dict]:
    if world_size == 1:
        learner = Learner(config)
        learner.train()
        return [{"model": _parameters(learner), "step": learner.progress.step}]
    mp.spawn(_train_rank, args=(world_size, _free_port(), config, str(out_dir)), nprocs=world_size)
    return [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(world_size)]


def test_two_processes_stay_equal_and_resume_at_other_world_sizes(train_data, tmp_path):
    work = tmp_path / "run"
    config = small_config(train_data, work, batch_size=4, max_steps=2)
    ranks = _run(2, config, tmp_path)
    assert ranks[0]["step"] == ranks[1]["step"] == 2
    for key, value in ranks[0]["model"].items():  # DDP all-reduced real gradients: identical replicas
        torch.testing.assert_close(value, ranks[1]["model"][key], rtol=0, atol=0)
    assert ranks[0]["kernel"].shape == (64, 5) == ranks[1]["kernel"].shape  # 10 classes sharded in two
    # the last (log) step's collapse diagnostics cover the global batch: the same figures on both ranks
    assert len(ranks[0]["statistics"]) == 8 and ranks[0]["statistics"] == ranks[1]["statistics"]
    initial = _parameters(Learner(small_config(train_data, tmp_path / "fresh", batch_size=4)))
    assert any(not torch.equal(initial[k], v) for k, v in ranks[0]["model"].items())

    # saved by 2 processes, resumed by 1 (global batch 8 either way), then by 2 again
    state = load_checkpoint(list_checkpoints(work / "save")[0])
    assert state["world_size"] == 2 and state["samples_in_epoch"] == 16 and state["head"]["kernel"].shape == (64, 10)
    single = _run(1, config.replace(batch_size=8, max_steps=3, resume="auto"), tmp_path)
    assert single[0]["step"] == 3
    again = _run(2, config.replace(max_steps=5, resume="auto"), tmp_path)
    assert again[0]["step"] == 5
    for key, value in again[0]["model"].items():
        torch.testing.assert_close(value, again[1]["model"][key], rtol=0, atol=0)


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_mixed_precision_and_channels_last_steps(train_data, tmp_path, amp):
    learner = Learner(small_config(train_data, tmp_path / "run", amp=amp, channels_last=True, max_steps=2,
                                   batch_size=4, deterministic=False))
    learner.train()
    assert learner.progress.step == 2 and learner.progress.nonfinite_total == 0
    assert learner.scaler.is_enabled() == (amp == "fp16")
    assert all(torch.isfinite(p).all() for p in learner.backbone.parameters())


def test_a_checkpoint_killed_mid_write_leaves_the_previous_one(train_data, tmp_path, monkeypatch):
    learner = Learner(small_config(train_data, tmp_path / "run", max_steps=2))
    learner.train()
    before = {p.name: p.read_bytes() for p in (tmp_path / "run" / "save").iterdir()}

    def dies_halfway(obj, f, *args, **kwargs):
        with open(f, "wb") as out:
            out.write(b"PK\x03\x04 half a checkpoint")
        raise KeyboardInterrupt  # the process dies while writing

    monkeypatch.setattr(torch, "save", dies_halfway)
    learner.progress.step = 3
    with pytest.raises(KeyboardInterrupt):
        learner.save_state()
    after = {p.name: p.read_bytes() for p in (tmp_path / "run" / "save").iterdir()}
    assert after == before  # no new file, no temporary left, the old ones untouched
    assert latest_checkpoint(tmp_path / "run" / "save")[1]["step"] == 2


def test_the_start_line_says_what_the_run_does(train_data, tmp_path, caplog):
    with caplog.at_level(logging.INFO, logger="learner"):
        Learner(small_config(train_data, tmp_path / "run", max_steps=2, num_threads=1)).train()
    line = next(r.getMessage() for r in caplog.records if "steps/epoch" in r.getMessage())
    assert "10 steps/epoch, 2 of 30 steps (--max_steps)" in line
    assert "0 data workers, 1 torch thread (" in line and "on cpu" in line


def test_val_sets_given_as_bin_are_prepared_when_training_starts(train_data, tmp_path):
    data = tmp_path / "data"
    shutil.copytree(train_data, data)
    shutil.rmtree(data / "lfw")  # lfw.bin is there, not prepared (the default list finds it)
    learner = Learner(small_config(data, tmp_path / "run", val_sets=Config.val_sets))
    assert [v.name for v in next(h for h in learner.hooks if isinstance(h, Evaluation)).val_sets] == \
        ["lfw", "agedb_30", "cfp_fp"]
    assert (data / "lfw" / "issame.npy").is_file()


# ------------------------------------------------------------------------- stability tools and diagnostics

def test_lr_scaled_to_the_global_batch():
    config = Config(lr=0.1, epochs=10, schedule="cosine", warmup_epochs=1, lr_reference_batch=256)
    assert schedule.peak_lr(config, 512) == pytest.approx(0.2)
    assert schedule.lr_at(config, 0.5, 512) == pytest.approx(0.1)      # the warm-up ramps to the scaled peak
    assert schedule.lr_at(config, 1.0, 512) == pytest.approx(0.2)
    assert schedule.lr_at(config, 5.5, 128) == pytest.approx(0.05 * 0.5)
    with pytest.raises(ValueError, match="global_batch"):
        schedule.lr_at(config, 1.0)
    plain = config.replace(lr_reference_batch=0)
    assert schedule.lr_at(plain, 1.0, 512) == schedule.lr_at(plain, 1.0) == pytest.approx(0.1)


class _SpyOnStatistics:
    """Wraps PartialFC.forward_statistics: the step it ran in, the centres then, and what it returned."""

    def __init__(self, learner):
        self.learner, self.calls = learner, []
        self.real = learner.head.forward_statistics
        learner.head.forward_statistics = self

    def __call__(self, *args):
        result = self.real(*args)
        self.calls.append((self.learner.progress.step + 1, self.learner.head.kernel.detach().clone(), result))
        return result


class _KernelBeforeStep(Hook):
    def __init__(self):
        self.kernels = {}

    def before_step(self, learner):
        self.kernels[learner.progress.step + 1] = learner.head.kernel.detach().clone()


def test_log_steps_log_their_own_forward_before_the_update(train_data, tmp_path):
    work = tmp_path / "run"
    before = _KernelBeforeStep()
    learner = Learner(small_config(train_data, work, head="arcface", head_options={"s": 16.0, "m": 0.3},
                                   max_steps=4, log_every=2), hooks=[before])
    spy = _SpyOnStatistics(learner)
    learner.train()
    assert [step for step, _, _ in spy.calls] == [2, 4]   # ordinary steps compute nothing
    values = {(r["step"], r["tag"]): r["value"] for r in read_scalars(work / "log")}
    for step, kernel, statistics in spy.calls:
        assert torch.equal(kernel, before.kernels[step])  # the centres as the step found them, not as it left them
        assert values[(step, "train/accuracy")] == statistics["accuracy"]
        for name in ("target_angle_deg", "target_cos", "max_other_cos", "batch_pair_cos", "centre_pair_cos"):
            assert values[(step, f"train/{name}")] == statistics[name]
        assert 0 < values[(step, "train/target_angle_deg")] < 180
        assert values[(step, "train/embedding_norm")] > 0 and values[(step, "train/grad_norm")] > 0
    assert not any(tag == "train/grad_norm" for step, tag in values if step % 2)


def test_clipping_takes_the_backbone_alone_and_the_margin_warmup_resumes(train_data, tmp_path, monkeypatch, caplog):
    clipped = []
    real_clip = torch.nn.utils.clip_grad_norm_

    def spy_clip(parameters, max_norm, *args, **kwargs):
        clipped.append((list(parameters), max_norm))
        return real_clip(clipped[-1][0], max_norm, *args, **kwargs)
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", spy_clip)
    config = small_config(train_data, tmp_path / "run", max_steps=2, clip_grad_norm=0.5, margin_warmup_steps=4,
                          lr_reference_batch=16, head_options={"s": "auto", "m1": 0.3, "m2": 0.1})
    with caplog.at_level(logging.INFO):
        learner = Learner(config)
        learner.train()
    log_text = "\n".join(r.getMessage() for r in caplog.records)
    assert "--scale auto: s = sqrt(2) * ln(C - 1) = 3.11 for C = 10 classes" in log_text
    assert "peak LR 0.025 = --lr 0.05 x global batch 8 / --lr_reference_batch 16" in log_text
    assert learner.head.margin.s == pytest.approx(math.sqrt(2) * math.log(9))
    assert len(clipped) == 2 and all(max_norm == 0.5 for _, max_norm in clipped)
    backbone = {id(p) for p in learner.backbone.parameters()}
    assert all(id(p) in backbone for p in clipped[0][0]) and len(clipped[0][0]) == len(backbone)
    assert all(p is not learner.head.kernel for p in clipped[0][0])
    assert {r["value"] for r in read_scalars(tmp_path / "run" / "log", "train/lr")} == {0.025}
    # the margin's share follows the restored step: 2 of 4 steps taken
    resumed = Learner(config.replace(max_steps=3, resume="auto"))
    assert resumed.progress.step == 2
    resumed._follow_schedule()
    assert resumed.head.margin.margin_factor == 0.5


def test_fp16_with_clipping_steps_and_logs_the_true_gradient_norm(train_data, tmp_path):
    work = tmp_path / "run"
    learner = Learner(small_config(train_data, work, amp="fp16", max_steps=2, batch_size=4, clip_grad_norm=1.0,
                                   deterministic=False))
    # torch's 2**16 overflows this tiny fresh model's fp16 gradients for a few (skipped, NaN-norm) steps
    learner.scaler = torch.amp.GradScaler("cpu", init_scale=256.0)
    learner.train()
    assert learner.progress.nonfinite_total == 0 and learner.scaler.get_scale() == 256.0   # no step skipped
    norms = [r["value"] for r in read_scalars(work / "log", "train/grad_norm")]
    # about 35 here: logged before unscaling it would be 256 times that
    assert len(norms) == 2 and all(1.0 < n < 1000 for n in norms)


def test_fused_sgd_trains_as_the_unfused_optimiser(train_data, tmp_path):
    runs = {}
    for fused in ("off", "on"):
        learner = Learner(small_config(train_data, tmp_path / fused, fused_sgd=fused, max_steps=2, save_every=0))
        learner.train()
        assert all(g["fused"] == (fused == "on") for g in learner.optimizer.param_groups)
        runs[fused] = _parameters(learner)
    for key, value in runs["on"].items():
        torch.testing.assert_close(value, runs["off"][key], rtol=1e-5, atol=1e-6)
