"""Backbone throughput on this CPU: train step and inference images/s per backbone and precision / layout.

    python -m perf.backbones [--models NAME ...] [--all] [--configs fp32 channels_last bf16]
                             [--iters 2] [--deep-iters 1] [--small-iters 5] [--bf16-all] [--threads N]

  train step   forward + backward + SGD step (momentum 0.9, weight decay 5e-4), batch 16, through a
               normalised-softmax classifier over 1000 classes (scale 64) so that the loss is realistic
  inference    forward in eval mode under torch.inference_mode, batch 32
  configs      fp32 (contiguous NCHW; the baseline), channels_last (fp32, model and input
               channels_last), bf16 (torch.autocast("cpu", dtype=torch.bfloat16), contiguous)

Each (backbone, config, mode) runs one warm-up iteration at the benchmark batch, then a fixed number of
timed iterations: --small-iters for MobileFaceNet, --iters for 50-layer and --deep-iters for 100/152-layer
networks. Ratios are against the fp32 contiguous rate of the same backbone in the same run.

Time on 2 AVX2 cores: a 50-layer train step takes ~6 s in fp32. Without native bf16 kernels
(AVX512-BF16 / AMX) PyTorch runs bf16 convolutions through a slow generic path, ~10x slower than fp32, so
there bf16 is measured for MobileFaceNet only unless --bf16-all is given; --bf16-all warms such bf16 runs
up with a batch of 2 (that path builds nothing per shape) and times --bf16-iters iterations. The default
set (MobileFaceNet, IR-SE-50, IR-50, r50) takes ~4 minutes; --all adds the 100/152-layer networks (~15
more minutes); --bf16-all adds ~3 minutes per 50-layer network.
"""
from __future__ import annotations

import argparse
import contextlib
import sys
import time

import torch
import torch.nn.functional as F

from model import build_backbone, list_backbones

TRAIN_BATCH, INFER_BATCH = 16, 32
DEFAULT_MODELS = ["mobilefacenet", "ir_se_50", "ir_50", "r50"]
WARMUP_BATCH_BF16 = 2
CONFIGS = ["fp32", "channels_last", "bf16"]
NUM_CLASSES, SCALE = 1000, 64.0


def native_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def layout(tensor_or_model, config: str):
    """The model or input batch in the memory format of `config`."""
    if config == "channels_last":
        return tensor_or_model.to(memory_format=torch.channels_last)
    return tensor_or_model


def precision(config: str):
    return torch.autocast("cpu", dtype=torch.bfloat16) if config == "bf16" else contextlib.nullcontext()


def train_rate(name: str, config: str, iters: int, small_warmup: bool) -> float:
    torch.manual_seed(0)
    model = layout(build_backbone(name).train(), config)
    classifier = torch.nn.Parameter(torch.randn(model.embedding_size, NUM_CLASSES) * 0.01)
    params = [p for p in model.parameters() if p.requires_grad] + [classifier]
    optimizer = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4)

    def step(batch: int):
        images = layout(torch.randn(batch, 3, 112, 112), config)
        labels = torch.randint(0, NUM_CLASSES, (batch,))

        def run():
            optimizer.zero_grad(set_to_none=True)
            with precision(config):
                embeddings = model(images)
                logits = SCALE * embeddings @ F.normalize(classifier, dim=0)
            F.cross_entropy(logits.float(), labels).backward()
            optimizer.step()
        return run

    return timed(step, TRAIN_BATCH, WARMUP_BATCH_BF16 if small_warmup else TRAIN_BATCH, iters)


def infer_rate(name: str, config: str, iters: int, small_warmup: bool) -> float:
    torch.manual_seed(0)
    model = layout(build_backbone(name).eval(), config)

    def step(batch: int):
        images = layout(torch.randn(batch, 3, 112, 112), config)

        def run():
            with torch.inference_mode(), precision(config):
                model(images)
        return run

    return timed(step, INFER_BATCH, WARMUP_BATCH_BF16 if small_warmup else INFER_BATCH, iters)


def timed(step, batch: int, warmup_batch: int, iters: int) -> float:
    """Images per second over `iters` timed iterations of `step(batch)` after one warm-up iteration."""
    step(warmup_batch)()
    run = step(batch)
    start = time.perf_counter()
    for _ in range(iters):
        run()
    return iters * batch / (time.perf_counter() - start)


def plan(name: str, config: str, args) -> tuple[int, bool] | None:
    """(timed iterations, small-batch warm-up) for one measurement, or None to skip it."""
    emulated_bf16 = config == "bf16" and not native_bf16()
    if name == "mobilefacenet":
        return args.small_iters, False
    if emulated_bf16:
        return (args.bf16_iters, True) if args.bf16_all else None
    return (args.deep_iters if name.endswith(("100", "152")) else args.iters), False


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=DEFAULT_MODELS, choices=list_backbones())
    parser.add_argument("--all", action="store_true", help="every registered backbone")
    parser.add_argument("--configs", nargs="+", default=CONFIGS, choices=CONFIGS)
    parser.add_argument("--iters", type=int, default=2, help="timed iterations of 50-layer networks")
    parser.add_argument("--deep-iters", type=int, default=1, help="timed iterations of 100/152-layer networks")
    parser.add_argument("--small-iters", type=int, default=5, help="timed iterations of MobileFaceNet")
    parser.add_argument("--bf16-all", action="store_true",
                        help="also measure emulated bf16 (no native kernels) for the IR / IResNet networks")
    parser.add_argument("--bf16-iters", type=int, default=1, help="timed iterations of emulated bf16 (--bf16-all)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    models = list_backbones() if args.all else args.models
    configs = ["fp32"] + [c for c in args.configs if c != "fp32"]  # the baseline always runs, first
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, native bf16 kernels: {native_bf16()}; "
          f"train batch {TRAIN_BATCH}, inference batch {INFER_BATCH}, 112x112", flush=True)
    started = time.perf_counter()
    rows = []
    for name in models:
        rates = {}
        for mode, measure in (("train", train_rate), ("infer", infer_rate)):
            for config in configs:
                how = plan(name, config, args)
                rates[mode, config] = None if how is None else measure(name, config, *how)
        rows.append((name, rates))
        print(f"  {name}: done ({time.perf_counter() - started:.0f} s)", file=sys.stderr, flush=True)
    print_table(rows, configs)
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


def print_table(rows, configs) -> None:
    header = "  ".join(f"{mode} {config:>13s}" for mode in ("train", "infer") for config in configs)
    print(f"\nimages/s (ratio to fp32 contiguous of the same backbone)\n{'backbone':14s}  {header}")
    for name, rates in rows:
        cells = []
        for mode in ("train", "infer"):
            base = rates[mode, "fp32"]
            for config in configs:
                value = rates[mode, config]
                cells.append("skipped" if value is None else
                             f"{value:8.1f}" + (" (x1.00)" if config == "fp32" else f" (x{value / base:.2f})"))
        print(f"{name:14s}  " + "  ".join(f"{cell:>19s}" for cell in cells))
    if any(value is None for _, rates in rows for value in rates.values()):
        print("skipped: bf16 without native kernels (~10x slower than fp32 here); --bf16-all measures it")


if __name__ == "__main__":
    sys.exit(main())
