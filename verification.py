"""k-fold face verification metrics: accuracy, TAR@FAR, exact ROC / AUC / EER, and the ROC plot.

`evaluate` is a drop-in for TreB1eN's `verifacation.evaluate` (same arguments, same four return
values, the same numbers); `verify` returns everything in one `VerificationResult`.

The protocol (LFW-style, as in TreB1eN and insightface):
  * embeddings `(2P, E)`: pair `i` is rows `2i` and `2i+1`; its distance is the squared L2
    distance, summed in the embeddings' dtype exactly as TreB1eN does;
  * a pair is predicted "same" when `distance < threshold` (strictly less);
  * `num_folds` sequential folds of sklearn `KFold(shuffle=False)` sizes: the first
    `P % num_folds` folds hold one pair more than the others;
  * on each fold the accuracy threshold is chosen on the other folds (the training part) from
    `THRESHOLDS = np.arange(0, 4, 0.01)`, ties going to the smallest threshold (`np.argmax`),
    and the fold's accuracy is measured on the fold itself;
  * the tpr / fpr curves are the test-fold rates averaged over folds; a rate whose denominator is
    zero (a fold without positive or negative pairs) counts as 0.
Thresholds are compared in float64 (NumPy >= 2 promotes TreB1eN's float32 distances to the
float64 threshold the same way; NumPy 1.x compared in float32, which can differ for a distance
equal to a float32-rounded threshold).

Instead of one pass over the pairs per threshold (400 x num_folds x 2 passes in TreB1eN), each
pair's position in the threshold grid is found once with `searchsorted`; one `bincount` per
(fold, label, position) and a cumulative sum then give the confusion counts of every threshold
on every fold, and the training counts are the totals minus the fold's own.

Protocols without folds (IJB-B/C 1:1, a deployment threshold) use similarity scores instead (cosine, higher =
more alike; d^2 = 2 - 2 cos for unit embeddings): `tar_at_far_scores`, `score_roc` and `calibrate_threshold`
(the threshold at a target FAR with a bootstrap interval), at the end of the module.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utils import UserError, atomic_path

THRESHOLDS = np.arange(0, 4, 0.01)
# The operating points reported by default (verification and identification alike), smallest FAR first as in
# the MegaFace and IJB tables; each is reported only where the pair count supports it.
DEFAULT_FAR_TARGETS = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1)


# ----------------------------------------------------------------------------- input checks

def _pair_distances(embeddings, actual_issame, num_folds) -> tuple[np.ndarray, np.ndarray]:
    """Validated squared L2 distances `(P,)` (float64 holding the embeddings'-dtype sums) and labels."""
    embeddings = np.asarray(embeddings)
    if embeddings.ndim != 2:
        raise UserError(f"verification: embeddings must be 2-D (2 x pairs, embedding size), "
                        f"got shape {embeddings.shape}")
    if embeddings.shape[0] % 2:
        raise UserError(f"verification: an even number of embeddings is needed (pairs are rows 2i, 2i+1), "
                        f"got {embeddings.shape[0]}")
    if not np.issubdtype(embeddings.dtype, np.floating):
        embeddings = embeddings.astype(np.float64)
    issame = _as_labels(actual_issame)
    num_pairs = embeddings.shape[0] // 2
    if issame.shape[0] != num_pairs:
        raise UserError(f"verification: {embeddings.shape[0]} embeddings make {num_pairs} pairs "
                        f"but actual_issame has {issame.shape[0]} labels")
    if isinstance(num_folds, bool) or not isinstance(num_folds, (int, np.integer)) or num_folds < 2:
        raise UserError(f"verification: num_folds must be an integer >= 2, got {num_folds!r}")
    if num_folds > num_pairs:
        raise UserError(f"verification: num_folds={num_folds} is more than the {num_pairs} pairs")
    # The same expression as TreB1eN (np.sum of the squared difference), so the sums round alike.
    dist = np.sum(np.square(np.subtract(embeddings[0::2], embeddings[1::2])), 1)
    bad = np.flatnonzero(~np.isfinite(dist))
    if bad.size:
        raise UserError(f"verification: {bad.size} pair(s) have non-finite embeddings (NaN or inf), "
                        f"first at pair {bad[0]} (embedding rows {2 * bad[0]} and {2 * bad[0] + 1})")
    return dist.astype(np.float64), issame


def _as_labels(actual_issame) -> np.ndarray:
    issame = np.asarray(actual_issame)
    if issame.ndim != 1:
        raise UserError(f"verification: actual_issame must be 1-D, got shape {issame.shape}")
    if issame.dtype == bool:
        return issame
    if not (np.issubdtype(issame.dtype, np.integer) or np.issubdtype(issame.dtype, np.floating)) \
            or not np.isin(issame, (0, 1)).all():
        raise UserError("verification: actual_issame must hold booleans (or 0/1)")
    return issame != 0


def fold_sizes(num_pairs: int, num_folds: int) -> np.ndarray:
    """sklearn KFold(shuffle=False) sizes: P // k each, the first P % k folds one more."""
    sizes = np.full(num_folds, num_pairs // num_folds, dtype=np.int64)
    sizes[: num_pairs % num_folds] += 1
    return sizes


def _safe_rate(numerator: np.ndarray, denominator: np.ndarray) -> np.ndarray:
    """numerator / denominator in float64, 0 where the denominator is 0 (TreB1eN's rule)."""
    numerator, denominator = np.broadcast_arrays(np.asarray(numerator, np.float64),
                                                 np.asarray(denominator, np.float64))
    return np.divide(numerator, denominator, out=np.zeros(numerator.shape), where=denominator != 0)


# ----------------------------------------------------------------------------- k-fold accuracy

@dataclass
class _KFold:
    """Confusion counts of every grid threshold on every fold, and the accuracy-threshold choice."""
    fold_of_pair: np.ndarray   # (P,) fold index of each pair
    tpr: np.ndarray            # (F, T) test-fold true-positive rate per threshold
    fpr: np.ndarray            # (F, T)
    best_index: np.ndarray     # (F,) index into THRESHOLDS chosen on the training part
    accuracy: np.ndarray       # (F,) test-fold accuracy at that threshold
    grid_position: np.ndarray  # (P,) pairs are accepted at threshold j iff grid_position <= j


def _kfold_counts(dist: np.ndarray, issame: np.ndarray, num_folds: int,
                  thresholds: np.ndarray = THRESHOLDS) -> _KFold:
    num_thresholds = thresholds.shape[0]
    sizes = fold_sizes(dist.shape[0], num_folds)
    fold_of_pair = np.repeat(np.arange(num_folds), sizes)
    # dist < thresholds[j]  <=>  (number of thresholds <= dist) <= j, as thresholds ascend.
    position = np.searchsorted(thresholds, dist, side="right")
    cell = (fold_of_pair * 2 + issame) * (num_thresholds + 1) + position
    histogram = np.bincount(cell, minlength=num_folds * 2 * (num_thresholds + 1))
    histogram = histogram.reshape(num_folds, 2, num_thresholds + 1)
    accepted = np.cumsum(histogram, axis=2)[:, :, :num_thresholds]  # (F, label, T): pairs with dist < t
    totals = histogram.sum(axis=2)                                    # (F, label)

    def rates(accepted, totals):
        fp, tp = accepted[:, 0], accepted[:, 1]
        negatives, positives = totals[:, 0, None], totals[:, 1, None]
        tn = negatives - fp
        accuracy = (tp + tn) / (positives + negatives).astype(np.float64)
        return _safe_rate(tp, positives), _safe_rate(fp, negatives), accuracy

    _, _, train_accuracy = rates(accepted.sum(0) - accepted, totals.sum(0) - totals)
    tpr, fpr, test_accuracy = rates(accepted, totals)
    best_index = np.argmax(train_accuracy, axis=1)  # the first maximum, as TreB1eN
    accuracy = test_accuracy[np.arange(num_folds), best_index]
    return _KFold(fold_of_pair, tpr, fpr, best_index, accuracy, position)


def evaluate(embeddings, actual_issame, num_folds: int = 10, pca: int = 0):
    """TreB1eN's `evaluate`: `(tpr, fpr, accuracy, best_thresholds)`.

    tpr, fpr: `(400,)` test-fold rates at `THRESHOLDS`, averaged over folds; accuracy and
    best_thresholds: `(num_folds,)` per fold (TreB1eN's Learner reports their means). TreB1eN's
    `calculate_val` (TAR@FAR=1e-3) is commented out of its evaluate: use `verify` for TAR@FAR.
    """
    if pca:
        raise UserError("verification: PCA before verification (pca > 0) is not supported")
    dist, issame = _pair_distances(embeddings, actual_issame, num_folds)
    folds = _kfold_counts(dist, issame, num_folds)
    # np.mean over axis 0 of C-contiguous (F, T) arrays, as TreB1eN, so the averages round alike.
    return (np.mean(folds.tpr, 0), np.mean(folds.fpr, 0), folds.accuracy, THRESHOLDS[folds.best_index])


# ----------------------------------------------------------------------------- TAR@FAR

@dataclass(frozen=True)
class TarAtFar:
    """TAR at a target FAR, as insightface's `val, val_std, far` (means and std over test folds)."""
    far_target: float
    tar: float                # mean over folds of the test-fold TAR (insightface's `val`)
    tar_std: float            # np.std over folds (insightface's `val_std`)
    far: float                # mean achieved test-fold FAR (insightface's `far`)
    thresholds: np.ndarray    # (F,) the distance threshold chosen on each fold's training part


def far_targets_supported(num_negative: int, far_targets) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(supported, skipped): a FAR target needs at least 1/target negative pairs (1e-6 needs 1e6)."""
    supported, skipped = [], []
    for target in far_targets:
        target = float(target)
        if not 0 < target < 1:
            raise UserError(f"verification: a FAR target must lie in (0, 1), got {target}")
        (supported if num_negative >= math.ceil(1 / target - 1e-9) else skipped).append(target)
    return tuple(supported), tuple(skipped)


def _largest_count_within(target: float, total: int) -> int:
    """The largest count c with c / total <= target, judged in float64 like the FAR itself."""
    count = min(total, math.floor(target * total))
    while count < total and (count + 1) / total <= target:
        count += 1
    while count > 0 and count / total > target:
        count -= 1
    return count


def _tar_at_far(dist, issame, fold_of_pair, num_folds, far_targets) -> list[TarAtFar]:
    """Threshold rule (no interpolation): on each fold, the LARGEST distance threshold whose FAR on
    the training part is <= target. With the training negatives sorted ascending, d[0] <= d[1] ...,
    and k the largest count with k / n_neg <= target, that threshold is d[k]: `dist < d[k]` accepts
    at most k negatives, and any larger threshold accepts k + 1 or more. Ties among distances need
    no special case (tied negatives are accepted together or not at all), unlike insightface's
    interp1d(far, thresholds), which fails when FAR values repeat. No training negatives: +inf.
    """
    order = np.argsort(dist, kind="stable")
    sorted_dist, sorted_same, sorted_fold = dist[order], issame[order], fold_of_pair[order]
    tars = np.zeros((len(far_targets), num_folds))
    fars = np.zeros_like(tars)
    thresholds = np.zeros_like(tars)
    for fold in range(num_folds):  # one O(P) pass per fold, all targets at once
        in_fold = sorted_fold == fold
        train_negative = sorted_dist[~in_fold & ~sorted_same]
        test_positive = sorted_dist[in_fold & sorted_same]
        test_negative = sorted_dist[in_fold & ~sorted_same]
        for i, target in enumerate(far_targets):
            k = _largest_count_within(target, train_negative.size)
            thresholds[i, fold] = train_negative[k] if k < train_negative.size else np.inf
        accepted_pos = np.searchsorted(test_positive, thresholds[:, fold], side="left")
        accepted_neg = np.searchsorted(test_negative, thresholds[:, fold], side="left")
        tars[:, fold] = _safe_rate(accepted_pos, test_positive.size)
        fars[:, fold] = _safe_rate(accepted_neg, test_negative.size)
    return [TarAtFar(target, float(np.mean(tars[i])), float(np.std(tars[i])), float(np.mean(fars[i])),
                     thresholds[i]) for i, target in enumerate(far_targets)]


# ----------------------------------------------------------------------------- exact ROC

def exact_roc(dist: np.ndarray, issame: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The ROC of `dist < t` over all thresholds: (fpr, tpr, thresholds), from (0, 0) to (1, 1).

    One point per distinct distance: tied pairs are accepted together, so a run of ties is one
    (diagonal) step. Point i is reached by thresholds[i]; the last threshold is just above the
    largest distance, so it accepts every pair.
    """
    order = np.argsort(dist, kind="stable")
    sorted_dist, sorted_same = dist[order], issame[order]
    last_of_run = np.flatnonzero(np.r_[sorted_dist[1:] != sorted_dist[:-1], True])
    tp = np.r_[0, np.cumsum(sorted_same)[last_of_run]]
    fp = np.r_[0, np.cumsum(~sorted_same)[last_of_run]]
    thresholds = np.r_[sorted_dist[np.r_[0, last_of_run[:-1] + 1]], np.nextafter(sorted_dist[-1], np.inf)]
    return _safe_rate(fp, fp[-1]), _safe_rate(tp, tp[-1]), thresholds


def roc_auc(fpr: np.ndarray, tpr: np.ndarray) -> float:
    """Trapezoidal area under the exact ROC (= P(d_same < d_diff) + P(tie) / 2)."""
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))


