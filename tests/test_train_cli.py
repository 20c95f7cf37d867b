"""train.py as users run it: flags, errors, SIGKILL + exact resume, SIGTERM, --config, torchrun."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from training.checkpoint import list_checkpoints, load_checkpoint
from config import Config
from training.run_log import read_scalars
from tests.conftest import ROOT

SMALL = ["-n", "mobilefacenet", "--embedding_size", "64", "-b", "8", "-e", "3", "-lr", "0.05", "-w", "0",
         "--head", "pgaml", "--scale", "16", "--m1", "0.3", "--m2", "0.1", "--val_sets", "none", "--log_every", "1",
         "--deterministic", "--seed", "5"]


def train(*args, cwd=ROOT, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "train.py", *map(str, args)], cwd=cwd, capture_output=True,
                          text=True, timeout=300, **kw)


def start(*args) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "train.py", *map(str, args)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def losses(work) -> dict[int, float]:
    return {r["step"]: r["value"] for r in read_scalars(work / "log", "train/loss")}


def wait_for_step(work, step: int, process: subprocess.Popen, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while max(losses(work), default=0) < step:
        assert process.poll() is None, f"train.py ended early: {process.stderr.read()}"
        assert time.monotonic() < deadline, "train.py too slow"
        time.sleep(0.02)


def test_help_documents_every_flag():
    out = train("-h").stdout
    for flag in ("-n", "-net", "--net_mode", "-b", "-e", "-lr", "-w", "-d", "--data_mode", "-depth", "--head",
                 "--data_path", "--embedding_size", "--sample_rate", "--amp", "--channels_last", "--compile",
                 "--resume", "--eval_every", "--val_sets", "--max_steps", "--device", "--seed", "--deterministic",
                 "--config", "--work_path", "--pose_schedule", "--schedule", "--warmup_epochs", "--find_lr",
                 "--pretrained", "--best_metric", "--head_option", "--scale", "--margin", "--m1", "--m2",
                 "--margin_warmup_steps", "--clip_grad_norm", "--lr_reference_batch"):
        assert f" {flag}" in out, flag


@pytest.mark.parametrize("args, message", [
    (["-n", "resnet"], "argument -n/-net/--net_mode: invalid choice"),
    (["--lr", "-1"], "--lr must be positive"),
    (["--scale", "-3"], "head 'arcface': the scale s (--scale) must be a positive number, not -3.0"),
    (["--amp", "fp8"], "invalid choice"),
    (["--head", "softmaxx"], "--head: invalid choice: 'softmaxx'"),
    (["--data_path", "/nonexistent/faces"], "/nonexistent/faces: the training data folder does not exist"),
    (["--data_path", "README.md"], "README.md: neither a RecordIO folder"),
    (["-d", "casia"], "--data_mode casia: choose one of"),
    (["--head", "arcface", "--m9", "1"], "unrecognized arguments: --m9"),
    (["--head", "arcface", "--head_option", "q=1"], "head 'arcface' has no option(s) q"),
    (["--config", "/nonexistent.json"], "config file not found"),
    (["--resume", "README.md"], "README.md: not a readable checkpoint"),
    (["--pose_schedule", "2", "--head", "arcface"], "--pose_schedule applies to --head pgaml only"),
    (["--val_sets", "lfw", "--best_metric", "lfw/foo"], "--best_metric lfw/foo: expected 'accuracy' or"),
    (["--val_sets", "lfw,megaface"], "--val_sets: megaface not found under"),
    (["--head", "sphereface", "--margin_warmup_steps", "100"], "--margin_warmup_steps does not apply to --head sphereface"),
    (["--clip_grad_norm", "-1"], "--clip_grad_norm must be a finite number >= 0"),
    (["--scale", "large"], "argument --scale: expected a number or auto, not 'large'"),
])
def test_bad_input_is_one_line_and_status_2(train_data, tmp_path, args, message):
    base = ["--data_path", train_data, "--work_path", tmp_path / "run", "-n", "mobilefacenet", "-w", "0", "-b", "8"]
    result = train(*base, *args)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and message in lines[-1], result.stderr
    assert "Traceback" not in result.stderr


def test_sigkill_then_resume_gives_the_uninterrupted_losses(train_data, tmp_path):
    whole, broken = tmp_path / "whole", tmp_path / "broken"
    common = [*SMALL, "--data_path", train_data, "--max_steps", 6, "--save_every", 2]
    assert train(*common, "--work_path", whole).returncode == 0

    process = start(*common, "--work_path", broken)
    wait_for_step(broken, 5, process)  # checkpoints at 2 and 4 are on disk
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    assert [load_checkpoint(p)["step"] for p in list_checkpoints(broken / "save")][0] >= 4

    result = train(*common, "--work_path", broken, "--resume", "auto")
    assert result.returncode == 0, result.stderr
    assert "resumed from" in result.stderr
    expected, got = losses(whole), losses(broken)
    assert sorted(got) == list(range(1, 7))
    np.testing.assert_array_equal([got[s] for s in range(1, 7)], [expected[s] for s in range(1, 7)])


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_and_exits_cleanly(train_data, tmp_path, sig):
    work = tmp_path / "run"
    process = start(*SMALL, "--data_path", train_data, "--work_path", work, "--save_every", 100)
    wait_for_step(work, 2, process)
    process.send_signal(sig)
    assert process.wait(timeout=120) == 0, process.stderr.read()
    assert f"stopped by {sig.name}" in process.stderr.read()
    saved = load_checkpoint(list_checkpoints(work / "save")[0])
    assert saved["step"] >= 2 and saved["step"] == max(losses(work))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_to_the_process_group_with_loader_workers_saves_once(train_data, tmp_path, sig):
    """What `timeout`, systemd, SLURM and Kubernetes do (and Ctrl-C in a terminal): signal every process of
    the group, DataLoader workers included."""
    work = tmp_path / "run"
    process = subprocess.Popen([sys.executable, "train.py", *map(str, [*SMALL, "-w", 2, "--data_path", train_data,
                                                                     "--work_path", work, "--save_every", 100])],
                               cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    wait_for_step(work, 2, process)
    os.killpg(process.pid, sig)
    assert process.wait(timeout=120) == 0
    stderr = process.stderr.read()
    assert "Traceback" not in stderr and "killed by signal" not in stderr, stderr
    assert stderr.count(f"{sig.name}: saving a checkpoint") == 1, stderr
    assert f"stopped by {sig.name}" in stderr and "resume with --resume auto" in stderr
    saved = load_checkpoint(list_checkpoints(work / "save")[0])
    assert saved["step"] >= 2 and saved["step"] == max(losses(work))


def test_saved_config_reproduces_the_run(train_data, tmp_path):
    first, second = tmp_path / "first", tmp_path / "second"
    assert train(*SMALL, "--data_path", train_data, "--work_path", first, "--max_steps", 2,
                 "--schedule", "cosine", "--warmup_epochs", "0.5", "--scale", "auto", "--margin_warmup_steps", 3,
                 "--clip_grad_norm", 2, "--lr_reference_batch", 16).returncode == 0
    saved = Config.load(first / "config.json")
    assert saved.head_options["s"] == "auto" and (saved.margin_warmup_steps, saved.clip_grad_norm,
                                                  saved.lr_reference_batch) == (3, 2.0, 16)
    result = train("--config", first / "config.json", "--work_path", second)
    assert result.returncode == 0, result.stderr
    assert Config.load(second / "config.json") == Config.load(first / "config.json").replace(work_path=str(second))
    assert losses(first) == losses(second)
    # YAML with the same keys, flags still win
    import yaml
    (tmp_path / "run.yaml").write_text(yaml.safe_dump(json.loads((first / "config.json").read_text())))
    assert train("--config", tmp_path / "run.yaml", "--work_path", tmp_path / "third", "--max_steps", 1,
                 "-lr", "0.01").returncode == 0
    assert Config.load(tmp_path / "third" / "config.json").lr == 0.01


def test_torchrun_two_processes_on_cpu(train_data, tmp_path):
    work = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [*SMALL, "-b", 4, "--data_path", train_data, "--work_path", work, "--max_steps", 2,
            "--save_every", 2, "--val_sets", "lfw", "--eval_every", 2]
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone",
                             "--nproc_per_node=2", "train.py", *map(str, args)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    state = load_checkpoint(list_checkpoints(work / "save")[0])
    assert state["world_size"] == 2 and state["step"] == 2 and state["samples_in_epoch"] == 16
    assert {"val/lfw/accuracy", "train/loss"} <= {r["tag"] for r in read_scalars(work / "log")}


def test_sigterm_to_a_torchrun_group_saves_every_rank_once(train_data, tmp_path):
    """`timeout torchrun ...` or SLURM: torchrun, its ranks and their loader workers all get SIGTERM, and torchrun
    forwards it to the ranks once more. The ranks save one checkpoint together; torchrun itself then reports
    the signal (its own SignalException, exit status 1)."""
    work = tmp_path / "run"
    args = [*SMALL, "-b", 4, "-w", 1, "--data_path", train_data, "--work_path", work, "--save_every", 100]
    process = subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                                "train.py", *map(str, args)], cwd=ROOT, stdout=subprocess.DEVNULL,
                               stderr=subprocess.PIPE, text=True, start_new_session=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    wait_for_step(work, 2, process)
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=120)
    stderr = process.stderr.read()
    assert "killed by signal" not in stderr and "exitcode  : -15" not in stderr, stderr[-3000:]
    assert stderr.count("SIGTERM: saving a checkpoint") == 1, stderr[-3000:]
    assert "stopped by SIGTERM" in stderr
    saved = load_checkpoint(list_checkpoints(work / "save")[0])
    assert saved["world_size"] == 2 and saved["step"] == max(losses(work))


def test_find_lr_flag(train_data, tmp_path):
    result = train(*SMALL, "--data_path", train_data, "--work_path", tmp_path / "run", "--find_lr", 5)
    assert result.returncode == 0, result.stderr
    assert "LR range test" in result.stdout and (tmp_path / "run" / "history" / "lr_finder.png").is_file()
    assert not (tmp_path / "run" / "save").exists()


def test_treb1en_command_without_data_says_where_to_get_it(tmp_path):
    result = subprocess.run([sys.executable, str(ROOT / "train.py"), "-n", "ir_se", "-b", "200"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    line = result.stderr.strip().splitlines()[-1]
    assert line.startswith("error: data/faces_emore: the training data folder does not exist")
    assert "python data/prepare_data.py --source data/faces_emore" in line
    assert not any(tmp_path.iterdir())  # nothing written


def test_help_headline_runs_as_written():
    out = train("-h").stdout
    assert "python train.py -n ir_se -b 200" in out and "--head pgaml" in out and "pose.npy" in out
