"""Reports of the pose / resolution breakdowns (`evaluation.breakdowns`) of one model or several: Markdown
tables, one figure per set and breakdown with a bar group or line per model, and results.json."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from evaluation.breakdowns import ALPHA, EXACT_BELOW, BreakdownSpec, LevelResult, PairedTest, SetBreakdown
from evaluation.sets import SetResult
from evaluation.strata import yaw_bin_names
from utils import atomic_path, atomic_write_text

TAR_READING = "TAR@FAR read from the exact ROC of each level's own pairs (threshold set on its negatives)"


@dataclass
class ModelEvaluation:
    """One model's results on the sets (the main table's rows) and their breakdowns."""
    label: str
    path: str
    results: list[SetResult] = field(default_factory=list)
    breakdowns: dict[str, SetBreakdown] = field(default_factory=dict)  # set -> breakdown -> levels


def model_labels(paths) -> list[str]:
    """A short, distinct name per weights file: its stem, with its folder where two stems are alike."""
    paths = [Path(p) for p in paths]
    stems = [p.stem for p in paths]
    labels = [f"{p.parent.name}/{p.stem}" if stems.count(p.stem) > 1 and p.parent.name else p.stem for p in paths]
    return [label if labels.count(label) == 1 else f"{label}#{i + 1}" for i, label in enumerate(labels)]


def _number(value: float, digits: int = 4) -> str:
    return f"{value:.{digits}f}" if math.isfinite(value) else "-"


def _bins_text(spec: BreakdownSpec) -> str:
    edges, names = spec.yaw_edges, yaw_bin_names(spec.yaw_edges)
    parts = [f"{name} [{low:g}, {high:g})" for name, low, high in zip(names, edges, edges[1:])]
    return ", ".join(parts[:-1] + [parts[-1].replace(")", "]")]) + " (|yaw| degrees)"


def _heading(kind: str, spec: BreakdownSpec) -> str:
    if kind == "pose":
        return f"pose: {_bins_text(spec)}; accuracy at the whole set's k-fold thresholds"
    blur = f", Gaussian blur sigma {spec.blur:g} px first" if spec.blur else ""
    return f"resolution: area downscale to N px and bilinear upscale back{blur}; k-fold accuracy per level"


def _sets_and_kinds(models: list[ModelEvaluation]):
    sets = list(dict.fromkeys(name for m in models for name in m.breakdowns))
    for set_name in sets:
        for kind in ("pose", "resolution"):
            per_model = {m.label: m.breakdowns[set_name][kind] for m in models
                         if kind in m.breakdowns.get(set_name, {})}
            if per_model:
                yield set_name, kind, per_model


def levels_table(per_model: dict[str, list[LevelResult]], far: float) -> str:
    first = next(iter(per_model.values()))
    columns = ["level", "pairs", "negatives"]
    for label in per_model:
        prefix = f"{label} " if len(per_model) > 1 else ""
        columns += [f"{prefix}accuracy", f"{prefix}TAR@FAR={far:g}"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for index, row in enumerate(first):
        cells = [row.level, str(row.num_pairs), str(row.num_negative)]
        for rows in per_model.values():
            cells += [_number(rows[index].accuracy), _number(rows[index].tar)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def tests_table(tests: list[PairedTest]) -> str:
    columns = ["set", "breakdown", "level", "A vs B", "only A right", "only B right", "p", "test", "verdict"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for t in tests:
        lines.append("| " + " | ".join([t.set_name, t.breakdown, t.level, f"{t.model_a} vs {t.model_b}", str(t.only_a),
                                        str(t.only_b), f"{t.p_value:.3g}", t.method, t.verdict()]) + " |")
    return "\n".join(lines) + "\n"


def breakdown_markdown(models: list[ModelEvaluation], tests: list[PairedTest], spec: BreakdownSpec) -> str:
    parts = [f"# Breakdowns\n\n{TAR_READING}; '-' where a level has no positive pair or fewer than "
             f"{math.ceil(1 / spec.far - 1e-9)} negatives.\n"]
    for set_name, kind, per_model in _sets_and_kinds(models):
        parts.append(f"## {set_name}: {_heading(kind, spec)}\n\n{levels_table(per_model, spec.far)}")
    if len(models) > 1:
        parts.append(f"## Paired comparisons\n\nMcNemar's test on each pair's correctness (exact binomial below "
                     f"{EXACT_BELOW} discordant pairs, else chi-square with continuity correction), significance "
                     f"level {ALPHA:g}, one test per row (no correction for the number of rows).\n\n"
                     + (tests_table(tests) if tests else "No level with pairs in common.\n"))
    return "\n".join(parts)


def breakdown_figure(set_name: str, kind: str, per_model: dict[str, list[LevelResult]], spec: BreakdownSpec):
    """Accuracy and TAR@FAR per level: grouped bars (pose categories) or lines against the face size
    (resolution), one bar group / line per model. A matplotlib Figure on an Agg canvas (no pyplot state)."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    first = next(iter(per_model.values()))
    figure = Figure(figsize=(11, 4.2), dpi=100)
    FigureCanvasAgg(figure)
    for column, (metric, title) in enumerate((("accuracy", "accuracy"), ("tar", f"TAR@FAR={spec.far:g} (ROC)"))):
        axes = figure.add_subplot(1, 2, column + 1)
        if kind == "pose":
            positions, width = np.arange(len(first)), 0.8 / len(per_model)
            for index, (label, rows) in enumerate(per_model.items()):
                values = [getattr(row, metric) for row in rows]
                axes.bar(positions + (index - (len(per_model) - 1) / 2) * width, values, width, label=label)  # NaN: none
            axes.set_xticks(positions, [f"{row.level}\n({row.num_pairs})" for row in first], fontsize=7)
            axes.set_xlabel("|yaw| bins of the two images (pairs)")
        else:
            sizes = [int(row.level[3:]) for row in first]
            for label, rows in per_model.items():
                axes.plot(sizes, [getattr(row, metric) for row in rows], "o-", label=label)
            axes.set_xscale("log")
            axes.set_xticks(sizes, [str(s) for s in sizes])
            axes.minorticks_off()
            axes.invert_xaxis()  # farther (smaller) faces to the right
            axes.set_xlabel("face size (pixels)" + (f", blur sigma {spec.blur:g}" if spec.blur else ""))
        axes.set_ylim(0, 1.02)
        axes.set_ylabel(title)
        axes.grid(True, alpha=0.3)
        axes.legend(loc="best", fontsize=8)
    figure.suptitle(f"{set_name}: {kind}")
    figure.tight_layout()
    return figure


