"""The experiment's report: every arm's accuracy over seeds (mean, std, min-max) per val set, pose bin and
resolution level, learning curves, and each comparison tested paired over seeds.

Per comparison (arm B against arm A), set and metric: the per-seed differences B - A, their mean with a
Student-t 95% confidence interval, a paired t-test and a Wilcoxon signed-rank test
(`evaluation.fold_scores.paired_comparison`, seeds in place of folds), and McNemar's test on the pairs'
correctness pooled over the seeds (seed s of A against seed s of B on the same pairs;
`evaluation.breakdowns.mcnemar`). Pooling treats the same pair seen under different seeds as independent
observations, which they are not, so its p-values are optimistic; the seed-level tests are the honest ones,
and with few seeds they are weak: the report says so.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from evaluation.breakdown_reports import _clean, save_figure
from evaluation.breakdowns import ALPHA, mcnemar
from evaluation.fold_scores import paired_comparison, wilcoxon_floor
from experiments.plan import Comparison, Plan
from experiments.runs import OVERALL, TRAIN_CURVES, RunOutcome
from utils import atomic_write_text

Outcomes = dict  # arm -> {seed -> RunOutcome}


# ------------------------------------------------------------------------------------------ numbers

def seed_summary(values) -> dict:
    """Mean, std (ddof 1), min, max of the finite values (one per seed)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(v)]
    if not finite:
        return {"n": 0, "mean": None, "std": None, "min": None, "max": None, "values": []}
    return {"n": len(finite), "mean": float(np.mean(finite)), "std": float(np.std(finite, ddof=1)) if len(finite) > 1
            else 0.0, "min": min(finite), "max": max(finite), "values": finite}


def set_names(outcomes: Outcomes) -> list[str]:
    return list(dict.fromkeys(name for by_seed in outcomes.values() for o in by_seed.values() for name in o.sets))


def metric_names(outcomes: Outcomes, set_name: str) -> list[str]:
    """The set's metrics that some run measured (a |yaw| category without pairs has no accuracy anywhere)."""
    return list(dict.fromkeys(m for by_seed in outcomes.values() for o in by_seed.values() if set_name in o.sets
                              for m in o.metrics(set_name) if math.isfinite(o.accuracy(set_name, m))))


def summarise(outcomes: Outcomes) -> dict:
    """arm -> set -> metric -> seed_summary."""
    return {arm: {name: {metric: seed_summary([o.accuracy(name, metric) for o in by_seed.values() if name in o.sets])
                         for metric in metric_names(outcomes, name)}
                  for name in set_names(outcomes)}
            for arm, by_seed in outcomes.items()}


# CFP's two protocols pair the same people frontal-frontal and frontal-profile: their difference is what profile costs
PROFILE_GAP_SETS = ("cfp_ff", "cfp_fp")


def profile_gaps(outcomes: Outcomes) -> dict:
    """arm -> seed_summary of (cfp_ff - cfp_fp accuracy) over the seeds that have both sets; {} without them."""
    frontal, profile = PROFILE_GAP_SETS
    gaps = {}
    for arm, by_seed in outcomes.items():
        values = [o.accuracy(frontal, OVERALL) - o.accuracy(profile, OVERALL) for o in by_seed.values()
                  if frontal in o.sets and profile in o.sets]
        if values:
            gaps[arm] = seed_summary(values)
    return gaps


