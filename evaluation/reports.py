"""Reports of verification results: the table eval.py prints, results.md / results.csv, ROC figures."""
from __future__ import annotations

import csv
import io
from pathlib import Path

import numpy as np

from evaluation.sets import SetResult
from utils import atomic_write_text
from verification import save_roc_png

TABLE_FAR = 1e-3  # the TAR@FAR column of the table (insightface's customary operating point)
COLUMNS = ("set", "pairs", "accuracy", "std", "threshold", f"TAR@FAR={TABLE_FAR:g}", "AUC", "EER",
           "acc_frontal", "acc_profile")


def table_rows(results: list[SetResult]) -> list[list[str]]:
    rows = []
    for entry in results:
        r = entry.result
        tar = next((f"{t.tar:.4f}" for t in r.tar_at_far if np.isclose(t.far_target, TABLE_FAR)), "-")
        rows.append([entry.name, str(r.num_positive + r.num_negative), f"{r.accuracy:.4f}", f"{r.accuracy_std:.4f}",
                     f"{r.best_threshold:.3f}", tar, f"{r.auc:.4f}", f"{r.eer:.4f}",
                     stratum(entry.frontal_accuracy, entry.num_frontal),
                     stratum(entry.profile_accuracy, entry.num_profile)])
    return rows


def stratum(value: float, count: int) -> str:
    """An accuracy on a subset of pairs with its pair count, '-' where the subset is empty."""
    return f"{value:.4f} ({count})" if count else "-"


def markdown_table(results: list[SetResult]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(row) + " |" for row in table_rows(results)]
    return "\n".join(lines) + "\n"


def csv_table(results: list[SetResult]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(COLUMNS)
    writer.writerows(table_rows(results))
    return buffer.getvalue()


def write_reports(results: list[SetResult], out_dir: str | Path) -> list[Path]:
    """results.md, results.csv and roc_<set>.png, each written atomically."""
    out_dir = Path(out_dir)
    written = [out_dir / "results.md", out_dir / "results.csv"]
    atomic_write_text(written[0], markdown_table(results))
    atomic_write_text(written[1], csv_table(results))
    for entry in results:
        written.append(save_roc_png(entry.result, out_dir / f"roc_{entry.name}.png", title=entry.name))
    return written
