"""Partial FC at a low sample rate against sample_rate 1.0 (model parallelism), both measured in this run.

    python bench/partial_fc.py [--classes 1000000] [--embedding 512] [--batch 128] [--world 2]
                               [--rates 0.1 1.0] [--steps 3] [--warmup 1]

Each rate runs in its own `--world` gloo processes on this CPU (one thread each), so the peaks of
different rates never mix. Per process: ArcFace margin, `--batch` random embeddings per rank, random
labels over all classes each step.

  step time     forward + backward of one step (all-gather, sampling, cosines, margin, distributed
                cross-entropy, gradients); the slowest rank per step, median over `--steps` timed steps
  peak RSS      ru_maxrss of each process, the largest over ranks, split into
                  centres    this rank's kernel (stored whatever the rate)
                  gradient   its kernel gradient (dense whatever the rate, see partial_fc.py)
                  per step   the rest above the RSS before the first step: logits, softmax, their
                             gradients, the gathered centres, temporaries — what sampling shrinks
An optimiser's state (SGD momentum: one more kernel-sized tensor) would add the same to both rates.
Targets: the low rate >= 5x faster and >= 5x less peak memory than 1.0.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from heads import build_margin
from partial_fc import PartialFC

TARGET_SPEEDUP, TARGET_MEMORY = 5.0, 5.0
GIB = 2 ** 30


def current_rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_rss() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def worker(rank: int, args, rate: float, out_dir: Path) -> None:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.world))
    dist.init_process_group("gloo", init_method=f"file://{out_dir / 'rendezvous'}", rank=rank,
                            world_size=args.world)
    try:
        torch.manual_seed(rank)
        module = PartialFC(args.embedding, args.classes, build_margin("arcface"), sample_rate=rate)
        kernel_bytes = module.kernel.numel() * module.kernel.element_size()
        features = torch.randn(args.batch, args.embedding)
        rss_before_steps = current_rss()
        times = []
        for _ in range(args.warmup + args.steps):
            embeddings = features.clone().requires_grad_()
            labels = torch.randint(0, args.classes, (args.batch,))
            dist.barrier()
            start = time.perf_counter()
            module(embeddings, labels).backward()
            times.append(time.perf_counter() - start)
            module.kernel.grad = None
        result = {"times": times[args.warmup:], "peak": peak_rss(), "before_steps": rss_before_steps,
                  "kernel_bytes": kernel_bytes, "num_local": module.num_local,
                  "num_sampled": module.num_local if module.sampled_index is None else module.sampled_index.numel()}
        (out_dir / f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def measure(args, rate: float) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = Path(tmp)
        mp.spawn(worker, args=(args, rate, out_dir), nprocs=args.world, join=True)
        ranks = [json.loads((out_dir / f"rank{r}.json").read_text()) for r in range(args.world)]
    step = statistics.median(max(per_rank) for per_rank in zip(*(r["times"] for r in ranks)))
    worst = max(ranks, key=lambda r: r["peak"])
    gradient = worst["kernel_bytes"]
    return {"step": step, "peak": worst["peak"], "centres": worst["kernel_bytes"], "gradient": gradient,
            "per_step": worst["peak"] - worst["before_steps"] - gradient,
            "baseline": worst["before_steps"] - worst["kernel_bytes"],
            "sampled": f"{worst['num_sampled']}/{worst['num_local']}"}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--classes", type=int, default=1_000_000)
    parser.add_argument("--embedding", type=int, default=512)
    parser.add_argument("--batch", type=int, default=128, help="per rank")
    parser.add_argument("--world", type=int, default=2)
    parser.add_argument("--rates", type=float, nargs=2, default=[0.1, 1.0], metavar=("LOW", "FULL"))
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    args = parser.parse_args()
    low, full = args.rates
    print(f"{args.classes} classes x {args.embedding}, batch {args.batch} x {args.world} gloo processes, "
          f"{args.steps} timed steps after {args.warmup} warm-up")
    results = {}
    for rate in (low, full):
        began = time.perf_counter()
        results[rate] = measure(args, rate)
        r = results[rate]
        print(f"sample_rate {rate:4.2f}: step {r['step']:7.2f} s | peak RSS {r['peak'] / GIB:5.2f} GiB = "
              f"torch+inputs {r['baseline'] / GIB:4.2f} + centres {r['centres'] / GIB:4.2f} + gradient "
              f"{r['gradient'] / GIB:4.2f} + per step {r['per_step'] / GIB:5.2f} | centres used "
              f"{r['sampled']} per rank | {time.perf_counter() - began:.0f} s wall")
    a, b = results[low], results[full]
    speedup, memory = b["step"] / a["step"], b["peak"] / a["peak"]
    print(f"speed-up {low} vs {full}:          {speedup:5.2f}x  (target >= {TARGET_SPEEDUP})  "
          f"{'PASS' if speedup >= TARGET_SPEEDUP else 'FAIL'}")
    print(f"peak memory ratio {full} / {low}:  {memory:5.2f}x  (target >= {TARGET_MEMORY})  "
          f"{'PASS' if memory >= TARGET_MEMORY else 'FAIL'}")
    print(f"per-step memory ratio (beyond centres and their gradient): {b['per_step'] / max(a['per_step'], 1):5.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