def equal_error_rate(fpr: np.ndarray, tpr: np.ndarray, thresholds: np.ndarray) -> tuple[float, float]:
    """(EER, threshold) where the ROC polyline crosses FPR = FNR = 1 - TPR, linearly interpolated.

    `fpr + tpr - 1` never decreases along the curve (-1 at the start, +1 at the end), so the
    crossing lies on the first segment where it reaches 0.
    """
    gap = fpr + tpr - 1
    end = int(np.argmax(gap >= 0))
    if end == 0 or gap[end] == 0:
        return float(fpr[end]), float(thresholds[end])
    start = end - 1
    weight = -gap[start] / (gap[end] - gap[start])
    eer = fpr[start] + weight * (fpr[end] - fpr[start])
    threshold = thresholds[start] + weight * (thresholds[end] - thresholds[start])
    return float(eer), float(threshold)


# ----------------------------------------------------------------------------- verify

@dataclass
class VerificationResult:
    accuracy: float                  # mean test-fold accuracy (TreB1eN's reported accuracy)
    accuracy_std: float              # np.std over folds (insightface's "+-")
    fold_accuracy: np.ndarray        # (F,)
    best_thresholds: np.ndarray      # (F,) accuracy threshold of each fold (chosen on its training part)
    thresholds: np.ndarray           # (T,) the grid
    tpr: np.ndarray                  # (T,) fold-averaged test rates on the grid (TreB1eN's curves)
    fpr: np.ndarray                  # (T,)
    tar_at_far: list[TarAtFar]       # the supported FAR targets, in the order asked
    skipped_far_targets: tuple[float, ...]  # targets with fewer than 1/target negative pairs
    roc_fpr: np.ndarray              # exact ROC over all pairs (see exact_roc)
    roc_tpr: np.ndarray
    roc_thresholds: np.ndarray
    auc: float
    eer: float
    eer_threshold: float
    distances: np.ndarray            # (P,) squared L2 distance of each pair
    issame: np.ndarray               # (P,) bool
    fold_of_pair: np.ndarray         # (P,) the fold whose test part holds the pair
    pair_correct: np.ndarray         # (P,) bool: right at its fold's best threshold
    num_positive: int
    num_negative: int

    @property
    def best_threshold(self) -> float:
        """Mean of the per-fold thresholds (what TreB1eN's Learner logs)."""
        return float(np.mean(self.best_thresholds))

    def tar(self, far_target: float) -> TarAtFar:
        for entry in self.tar_at_far:
            if math.isclose(entry.far_target, far_target, rel_tol=1e-9):
                return entry
        raise KeyError(f"FAR target {far_target} was not evaluated (skipped: {self.skipped_far_targets})")

    def accuracy_on(self, mask) -> float:
        """Accuracy over the pairs selected by a boolean mask (e.g. profile pairs), each pair
        judged at its own fold's threshold; NaN when the mask selects nothing."""
        mask = np.asarray(mask, dtype=bool)
        if mask.shape != self.pair_correct.shape:
            raise UserError(f"verification: the mask has shape {mask.shape}, expected {self.pair_correct.shape}")
        return float(self.pair_correct[mask].mean()) if mask.any() else float("nan")

    def scalars(self) -> dict[str, float]:
        """Flat name -> value, for TensorBoard scalars or a JSON log."""
        out = {"accuracy": self.accuracy, "accuracy_std": self.accuracy_std,
               "best_threshold": self.best_threshold, "auc": self.auc, "eer": self.eer}
        for entry in self.tar_at_far:
            out[f"tar@far={entry.far_target:g}"] = entry.tar
        return out

    def summary(self) -> str:
        tars = " ".join(f"TAR@FAR={e.far_target:g} {e.tar:.4f}" for e in self.tar_at_far)
        return (f"accuracy {self.accuracy:.4f}+-{self.accuracy_std:.4f} threshold {self.best_threshold:.2f} "
                f"AUC {self.auc:.4f} EER {self.eer:.4f} {tars}").rstrip()


