"""Where and in which precision a model runs: `--device` and `--amp` as every command parses them."""
from __future__ import annotations

import contextlib

import torch

from utils import UserError

AMP_DTYPES = {"off": None, "fp16": torch.float16, "bf16": torch.bfloat16}


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def resolve_device(name: str, flag: str = "--device") -> torch.device:
    """'auto' (CUDA when available, else CPU) or a torch device name; one clear error for a bad or absent one."""
    if name == "auto":
        return torch.device(default_device())
    try:
        device = torch.device(name)
    except RuntimeError as err:
        raise UserError(f"{flag} {name}: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"{flag} {name}: CUDA is not available here (torch {torch.__version__})")
    return device


def autocast(device: torch.device | str, amp_dtype: torch.dtype | None):
    """torch.autocast for `amp_dtype` on the device's type, or a no-op context for full precision."""
    if amp_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=amp_dtype)
