"""Where a CPU training step's time goes: torch.profiler over the Learner's own steps, the operators by self time,
and the share spent outside any operator (Python: the loop, hooks, the optimiser's bookkeeping).

    python -m perf.profile_step [--net mobilefacenet] [--batch 32] [--classes 1000] [--head arcface]
                                [--steps 6] [--warmup 2] [--threads N] [--top 15] [--trace FILE.json]

The steps run as `perf.training` runs ours (in-memory JPEG faces decoded by the DataLoader, the logging hook);
`--trace` writes a Chrome trace (chrome://tracing, Perfetto) of the profiled steps.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import torch

from config import Config
from perf.report import result
from perf.training import JpegFaces
from utils import run_cli


class _Profiled:
    """A hook that starts the profiler after the warm-up steps and steps it with the loop."""

    def __init__(self, warmup: int, profiler):
        self.warmup, self.profiler, self.started, self.step_times = warmup, profiler, False, []

    def __getattr__(self, point):
        return lambda *args: None

    def after_step(self, learner, record) -> None:
        if self.started:
            self.step_times.append(record.data_wait_s + record.compute_s)
        elif record.step >= self.warmup:
            self.profiler.__enter__()
            self.started = True


def main(argv=None) -> int:
    from torch.profiler import ProfilerActivity, profile

    from learner import Learner
    from training.hooks import Checkpointing, Evaluation

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--net", default="mobilefacenet", choices=("mobilefacenet", "r50", "ir_se"),
                        help="backbone family (ir_se: IR-SE50)")
    parser.add_argument("--batch", type=int, default=32, help="batch size")
    parser.add_argument("--classes", type=int, default=1000, help="classes")
    parser.add_argument("--head", default="arcface", help="margin head")
    parser.add_argument("--steps", type=int, default=6, help="profiled steps")
    parser.add_argument("--warmup", type=int, default=2, help="steps before profiling")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: the Learner's choice from the free cores)")
    parser.add_argument("--top", type=int, default=15, help="operators listed")
    parser.add_argument("--trace", default=None, help="write a Chrome trace of the profiled steps here")
    args = parser.parse_args(argv)
    os.environ["TQDM_DISABLE"] = "1"
    profiler = profile(activities=[ProfilerActivity.CPU], record_shapes=False)
    with tempfile.TemporaryDirectory() as work:
        config = Config(data_path=work, work_path=work, net_mode=args.net, head=args.head, batch_size=args.batch,
                        epochs=1, lr=0.1, max_steps=args.warmup + args.steps, val_sets="", device="cpu",
                        channels_last=True, num_threads=args.threads, log_every=10**9, eval_every=10**9,
                        save_every=10**9)
        hook = _Profiled(args.warmup, profiler)
        learner = Learner(config, dataset=JpegFaces(args.batch * (args.warmup + args.steps + 1), args.classes),
                          val_sets=[], hooks=(hook,))
        learner.hooks = [h for h in learner.hooks if not isinstance(h, (Checkpointing, Evaluation))]
        started = time.perf_counter()
        learner.train()
        profiler.__exit__(None, None, None)
        wall = time.perf_counter() - started
    events = profiler.key_averages()
    print(events.table(sort_by="self_cpu_time_total", row_limit=args.top))
    step_s = sum(hook.step_times) / len(hook.step_times)
    # top-level operators' total time, from the trace's events that no other operator encloses
    spans = sorted((e.time_range.start, e.time_range.end) for e in profiler.events() if e.device_type.name == "CPU")
    covered, reach = 0.0, -1.0
    for start, end in spans:
        if end > reach:
            covered += end - max(start, reach)
            reach = end
    profiled_us = sum(hook.step_times) * 1e6
    outside = max(0.0, 1 - covered / profiled_us)
    print(f"{config.backbone_name} batch {args.batch}, {args.classes} classes, {torch.get_num_threads()} threads: "
          f"{step_s * 1e3:.0f} ms per step ({args.batch / step_s:.0f} img/s); "
          f"{outside:.1%} of the profiled steps outside any operator (Python); whole run {wall:.1f} s")
    result(f"CPU training step, {config.backbone_name} batch {args.batch}: time outside operators", outside * 100,
           None, "% of the step")
    if args.trace:
        profiler.export_chrome_trace(args.trace)
        print(f"wrote {args.trace}")
    return 0


if __name__ == "__main__":
    run_cli(main)  # a bad flag (--threads 0) is one error line, exit 2