def verify(embeddings, actual_issame, num_folds: int = 10,
           far_targets=DEFAULT_FAR_TARGETS) -> VerificationResult:
    """Every verification metric of one set of pairs (see the module docstring for the protocol)."""
    dist, issame = _pair_distances(embeddings, actual_issame, num_folds)
    folds = _kfold_counts(dist, issame, num_folds)
    num_positive = int(issame.sum())
    num_negative = issame.size - num_positive
    supported, skipped = far_targets_supported(num_negative, far_targets)
    roc_fpr, roc_tpr, roc_thresholds = exact_roc(dist, issame)
    if num_positive and num_negative:
        auc = roc_auc(roc_fpr, roc_tpr)
        eer, eer_threshold = equal_error_rate(roc_fpr, roc_tpr, roc_thresholds)
    else:  # one class only: no ROC to speak of
        auc = eer = eer_threshold = float("nan")
    accepted = folds.grid_position <= folds.best_index[folds.fold_of_pair]
    return VerificationResult(
        accuracy=float(np.mean(folds.accuracy)), accuracy_std=float(np.std(folds.accuracy)),
        fold_accuracy=folds.accuracy, best_thresholds=THRESHOLDS[folds.best_index],
        thresholds=THRESHOLDS, tpr=np.mean(folds.tpr, 0), fpr=np.mean(folds.fpr, 0),
        tar_at_far=_tar_at_far(dist, issame, folds.fold_of_pair, num_folds, supported),
        skipped_far_targets=skipped,
        roc_fpr=roc_fpr, roc_tpr=roc_tpr, roc_thresholds=roc_thresholds,
        auc=auc, eer=eer, eer_threshold=eer_threshold,
        distances=dist, issame=issame, fold_of_pair=folds.fold_of_pair,
        pair_correct=accepted == issame, num_positive=num_positive, num_negative=num_negative)


