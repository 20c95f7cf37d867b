"""SGD's step over a backbone's parameters: torch's fused kernel (`train.py --fused_sgd on`) against torch's default
implementation (multi-tensor `foreach` on a GPU, a per-tensor loop on a CPU), measured in the same run.

    python -m perf.optimizer [--device auto] [--nets mobilefacenet,ir_se_50] [--rounds 5] [--steps 10]

Both optimisers take the trainer's settings (lr 0.1, momentum 0.9, weight decay 5e-4) over their own copy of the
backbone's parameters with the same random gradients; the two alternate round by round so that a shared machine's
load falls on both alike. The time is the median over rounds of one step (after one step that creates the momentum).
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from inference.runtime import resolve_device
from model import build_backbone
from perf.report import result
from perf.training import synchronise

SGD_SETTINGS = {"lr": 0.1, "momentum": 0.9, "weight_decay": 5e-4}


def optimiser(net: str, device: torch.device, fused: bool) -> torch.optim.SGD:
    torch.manual_seed(0)
    params = [p for p in build_backbone(net).to(device).parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p)
    sgd = torch.optim.SGD(params, fused=fused or None, **SGD_SETTINGS)
    sgd.step()  # creates the momentum buffers
    return sgd


def step_seconds(sgd: torch.optim.SGD, steps: int, device: torch.device) -> float:
    synchronise(device)
    start = time.perf_counter()
    for _ in range(steps):
        sgd.step()
    synchronise(device)
    return (time.perf_counter() - start) / steps


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, auto")
    parser.add_argument("--nets", default="mobilefacenet,ir_se_50", help="backbones whose parameters are stepped")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds (the median is reported)")
    parser.add_argument("--steps", type=int, default=10, help="steps per round")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    default_name = "torch's foreach" if device.type == "cuda" else "torch's per-tensor loop"
    for net in args.nets.split(","):
        fused, default = optimiser(net, device, True), optimiser(net, device, False)
        times = {"fused": [], "default": []}
        for _ in range(args.rounds):
            times["fused"].append(step_seconds(fused, args.steps, device))
            times["default"].append(step_seconds(default, args.steps, device))
        params = fused.param_groups[0]["params"]
        fused_ms, default_ms = (statistics.median(times[k]) * 1e3 for k in ("fused", "default"))
        print(f"{net}: {len(params)} tensors, {sum(p.numel() for p in params) / 1e6:.1f}M parameters on {device}: "
              f"fused {fused_ms:.2f} ms, {default_name} {default_ms:.2f} ms per step")
        result(f"SGD step, {net} ({device.type})", fused_ms, default_ms, "ms", default_name, higher_is_better=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
