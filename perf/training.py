"""Training throughput, ours against the loops users would pick instead, measured in the same run on the same
device, batch and classes: images/s, peak memory, model FLOP utilisation, and (ours) the data-wait fraction.

    python -m perf.training [--device auto] [--nets ir_se_50,r50,mobilefacenet] [--batches 128,256]
                            [--precisions fp32,bf16] [--heads arcface,pgaml] [--classes 85742]
                            [--pfc_classes 2000000] [--pfc_rate 0.1] [--steps 20] [--warmup 5] [--compile]
                            [--fused_sgd auto] [--baselines treb1en,arcface_torch] [--json FILE]

  ours           the real trainer: a Learner (learner.py) over an in-memory set of JPEG faces decoded per item
                 (by DataLoader workers on a GPU, in the training process on a CPU: the Learner's defaults),
                 channels_last, AMP at the given precision, Partial FC (all centres, or --pfc_rate of
                 --pfc_classes), the hooks that log, torch's fused SGD (--fused_sgd off: torch's default,
                 to measure what fusing buys); its own step timings (data wait + compute)
  treb1en        TreB1eN's loop as its code describes it: the same network (with torch's nn.PReLU), fp32,
                 contiguous NCHW, input normalised on the host and copied without pinning, a plain FC ArcFace
                 over every class (s=64, m=0.5), SGD momentum 0.9, weight decay 5e-4 except on BatchNorm
  arcface_torch  arcface_torch's loop as its documentation describes it: the same network (torch's PReLU),
                 fp16 autocast with a GradScaler, Partial FC v2 (positives + uniformly sampled negatives up to
                 the sample rate, normalised in fp16, margin and softmax in fp32), SGD lr 0.1 momentum 0.9
                 weight decay 5e-4

Baselines get their batches already built in host memory (no decoding): what they measure is their step alone,
which favours them. FLOPs come from torch's FlopCounterMode over one forward + backward; utilisation uses the
device's dense bf16/fp16 peak where it is known (H100/H200 989 TFLOP/s, A100 312), "-" elsewhere.
On this 2-core CPU: `python -m perf.training --device cpu --nets mobilefacenet --batches 32 --classes 1000
--precisions fp32 --steps 3 --warmup 1` runs in about a minute.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import tempfile
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import Dataset

from config import FUSED_SGD_MODES, Config
from data.images import decode_rgb, encode_jpeg
from inference.runtime import AMP_DTYPES, resolve_device
from model import PReLU, build_backbone
from perf.report import result

# dense tensor-core peaks (FLOP/s) for 16-bit inputs, from the vendors' data sheets
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "A10": 125e12, "V100": 125e12}
TREB1EN_SCALE, TREB1EN_MARGIN = 64.0, 0.5
TARGETS = {"treb1en": 3.0, "arcface_torch": 1.3}  # ours / baseline images/s on the same GPU, batch and classes


@dataclass
class Row:
    trainer: str
    net: str
    batch: int
    precision: str
    head: str
    classes: int
    sample_rate: float
    images_per_s: float
    peak_memory_gib: float | None
    tflops_per_s: float
    utilisation: float | None
    data_wait_fraction: float | None = None


class JpegFaces(Dataset):
    """`count` items cycling over a pool of 112x112 JPEGs, decoded and randomly flipped per item, as training
    reads emore; labels spread over `num_classes`; yaw and height for PGAML."""

    def __init__(self, count: int, num_classes: int, pool: int = 256, seed: int = 0):
        from data.datasets import SideInfo

        rng = np.random.default_rng(seed)
        smooth = [np.clip(rng.normal(128, 40, (14, 14, 3)), 0, 255).astype(np.uint8) for _ in range(pool)]
        import cv2
        self.jpegs = [encode_jpeg(cv2.resize(s, (112, 112), interpolation=cv2.INTER_CUBIC)) for s in smooth]
        self.count, self.num_classes = count, num_classes
        self.yaw = rng.uniform(-90, 90, count).astype(np.float32)
        self.side_info = SideInfo.__new__(SideInfo)
        self.side_info.names = ["yaw", "height"]

    def set_epoch(self, epoch: int) -> None:
        pass

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):
        rgb = decode_rgb(self.jpegs[index % len(self.jpegs)])
        if index % 2:
            rgb = rgb[:, ::-1]
        return rgb.transpose(2, 0, 1), index % self.num_classes, {"yaw": float(self.yaw[index]), "height": 3.0}


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_FLOPS.items() if key in name), None)


def step_flops(network: torch.nn.Module, classes: int, batch: int, device: torch.device) -> float:
    """FLOPs of one forward + backward of the backbone and a full (batch x classes) classifier."""
    from torch.utils.flop_counter import FlopCounterMode

    x = torch.randn(2, 3, 112, 112, device=device)
    counter = FlopCounterMode(display=False)
    with counter:
        network(x).float().sum().backward()
    network.zero_grad(set_to_none=True)
    embedding = network.embedding_size
    return counter.get_total_flops() / 2 * batch + 3 * 2 * batch * embedding * classes


def memory_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------------------------- ours

class _Timings:
    """A hook recording each step's data wait and compute after the warm-up steps."""

    def __init__(self, warmup: int):
        self.warmup, self.samples, self.wait, self.compute = warmup, 0, 0.0, 0.0

    def __getattr__(self, point):  # every other hook point: nothing to do
        return lambda *args: None

    def after_step(self, learner, record) -> None:
        if record.step > self.warmup:
            self.samples += record.samples
            self.wait += record.data_wait_s
            self.compute += record.compute_s