# ----------------------------------------------------------------------------- ROC plot

def roc_figure(result: VerificationResult, title: str = "ROC"):
    """A matplotlib Figure (Agg canvas, no pyplot state): TAR against log-scale FAR, with the
    TAR@FAR operating points. matplotlib is imported here so the metrics work without it."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    visible = result.roc_fpr > 0  # FAR = 0 has no place on a log axis
    axes.plot(result.roc_fpr[visible], result.roc_tpr[visible], lw=1.5,
              label=f"AUC {result.auc:.4f}, EER {result.eer:.4f}")
    if result.tar_at_far:
        axes.plot([e.far for e in result.tar_at_far], [e.tar for e in result.tar_at_far], "o", ms=4,
                  label="TAR@FAR (k-fold)")
    axes.set_xscale("log")
    lowest = 1 / max(result.num_negative, 1)
    axes.set_xlim(max(lowest, 1e-6) / 2, 1)
    axes.set_ylim(0, 1.01)
    axes.set_xlabel("FAR (false accept rate)")
    axes.set_ylabel("TAR (true accept rate)")
    axes.set_title(f"{title}  acc {result.accuracy:.4f}")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    return figure


def save_roc_png(result: VerificationResult, path, title: str | None = None) -> Path:
    """Write the ROC plot as a PNG, atomically (a reader never sees a half-written file)."""
    path = Path(path)
    figure = roc_figure(result, title or path.stem)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    return path


def roc_image_for_tensorboard(result: VerificationResult, title: str = "ROC",
                              dataformats: str = "HWC") -> np.ndarray:
    """The ROC plot as an RGB uint8 array for `SummaryWriter.add_image(tag, image, step,
    dataformats=dataformats)`; `dataformats` is "HWC" or "CHW"."""
    if dataformats not in ("HWC", "CHW"):
        raise ValueError(f"dataformats must be 'HWC' or 'CHW', got {dataformats!r}")
    figure = roc_figure(result, title)
    figure.canvas.draw()
    image = np.array(figure.canvas.buffer_rgba())[..., :3]
    return np.ascontiguousarray(image.transpose(2, 0, 1)) if dataformats == "CHW" else image


# ----------------------------------------------------------------------------- TAR@FAR on a subset

def roc_tar_at_far(dist, issame, far_target: float) -> float:
    """TAR of the pairs `dist`, `issame` at the largest threshold whose FAR on their own negatives is <=
    `far_target`, read from their exact ROC (no folds: IJB-B/C's reading, for a subset of a set's pairs such
    as one pose bin). NaN where the pairs hold no positive or too few negatives (`far_targets_supported`)."""
    dist, issame = np.asarray(dist, dtype=np.float64), np.asarray(issame, dtype=bool)
    num_negative = int((~issame).sum())
    if not issame.any() or not far_targets_supported(num_negative, [far_target])[0]:
        return float("nan")
    fpr, tpr, _ = exact_roc(dist, issame)
    return float(tpr[fpr <= far_target].max())


# ----------------------------------------------------------------------------- similarity scores, no folds

# Benchmarks with a fixed protocol (IJB-B/C 1:1) and threshold calibration report operating points over all
# pairs at once, on similarity scores (cosine: higher = more alike; TreB1eN's squared L2 is d^2 = 2 - 2 cos).

@dataclass(frozen=True)
class ScoreOperatingPoint:
    """TAR at a target FAR over all pairs: accept a pair when its score >= threshold."""
    far_target: float
    tar: float
    far: float          # achieved FAR (<= far_target)
    threshold: float    # -inf when there are no negatives


def threshold_at_far(negative_scores, far_target: float) -> float:
    """The smallest threshold t with FAR(score >= t) <= far_target: with the negatives sorted descending
    n_1 >= n_2 >= ... and k the largest count with k / n <= far_target, t is just above n_(k+1), so at most k
    negatives are accepted (tied negatives together or not at all) and no lower threshold keeps the FAR.
    insightface's eval_ijbc instead takes the ROC point whose FAR is nearest the target, which may exceed it."""
    negatives = np.sort(np.asarray(negative_scores, dtype=np.float64))[::-1]
    if negatives.size == 0:
        return -math.inf
    k = _largest_count_within(float(far_target), negatives.size)
    return float(np.nextafter(negatives[k], np.inf)) if k < negatives.size else -math.inf


