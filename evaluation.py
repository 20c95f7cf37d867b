"""Evaluate a model on prepared verification sets: embed (streamed from the uint8 memmaps), verify, report.

Used by eval.py and by the Learner during training. Where a set has `pose.npy` (yaw, pitch per image),
accuracy is also reported on frontal pairs (both |yaw| < 30) and profile pairs (either |yaw| >= 60):
the pairs PGAML is meant to help.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from data.valsets import KNOWN_VALSETS, load_valset, load_valset_pose
from embedding import embed_images
from model import load_backbone_weights
from utils import UserError, atomic_write_text
from verification import VerificationResult, save_roc_png, verify

FRONTAL_YAW, PROFILE_YAW = 30.0, 60.0
TABLE_FAR = 1e-3  # the TAR@FAR column of the table (insightface's customary operating point)


@dataclass
class SetResult:
    name: str
    result: VerificationResult
    frontal_accuracy: float = float("nan")
    profile_accuracy: float = float("nan")
    num_frontal: int = 0
    num_profile: int = 0

    def scalars(self) -> dict[str, float]:
        out = self.result.scalars()
        if self.num_frontal:
            out["accuracy_frontal"] = self.frontal_accuracy
        if self.num_profile:
            out["accuracy_profile"] = self.profile_accuracy
        return out


def load_model(weights_path: str | Path, net: str | None, device_name: str):
    """The backbone of a weights file on `device_name`, with its metadata (channel order) and device;
    prints what was loaded. The shared start of eval.py and lfw_eval.py."""
    try:
        device = torch.device(device_name)
    except RuntimeError as err:
        raise UserError(f"--device {device_name}: {err}") from None
    model, meta = load_backbone_weights(net, weights_path)
    model.to(device)
    print(f"{weights_path}: {meta['backbone']} ({meta['source']} weights, {meta['channel_order']} input)")
    return model, meta, device


def available_valsets(data_path: str | Path) -> list[str]:
    """Prepared val sets under `data_path`, the customary ones first."""
    root = Path(data_path)
    found = sorted(p.parent.name for p in root.glob("*/issame.npy"))
    return [n for n in KNOWN_VALSETS if n in found] + [n for n in found if n not in KNOWN_VALSETS]


def resolve_valsets(data_path: str | Path, requested: str) -> list[str]:
    """'all' or a comma-separated list, checked against what is prepared (one clear error otherwise)."""
    available = available_valsets(data_path)
    if requested == "all":
        if not available:
            raise UserError(f"{data_path}: no prepared val sets (<name>/images.npy + issame.npy); "
                            f"run python data/prepare_data.py --source {data_path}")
        return available
    names = [n.strip() for n in requested.split(",") if n.strip()]
    missing = [n for n in names if n not in available]
    if missing:
        raise UserError(f"--val_sets: {', '.join(missing)} not prepared under {data_path} "
                        f"(available: {', '.join(available) or 'none'})")
    return names


def pose_strata(pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(frontal, profile) pair masks from per-image yaw (pairs are images 2i, 2i+1)."""
    yaw = np.abs(pose[:, 0]).reshape(-1, 2)
    return (yaw < FRONTAL_YAW).all(axis=1), (yaw >= PROFILE_YAW).any(axis=1)


def evaluate_valset(model: torch.nn.Module, data_path: str | Path, name: str, batch_size: int = 256,
                    device: torch.device | str = "cpu", flip: bool = True, channel_order: str = "RGB",
                    nrof_folds: int = 10, amp_dtype: torch.dtype | None = None, progress=None) -> SetResult:
    images, issame = load_valset(data_path, name)
    embeddings = embed_images(model, images, batch_size, device, flip, channel_order, amp_dtype, progress)
    outcome = SetResult(name, verify(embeddings, issame, nrof_folds))
    pose = load_valset_pose(data_path, name)
    if pose is not None:
        frontal, profile = pose_strata(pose)
        outcome.num_frontal, outcome.num_profile = int(frontal.sum()), int(profile.sum())
        outcome.frontal_accuracy = outcome.result.accuracy_on(frontal)
        outcome.profile_accuracy = outcome.result.accuracy_on(profile)
    return outcome


# ----------------------------------------------------------------------------- reports

COLUMNS = ("set", "pairs", "accuracy", "std", "threshold", f"TAR@FAR={TABLE_FAR:g}", "AUC", "EER",
           "acc_frontal", "acc_profile")


def table_rows(results: list[SetResult]) -> list[list[str]]:
    rows = []
    for entry in results:
        r = entry.result
        tar = next((f"{t.tar:.4f}" for t in r.tar_at_far if np.isclose(t.far_target, TABLE_FAR)), "-")
        rows.append([entry.name, str(r.num_positive + r.num_negative), f"{r.accuracy:.4f}", f"{r.accuracy_std:.4f}",
                     f"{r.best_threshold:.3f}", tar, f"{r.auc:.4f}", f"{r.eer:.4f}",
                     _optional(entry.frontal_accuracy, entry.num_frontal),
                     _optional(entry.profile_accuracy, entry.num_profile)])
    return rows


def _optional(value: float, count: int) -> str:
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
