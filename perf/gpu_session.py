"""One command for a session lent a GPU for a few minutes: the GPU training measure (perf.run_all --gpu) and the
seeded PGAML-vs-ArcFace experiment's gpu profile, sized so that both end inside the time given.

    python -m perf.gpu_session --out DIR [--budget 540] [--perf_share 0.4] [--skip perf|experiment]
                               [--config experiments/pgaml_vs_arcface.yaml] [--profile gpu] [--device cuda]

A lent GPU comes for minutes, once in a while, so this does everything in one call and never runs past
`--budget` seconds:

  1. env.txt          nvidia-smi, Python, torch, CUDA, the device
  2. RESULTS-gpu.md   `python -m perf.run_all --gpu --only training,optimizer`, stopped at its share of the
                      budget (`--perf_share`); perf.training prints each comparison as soon as its baseline is
                      measured, so a stopped run keeps every ratio it reached
  3. the experiment   its data generated and prepared first (data/synthetic.py, 16 workers); then one short
                      perf.training measure of the profile's recipe (net, batch, precision, the data's classes)
                      gives images/s and a process's start-up time, and `--steps` is chosen so that every
                      (arm, seed) run, `jobs` at a time on the one GPU, ends before the budget: steps =
                      images/s x (time left - rounds x per-run overhead) / (runs x batch), at most the
                      profile's steps. The report says the steps (its command line holds `--steps`), so a
                      later session can add runs with the same `--steps`: finished runs are reused.
  4. experiment.tar.gz the report (report.md, results.json, PNGs) and each run's results.json and log
  summary.md          what each stage did, how long it took, and the sizing arithmetic

DIR holds at most six files (a device machine returns a few files, not folders); the runs themselves go to
`--work` (default work_space/gpu_session). Without a GPU, `--device cpu` runs the same steps on the CPU (tests).
"""
from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path

from utils import CliParser, UserError, atomic_path, atomic_write_text, run_cli

ROOT = Path(__file__).resolve().parent.parent
RESERVE_S = 30          # kept back at the end: the report, the archive, the summary
RUN_OVERHEAD_S = 30     # per run beyond its start-up: evaluation every eval_every steps, the pose and
                        # resolution breakdowns of the final model, the checkpoint (a guess, kept generous)
CURVE_POINTS = 5        # evaluations along each learning curve (eval_every = steps / CURVE_POINTS)
MIN_STEPS = 50          # below this the experiment would compare untrained models: it is not run


@dataclass
class Stage:
    name: str
    seconds: float
    status: str   # "ok", "skipped: ...", "stopped after N s", "failed (exit N)"
    detail: str = ""


def parse_args(argv=None):
    parser = CliParser(description=__doc__)
    parser.add_argument("--out", type=Path, required=True, help="folder of the few result files (e.g. $OUT)")
    parser.add_argument("--work", type=Path, default=ROOT / "work_space" / "gpu_session",
                        help="folder of the experiment's runs and data")
    parser.add_argument("--budget", type=float, default=540, help="seconds the whole command may take")
    parser.add_argument("--perf_share", type=float, default=0.4,
                        help="fraction of the budget the GPU training measure may take")
    parser.add_argument("--skip", default="", metavar="STAGE[,STAGE]", help="perf and/or experiment")
    parser.add_argument("--config", default="experiments/pgaml_vs_arcface.yaml", help="the experiment's YAML")
    parser.add_argument("--profile", default="gpu", help="the YAML's profile to run")
    parser.add_argument("--device", default="cuda", help="where the calibration measure runs (cuda, cpu)")
    parser.add_argument("--run_overhead", type=float, default=RUN_OVERHEAD_S,
                        help="seconds each run takes beyond its start-up and its steps (evaluation, breakdowns)")
    parser.add_argument("--min_steps", type=int, default=MIN_STEPS,
                        help="fewer steps per run than this would fit: the experiment is not run")
    args = parser.parse_args(argv)
    if args.budget <= RESERVE_S:
        raise UserError(f"--budget {args.budget:g}: needs more than the {RESERVE_S} s kept for the report")
    if not 0 <= args.perf_share < 1:
        raise UserError(f"--perf_share {args.perf_share:g}: expected a fraction in [0, 1)")
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    unknown = args.skip - {"perf", "experiment"}
    if unknown:
        raise UserError(f"--skip {','.join(sorted(unknown))}: the stages are perf and experiment")
    return args


