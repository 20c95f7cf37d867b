"""Scoring one cross-validation fold from embeddings, comparing heads across folds, and the report's plots.

Scores (per fold, from L2-normalised embeddings of every image of the data set):
  * `open_set` (--cv identities): the gallery holds ONE enrolment image of every identity of the data set,
    chosen by `ENROLMENT_RULE` — the held-out identities' from their own images, the training identities'
    from theirs (they act as distractors in the gallery; `held_out_gallery` scores the same probes against
    the held-out identities' entries alone); every other held-out image is a probe. Rank-k /
    CMC from `identification.gallery_ranks`; verification (`verification.verify`, 10 folds) over the pairs
    of held-out images (all pairs, or a seeded sample of `max_pairs`).
  * `closed_set` (--cv images): the gallery is each identity's mean embedding over its TRAINING images;
    every held-out image is a probe.
  * `seed_protocol`: the PGAML authors' score: each test identity's mean embedding over all its test images
    — the probe itself included, which is the leak — as the gallery of the test identities.
Breakdowns: rank-1 of the probes per capture height, distance bin and |yaw| bin.
Paired comparison: per-fold (or per-seed) differences of two heads on identical folds, their mean with a 95%
confidence interval, a paired t-test and a Wilcoxon signed-rank test (scipy), and a plain statement of whether
the difference is significant.
"""
from __future__ import annotations

import math

import numpy as np

from identification import cmc_from_ranks, gallery_ranks
from utils import UserError
from verification import verify

ENROLMENT_RULE = ("the image closest to an enrolment photo: lowest capture height, then nearest distance, then "
                  "smallest |yaw|, then first file name (unknown values sort last)")
DISTANCE_BINS = ((0.0, 5.0, "<5 m"), (5.0, 9.0, "5-9 m"), (9.0, 13.0, "9-13 m"), (13.0, math.inf, ">=13 m"))
YAW_BINS = ((0.0, 30.0, "|yaw|<30"), (30.0, 60.0, "|yaw| 30-60"), (60.0, math.inf, "|yaw|>=60"))
MAX_RANK = 10
SIGNIFICANCE = 0.05


def _last(value: float) -> float:
    return math.inf if math.isnan(value) else value


def enrolment_image(records, indices) -> int:
    """The index (among `indices`) that ENROLMENT_RULE picks."""
    return min(indices, key=lambda i: (_last(records[i].height), _last(records[i].distance),
                                       _last(abs(records[i].yaw)), records[i].path.name))


def _rank_scores(ranks: np.ndarray, gallery_size: int) -> dict:
    cmc = cmc_from_ranks(ranks, min(MAX_RANK, gallery_size))
    return {"rank1": float(cmc[0]), "rank5": float(cmc[min(5, len(cmc)) - 1]), "cmc": [float(v) for v in cmc],
            "num_probes": int(len(ranks)), "gallery_size": int(gallery_size)}


def open_set(embeddings, records, identities, train, test, max_pairs: int, seed: int) -> tuple[dict, np.ndarray, np.ndarray]:
    """(scores, probe indices, their ranks) of a fold that holds out whole identities."""
    identities = np.asarray(identities)
    gallery = []
    for name in np.unique(identities):
        own = [i for i in (test if name in set(identities[test]) else train) if identities[i] == name]
        gallery.append(enrolment_image(records, own))
    gallery = np.array(gallery)
    probes = np.setdiff1d(test, gallery)
    ranks = gallery_ranks(embeddings[probes], identities[probes], embeddings[gallery], identities[gallery])
    scores = _rank_scores(ranks, len(gallery))
    scores["gallery_images"] = [records[i].path.name for i in gallery]
    # the same probes against the held-out identities' enrolment images alone (no trained-on distractors)
    held_out = np.isin(identities[gallery], identities[test])
    alone = gallery_ranks(embeddings[probes], identities[probes], embeddings[gallery[held_out]],
                          identities[gallery[held_out]])
    scores["held_out_gallery"] = {"rank1": float(np.mean(alone == 1)), "gallery_size": int(held_out.sum())}
    scores["verification"] = pair_verification(embeddings[test], identities[test], max_pairs, seed)
    return scores, probes, ranks


