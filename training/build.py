"""Building a run's parts from its Config: device, backbone (fresh or pretrained), margin, optimiser groups,
the DDP/compile wrapper, and the val sets evaluated during training."""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass

import torch
from torch import nn

from config import Config
from evaluation.sets import ValSet, available_valsets, resolve_valsets
from heads import build_margin
from inference.conventions import INPUT_CONVENTIONS
from inference.weights import load_backbone_weights
from model import build_backbone
from utils import UserError

log = logging.getLogger(__name__)


class Features(nn.Module):
    """The backbone's (unit embedding, feature norm): one forward for DDP to wrap (DDP hooks only forward)."""

    def __init__(self, backbone: nn.Module):
        super().__init__()
        self.backbone = backbone

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.backbone.forward_with_norm(x)


def backbone_for(config: Config, device: torch.device) -> tuple[nn.Module, dict]:
    """The backbone on `device` and the input conventions to feed it (those of --pretrained weights)."""
    options = {} if config.drop_ratio is None or config.net_mode == "mobilefacenet" else {"drop_ratio": config.drop_ratio}
    backbone = build_backbone(config.backbone_name, embedding_size=config.embedding_size, **options)
    conventions = dict(INPUT_CONVENTIONS)
    if config.pretrained:
        backbone, meta = load_backbone_weights(backbone, config.pretrained)
        # keep feeding the channel order the weights were trained on (TreB1eN's are BGR)
        conventions.update({k: meta[k] for k in INPUT_CONVENTIONS})
        log.info("starting from %s (%s weights, %s input)", config.pretrained, meta["source"], meta["channel_order"])
    backbone.to(device)
    if config.channels_last:
        backbone.to(memory_format=torch.channels_last)
    return backbone, conventions


def margin_for(config: Config, num_classes: int | None = None) -> nn.Module:
    """The config's margin; `num_classes` (all classes, over every rank) resolves --scale auto."""
    options = dict(config.head_options)
    if config.head == "pgaml" and config.pose_schedule:
        options.setdefault("warmup_epochs", config.pose_schedule)
    elif config.pose_schedule:
        raise UserError("--pose_schedule applies to --head pgaml only")
    margin = build_margin(config.head, num_classes=num_classes, margin_warmup_steps=config.margin_warmup_steps,
                          **options)
    if isinstance(options.get("s"), str):
        log.info("--scale auto: s = sqrt(2) * ln(C - 1) = %.2f for C = %d classes (fixed AdaCos)", margin.s,
                 num_classes)
    return margin


def wrap_for_training(backbone: nn.Module, device: torch.device, distributed: bool, compile: bool) -> nn.Module:
    model = Features(backbone)
    if distributed:
        ids = [device.index] if device.type == "cuda" else None
        model = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if compile:
        model = torch.compile(model)
    return model


def param_groups(backbone: nn.Module, kernel: nn.Parameter, config: Config) -> list[dict]:
    """TreB1eN's weight decay: none on BatchNorm and biases; MobileFaceNet's layers before its embedding
    layer get a tenth of it (TreB1eN: 4e-5 there, 4e-4 on the embedding layer and the centres)."""
    decay, no_decay = [], []
    for module in backbone.modules():
        for name, param in module.named_parameters(recurse=False):
            is_norm = isinstance(module, nn.modules.batchnorm._BatchNorm)
            (no_decay if is_norm or name == "bias" else decay).append(param)
    wd = config.weight_decay
    if config.net_mode == "mobilefacenet":
        groups = [{"params": decay[:-1], "weight_decay": wd / 10},
                  {"params": decay[-1:] + [kernel], "weight_decay": wd},
                  {"params": no_decay, "weight_decay": 0.0}]
    else:
        groups = [{"params": decay + [kernel], "weight_decay": wd},
                  {"params": no_decay, "weight_decay": 0.0}]
    return with_backbone_lr_mult(groups, kernel, config.backbone_lr_mult, wd)


def with_backbone_lr_mult(groups: list[dict], kernel: nn.Parameter, mult: float, wd: float) -> list[dict]:
    """--backbone_lr_mult: the backbone's groups scaled (`lr_mult`, read by training.schedule.set_lr), the class
    centres in a group of their own at the full LR. A multiplier of 1 leaves the groups as they were, so
    checkpoints keep their optimiser layout."""
    if mult == 1.0:
        return groups
    for group in groups:
        group["params"] = [p for p in group["params"] if p is not kernel]
        group["lr_mult"] = mult
    return [g for g in groups if g["params"]] + [{"params": [kernel], "weight_decay": wd, "lr_mult": 1.0}]