def tar_at_far_scores(scores, issame, far_targets=DEFAULT_FAR_TARGETS) -> list[ScoreOperatingPoint]:
    """The operating points of the supported targets (each needs >= 1/target negatives; see
    `far_targets_supported`), smallest target first as given."""
    scores = np.asarray(scores, dtype=np.float64)
    issame = _as_labels(issame)
    positives, negatives = scores[issame], scores[~issame]
    supported, _ = far_targets_supported(negatives.size, far_targets)
    points = []
    for target in supported:
        threshold = threshold_at_far(negatives, target)
        points.append(ScoreOperatingPoint(target, float(_safe_rate(np.sum(positives >= threshold), positives.size)),
                                          float(_safe_rate(np.sum(negatives >= threshold), negatives.size)),
                                          threshold))
    return points


def score_roc(scores, issame) -> tuple[np.ndarray, np.ndarray, float]:
    """(FAR, TAR, AUC) of the exact ROC of similarity scores (`exact_roc` on -score)."""
    fpr, tpr, _ = exact_roc(-np.asarray(scores, dtype=np.float64), _as_labels(issame))
    return fpr, tpr, roc_auc(fpr, tpr)


def save_score_roc_png(fpr, tpr, points: list[ScoreOperatingPoint], path, title: str = "ROC") -> Path:
    """TAR against log-scale FAR with the TAR@FAR points, as a PNG written atomically."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(5, 4), dpi=100)
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    visible = fpr > 0
    axes.plot(fpr[visible], tpr[visible], lw=1.5, label=f"AUC {roc_auc(fpr, tpr):.4f}")
    if points:
        axes.plot([p.far_target for p in points], [p.tar for p in points], "o", ms=4, label="TAR@FAR")
    axes.set_xscale("log")
    axes.set_xlim(min([1e-6] + [p.far_target for p in points]) / 2, 1)
    axes.set_ylim(0, 1.01)
    axes.set_xlabel("FAR (false accept rate)")
    axes.set_ylabel("TAR (true accept rate)")
    axes.set_title(title)
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(loc="lower right")
    figure.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    return path


@dataclass(frozen=True)
class Calibration:
    """A deployment threshold at a target FAR, with bootstrap 95% intervals (accept when cosine >= threshold)."""
    far_target: float
    threshold: float
    tar: float
    far: float
    threshold_ci: tuple[float, float]
    tar_ci: tuple[float, float]
    num_positive: int
    num_negative: int
    resamples: int


def calibrate_threshold(scores, issame, far_target: float, resamples: int = 1000, seed: int = 0) -> Calibration:
    """`threshold_at_far` on all pairs, and its percentile bootstrap: the same-person and the different-person
    pairs are resampled with replacement (each group kept at its size), the threshold recomputed on each
    resample and the TAR measured at it. A target needs >= 1/target different-person pairs."""
    scores = np.asarray(scores, dtype=np.float64)
    issame = _as_labels(issame)
    positives, negatives = scores[issame], scores[~issame]
    supported, _ = far_targets_supported(negatives.size, [far_target])
    if not supported or positives.size == 0:
        raise UserError(f"calibration at FAR {far_target:g} needs at least {math.ceil(1 / far_target - 1e-9)} "
                        f"different-person pairs and one same-person pair; the set has {negatives.size} "
                        f"different-person and {positives.size} same-person pairs")
    point = tar_at_far_scores(scores, issame, [far_target])[0]
    rng = np.random.default_rng(seed)
    thresholds, tars = np.empty(resamples), np.empty(resamples)
    for b in range(resamples):
        thresholds[b] = threshold_at_far(negatives[rng.integers(0, negatives.size, negatives.size)], far_target)
        tars[b] = np.mean(positives[rng.integers(0, positives.size, positives.size)] >= thresholds[b])

    def interval(values):
        low, high = np.percentile(values, [2.5, 97.5]) if resamples else (np.nan, np.nan)
        return float(low), float(high)
    return Calibration(far_target, point.threshold, point.tar, point.far, interval(thresholds), interval(tars),
                       int(positives.size), int(negatives.size), resamples)
