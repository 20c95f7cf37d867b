"""perf/gpu_session.py, the one command of a session lent a GPU, run here on the CPU: the sizing arithmetic, a
session that sizes, trains and archives a tiny experiment, and one whose time is too short to train."""
from __future__ import annotations

import tarfile

import pytest

from perf import gpu_session
from tests.helpers import tiny_experiment_config

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_steps_fill_the_time_left_after_each_round_of_runs():
    # 9 runs, 3 at a time: 3 rounds x 40 s of overhead; (300 - 120) s x 4000 img/s / (9 runs x 256) = 312.5
    steps, arithmetic = gpu_session.size_steps(300, 4000, 9, 3, 256, 40, 1500, per_epoch=1000)
    assert steps == 312 and arithmetic.endswith("= 312 steps")              # under one epoch: as it comes
    steps, arithmetic = gpu_session.size_steps(300, 4000, 9, 3, 256, 40, 1500, per_epoch=150)
    assert steps == 300 and arithmetic.endswith("= 312 steps; 300 = 2 whole epoch(s) of 150")
    assert gpu_session.size_steps(300, 4000, 9, 3, 256, 40, 1500, per_epoch=104)[0] == 312   # 3 epochs exactly
    assert gpu_session.size_steps(10_000, 4000, 9, 3, 256, 40, 1500, per_epoch=100)[0] == 1500  # the profile's most
    assert gpu_session.size_steps(100, 4000, 9, 3, 256, 40, 1500, per_epoch=100)[0] == 0     # overhead alone is longer
    assert gpu_session.size_steps(300, 4000, 9, 1, 256, 40, 1500, per_epoch=100)[0] == 0     # 9 rounds, one at a time


def test_a_cpu_session_sizes_trains_and_archives_the_experiment(tmp_path, train_data):
    config = tiny_experiment_config(tmp_path, {"path": str(train_data)}, steps=6, jobs=2)
    out, work = tmp_path / "out", tmp_path / "work"
    argv = ["--out", str(out), "--work", str(work), "--config", config, "--profile", "tiny", "--device", "cpu",
            "--skip", "perf", "--budget", "400", "--run_overhead", "1", "--min_steps", "2"]
    assert gpu_session.main(argv) == 0
    summary = (out / "summary.md").read_text()
    assert "| calibration |" in summary and "mobilefacenet batch 8:" in summary and "skipped: --skip perf" in summary
    assert "; the profile's most, 6 (log:" in summary  # 400 s is far more than 4 tiny runs need
    assert sorted(p.name for p in out.iterdir()) == ["env.txt", "experiment.tar.gz", "summary.md"]
    with tarfile.open(out / "experiment.tar.gz") as tar:
        names = set(tar.getnames())
        report = tar.extractfile("report/report.md").read().decode()
    assert {"report/results.json", "calibration.log", "experiment.log"} <= names
    assert {f"experiment/runs/{arm}/seed{s}/results.json" for arm in ("arcface", "pgaml") for s in (0, 1)} <= names
    assert "--steps 6" in report and "--eval_every 1" in report  # the report says how the runs were sized


def test_a_session_too_short_to_train_says_so_and_trains_nothing(tmp_path, train_data, monkeypatch):
    monkeypatch.setattr(gpu_session, "calibrate", lambda plan, classes, device, work, timeout: (10.0, 5.0))
    config = tiny_experiment_config(tmp_path, {"path": str(train_data)}, steps=100)
    out, work = tmp_path / "out", tmp_path / "work"
    argv = ["--out", str(out), "--work", str(work), "--config", config, "--profile", "tiny", "--skip", "perf",
            "--budget", "60"]
    assert gpu_session.main(argv) == 0
    summary = (out / "summary.md").read_text()
    assert "skipped: 0 steps per run would fit, fewer than --min_steps 50" in summary
    assert not (work / "experiment" / "runs").exists()


@pytest.mark.parametrize("flags, message", [(["--budget", "20"], "--budget 20"),
                                            (["--skip", "gpu"], "--skip gpu"),
                                            (["--perf_share", "1.5"], "--perf_share 1.5")])
def test_bad_flags_are_one_error_naming_them(tmp_path, flags, message):
    from utils import UserError

    with pytest.raises(UserError, match=message):
        gpu_session.main(["--out", str(tmp_path), *flags])


@pytest.mark.parametrize("recipe, name", [({"net_mode": "ir_se", "depth": 50}, "ir_se_50"),
                                          ({"net_mode": "ir", "depth": 100}, "ir_100"),
                                          ({"net_mode": "mobilefacenet"}, "mobilefacenet"),
                                          ({"net_mode": "r50"}, "r50")])
def test_the_calibration_measures_the_recipe_s_own_backbone(recipe, name):
    from perf.training import parse_net

    assert gpu_session.recipe_net(recipe) == name
    assert parse_net(name) == (recipe["net_mode"], recipe.get("depth", 50))