def compare_over_seeds(comparison: Comparison, baseline: dict, treatment: dict, set_name: str, metric: str) -> dict:
    """The paired tests of `treatment` (seed -> RunOutcome) against `baseline` on one set and metric."""
    seeds = [s for s in sorted(set(baseline) & set(treatment))
             if set_name in baseline[s].sets and set_name in treatment[s].sets
             and math.isfinite(baseline[s].accuracy(set_name, metric))
             and math.isfinite(treatment[s].accuracy(set_name, metric))]
    out = {"kind": comparison.kind, "baseline": comparison.baseline, "treatment": comparison.treatment,
           "set": set_name, "metric": metric, "seeds": seeds}
    a = [baseline[s].accuracy(set_name, metric) for s in seeds]
    b = [treatment[s].accuracy(set_name, metric) for s in seeds]
    if len(seeds) >= 2:
        out.update(paired_comparison(a, b, (comparison.baseline, comparison.treatment), metric, unit="seeds"))
    else:
        out.update({"per_fold": [y - x for x, y in zip(a, b)], "mean": (b[0] - a[0]) if seeds else None,
                    "statement": f"{len(seeds)} seed(s) in common: no paired test (it needs 2 or more)"})
    out["per_seed"] = out.pop("per_fold")
    key = f"{set_name}/{metric}"
    if seeds and all(key in baseline[s].correct and key in treatment[s].correct for s in seeds):
        only_a, only_b, p, method = mcnemar(np.concatenate([baseline[s].correct[key] for s in seeds]),
                                            np.concatenate([treatment[s].correct[key] for s in seeds]))
        out["mcnemar_pooled"] = {"only_baseline_right": only_a, "only_treatment_right": only_b, "p_value": p,
                                 "method": method, "pairs": int(sum(baseline[s].correct[key].size for s in seeds))}
    return out


def all_comparisons(comparisons: list[Comparison], outcomes: Outcomes) -> list[dict]:
    rows = []
    for comparison in comparisons:
        baseline, treatment = outcomes.get(comparison.baseline, {}), outcomes.get(comparison.treatment, {})
        for name in set_names(outcomes):
            for metric in metric_names(outcomes, name):
                rows.append(compare_over_seeds(comparison, baseline, treatment, name, metric))
    return rows


def reading(row: dict) -> str:
    """The paired t-test's verdict in words (its 95% CI excludes 0 exactly when p < ALPHA)."""
    p = row.get("t_test_p")
    if p is None:  # with a Wilcoxon p but none for t, paired_comparison found no spread to test against
        return "no t-test: the same difference on every seed" if row.get("wilcoxon_p") is not None else "no test"
    if p >= ALPHA:
        return "no significant difference"
    return f"{row['treatment'] if row['mean'] > 0 else row['baseline']} better (p < {ALPHA:g})"