def run_logged(command: list[str], log: Path, timeout: float) -> tuple[int | None, float]:
    """Run `command` from the repository root with its output in `log`; (exit code or None if stopped, seconds).
    It runs in its own process group, so stopping it stops what it started too (a benchmark, the runs)."""
    started = time.perf_counter()
    with open(log, "w") as out:
        process = subprocess.Popen(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**os.environ, "TQDM_DISABLE": "1", "PYTHONUNBUFFERED": "1"})
        try:
            code = process.wait(timeout=max(1.0, timeout))
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGTERM)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
            code = None
    return code, time.perf_counter() - started


def status_of(code: int | None, seconds: float) -> str:
    return "ok" if code == 0 else f"stopped after {seconds:.0f} s" if code is None else f"failed (exit {code})"


def environment(out: Path) -> Stage:
    import platform

    import torch

    lines = [f"python {platform.python_version()}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
             f"{os.cpu_count()} CPUs"]
    if torch.cuda.is_available():
        lines.append(f"device {torch.cuda.get_device_name(0)}")
    try:
        lines.append(subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30).stdout)
    except (OSError, subprocess.TimeoutExpired) as error:
        lines.append(f"nvidia-smi: {error}")
    atomic_write_text(out / "env.txt", "\n".join(lines) + "\n")
    return Stage("environment", 0.0, "ok", lines[0])


def perf_stage(out: Path, work: Path, timeout: float) -> Stage:
    command = [sys.executable, "-m", "perf.run_all", "--gpu", "--only", "training,optimizer",
               "--out", str(out / "RESULTS-gpu.md"), "--timeout", f"{timeout:.0f}"]
    # run_all stops a benchmark at --timeout and still writes the table; the outer limit covers the rest
    code, seconds = run_logged(command, work / "perf.log", timeout + 60)
    return Stage("perf.run_all --gpu --only training,optimizer", seconds, status_of(code, seconds),
                 f"log: {work / 'perf.log'}")


def recipe_net(recipe: dict) -> str:
    """perf.training's name of the recipe's backbone ('ir_se' + depth 50 -> 'ir_se_50')."""
    from config import Config
    from perf.training import net_name

    return net_name(recipe.get("net_mode", Config.net_mode), recipe.get("depth", Config.depth))


def calibrate(plan, classes: int, device: str, work: Path, timeout: float) -> tuple[float, float]:
    """(images/s, seconds of a process's start-up) of the recipe's training step, measured by perf.training."""
    from config import Config

    amp = plan.recipe.get("amp", Config.amp)
    steps, warmup = 10, 5
    rows = work / "calibration.json"
    command = [sys.executable, "-m", "perf.training", "--device", device, "--nets", recipe_net(plan.recipe),
               "--batches", str(plan.batch_size), "--precisions", "fp32" if amp == "off" else amp,
               "--heads", "arcface", "--classes", str(classes), "--pfc_classes", "0", "--baselines", "none",
               "--steps", str(steps), "--warmup", str(warmup), "--json", str(rows)]
    code, seconds = run_logged(command, work / "calibration.log", timeout)
    if code != 0 or not rows.is_file():
        raise UserError(f"{work / 'calibration.log'}: the calibration measure failed ({status_of(code, seconds)})")
    images_per_s = json.loads(rows.read_text())[0]["images_per_s"]
    startup = max(0.0, seconds - (steps + warmup) * plan.batch_size / images_per_s)
    return images_per_s, startup


