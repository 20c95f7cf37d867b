"""What a training run reports: TensorBoard events plus the same scalars as JSON lines.

`log/` under the work path holds the TensorBoard event files (`tensorboard --logdir work_space/log`) and
`scalars.jsonl` (one `{"step", "tag", "value"}` object per line: easy to read back in a notebook or a
test). On resume both are cut back to the checkpoint's step, so a crash leaves no duplicate curve.
Only the main process writes; elsewhere every method is a no-op.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from utils import atomic_write_text


class RunLog:
    def __init__(self, log_dir: str | Path, enabled: bool = True, resume_step: int | None = None):
        self.enabled = enabled
        self.log_dir = Path(log_dir)
        self.writer = None
        self._jsonl = None
        if not enabled:
            return
        from torch.utils.tensorboard import SummaryWriter  # imported here: only the main process needs it
        self.log_dir.mkdir(parents=True, exist_ok=True)
        path = self.log_dir / "scalars.jsonl"
        if resume_step is not None and path.exists():
            _truncate_after(path, resume_step)
        # purge_step hides the events a crashed run wrote after the checkpoint it resumes from
        self.writer = SummaryWriter(str(self.log_dir), purge_step=None if resume_step is None else resume_step + 1)
        self._jsonl = open(path, "a", buffering=1)

    def scalar(self, tag: str, value: float, step: int) -> None:
        if not self.enabled:
            return
        value = float(value)
        self.writer.add_scalar(tag, value, step)
        self._jsonl.write(json.dumps({"step": step, "tag": tag, "value": value if math.isfinite(value) else str(value)})
                          + "\n")

    def scalars(self, values: dict[str, float], step: int, prefix: str = "") -> None:
        for tag, value in values.items():
            self.scalar(prefix + tag, value, step)

    def image(self, tag: str, image_hwc: np.ndarray, step: int) -> None:
        if self.enabled:
            self.writer.add_image(tag, image_hwc, step, dataformats="HWC")

    def flush(self) -> None:
        if self.enabled:
            self.writer.flush()

    def close(self) -> None:
        if self.enabled:
            self.writer.close()
            self._jsonl.close()
            self.enabled = False


def read_scalars(log_dir: str | Path, tag: str | None = None) -> list[dict]:
    """The `scalars.jsonl` records of a run (optionally one tag), in the order they were written."""
    path = Path(log_dir) / "scalars.jsonl"
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [r for r in records if tag is None or r["tag"] == tag]


def _truncate_after(path: Path, step: int) -> None:
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line)["step"] <= step]
    atomic_write_text(path, "".join(line + "\n" for line in kept))