def curve_band(runs: list[RunOutcome], set_name: str) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(steps in every run's curve `set_name` (a val set or a TRAIN_CURVES tag), mean, min, max over the runs there)."""
    per_run = [dict(o.curves.get(set_name, [])) for o in runs]
    steps = sorted(set.intersection(*(set(c) for c in per_run))) if per_run else []
    values = np.array([[c[s] for s in steps] for c in per_run]).reshape(len(per_run), len(steps))
    if not steps:
        return np.array(steps), np.array([]), np.array([]), np.array([])
    return np.array(steps), values.mean(axis=0), values.min(axis=0), values.max(axis=0)


# ------------------------------------------------------------------------------------------ Markdown

def _cell(summary: dict | None) -> str:
    if not summary or not summary["n"]:
        return "-"
    if summary["n"] == 1:
        return f"{summary['mean']:.4f}"
    return f"{summary['mean']:.4f} ± {summary['std']:.4f} [{summary['min']:.3f}, {summary['max']:.3f}]"


def _p(value) -> str:
    return "-" if value is None else f"{value:.3g}"


def _table(columns: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"


def accuracy_tables(summary: dict, outcomes: Outcomes, set_name: str) -> str:
    metrics = metric_names(outcomes, set_name)
    pose = [m for m in metrics if m.startswith("pose/")]
    resolution = [m for m in metrics if m != OVERALL and not m.startswith("pose/")]
    pairs = _level_pairs(outcomes, set_name)
    parts = []
    for title, chosen in (("whole set and |yaw| bins of the two images", [OVERALL] + pose),
                          ("resolution levels (face size in pixels)", resolution)):
        if not chosen:
            continue
        columns = ["arm", "seeds"] + [f"{m.removeprefix('pose/')} ({pairs.get(m, '?')})" for m in chosen]
        rows = [[arm, str(len(outcomes[arm]))] + [_cell(summary[arm].get(set_name, {}).get(m)) for m in chosen]
                for arm in summary]
        parts.append(f"{title}; pairs in brackets after each column's name\n\n" + _table(columns, rows))
    return "\n".join(parts)


def _level_pairs(outcomes: Outcomes, set_name: str) -> dict[str, int]:
    for by_seed in outcomes.values():
        for o in by_seed.values():
            if set_name in o.sets:
                entry = o.sets[set_name]
                counts = {OVERALL: entry["pairs"]}
                counts.update({f"pose/{r['level']}": r["pairs"] for r in entry.get("pose", [])})
                counts.update({r["level"]: r["pairs"] for r in entry.get("resolution", [])})
                return counts
    return {}


def comparisons_table(rows: list[dict]) -> str:
    columns = ["comparison", "set", "metric", "B − A mean", "95% CI", "per seed", "t-test p", "Wilcoxon p",
               "McNemar pooled: only A / only B right, p", "reading (t-test)"]
    body = []
    for r in rows:
        ci = r.get("ci95")
        mc = r.get("mcnemar_pooled")
        body.append([f"{r['treatment']} (B) vs {r['baseline']} (A)", r["set"], r["metric"],
                     "-" if r.get("mean") is None else f"{r['mean']:+.4f}",
                     "-" if not ci else f"{ci[0]:+.4f} to {ci[1]:+.4f}",
                     ", ".join(f"{d:+.3f}" for d in r["per_seed"]), _p(r.get("t_test_p")), _p(r.get("wilcoxon_p")),
                     "-" if not mc else f"{mc['only_baseline_right']} / {mc['only_treatment_right']}, "
                                        f"{mc['p_value']:.3g}", reading(r)])
    return _table(columns, body)


def caveats(num_seeds: int) -> list[str]:
    lines = []
    if num_seeds < 2:
        lines.append(f"**With {num_seeds} seed per arm there is no paired test at all**: the differences below are "
                     "single runs.")
        return lines
    floor = wilcoxon_floor(num_seeds)
    if floor >= ALPHA:
        lines.append(f"**With {num_seeds} seeds the Wilcoxon signed-rank test cannot reach p < {ALPHA:g}**: its "
                     f"smallest two-sided p-value with {num_seeds} pairs is {floor:.3g} (every difference of one "
                     "sign); it needs 6 or more seeds. Read its column as a sign check only.")
    freedom = f"{num_seeds - 1} degree{'s' * (num_seeds > 2)} of freedom"
    lines.append(f"The paired t-test over {num_seeds} seeds ({freedom}) can reach p < {ALPHA:g} only when the "
                 "per-seed differences are large against their spread; it assumes they are normally distributed. "
                 "Its 95% CI is the effect size's uncertainty: a CI that includes 0 means no significant difference.")
    lines.append("McNemar's test pools every pair of every seed (seed s of A against seed s of B): the same pair "
                 "under several seeds is not an independent observation, so its p-values are optimistic; it says "
                 "whether the two arms err on different pairs, not whether the difference would hold for new seeds.")
    return lines


def report_markdown(plan: Plan, meta: dict, summary: dict, outcomes: Outcomes, rows: list[dict], figures: dict,
                    command: str, gaps: dict) -> str:
    """The report; `gaps` is profile_gaps(outcomes)."""
    num_seeds = min((len(v) for v in outcomes.values()), default=0)
    epochs = plan.epochs(meta["num_images"])
    per_epoch = plan.steps_per_epoch(meta["num_images"])
    lr_end = _lr_at_end(plan, meta["num_images"])
    recipe = ", ".join(f"{k} {v}" for k, v in plan.recipe.items())
    parts = [f"# ArcFace vs PGAML: {len(plan.arms)} arms x {len(plan.seeds)} seeds (profile `{plan.profile}`)\n",
             f"Written by `{command}`.\n",
             f"- **Data**: `{plan.data_path}`: {meta['num_images']} training images of {meta['num_classes']} "
             f"identities; val sets {_sets_text(outcomes)} (held-out identities).",
             f"- **Recipe** (every run): {recipe}.",
             f"- **Steps**: {plan.steps} per run (epochs {epochs} of {per_epoch} steps, the LR schedule over those "
             f"epochs; LR at the last step {lr_end:.3g}, {100 * lr_end / plan.recipe.get('lr', 1e-3):.0f}% of the "
             f"peak); seeds {plan.seeds}: the same seed gives every arm the same initial weights and batches.",
             f"- **Evaluation**: the final model of each run, k-fold verification (10 folds); pose: |yaw| bin "
             f"edges {', '.join(f'{e:g}' for e in plan.spec.yaw_edges)} degrees (categories without pairs left out), "
             f"accuracy at the whole set's thresholds; resolution: area "
             f"downscale to {', '.join(map(str, plan.spec.resolutions))} px and back; learning curves: val "
             f"accuracy every {plan.eval_every} steps.\n"]
    if plan.max_steps and plan.max_steps < plan.steps:
        parts.append(f"**A smoke run: every run stopped at step {plan.max_steps} of {plan.steps} (--max_steps); these "
                     "are not the experiment's numbers.**\n")
    if num_seeds < 3:
        parts.append(f"**Only {num_seeds} seed(s) per arm: too few to conclude anything.**\n")
    arm_rows = [[a.name, a.describe(), str(len(outcomes.get(a.name, {})))] for a in plan.arms]
    parts.append("## Arms\n\n" + _table(["arm", "head and options", "runs finished"], arm_rows))
    parts.append("## Accuracy per val set\n\nMean ± std over seeds [min, max]; k-fold accuracy of the whole set, "
                 "of each |yaw| category of pairs, and of the set at each resolution.\n")
    for name in set_names(outcomes):
        parts.append(f"### {name}\n\n{accuracy_tables(summary, outcomes, name)}")
        parts.append(" ".join(f"![{kind} {name}]({figures[(kind, name)].name})" for kind in ("pose", "resolution",
                                                                                              "curves")
                              if (kind, name) in figures) + "\n")
    if ("stability", "train") in figures:
        parts.append("## Training stability\n\nThe collapse diagnostics of every log step, computed from the step's "
                     "own forward pass before its update: a run that collapses shows the in-batch accuracy falling "
                     "back to chance (1/C) while the target angle returns to about 90 degrees.\n\n"
                     + stability_table(outcomes) + f"\n![stability]({figures[('stability', 'train')].name})\n")
    if gaps:
        parts.append("## What profile costs\n\ncfp_ff minus cfp_fp accuracy, per seed (the same held-out people, "
                     "frontal-frontal against frontal-profile pairs): mean ± std [min, max] over seeds.\n\n"
                     + _table(["arm", "cfp_ff - cfp_fp"], [[arm, _cell(gap)] for arm, gap in gaps.items()]))
    parts.append("## Paired comparisons\n\nB − A per seed on the same seeds, data and pairs; the paired t-test and "
                 "Wilcoxon signed-rank test over the seeds, the mean difference with its Student-t 95% CI, and "
                 f"McNemar's test on the pooled pairs. Significance level {ALPHA:g}, no correction for the number "
                 "of rows.\n")
    parts.extend(f"- {line}" for line in caveats(num_seeds))
    overall = [r for r in rows if r["metric"] == OVERALL]
    parts.append("\n### Whole val sets\n\n" + (comparisons_table(overall) if overall else "No comparison.\n"))
    levels = [r for r in rows if r["metric"] != OVERALL]
    if levels:
        parts.append("<details><summary>Every |yaw| category and resolution level</summary>\n\n"
                     + comparisons_table(levels) + "\n</details>\n")
    return "\n".join(parts)


def _sets_text(outcomes: Outcomes) -> str:
    return ", ".join(f"{name} ({_level_pairs(outcomes, name).get(OVERALL, '?')} pairs)" for name in set_names(outcomes))


def _lr_at_end(plan: Plan, num_images: int, step: int | None = None) -> float:
    """The LR of the run's last step (default the experiment's `steps`): the schedule spans whole epochs, the run
    stops at that step."""
    from training.schedule import lr_at

    config = plan.runs(num_images)[0].config
    return lr_at(config, ((step or plan.steps) - 1) / plan.steps_per_epoch(num_images))


# ------------------------------------------------------------------------------------------ figures

def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _spread(summaries: list[dict]) -> tuple[np.ndarray, np.ndarray]:
    """Means and the (below, above) distances to min and max, NaN where a level has no value."""
    mean = np.array([s["mean"] if s and s["n"] else np.nan for s in summaries], dtype=float)
    low = np.array([s["min"] if s and s["n"] else np.nan for s in summaries], dtype=float)
    high = np.array([s["max"] if s and s["n"] else np.nan for s in summaries], dtype=float)
    return mean, np.vstack([mean - low, high - mean])


def pose_figure(summary: dict, outcomes: Outcomes, set_name: str):
    levels = [m for m in metric_names(outcomes, set_name) if m.startswith("pose/")]
    figure = _figure(max(7.0, 1.3 * len(levels) + 2), 4.2)
    axes = figure.add_subplot()
    positions, width = np.arange(len(levels)), 0.8 / max(1, len(summary))
    for index, arm in enumerate(summary):
        mean, spread = _spread([summary[arm][set_name].get(m) for m in levels])
        axes.bar(positions + (index - (len(summary) - 1) / 2) * width, mean, width, yerr=spread, capsize=2,
                 label=arm)
    pairs = _level_pairs(outcomes, set_name)
    axes.set_xticks(positions, [f"{m[5:]}\n({pairs.get(m, '?')})" for m in levels], fontsize=7)
    axes.set_xlabel("|yaw| bins of the two images (pairs)")
    axes.set_ylabel("accuracy: mean over seeds, bars min-max")
    axes.set_ylim(0, 1.02)
    axes.axhline(0.5, color="grey", lw=0.8, ls=":")
    axes.grid(True, axis="y", alpha=0.3)
    axes.legend(fontsize=7, loc="lower left")
    axes.set_title(f"{set_name}: accuracy per pose category")
    figure.tight_layout()
    return figure


def resolution_figure(summary: dict, outcomes: Outcomes, set_name: str):
    levels = [m for m in metric_names(outcomes, set_name) if m.startswith("res")]
    sizes = [int(m[3:]) for m in levels]
    figure = _figure(6.5, 4.2)
    axes = figure.add_subplot()
    for arm in summary:
        mean, spread = _spread([summary[arm][set_name].get(m) for m in levels])
        line, = axes.plot(sizes, mean, "o-", label=arm)
        axes.fill_between(sizes, mean - spread[0], mean + spread[1], color=line.get_color(), alpha=0.15)
    axes.set_xscale("log")
    axes.set_xticks(sizes, [str(s) for s in sizes])
    axes.minorticks_off()
    axes.invert_xaxis()  # farther (smaller) faces to the right
    axes.set_xlabel("face size (pixels)")
    axes.set_ylim(0, 1.02)
    return _finish(figure, axes, "accuracy: mean over seeds, band min-max", f"{set_name}: accuracy per resolution")


def curves_figure(outcomes: Outcomes, set_name: str):
    figure = _figure(6.5, 4.2)
    axes = figure.add_subplot()
    _plot_bands(axes, outcomes, set_name, "o-", ms=3)
    axes.set_xlabel("step")
    return _finish(figure, axes, "val accuracy: mean over seeds, band min-max", f"{set_name}: learning curves")


def _plot_bands(axes, outcomes: Outcomes, curve: str, style: str, **line_options) -> None:
    """Each arm's curve over the steps: the mean over seeds as a line, the min-max band around it."""
    for arm, by_seed in outcomes.items():
        steps, mean, low, high = curve_band(list(by_seed.values()), curve)
        if len(steps):
            line, = axes.plot(steps, mean, style, label=arm, **line_options)
            axes.fill_between(steps, low, high, color=line.get_color(), alpha=0.15)


def stability_figure(outcomes: Outcomes):
    """The collapse diagnostics over the run: in-batch accuracy and mean target angle at every log step."""
    figure = _figure(11, 4.0)
    panels = (("train/accuracy", "in-batch accuracy"), ("train/target_angle_deg", "angle to own centre (deg)"))
    for index, (tag, ylabel) in enumerate(panels, 1):
        axes = figure.add_subplot(1, 2, index)
        _plot_bands(axes, outcomes, tag, "-", lw=1.2)
        axes.set_xlabel("step")
        axes.set_ylabel(ylabel)
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=7)
    figure.suptitle("at every log step, before the step's update: mean over seeds, band min-max")
    figure.tight_layout()
    return figure


def stability_table(outcomes: Outcomes) -> str:
    """Per arm, mean over seeds: the in-batch accuracy and target angle at a quarter, half and the end of the run."""
    rows = []
    for arm, by_seed in outcomes.items():
        columns = []
        for tag, digits in (("train/accuracy", 3), ("train/target_angle_deg", 1)):
            steps, mean, _, _ = curve_band(list(by_seed.values()), tag)
            if not len(steps):
                break
            picks = [int(np.searchsorted(steps, steps[-1] * f)) for f in (0.25, 0.5)] + [len(steps) - 1]
            columns.append(" / ".join(f"{mean[i]:.{digits}f}" for i in picks))
        if len(columns) == 2:
            rows.append([arm, *columns])
    if not rows:
        return ""
    return _table(["arm", "in-batch accuracy at 1/4, 1/2, end", "target angle (deg) at 1/4, 1/2, end"], rows)


def _finish(figure, axes, ylabel: str, title: str):
    """The accuracy axes' common dress: label, the chance line, grid, legend, title."""
    axes.set_ylabel(ylabel)
    axes.axhline(0.5, color="grey", lw=0.8, ls=":")
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize=7)
    axes.set_title(title)
    figure.tight_layout()
    return figure


