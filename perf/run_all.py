"""Run every benchmark in perf/ and write perf/RESULTS.md: each headline measure, ours, the baseline measured in
the same run, the ratio, the target, and the machine.

    python -m perf.run_all [--only NAME,...] [--skip NAME,...] [--gpu] [--out perf/RESULTS.md] [--timeout 1800]

Each benchmark runs in its own process (`python -m perf.<name> ARGS`) with the arguments in `SUITE` (sized for a
2-core CPU: about 5 minutes in all); its `RESULT` lines (`perf.report`) make the table, and its whole output goes
below it. `--gpu` runs the GPU training measure instead (`perf.training` at emore's 85,742 classes, batch 128 / 256,
fp32 and bf16, Partial FC at 2M classes) and `perf.optimizer` on the CUDA device; without a GPU the file keeps that
command for whoever has one. A benchmark that fails is reported as failed with its last output lines; the others still run.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

from perf.report import parse
from utils import atomic_write_text

ROOT = Path(__file__).resolve().parent.parent
# (benchmark, arguments for this 2-core CPU)
SUITE = [
    ("data_loader", []),
    ("prepare_data", ["--records", "20000"]),
    ("verification", []),
    # 15 rounds: with the default 5, PGAML / ArcFace read 0.89-1.22 in five runs on a 2-core EPYC, 0.94-1.05 with 15
    ("heads", ["--classes", "10000", "--no-memory", "--reps", "15"]),
    ("partial_fc", ["--classes", "200000"]),
    # part of the per-step memory does not grow with the classes, so the ratio sampling buys grows with them
    # (RSS measured 3.2-3.6x at 200k, 6.0x at 1M; tensors alone 6.5x and 6.6x): the 1M row is the scale Partial FC is for
    ("partial_fc", ["--classes", "1000000"]),
    ("megaface", []),
    ("inference", ["--images", "64"]),
    ("faces", ["--rounds", "2"]),
    ("pose", ["--crops", "256"]),
    ("facebank", ["--frames", "20", "--detector", "yunet"]),
    ("memory", []),
    ("optimizer", []),
    # 1 warm-up + 3 timed steps measured ours at 0.76x the TreB1eN loop in one run on an EPYC, 2-3 warm-up + 8
    # timed steps at 1.1-1.4x in three: too few steps measure the first, slow ones. bf16 too: ours is taken at its
    # faster precision (on a CPU with native bf16, bf16), as arcface_torch's loop always autocasts
    ("training", ["--device", "cpu", "--nets", "mobilefacenet", "--batches", "32", "--classes", "1000",
                  "--precisions", "fp32,bf16", "--heads", "arcface,pgaml", "--steps", "8", "--warmup", "3",
                  "--pfc_classes", "100000", "--pfc_rate", "0.1"]),
]
GPU_TRAINING = ["--device", "cuda", "--nets", "ir_se_50,r50,mobilefacenet", "--batches", "128,256", "--precisions",
                "fp32,bf16", "--heads", "arcface,pgaml", "--classes", "85742", "--pfc_classes", "2000000",
                "--pfc_rate", "0.1", "--steps", "20", "--warmup", "5"]
GPU_ARGS = {"training": GPU_TRAINING, "optimizer": ["--device", "cuda"]}  # what --gpu runs on the GPU instead


def machine() -> str:
    import torch

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor()) if Path("/proc/cpuinfo").exists() else platform.processor()
    gpu = f", GPU {torch.cuda.get_device_name(0)}" if torch.cuda.is_available() else ", no GPU"
    return (f"{cpu}, {len(os.sched_getaffinity(0))} cores{gpu}; Python {platform.python_version()}, torch "
            f"{torch.__version__}; load average at start {os.getloadavg()[0]:.1f}")


def run(name: str, args: list[str], timeout: float) -> tuple[str, int, float]:
    started = time.perf_counter()
    try:
        done = subprocess.run([sys.executable, "-m", f"perf.{name}", *args], cwd=ROOT, capture_output=True, text=True,
                              timeout=timeout, env={**os.environ, "TQDM_DISABLE": "1"})
        output, code = done.stdout + ("\n" + done.stderr if done.returncode else ""), done.returncode
    except subprocess.TimeoutExpired as stopped:
        output, code = f"{stopped.stdout or ''}\ntimed out after {timeout:.0f} s", -1
    return output if isinstance(output, str) else output.decode(errors="replace"), code, time.perf_counter() - started


def table(results: list[tuple[str, dict]]) -> list[str]:
    lines = ["| benchmark | measure | ours | baseline | ratio | target | met |", "| --- | --- | ---: | --- | ---: | ---: | --- |"]
    for name, r in results:
        baseline = f"{r['baseline']:.4g} ({r['baseline_name']})" if r["baseline"] is not None else "-"
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else "-"
        target = f"{r['target']:.3g}x" if r["target"] is not None else "-"
        met = "-" if r["target"] is None or r["ratio"] is None else ("yes" if r["ratio"] >= r["target"] else "**no**")
        lines.append(f"| {name} | {r['measure']} | {r['ours']:.4g} {r['unit']} | {baseline} | {ratio} | {target} | "
                     f"{met} |")
    return lines


def report(runs: list[tuple[str, list[str], str, int, float]], gpu_ran: bool) -> str:
    results = [(name, r) for name, _, output, _, _ in runs for r in parse(output)]
    failed = [(name, code) for name, _, _, code, _ in runs if code != 0]
    lines = ["# Benchmark results", "",
             f"Written by `python -m perf.run_all` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC.", "",
             f"Machine: {machine()}.", "",
             "Every ratio compares ours with a baseline measured in the same run on the same machine; ratio > 1 is "
             "better for ours (speed: ours / baseline; time and memory: baseline / ours). The machine may be shared: "
             "absolute rates vary from run to run, ratios much less.", ""]
    lines += table(results)
    if failed:
        lines += ["", "Failed: " + ", ".join(f"`perf.{name}` (exit {code})" for name, code in failed)]
    if not gpu_ran:
        lines += ["", "## GPU training (not run here: no GPU)", "",
                  "On a machine with a CUDA GPU (CUDA torch installed in `.venv`, README), this adds the GPU rows: "
                  "IR-SE50, r50 and MobileFaceNet at batch 128 / 256, fp32 and bf16, ArcFace and PGAML at 85,742 "
                  "classes, Partial FC at 2M classes, peak memory, model FLOP utilisation and the data-wait "
                  "fraction, against a TreB1eN-style and an arcface_torch-style loop (targets 3x and 1.3x):", "",
                  "```bash", "python -m perf.run_all --gpu --only training,optimizer", "```", "",
                  "or the measure alone:", "", "```bash", "python -m perf.training " + " ".join(GPU_TRAINING), "```",
                  "", "(`optimizer` adds the fused SGD step against torch's foreach one on the GPU.) Ours uses torch's "
                  "fused SGD there; what fusing buys a whole training step, IR-SE50 at batch 128 in bf16 without it:",
                  "", "```bash", "python -m perf.training --device cuda --nets ir_se_50 --batches 128 --precisions bf16 "
                  "--heads arcface --fused_sgd off --baselines none --pfc_classes 0", "```"]
    lines += ["", "## Full output", ""]
    for name, args, output, code, seconds in runs:
        command = " ".join(["python -m", f"perf.{name}", *args])
        lines += [f"### `{command}`", "", f"{seconds:.0f} s, exit {code}", "", "```", output.strip()[-6000:], "```", ""]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default="", help="comma-separated benchmarks to run (default: all)")
    parser.add_argument("--skip", default="", help="comma-separated benchmarks to leave out")
    parser.add_argument("--gpu", action="store_true", help="run perf.training (at emore scale) and perf.optimizer "
                        "on the GPU")
    parser.add_argument("--out", type=Path, default=ROOT / "perf" / "RESULTS.md", help="the results file")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds before one benchmark is stopped")
    args = parser.parse_args(argv)
    suite = [(name, GPU_ARGS.get(name, extra) if args.gpu else extra) for name, extra in SUITE]
    known = {name for name, _ in suite}
    only, skip = set(filter(None, args.only.split(","))), set(filter(None, args.skip.split(",")))
    unknown = (only | skip) - known
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(sorted(unknown))}; choose from {', '.join(sorted(known))}")
    runs = []
    for name, extra in suite:
        if (only and name not in only) or name in skip:
            continue
        print(f"perf.{name} ...", end=" ", flush=True)
        output, code, seconds = run(name, extra, args.timeout)
        print(f"{seconds:.0f} s{'' if code == 0 else f', FAILED (exit {code})'}", flush=True)
        runs.append((name, extra, output, code, seconds))
    atomic_write_text(args.out, report(runs, gpu_ran=args.gpu))
    print(f"wrote {args.out}")
    return 0 if all(code == 0 for *_, code, _ in runs) else 1


if __name__ == "__main__":
    raise SystemExit(main())
