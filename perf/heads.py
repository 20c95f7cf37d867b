"""Margin heads on CPU: forward + backward time and peak memory of every head, and PGAML / ArcFace.

    python -m perf.heads [--classes 10000 100000] [--batch 128] [--embedding 512] [--reps 5] [--reps-large 3]
                         [--threads 2] [--no-memory]

  head step     MarginHead forward (normalise, cosines, margin) + cross-entropy + backward
  margin step   the margin alone on a given cosine matrix + cross-entropy + backward (what a
                Partial FC adds on top of its own matmul)
  peak memory   peak RSS of one step above the RSS before it (parameters and inputs already
                allocated, gradients freed), in a fresh process with a fixed glibc mmap threshold:
                Linux VmHWM reset through /proc/self/clear_refs (torch has no CPU allocator
                statistics), else the ru_maxrss rise

Rounds interleave the heads (the order rotates each round; ArcFace and PGAML run next to each other)
so that a noisy neighbour slows all of them alike; times are medians over rounds, the PGAML / ArcFace
ratio is the median of the per-round ratios. Target: <= 1.1.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from heads import build_head, list_heads
from perf.report import result

TARGET_RATIO = 1.1
ROOT = Path(__file__).resolve().parent.parent  # the child runs as `python -m perf.heads` from here


def make_inputs(batch: int, embedding_size: int, num_classes: int, seed: int = 0) -> dict:
    generator = torch.Generator().manual_seed(seed)
    embeddings = torch.randn(batch, embedding_size, generator=generator) * 20
    return {
        "embeddings": embeddings,
        "labels": torch.randint(0, num_classes, (batch,), generator=generator),
        "yaw": torch.rand(batch, generator=generator) * 180 - 90,
        "height": torch.rand(batch, generator=generator) * 20,
        "norms": embeddings.norm(dim=1),
    }


def head_step(head, inputs: dict) -> None:
    embeddings = inputs["embeddings"].detach().requires_grad_(True)
    norms = embeddings.norm(dim=1)
    logits = head(embeddings, inputs["labels"], yaw=inputs["yaw"], height=inputs["height"], norms=norms)
    loss = F.cross_entropy(logits, inputs["labels"]) + head.regularizer(norms)
    loss.backward()
    head.zero_grad(set_to_none=True)


def margin_step(margin, cosine: torch.Tensor, inputs: dict) -> None:
    cosine = cosine.detach().requires_grad_(True)
    logits = margin(cosine, inputs["labels"], yaw=inputs["yaw"], height=inputs["height"], norms=inputs["norms"])
    F.cross_entropy(logits, inputs["labels"]).backward()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def time_heads(names, num_classes: int, rounds: int, args) -> tuple[dict, dict, list, list]:
    inputs = make_inputs(args.batch, args.embedding, num_classes)
    heads = {}
    for name in names:
        heads[name] = build_head(name, args.embedding, num_classes).train()
        if name != names[0]:
            heads[name].kernel.data = heads[names[0]].kernel.data   # the same centres for all
    with torch.no_grad():
        cosine = F.normalize(inputs["embeddings"]) @ F.normalize(heads[names[0]].kernel, dim=0)
    head_step(heads[names[0]], inputs)   # warm-up: thread pools, lazily allocated buffers
    for name in names:
        margin_step(heads[name].margin, cosine, inputs)
    head_times = {name: [] for name in names}
    margin_times = {name: [] for name in names}
    head_ratios, margin_ratios = [], []
    for round_index in range(rounds):
        order = names[round_index % len(names):] + names[:round_index % len(names)]
        for name in order:
            head_times[name].append(timed(lambda: head_step(heads[name], inputs)))
            margin_times[name].append(timed(lambda: margin_step(heads[name].margin, cosine, inputs)))
        head_ratios.append(head_times["pgaml"][-1] / head_times["arcface"][-1])
        margin_ratios.append(margin_times["pgaml"][-1] / margin_times["arcface"][-1])
    return head_times, margin_times, head_ratios, margin_ratios


# ---- peak memory in a fresh process ------------------------------------------------------------

def _status_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def _peak_kib(step) -> tuple[int, str]:
    """Peak resident memory of `step()` above the resident memory before it."""
    if _reset_peak():
        before = _status_kib("VmRSS")
        step()
        return _status_kib("VmHWM") - before, "VmHWM"
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    step()
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before, "ru_maxrss"


def memory_child(num_classes: int, args) -> None:
    """Peak memory of every head, one after the other, in this (fresh) process."""
    torch.set_num_threads(args.threads)
    inputs = make_inputs(args.batch, args.embedding, num_classes)
    report, warm = {}, False
    for name in list_heads():
        head = build_head(name, args.embedding, num_classes).train()
        with torch.no_grad():
            cosine = F.normalize(inputs["embeddings"]) @ F.normalize(head.kernel, dim=0)
        if not warm:   # thread pools, lazily allocated buffers
            head_step(head, inputs)
            warm = True
        margin_step(head.margin, cosine, inputs)
        head_kib, method = _peak_kib(lambda: head_step(head, inputs))
        margin_kib, _ = _peak_kib(lambda: margin_step(head.margin, cosine, inputs))
        report[name] = {"head_mib": head_kib / 1024, "margin_mib": margin_kib / 1024, "method": method}
    print(json.dumps(report))


def measure_memory(num_classes: int, args) -> dict:
    command = [sys.executable, "-m", "perf.heads", "--memory-child", "--classes", str(num_classes),
               "--batch", str(args.batch), "--embedding", str(args.embedding), "--threads", str(args.threads)]
    # a fixed mmap threshold makes glibc map every large buffer afresh and unmap it on free, so the
    # resident set follows the live tensors, not the heap glibc keeps from earlier heads and steps
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="131072")
    result = subprocess.run(command, capture_output=True, text=True, check=True, env=env, cwd=ROOT)
    return json.loads(result.stdout.strip().splitlines()[-1])


# ---- report ------------------------------------------------------------------------------------

def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, nargs="+", default=[10_000, 100_000])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--embedding", type=int, default=512)
    parser.add_argument("--reps", type=int, default=5, help="rounds for up to 20k classes")
    parser.add_argument("--reps-large", type=int, default=3, help="rounds above 20k classes")
    parser.add_argument("--threads", type=int, default=min(2, os.cpu_count() or 1))
    parser.add_argument("--no-memory", action="store_true")
    parser.add_argument("--memory-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.memory_child:
        memory_child(args.classes[0], args)
        return 0

    torch.set_num_threads(args.threads)
    names = list_heads()
    print(f"batch {args.batch}, embedding {args.embedding}, float32, CPU, {args.threads} threads, "
          f"torch {torch.__version__}")
    ok = True
    for num_classes in args.classes:
        started = time.perf_counter()
        rounds = args.reps if num_classes <= 20_000 else args.reps_large
        head_times, margin_times, head_ratios, margin_ratios = time_heads(names, num_classes, rounds, args)
        memory = {} if args.no_memory else measure_memory(num_classes, args)
        method = next(iter(memory.values()))["method"] if memory else "not measured"
        arcface_head = statistics.median(head_times["arcface"])
        print(f"\n{num_classes} classes: {rounds} rounds, peak memory by {method} "
              f"({time.perf_counter() - started:.0f} s)")
        print(f"{'head':<16}{'head step ms':>14}{'vs arcface':>12}{'peak MiB':>10}"
              f"{'margin step ms':>16}{'peak MiB':>10}")
        for name in names:
            head_ms = 1e3 * statistics.median(head_times[name])
            margin_ms = 1e3 * statistics.median(margin_times[name])
            head_mib = f"{memory[name]['head_mib']:.0f}" if memory else "-"
            margin_mib = f"{memory[name]['margin_mib']:.0f}" if memory else "-"
            print(f"{name:<16}{head_ms:>14.1f}{head_ms / 1e3 / arcface_head:>12.2f}{head_mib:>10}"
                  f"{margin_ms:>16.2f}{margin_mib:>10}")
        head_ratio, margin_ratio = statistics.median(head_ratios), statistics.median(margin_ratios)
        verdict = "ok" if head_ratio <= TARGET_RATIO else "ABOVE TARGET"
        ok &= head_ratio <= TARGET_RATIO
        print(f"PGAML / ArcFace: head step {head_ratio:.3f} (target <= {TARGET_RATIO}: {verdict}), "
              f"margin step {margin_ratio:.3f}")
        result(f"PGAML head step, {num_classes:,} classes (time ratio)", head_ratio, 1.0, "x ArcFace's", "ArcFace",
               1 / TARGET_RATIO, higher_is_better=False)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
