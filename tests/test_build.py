"""training/build.py: the CPU plan (workers and threads from the cores actually free), val sets for training."""
from __future__ import annotations

import pytest
import torch

from config import Config
from training import build
from utils import UserError


@pytest.fixture
def machine(monkeypatch):
    def set_machine(cores: int, load: float):
        monkeypatch.setattr(build.os, "sched_getaffinity", lambda pid: set(range(cores)))
        monkeypatch.setattr(build, "busy_cores", lambda: load)
    return set_machine


CPU, GPU = torch.device("cpu"), torch.device("cuda", 0)


def test_a_cpu_run_uses_the_free_cores(machine):
    machine(2, 0.2)
    plan = build.cpu_plan(Config(), CPU)
    assert (plan.workers, plan.threads) == (0, 2)  # decoding in the training process: no worker preempts a thread
    assert plan.describe() == "0 data workers, 2 torch threads (2 cores, 0.2 busy)"
    machine(2, 1.3)  # another job on one of the two cores: oversubscribing it slows every step
    assert build.cpu_plan(Config(), CPU).threads == 1
    machine(2, 5.0)
    assert build.cpu_plan(Config(), CPU).threads == 1


def test_deterministic_runs_take_the_cores_whatever_the_load(machine):
    machine(4, 3.0)
    assert build.cpu_plan(Config(deterministic=True), CPU).threads == 4


def test_a_gpu_run_feeds_from_half_the_cores(machine):
    machine(16, 0.0)
    plan = build.cpu_plan(Config(), GPU)
    assert (plan.workers, plan.threads) == (8, 4)
    plan = build.cpu_plan(Config(), GPU, local_world_size=8)  # 8 ranks share the 16 cores
    assert (plan.cores, plan.workers, plan.threads) == (2, 1, 1)


def test_the_config_wins(machine):
    machine(2, 0.0)
    plan = build.cpu_plan(Config(num_workers=3, num_threads=5), CPU)
    assert (plan.workers, plan.threads) == (3, 5)
    assert build.cpu_plan(Config(num_workers=0), CPU).describe().startswith("0 data workers")


def test_busy_cores_measures_the_machine_now():
    busy = build.busy_cores(0.05)
    assert 0.0 <= busy <= (build.os.cpu_count() or 1) + 1e-6


def test_fused_sgd_is_on_where_torch_has_it_unless_turned_off_and_refused_where_it_has_none():
    assert build.fused_sgd_for(Config(), GPU) and build.fused_sgd_for(Config(), CPU)
    assert not build.fused_sgd_for(Config(), torch.device("meta"))
    assert not build.fused_sgd_for(Config(fused_sgd="off"), GPU)
    with pytest.raises(UserError, match="--fused_sgd on: torch has no fused SGD for meta"):
        build.fused_sgd_for(Config(fused_sgd="on"), torch.device("meta"))
    with pytest.raises(UserError, match="fused_sgd"):
        Config(fused_sgd="yes")