def write_figures(summary: dict, outcomes: Outcomes, out_dir: Path) -> dict:
    figures = {}
    for name in set_names(outcomes):
        metrics = metric_names(outcomes, name)
        makers = {"pose": (any(m.startswith("pose/") for m in metrics), lambda: pose_figure(summary, outcomes, name)),
                  "resolution": (any(m.startswith("res") for m in metrics),
                                 lambda: resolution_figure(summary, outcomes, name)),
                  "curves": (True, lambda: curves_figure(outcomes, name))}
        for kind, (wanted, make) in makers.items():
            if wanted:
                figures[(kind, name)] = save_figure(make(), out_dir / f"{kind}_{name}.png")
    if any(tag in o.curves for by_seed in outcomes.values() for o in by_seed.values() for tag in TRAIN_CURVES):
        figures[("stability", "train")] = save_figure(stability_figure(outcomes), out_dir / "stability.png")
    return figures


# ------------------------------------------------------------------------------------------ writing

def write_report(plan: Plan, meta: dict, outcomes: Outcomes, comparisons: list[Comparison], out_dir: Path,
                 command: str) -> list[Path]:
    """report.md, results.json and the PNGs under `out_dir` (each written atomically)."""
    out_dir = Path(out_dir)
    summary = summarise(outcomes)
    rows = all_comparisons(comparisons, outcomes)
    gaps = profile_gaps(outcomes)
    figures = write_figures(summary, outcomes, out_dir)
    document = {"profile": plan.profile, "config_file": plan.source, "command": command,
                "data": {"path": str(plan.data_path), "num_images": meta["num_images"],
                         "num_classes": meta["num_classes"], "generate": plan.generate},
                "recipe": plan.recipe, "steps": plan.steps, "max_steps": plan.max_steps, "seeds": plan.seeds,
                "epochs": plan.epochs(meta["num_images"]), "steps_per_epoch": plan.steps_per_epoch(meta["num_images"]),
                "evaluation": {"val_sets": plan.val_sets, "eval_every": plan.eval_every,
                               "yaw_edges": list(plan.spec.yaw_edges), "resolutions": list(plan.spec.resolutions),
                               "blur": plan.spec.blur},
                "arms": {a.name: a.as_dict() for a in plan.arms},
                "runs": {arm: {str(seed): {"steps": o.steps, "seconds": o.seconds, "sets": o.sets, "curves": o.curves}
                               for seed, o in by_seed.items()} for arm, by_seed in outcomes.items()},
                "summary": summary, "profile_gap": gaps, "comparisons": rows, "alpha": ALPHA}
    written = [out_dir / "report.md", out_dir / "results.json"]
    atomic_write_text(written[1], json.dumps(_clean(document), indent=1) + "\n")
    atomic_write_text(written[0], report_markdown(plan, meta, summary, outcomes, rows, figures, command, gaps))
    return written + list(figures.values())
