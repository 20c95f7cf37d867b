"""The one line each benchmark prints per headline result, which `perf.run_all` gathers into perf/RESULTS.md.

    RESULT {"measure": ..., "ours": ..., "baseline": ..., "unit": ..., "ratio": ..., "target": ...}

`ratio` is ours / baseline where higher is better (speed), baseline / ours where lower is better (time,
memory); `target` is the ratio aimed at, or None where the line only records a number.
"""
from __future__ import annotations

import json

PREFIX = "RESULT "


def result(measure: str, ours: float, baseline: float | None, unit: str, baseline_name: str = "",
           target: float | None = None, higher_is_better: bool = True) -> dict:
    """Print (and return) one headline result line."""
    ratio = None
    if baseline:
        ratio = ours / baseline if higher_is_better else baseline / ours
    line = {"measure": measure, "ours": round(float(ours), 4), "baseline": None if baseline is None else
            round(float(baseline), 4), "baseline_name": baseline_name, "unit": unit,
            "ratio": None if ratio is None else round(ratio, 3), "target": target}
    print(PREFIX + json.dumps(line), flush=True)
    return line


def parse(output: str) -> list[dict]:
    return [json.loads(line[len(PREFIX):]) for line in output.splitlines() if line.startswith(PREFIX)]