def class_means(embeddings: np.ndarray, identities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(names, L2-normalised mean embedding of each name)."""
    names = np.unique(identities)
    means = np.stack([embeddings[identities == n].mean(axis=0) for n in names])
    return names, means / np.maximum(np.linalg.norm(means, axis=1, keepdims=True), 1e-12)


def closed_set(embeddings, identities, train, test, max_pairs: int, seed: int) -> tuple[dict, np.ndarray, np.ndarray]:
    """Held-out images against class means of the training images only."""
    return _against_class_means(embeddings, np.asarray(identities), train, test, max_pairs, seed)


def seed_protocol(embeddings, identities, test, max_pairs: int, seed: int) -> tuple[dict, np.ndarray, np.ndarray]:
    """The PGAML authors' score: test images against their test identities' means, each probe in its own mean."""
    return _against_class_means(embeddings, np.asarray(identities), test, test, max_pairs, seed)


def _against_class_means(embeddings, identities: np.ndarray, mean_of, probes, max_pairs: int,
                         seed: int) -> tuple[dict, np.ndarray, np.ndarray]:
    """The `probes` ranked against the class means of the `mean_of` images, and verification over the probes."""
    names, means = class_means(embeddings[mean_of], identities[mean_of])
    ranks = gallery_ranks(embeddings[probes], identities[probes], means, names)
    scores = _rank_scores(ranks, len(names))
    scores["verification"] = pair_verification(embeddings[probes], identities[probes], max_pairs, seed)
    return scores, np.asarray(probes), ranks


def pair_verification(embeddings: np.ndarray, identities: np.ndarray, max_pairs: int, seed: int) -> dict:
    """10-fold verification over every pair of the images (or a seeded sample of `max_pairs` of them), the
    pairs in a seeded random order so that each of verify's sequential folds mixes identities."""
    count = len(embeddings)
    first, second = np.triu_indices(count, k=1)
    rng = np.random.default_rng([seed, 23])
    order = rng.permutation(len(first))[:max_pairs] if max_pairs else rng.permutation(len(first))
    first, second = first[order], second[order]
    issame = identities[first] == identities[second]
    if len(first) < 10 or issame.all() or not issame.any():
        return {"num_pairs": int(len(first)), "note": "too few pairs, or pairs of one kind only: no verification"}
    pairs = np.empty((2 * len(first), embeddings.shape[1]), dtype=embeddings.dtype)
    pairs[0::2], pairs[1::2] = embeddings[first], embeddings[second]
    result = verify(pairs, issame, num_folds=10)
    return {"num_pairs": int(len(first)), "num_positive": result.num_positive, **result.scalars()}


def breakdown(records, probes: np.ndarray, ranks: np.ndarray, at_ranks=(1,)) -> dict:
    """Rank-k (k in `at_ranks`: keys rank1, rank5, ...) and probe count per capture height, distance bin and
    |yaw| bin."""
    ranks = np.asarray(ranks)
    out: dict[str, dict] = {"height": {}, "distance": {}, "yaw": {}}

    def add(kind: str, label: str, mask: np.ndarray) -> None:
        if mask.any():
            out[kind][label] = {**{f"rank{k}": float((ranks[mask] <= k).mean()) for k in at_ranks},
                                "count": int(mask.sum())}

    heights = np.array([records[i].height for i in probes])
    for value in np.unique(heights[np.isfinite(heights)]):
        add("height", f"{value:g}", heights == value)
    distances = np.array([records[i].distance for i in probes])
    for low, high, label in DISTANCE_BINS:
        add("distance", label, (distances >= low) & (distances < high))
    yaws = np.abs(np.array([records[i].yaw for i in probes]))
    for low, high, label in YAW_BINS:
        add("yaw", label, (yaws >= low) & (yaws < high))
    return out


def merge_breakdowns(parts: list[dict]) -> dict:
    """Probe-weighted rank-1 over folds, per stratum."""
    merged: dict[str, dict] = {}
    for part in parts:
        for kind, strata in part.items():
            for label, cell in strata.items():
                total = merged.setdefault(kind, {}).setdefault(label, {"hits": 0.0, "count": 0})
                total["hits"] += cell["rank1"] * cell["count"]
                total["count"] += cell["count"]
    return {kind: {label: {"rank1": c["hits"] / c["count"], "count": c["count"]} for label, c in strata.items()}
            for kind, strata in merged.items()}


def mean_std(values) -> dict:
    values = [v for v in values if v is not None and not math.isnan(v)]
    if not values:
        return {"mean": None, "std": None, "folds": 0}
    return {"mean": float(np.mean(values)), "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
            "folds": len(values)}


def paired_comparison(first: list[float], second: list[float], names: tuple[str, str], metric: str,
                      unit: str = "folds") -> dict:
    """`second - first` per fold (or per seed: `unit`), its mean +- std with a Student-t 95% confidence interval,
    a paired t-test and a Wilcoxon signed-rank test."""
    a, b = np.asarray(first, dtype=np.float64), np.asarray(second, dtype=np.float64)
    if a.shape != b.shape or a.size < 2:
        raise UserError(f"a paired comparison needs the same two or more {unit} for both heads")
    difference = b - a
    out = {"metric": metric, "difference": f"{names[1]} - {names[0]}", "per_fold": difference.tolist(),
           "mean": float(difference.mean()), "std": float(difference.std(ddof=1)), "ci95": None, "t_test_p": None,
           "wilcoxon_p": None}
    try:
        from scipy import stats
    except ImportError:  # scipy is optional: the differences are still reported
        out["statement"] = "scipy is not installed: no p-values"
        return out
    half_width = stats.t.ppf(0.975, a.size - 1) * out["std"] / math.sqrt(a.size)
    out["ci95"] = [out["mean"] - half_width, out["mean"] + half_width]
    if np.allclose(difference, 0):
        out["t_test_p"] = out["wilcoxon_p"] = 1.0
    elif out["std"] < 1e-12:  # zero but for float rounding
        # the same non-zero difference every time (on a small stratum, accuracy moves in steps of 1/pairs, so
        # equal differences are no rarity): t = mean / 0 is undefined rather than proof, so no t-test p-value;
        # the Wilcoxon test is still defined
        out["wilcoxon_p"] = float(stats.wilcoxon(b, a).pvalue)
    else:
        out["t_test_p"] = float(stats.ttest_rel(b, a).pvalue)
        out["wilcoxon_p"] = float(stats.wilcoxon(b, a).pvalue)
    p = out["t_test_p"]
    verdict = "significant" if p is not None and p < SIGNIFICANCE else "NOT significant"
    out["significant"] = bool(p is not None and p < SIGNIFICANCE)
    t_text = ("paired t-test undefined (the same difference in every one)" if p is None
              else f"paired t-test p = {p:.3g}")
    out["statement"] = (f"{metric}: {names[1]} - {names[0]} = {out['mean']:+.4f} +- {out['std']:.4f} over {a.size} "
                        f"{unit}; {t_text}, Wilcoxon p = {out['wilcoxon_p']:.3g}: {verdict} at "
                        f"{SIGNIFICANCE}; 95% CI of the mean difference {out['ci95'][0]:+.4f} to {out['ci95'][1]:+.4f}")
    if wilcoxon_floor(a.size) >= SIGNIFICANCE:
        out["statement"] += (f" (with {a.size} {unit} the Wilcoxon test cannot reach p < 0.05: its smallest "
                             f"two-sided p is {wilcoxon_floor(a.size):.3g})")
    return out


def wilcoxon_floor(num_pairs: int) -> float:
    """The smallest two-sided p-value the exact Wilcoxon signed-rank test can give with `num_pairs` pairs
    (every difference of one sign): 2 / 2**n, e.g. 0.25 for 3 pairs; it falls below 0.05 from 6 pairs on."""
    return min(1.0, 2.0 / 2 ** num_pairs)


# ----------------------------------------------------------------------------- plots

def _figure(width=6.0, height=4.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path) -> None:
    from utils import atomic_path

    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")


def plot_metric_per_fold(per_head: dict[str, list[float]], metric: str, path) -> None:
    figure = _figure()
    axes = figure.add_subplot()
    for head, values in per_head.items():
        axes.plot(range(1, len(values) + 1), values, marker="o", label=head)
    axes.set_xlabel("fold")
    axes.set_ylabel(metric)
    axes.set_xticks(range(1, max(len(v) for v in per_head.values()) + 1))
    axes.grid(True, alpha=0.3)
    axes.legend()
    axes.set_title(f"{metric} per fold")
    _save(figure, path)


def plot_losses(losses: dict[str, list[list[float]]], path) -> None:
    """Training loss per epoch, one line per fold, one panel per head."""
    figure = _figure(5.0 * len(losses), 4.0)
    for axes, (head, folds) in zip(np.atleast_1d(figure.subplots(1, len(losses))), losses.items()):
        for index, values in enumerate(folds):
            axes.plot(range(1, len(values) + 1), values, marker=".", label=f"fold {index + 1}")
        axes.set_xlabel("epoch")
        axes.set_ylabel("mean training loss")
        axes.set_title(head)
        axes.grid(True, alpha=0.3)
        axes.legend(fontsize=7)
    _save(figure, path)


def plot_cmc(cmc: dict[str, list[float]], path, ylabel: str = "identification rate (%), mean over folds",
             title: str | None = None) -> None:
    from matplotlib.ticker import MaxNLocator

    figure = _figure()
    axes = figure.add_subplot()
    for head, values in cmc.items():
        axes.plot(range(1, len(values) + 1), [100 * v for v in values], marker="o", label=head)
    axes.set_xlabel("rank")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_ylabel(ylabel)
    if title:
        axes.set_title(title)
    axes.grid(True, alpha=0.3)
    axes.legend()
    _save(figure, path)