def fused_sgd_for(config: Config, device: torch.device) -> bool:
    """--fused_sgd: torch's fused SGD kernel for the dense parameters, on with auto wherever torch has one. It
    updates exactly as torch's default SGD (bit for bit on this CPU) in a third to a half of the time
    (`python -m perf.optimizer`: 2.6x for MobileFaceNet, 3.0x for IR-SE50 on 2 CPU cores); on a GPU it
    replaces the per-parameter kernel launches with a few."""
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    if config.fused_sgd == "off":
        return False
    supported = device.type in _get_fused_kernels_supported_devices()
    if config.fused_sgd == "on" and not supported:
        raise UserError(f"--fused_sgd on: torch has no fused SGD for {device.type}")
    return supported


def val_sets_for(config: Config, given=None) -> list[ValSet]:
    """The val sets evaluated during training: `given` (ValSets, or names of prepared sets under the data
    path), else the config's `val_sets` ('none' disables evaluation; the default list takes whichever of
    TreB1eN's three are prepared)."""
    if given is not None:
        return [v if isinstance(v, ValSet) else ValSet.load(config.data_path, v) for v in given]
    if config.val_sets == "none":
        return []
    if config.val_sets == Config.val_sets:  # the default list: whichever of TreB1eN's three are there
        found = [name for name in config.val_sets.split(",") if name in available_valsets(config.data_path)]
        if not found:
            log.warning("%s: none of %s is there (as <name>.bin or prepared); training without evaluation",
                        config.data_path, config.val_sets)
            return []
        names = resolve_valsets(config.data_path, ",".join(found))
    else:
        names = resolve_valsets(config.data_path, config.val_sets)
    return [ValSet.load(config.data_path, name) for name in names]


@dataclass
class CpuPlan:
    """How a training process uses the host's cores: DataLoader workers and torch's intra-op threads."""
    workers: int
    threads: int
    cores: int           # cores this process may use (its affinity, shared among the ranks on the machine)
    busy: float          # cores other jobs kept busy when the run started

    def describe(self) -> str:
        return (f"{self.workers} data worker{'s' * (self.workers != 1)}, {self.threads} torch "
                f"thread{'s' * (self.threads != 1)} ({self.cores} cores, {self.busy:.1f} busy)")


def busy_cores(window_s: float = 0.3) -> float:
    """How many cores are busy right now: the machine's non-idle time over a short window (/proc/stat), not the
    1-minute load average, which still counts a job that has just ended. Elsewhere the load average."""
    def sample() -> tuple[int, int]:
        with open("/proc/stat") as f:
            fields = [int(v) for v in f.readline().split()[1:]]
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
        return sum(fields[:8]), idle
    try:
        total0, idle0 = sample()
        time.sleep(window_s)
        total1, idle1 = sample()
    except (OSError, ValueError, IndexError):
        return os.getloadavg()[0]
    elapsed = max(total1 - total0, 1)
    return (os.cpu_count() or 1) * (1.0 - (idle1 - idle0) / elapsed)


def cpu_plan(config: Config, device: torch.device, local_world_size: int = 1) -> CpuPlan:
    """Workers and threads from the cores actually available, unless the config fixes them.

    Workers: on a CPU device none: the training process decodes each batch itself between steps (~10k images/s
    per core against a few hundred at most for training, under 1% of a step), while a worker process cost 18%:
    MobileFaceNet on 2 cores trained at 32.5 img/s with one worker against 39.5 with none (the bare
    forward/backward loop: 39.2), with identical losses. (The likely reason, not measured: the worker's wakeups
    preempt an intra-op thread, and each parallel region waits for its slowest thread.) On a GPU half the cores, up to 8. Threads: on a CPU device the cores other jobs leave free
    (oversubscribed cores slow a step several times over), but with --deterministic the cores alone,
    since a thread count that followed the load would change the float results from run to run; on a GPU
    the cores the workers leave, up to 4 (the host only feeds the GPU)."""
    cores = max(1, len(os.sched_getaffinity(0)) // max(1, local_world_size))
    needs_load = config.num_threads is None and device.type == "cpu" and not config.deterministic
    load = busy_cores() if needs_load else 0.0
    workers = config.num_workers
    if workers is None:
        workers = 0 if device.type == "cpu" else min(8, max(1, cores // 2))
    threads = config.num_threads
    if threads is None:
        if device.type != "cpu":
            threads = max(1, min(4, cores - workers))
        elif config.deterministic:
            threads = cores
        else:
            threads = max(1, min(cores, round(cores - load / max(1, local_world_size))))
    return CpuPlan(workers, threads, cores, load)


def set_determinism(deterministic: bool) -> None:
    if torch.backends.cudnn.is_available():
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