def save_figure(figure, path: Path) -> Path:
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    return path


def _clean(value):
    """JSON-ready: NaN/inf -> None, NumPy scalars -> Python numbers."""
    if isinstance(value, dict):
        return {k: _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    if hasattr(value, "item"):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def results_json(models: list[ModelEvaluation], tests: list[PairedTest], spec: BreakdownSpec) -> str:
    protocol = {"by": list(spec.by), "yaw_edges": list(spec.yaw_edges), "resolutions": list(spec.resolutions),
                "blur_sigma": spec.blur, "far": spec.far, "tar_reading": TAR_READING, "alpha": ALPHA,
                "mcnemar_exact_below": EXACT_BELOW}
    out_models = {}
    for m in models:
        sets = {r.name: {"pairs": r.result.num_positive + r.result.num_negative, **r.scalars()} for r in m.results}
        for set_name, by_kind in m.breakdowns.items():
            for kind, rows in by_kind.items():
                sets.setdefault(set_name, {})[kind] = [row.as_dict() for row in rows]
        out_models[m.label] = {"path": m.path, "sets": sets}
    document = {"protocol": protocol, "models": out_models, "comparisons": [t.as_dict() for t in tests]}
    return json.dumps(_clean(document), indent=2) + "\n"


def write_breakdown_report(models: list[ModelEvaluation], tests: list[PairedTest], spec: BreakdownSpec,
                           out_dir: str | Path) -> list[Path]:
    """breakdowns.md, results.json and <breakdown>_<set>.png under `out_dir`, each written atomically."""
    out_dir = Path(out_dir)
    written = [out_dir / "breakdowns.md", out_dir / "results.json"]
    atomic_write_text(written[0], breakdown_markdown(models, tests, spec))
    atomic_write_text(written[1], results_json(models, tests, spec))
    for set_name, kind, per_model in _sets_and_kinds(models):
        written.append(save_figure(breakdown_figure(set_name, kind, per_model, spec),
                                   out_dir / f"{kind}_{set_name}.png"))
    return written