DEPTH_FAMILIES = ("ir_se", "ir")  # net modes whose depth is part of the benchmark's name


def net_name(mode: str, depth: int) -> str:
    """The benchmark's name of a backbone: ('ir_se', 50) -> 'ir_se_50'; ('r50', any) -> 'r50'."""
    return f"{mode}_{depth}" if mode in DEPTH_FAMILIES else mode


def parse_net(net: str) -> tuple[str, int]:
    """(Config.net_mode, Config.depth) of a benchmark's backbone name, the inverse of net_name."""
    family, _, depth = net.rpartition("_")  # 'r50', 'mobilefacenet' are families of their own
    return (family, int(depth)) if family in DEPTH_FAMILIES else (net, 50)


def ours(net: str, batch: int, precision: str, head: str, classes: int, sample_rate: float, steps: int,
         warmup: int, device: torch.device, compile: bool, fused_sgd: str = "auto") -> tuple[float, float]:
    """(images/s, data-wait fraction) of the Learner's own loop."""
    from learner import Learner
    from training.hooks import Checkpointing, Evaluation

    name, depth = parse_net(net)
    with tempfile.TemporaryDirectory() as work:
        config = Config(data_path=work, work_path=work, net_mode=name, depth=depth, head=head,
                        sample_rate=sample_rate, batch_size=batch, epochs=1, lr=0.1,
                        amp="off" if precision == "fp32" else precision, channels_last=True, compile=compile,
                        fused_sgd=fused_sgd,
                        max_steps=warmup + steps, val_sets="", device=str(device), log_every=10**9,
                        eval_every=10**9, save_every=10**9, use_height=head == "pgaml")
        timings = _Timings(warmup)
        learner = Learner(config, dataset=JpegFaces(batch * (warmup + steps + 1), classes), val_sets=[],
                          hooks=(timings,))
        learner.hooks = [h for h in learner.hooks if not isinstance(h, (Checkpointing, Evaluation))]
        learner.train()
    seconds = timings.wait + timings.compute
    return timings.samples / seconds, timings.wait / seconds


# ------------------------------------------------------------------------------------------ baselines