def size_steps(seconds: float, images_per_s: float, runs: int, jobs: int, batch: int, per_run_s: float,
               most: int, per_epoch: int) -> tuple[int, str]:
    """Steps per run so that `runs` runs, `jobs` at a time sharing one device, train in `seconds`, rounded down to
    whole epochs where that leaves at least one (the LR schedule then ends at its end); and the sum."""
    rounds = math.ceil(runs / jobs)
    training_s = seconds - rounds * per_run_s
    fits = int(images_per_s * max(0.0, training_s) / (runs * batch))
    steps = min(most, fits // per_epoch * per_epoch if fits >= per_epoch else fits)
    arithmetic = (f"{images_per_s:.0f} img/s x ({seconds:.0f} s - {rounds} rounds x {per_run_s:.0f} s) / "
                  f"({runs} runs x batch {batch}) = {fits} steps")
    if steps == most:
        arithmetic += f"; the profile's most, {most}"
    elif steps != fits:
        arithmetic += f"; {steps} = {steps // per_epoch} whole epoch(s) of {per_epoch}"
    return steps, arithmetic


def experiment_stage(args, deadline: float) -> tuple[list[Stage], Path | None]:
    from experiments.plan import ensure_data, load_plan

    stages, work = [], args.work
    plan = load_plan(args.config, args.profile, work / "experiment")
    started = time.perf_counter()
    meta = ensure_data(plan)
    stages.append(Stage("data", time.perf_counter() - started, "ok",
                        f"{plan.data_path}: {meta['num_images']} images, {meta['num_classes']} classes"))
    started = time.perf_counter()
    images_per_s, startup = calibrate(plan, meta["num_classes"], args.device, work,
                                      deadline - time.monotonic() - RESERVE_S)
    stages.append(Stage("calibration", time.perf_counter() - started, "ok",
                        f"{recipe_net(plan.recipe)} batch {plan.batch_size}: {images_per_s:.0f} img/s, start-up "
                        f"{startup:.0f} s (log: {work / 'calibration.log'})"))
    runs = len(plan.arms) * len(plan.seeds)
    left = deadline - time.monotonic() - RESERVE_S
    steps, arithmetic = size_steps(left, images_per_s, runs, plan.jobs, plan.batch_size,
                                   startup + args.run_overhead, plan.steps,
                                   plan.steps_per_epoch(meta["num_images"]))
    if steps < args.min_steps:
        stages.append(Stage("experiment", 0.0, f"skipped: {steps} steps per run would fit, fewer than "
                                               f"--min_steps {args.min_steps}", arithmetic))
        return stages, None
    report_dir = work / "report"
    command = [sys.executable, "experiments/pgaml_vs_arcface.py", "--config", args.config, "--profile", args.profile,
               "--out", str(work / "experiment"), "--report_dir", str(report_dir), "--steps", str(steps),
               "--eval_every", str(max(1, steps // CURVE_POINTS))]
    code, seconds = run_logged(command, work / "experiment.log", deadline - time.monotonic() - RESERVE_S / 2)
    stages.append(Stage("experiment " + " ".join(command[1:]), seconds, status_of(code, seconds),
                        arithmetic + f" (log: {work / 'experiment.log'})"))
    return stages, report_dir


def archive(out: Path, work: Path, report_dir: Path | None) -> int:
    """experiment.tar.gz: the report, each run's results.json and log; the number of files in it."""
    members = []
    if report_dir is not None and report_dir.is_dir():
        members += sorted(p for p in report_dir.iterdir() if p.is_file())
    runs = work / "experiment" / "runs"
    if runs.is_dir():
        members += sorted(runs.glob("*/seed*/results.json")) + sorted(runs.glob("*/seed*.log"))
    members += [work / name for name in ("experiment.log", "calibration.log", "perf.log") if (work / name).is_file()]
    with atomic_path(out / "experiment.tar.gz") as tmp, tarfile.open(tmp, "w:gz") as tar:
        for path in members:
            tar.add(path, arcname=str(path.relative_to(work)))
    return len(members)


def summary(stages: list[Stage], budget: float, elapsed: float) -> str:
    lines = ["# GPU session", "", f"Budget {budget:.0f} s, used {elapsed:.0f} s.", "",
             "| stage | seconds | status | detail |", "| --- | ---: | --- | --- |"]
    lines += [f"| {s.name} | {s.seconds:.0f} | {s.status} | {s.detail} |" for s in stages]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    began = time.monotonic()
    deadline = began + args.budget
    args.out.mkdir(parents=True, exist_ok=True)
    if "experiment" not in args.skip:
        shutil.rmtree(args.work / "report", ignore_errors=True)  # a report of an earlier call is not this one's
    args.work.mkdir(parents=True, exist_ok=True)
    stages = [environment(args.out)]
    if "perf" in args.skip:
        stages.append(Stage("perf", 0.0, "skipped: --skip perf"))
    else:
        stages.append(perf_stage(args.out, args.work, args.budget * args.perf_share))
    report_dir = None
    if "experiment" in args.skip:
        stages.append(Stage("experiment", 0.0, "skipped: --skip experiment"))
    else:
        try:
            more, report_dir = experiment_stage(args, deadline)
            stages += more
        except UserError as error:
            stages.append(Stage("experiment", 0.0, f"failed: {error}"))
    files = archive(args.out, args.work, report_dir)
    stages.append(Stage("archive", 0.0, "ok", f"{args.out / 'experiment.tar.gz'}: {files} files"))
    text = summary(stages, args.budget, time.monotonic() - began)
    atomic_write_text(args.out / "summary.md", text)
    print(text, end="")
    return 0 if all(s.status == "ok" or s.status.startswith("skipped") for s in stages) else 1


if __name__ == "__main__":
    run_cli(main)