def treb1en_arcface_logits(embeddings: torch.Tensor, kernel: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """TreB1eN's Arcface head: cos(theta + m) on the target where theta + m < pi, else cos(theta) - m sin(m)."""
    cos = (embeddings @ F.normalize(kernel, dim=0)).clamp(-1, 1)
    target = cos.gather(1, labels[:, None])
    sin = (1 - target**2).clamp_min(0).sqrt()
    with_margin = target * math.cos(TREB1EN_MARGIN) - sin * math.sin(TREB1EN_MARGIN)
    keep = target > math.cos(math.pi - TREB1EN_MARGIN)
    with_margin = torch.where(keep, with_margin, target - TREB1EN_MARGIN * math.sin(TREB1EN_MARGIN))
    return TREB1EN_SCALE * cos.scatter(1, labels[:, None], with_margin)


def reference_network(net: str, device: torch.device) -> torch.nn.Module:
    """Our backbone `net` as the reference trainers run it: with torch's nn.PReLU (ours has a faster CPU backward,
    model.PReLU; the same forward and, to the bit, the same gradients)."""
    network = build_backbone(net)
    for module in network.modules():
        if isinstance(module, PReLU):
            module.__class__ = torch.nn.PReLU
    return network.to(device).train()


def treb1en(net: str, batch: int, classes: int, steps: int, warmup: int, device: torch.device) -> float:
    torch.manual_seed(0)
    network = reference_network(net, device)
    kernel = torch.nn.Parameter(torch.empty(network.embedding_size, classes, device=device).uniform_(-1, 1))
    decay = [p for n, p in network.named_parameters() if "bn" not in n and p.ndim > 1] + [kernel]
    no_decay = [p for n, p in network.named_parameters() if not ("bn" not in n and p.ndim > 1)]
    optimizer = torch.optim.SGD([{"params": decay, "weight_decay": 5e-4}, {"params": no_decay}], lr=1e-3,
                                momentum=0.9)
    images = (torch.randint(0, 256, (batch, 3, 112, 112)).float() / 255 - 0.5) / 0.5  # normalised on the host
    labels = torch.randint(0, classes, (batch,))

    def step():
        optimizer.zero_grad()
        embeddings = network(images.to(device))
        loss = F.cross_entropy(treb1en_arcface_logits(embeddings, kernel, labels.to(device)), labels.to(device))
        loss.backward()
        optimizer.step()
        return loss.item()
    return timed(step, batch, steps, warmup, device)


def arcface_torch(net: str, batch: int, classes: int, sample_rate: float, steps: int, warmup: int,
                  device: torch.device) -> float:
    torch.manual_seed(0)
    network = reference_network(net, device)
    weight = torch.nn.Parameter(torch.normal(0, 0.01, (classes, network.embedding_size), device=device))
    optimizer = torch.optim.SGD([{"params": network.parameters()}, {"params": weight}], lr=0.1, momentum=0.9,
                                weight_decay=5e-4)
    scaler = torch.amp.GradScaler(device.type, growth_interval=100, enabled=device.type == "cuda")
    images = torch.randint(0, 256, (batch, 3, 112, 112), dtype=torch.uint8).pin_memory() \
        if device.type == "cuda" else torch.randint(0, 256, (batch, 3, 112, 112), dtype=torch.uint8)
    labels = torch.randint(0, classes, (batch,), device=device)
    num_sample = max(1, int(sample_rate * classes))
    dtype = torch.float16 if device.type == "cuda" else torch.bfloat16

    def step():
        optimizer.zero_grad()
        x = (images.to(device, non_blocking=True).float() / 255 - 0.5) / 0.5
        with torch.autocast(device.type, dtype=dtype):
            embeddings = network(x)
        if num_sample < classes:  # Partial FC v2: the batch's classes plus random others
            positive = torch.unique(labels)
            scores = torch.rand(classes, device=device)
            scores[positive] = 2.0
            index = torch.topk(scores, max(num_sample, len(positive)))[1].sort()[0]
            local = torch.searchsorted(index, labels)
        else:
            index, local = None, labels
        active = weight[index] if index is not None else weight
        with torch.autocast(device.type, dtype=dtype):
            logits = F.linear(F.normalize(embeddings), F.normalize(active))
        logits = logits.float().clamp(-1, 1)
        target = logits.gather(1, local[:, None]).acos() + TREB1EN_MARGIN
        logits = TREB1EN_SCALE * logits.scatter(1, local[:, None], target.cos())
        loss = F.cross_entropy(logits, local)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        return loss.item()
    return timed(step, batch, steps, warmup, device)


def timed(step, batch: int, steps: int, warmup: int, device: torch.device) -> float:
    for _ in range(warmup):
        step()
    synchronise(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronise(device)
    return steps * batch / (time.perf_counter() - start)


# ------------------------------------------------------------------------------------------------ run

def measure(trainer: str, net: str, batch: int, precision: str, head: str, classes: int, sample_rate: float,
            args, device: torch.device) -> Row:
    reset_memory(device)
    wait = None
    if trainer == "ours":
        rate, wait = ours(net, batch, precision, head, classes, sample_rate, args.steps, args.warmup, device,
                          args.compile, args.fused_sgd)
    elif trainer == "treb1en":
        rate = treb1en(net, batch, classes, args.steps, args.warmup, device)
    else:
        rate = arcface_torch(net, batch, classes, sample_rate, args.steps, args.warmup, device)
    flops = step_flops(build_backbone(net).to(device).train(), int(classes * sample_rate), 1, device) * rate
    peak = peak_flops(device)
    return Row(trainer, net, batch, precision, head, classes, sample_rate, rate, memory_gib(device), flops / 1e12,
               flops / peak if peak else None, wait)


def plan(args) -> list[tuple]:
    """(trainer, net, batch, precision, head, classes, sample rate) of every measure."""
    runs = []
    for net in args.nets.split(","):
        for batch in map(int, args.batches.split(",")):
            for precision in args.precisions.split(","):
                for head in args.heads.split(","):
                    runs.append(("ours", net, batch, precision, head, args.classes, 1.0))
            if "treb1en" in args.baselines:
                runs.append(("treb1en", net, batch, "fp32", "arcface", args.classes, 1.0))
            if "arcface_torch" in args.baselines:
                runs.append(("arcface_torch", net, batch, args.half, "arcface", args.classes, 1.0))
        if args.pfc_classes:
            batch = int(args.batches.split(",")[0])
            precision = args.precisions.split(",")[-1]
            runs.append(("ours", net, batch, precision, "arcface", args.pfc_classes, args.pfc_rate))
            if "arcface_torch" in args.baselines:
                runs.append(("arcface_torch", net, batch, args.half, "arcface", args.pfc_classes, args.pfc_rate))
    return runs


def comparisons(rows: list[Row]) -> list[tuple[Row, Row, float]]:
    """(ours at its best precision, a baseline, the target ratio) at the same net, batch and classes."""
    pairs = []
    for base in rows:
        same = [r for r in rows if r.trainer == "ours" and (r.net, r.batch, r.classes, r.sample_rate, r.head) ==
                (base.net, base.batch, base.classes, base.sample_rate, "arcface")]
        if base.trainer != "ours" and same:
            pairs.append((max(same, key=lambda r: r.images_per_s), base, TARGETS[base.trainer]))
    return pairs


def ratios(rows: list[Row]) -> list[str]:
    lines = []
    for best, base, target in comparisons(rows):
        ratio = best.images_per_s / base.images_per_s
        lines.append(f"ours ({best.precision}) / {base.trainer}: {base.net} batch {base.batch}, {base.classes} "
                     f"classes x{base.sample_rate:g}: {ratio:.2f}x (GPU target {target:g}x: "
                     f"{'met' if ratio >= target else 'NOT met'})")
    return lines


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:N, auto")
    parser.add_argument("--nets", default="ir_se_50,r50,mobilefacenet", help="backbones")
    parser.add_argument("--batches", default="128,256", help="batch sizes")
    parser.add_argument("--precisions", default="fp32,bf16", help=f"ours: any of {','.join(sorted(AMP_DTYPES))}")
    parser.add_argument("--heads", default="arcface,pgaml", help="ours: margin heads")
    parser.add_argument("--classes", type=int, default=85742, help="classes (emore: 85,742)")
    parser.add_argument("--pfc_classes", type=int, default=2_000_000, help="Partial FC measure's classes (0: skip)")
    parser.add_argument("--pfc_rate", type=float, default=0.1, help="Partial FC sample rate")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measure")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first (cuDNN autotuning, compile)")
    parser.add_argument("--compile", action="store_true", help="ours: torch.compile the backbone")
    parser.add_argument("--fused_sgd", default="auto", choices=FUSED_SGD_MODES,
                        help="ours: torch's fused SGD for the dense parameters (auto: where torch has one)")
    parser.add_argument("--baselines", default="treb1en,arcface_torch", help="baseline loops to measure")
    parser.add_argument("--json", default=None, help="also write the rows as JSON here")
    args = parser.parse_args(argv)
    device = resolve_device(args.device)
    args.half = "fp16" if device.type == "cuda" else "bf16"  # arcface_torch's autocast; CPUs autocast bf16 only
    os.environ["TQDM_DISABLE"] = "1"  # the Learner's progress bar would interleave with the table
    print(f"device {device}{' (' + torch.cuda.get_device_name(device) + ')' if device.type == 'cuda' else ''}, "
          f"torch {torch.__version__}, {args.steps} timed steps after {args.warmup}")
    print(f"{'trainer':14s} {'net':14s} {'batch':>5s} {'prec':>5s} {'head':>8s} {'classes':>9s} {'rate':>5s} "
          f"{'img/s':>8s} {'mem GiB':>8s} {'TFLOP/s':>8s} {'MFU':>6s} {'data wait':>9s}")
    rows = []
    for run in plan(args):
        row = measure(*run, args, device)
        rows.append(row)
        memory = f"{row.peak_memory_gib:.1f}" if row.peak_memory_gib is not None else "-"
        mfu = f"{row.utilisation:.1%}" if row.utilisation is not None else "-"
        wait = f"{row.data_wait_fraction:.1%}" if row.data_wait_fraction is not None else "-"
        print(f"{row.trainer:14s} {row.net:14s} {row.batch:5d} {row.precision:>5s} {row.head:>8s} {row.classes:9d} "
              f"{row.sample_rate:5.2f} {row.images_per_s:8.1f} {memory:>8s} {row.tflops_per_s:8.2f} {mfu:>6s} "
              f"{wait:>9s}", flush=True)
        # a baseline comes after ours at its net and batch (plan()): its comparison is printed now, so a run
        # stopped part-way (perf.gpu_session gives it a share of a lent GPU's minutes) keeps what it measured
        for best, base, target in comparisons(rows):
            if base is row:
                result(f"training {best.net} batch {best.batch}, {best.classes:,} classes x{best.sample_rate:g} "
                       f"({best.precision} vs {base.precision}, {device.type})", best.images_per_s,
                       base.images_per_s, "img/s", base.trainer,
                       target if device.type == "cuda" else None)  # the targets are the GPU path's
    for line in ratios(rows):
        print(line)
    if args.json:
        with open(args.json, "w") as f:
            json.dump([asdict(r) for r in rows], f, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
