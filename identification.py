"""Open-set identification with distractors (MegaFace challenge 1 style): CMC and TAR@FAR, streamed.

The protocol (the MegaFace devkit's, independent of MegaFace's files):
  * probes `(P, D)` with identity labels; every ordered pair (probe i, mate j) of two different images
    of one identity is one identification trial: j is put in a gallery with the distractors and i
    searches it. The trial's rank is 1 + the number of distractors scoring at least as high as the
    mate (a tie is not a win), and the CMC at rank k is the fraction of trials with rank <= k, for
    each distractor subset (10, 100, ... 1M in MegaFace) separately;
  * verification: positives are the probe-mate pairs (each unordered pair once), negatives every
    probe against every distractor of the subset; a pair is accepted when its score >= a threshold,
    and TAR@FAR=f is the best TAR among thresholds whose FAR <= f. Only thresholds at positive scores
    need trying (raising a threshold to the next positive score keeps the TAR and cannot raise the
    FAR), so the exact answer comes from counting, for every positive score, the negatives at or above it.
  * score(a, b) = 1 - |a - b|^2 / 2: the cosine similarity for L2-normalised features; for other
    features it orders pairs by Euclidean distance, as the devkit's scorer does — which is what makes
    insightface's noise marking work (a distractor extended by a coordinate 100 scores below everything).

Memory. A probes x distractors score matrix is never held (3,530 x 1M float32 would be 14 GB): the
distractors arrive in chunks (`add`) and the probes are scored against a chunk in blocks of
`probe_block` rows, so at most one `probe_block x chunk` block (1,024 x 8,192: 64 MB in float64, in which
scores are computed, see `pair_scores`) lives at a time. What the metrics need is kept, and it is small:
  * for the CMC, per trial and subset, how many distractors beat the mate. A block's scores are first
    cut at each probe's lowest mate score (everything below beats no mate; for a good model almost
    everything); the survivors are located among the probe's sorted mate scores with one
    `searchsorted` over int64 keys (probe index, order-preserving bits of the float32 score), and a
    histogram over those positions accumulates the counts: O(trials) memory;
  * for verification, a histogram of the negatives over the sorted positive scores (cut at the lowest
    positive): O(positives) memory, and the TAR@FAR are exact, with no binning error.
So the memory is O(P x D + trials x subsets + chunk x D + probe_block x chunk), whatever the number
of distractors, and the features of 1M distractors can be streamed from disk.

Galleries searched by probes (IJB-B/C 1:N, TinyFace, a facebank): `search_gallery`, with rank-k, mAP and the
open-set FPIR / FNIR / TPIR@FPIR and DET curve, at the end of the module.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from utils import UserError, atomic_path
from verification import DEFAULT_FAR_TARGETS, far_targets_supported

DEFAULT_MAX_RANK = 10
CHUNK_SIZE = 8192
PROBE_BLOCK = 1024


# ----------------------------------------------------------------------------- scores

def squared_norms(features: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", features, features)


def pair_scores(a: np.ndarray, b: np.ndarray, a_norms=None, b_norms=None) -> np.ndarray:
    """float32 `(len(a), len(b))` scores 1 - |a_i - b_j|^2 / 2 (= cosine for unit vectors).

    Computed in float64 and rounded once to float32: the products of float32 inputs are exact in
    float64 and the float64 sums differ between matrix shapes (chunk, block) by far less than a
    float32 step, so a pair rounds to the same float32 score wherever BLAS computes it, and a
    distractor that duplicates a mate really ties with it. (Summed in float32, the same pair comes
    out a last bit apart in different shapes, and such ties fall either way.)
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    a_norms = squared_norms(a) if a_norms is None else a_norms
    b_norms = squared_norms(b) if b_norms is None else b_norms
    scores = a @ b.T
    scores -= (0.5 * a_norms - 1.0)[:, None]
    scores -= 0.5 * b_norms[None, :]
    return scores.astype(np.float32)


def order_keys(scores: np.ndarray) -> np.ndarray:
    """int64 keys in the order of float32 scores (finite), equal exactly when the scores are equal."""
    bits = (np.asarray(scores, dtype=np.float32) + np.float32(0)).view(np.int32)  # + 0 turns -0 into +0
    bits = np.where(bits < 0, bits ^ np.int32(0x7FFFFFFF), bits)
    return bits.astype(np.int64) + 2 ** 31  # in [0, 2^32)


def _as_features(features, what: str) -> np.ndarray:
    features = np.asarray(features)
    if features.ndim != 2 or not np.issubdtype(features.dtype, np.floating):
        raise UserError(f"identification: {what} must be a 2-D float array, got {features.dtype} {features.shape}")
    features = np.ascontiguousarray(features, dtype=np.float64)  # see pair_scores
    if not np.isfinite(features).all():
        bad = int(np.flatnonzero(~np.isfinite(features).all(axis=1))[0])
        raise UserError(f"identification: {what} row {bad} is not finite (NaN or inf)")
    return features


# ----------------------------------------------------------------------------- result

@dataclass
class IdentificationResult:
    sizes: tuple[int, ...]            # distractors in each subset
    ranks: np.ndarray                 # (R,) 1..max_rank
    cmc: np.ndarray                   # (S, R) identification rate at each rank, per subset
    far_targets: tuple[float, ...]
    tar_at_far: np.ndarray            # (S, T); NaN where the subset has fewer than 1/FAR negatives
    thresholds: np.ndarray            # (S, T) score threshold reaching it (NaN likewise)
    roc_far: list[np.ndarray]         # per subset: FAR at every distinct positive score (descending threshold)
    roc_tar: list[np.ndarray]
    num_probes: int
    num_trials: int                   # ordered (probe, mate) pairs
    num_positive: int                 # unordered probe-mate pairs
    num_negative: np.ndarray          # (S,) probe-distractor pairs
    beaten: np.ndarray                # (trials, S) distractors scoring >= the mate
    trial_probe: np.ndarray           # (trials,) probe row of each trial
    trial_mate: np.ndarray            # (trials,) mate row
    trial_score: np.ndarray           # (trials,) probe-mate score
    extra: dict = field(default_factory=dict)

    def rank1(self, size: int | None = None) -> float:
        return float(self.cmc[self._column(size), 0])

    def tar(self, far_target: float, size: int | None = None) -> float:
        for t, target in enumerate(self.far_targets):
            if math.isclose(target, far_target, rel_tol=1e-9):
                return float(self.tar_at_far[self._column(size), t])
        raise KeyError(f"FAR target {far_target} was not evaluated")

    def _column(self, size: int | None) -> int:
        if size is None:
            return len(self.sizes) - 1
        try:
            return self.sizes.index(size)
        except ValueError:
            raise KeyError(f"no subset of {size} distractors (evaluated: {self.sizes})") from None

    def as_dict(self) -> dict:
        """Plain numbers for a JSON report (NaN as null)."""
        def clean(values):
            return [None if isinstance(v, float) and math.isnan(v) else v for v in values]
        return {
            "num_probes": self.num_probes, "num_trials": self.num_trials, "num_positive": self.num_positive,
            "subsets": [{
                "distractors": size, "num_negative": int(self.num_negative[s]),
                "cmc": {str(int(r)): float(self.cmc[s, i]) for i, r in enumerate(self.ranks)},
                "tar_at_far": dict(zip((f"{f:g}" for f in self.far_targets),
                                       clean([float(v) for v in self.tar_at_far[s]]))),
                "thresholds": dict(zip((f"{f:g}" for f in self.far_targets),
                                       clean([float(v) for v in self.thresholds[s]]))),
            } for s, size in enumerate(self.sizes)],
            **self.extra,
        }

    def markdown(self) -> str:
        """Two tables: rank-1..k identification and TAR@FAR, one row per distractor subset."""
        shown_ranks = [r for r in (1, 2, 5, 10) if r <= len(self.ranks)]
        lines = ["| distractors | " + " | ".join(f"rank-{r}" for r in shown_ranks) + " |",
                 "|---|" + "---|" * len(shown_ranks)]
        for s, size in enumerate(self.sizes):
            lines.append(f"| {size:,} | " + " | ".join(f"{100 * self.cmc[s, r - 1]:.2f}%" for r in shown_ranks) + " |")
        lines += ["", "| distractors | " + " | ".join(f"TAR@FAR={f:g}" for f in self.far_targets) + " |",
                  "|---|" + "---|" * len(self.far_targets)]
        for s, size in enumerate(self.sizes):
            cells = ["-" if math.isnan(v) else f"{v:.4f}" for v in self.tar_at_far[s]]
            lines.append(f"| {size:,} | " + " | ".join(cells) + " |")
        return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- the streaming evaluator

class OpenSetEvaluator:
    """Feed distractor chunks with `add`, then read `result()` (see the module docstring).

    `num_subsets` distractor subsets are evaluated at once: each chunk comes with a boolean
    membership `(rows, num_subsets)` (None = every subset), so nested or overlapping subsets cost
    one pass over their union.
    """

    def __init__(self, probes, labels, num_subsets: int = 1, probe_block: int = PROBE_BLOCK):
        self.probes = _as_features(probes, "probes")
        labels = np.asarray(labels)
        if labels.ndim != 1 or labels.shape[0] != self.probes.shape[0]:
            raise UserError(f"identification: {self.probes.shape[0]} probes need as many labels, got shape {labels.shape}")
        if num_subsets < 1 or probe_block < 1:
            raise ValueError("num_subsets and probe_block must be >= 1")
        self.num_subsets = num_subsets
        self.probe_block = probe_block
        self.probe_norms = squared_norms(self.probes)
        self._setup_trials(labels)
        self.rank_histogram = np.zeros((num_subsets, self.trial_keys.size + 1), dtype=np.int64)
        self.negative_histogram = np.zeros((num_subsets, self.positive_sorted.size + 1), dtype=np.int64)
        self.num_negative = np.zeros(num_subsets, dtype=np.int64)
        self.num_distractors = np.zeros(num_subsets, dtype=np.int64)

    def _setup_trials(self, labels: np.ndarray) -> None:
        _, label_index = np.unique(labels, return_inverse=True)
        probes, mates, scores = [], [], []
        for members in _groups(label_index):
            if members.size < 2:
                continue
            block = pair_scores(self.probes[members], self.probes[members],
                                self.probe_norms[members], self.probe_norms[members])
            row, col = np.nonzero(~np.eye(members.size, dtype=bool))
            probes.append(members[row])
            mates.append(members[col])
            scores.append(block[row, col])
        empty = np.empty(0, dtype=np.int64)
        probe = np.concatenate(probes) if probes else empty
        mate = np.concatenate(mates) if mates else empty
        score = np.concatenate(scores) if scores else np.empty(0, np.float32)
        # Trials sorted by (probe, score): each probe's mates form one ascending run of the keys.
        keys = (probe << 32) + order_keys(score)
        order = np.argsort(keys, kind="stable")
        self.trial_probe, self.trial_mate, self.trial_score = probe[order], mate[order], score[order]
        self.trial_keys = keys[order]
        self.trial_run_end = np.searchsorted(self.trial_probe, self.trial_probe, side="right")
        self.lowest_mate = np.full(self.probes.shape[0], np.inf, dtype=np.float32)
        np.minimum.at(self.lowest_mate, self.trial_probe, self.trial_score)
        positive = self.trial_probe < self.trial_mate  # each unordered pair once
        self.positive_sorted = np.sort(self.trial_score[positive] + np.float32(0))

    def add(self, distractors, membership=None) -> None:
        """Score one chunk of distractor features `(rows, D)`; `membership` bool `(rows, num_subsets)`."""
        distractors = _as_features(distractors, "distractors")
        if distractors.shape[1] != self.probes.shape[1]:
            raise UserError(f"identification: distractors have {distractors.shape[1]} dimensions, "
                            f"probes {self.probes.shape[1]}")
        rows = distractors.shape[0]
        if membership is None:
            membership = np.ones((rows, self.num_subsets), dtype=bool)
        membership = np.asarray(membership, dtype=bool)
        if membership.shape != (rows, self.num_subsets):
            raise ValueError(f"membership must be ({rows}, {self.num_subsets}), got {membership.shape}")
        if rows == 0:
            return
        in_subset = membership.sum(axis=0)
        self.num_distractors += in_subset
        self.num_negative += in_subset * self.probes.shape[0]
        distractor_norms = squared_norms(distractors)
        for start in range(0, self.probes.shape[0], self.probe_block):
            stop = min(start + self.probe_block, self.probes.shape[0])
            scores = pair_scores(self.probes[start:stop], distractors, self.probe_norms[start:stop], distractor_norms)
            self._count_beaten(scores, start, membership)
            self._count_negatives(scores, membership)

    def _count_beaten(self, scores: np.ndarray, first_probe: int, membership: np.ndarray) -> None:
        # Only scores >= the probe's lowest mate can beat a mate. The cut is also what keeps the
        # histogram right: a survivor's position lies inside its own probe's run of trial keys.
        lowest = self.lowest_mate[first_probe:first_probe + scores.shape[0], None]
        survivors = np.flatnonzero(scores >= lowest)  # flat indices: one int64 array, not two
        if survivors.size == 0:
            return
        probe_row = survivors // scores.shape[1]
        keys = ((probe_row + first_probe) << 32) + order_keys(scores.ravel()[survivors])
        del probe_row
        position = np.searchsorted(self.trial_keys, keys, side="right")  # trials of the probe with score <= it
        self._accumulate(self.rank_histogram, position, survivors, scores.shape[1], membership)

    def _count_negatives(self, scores: np.ndarray, membership: np.ndarray) -> None:
        if self.positive_sorted.size == 0:
            return
        survivors = np.flatnonzero(scores >= self.positive_sorted[0])  # below every positive: never accepted
        if survivors.size == 0:
            return
        position = np.searchsorted(self.positive_sorted, scores.ravel()[survivors], side="right")
        self._accumulate(self.negative_histogram, position, survivors, scores.shape[1], membership)

    @staticmethod
    def _accumulate(histogram, position, survivors, num_columns, membership) -> None:
        """histogram[s] += counts of `position` over the survivors whose distractor is in subset s."""
        counts = None
        column = None
        for subset in range(histogram.shape[0]):
            member = membership[:, subset]
            if member.all():  # the usual case: count once, add to every such subset
                if counts is None:
                    counts = np.bincount(position, minlength=histogram.shape[1])
                histogram[subset] += counts
            elif member.any():
                if column is None:
                    column = survivors % num_columns
                selected = position[member[column]]
                if selected.size:
                    histogram[subset] += np.bincount(selected, minlength=histogram.shape[1])

    # ------------------------------------------------------------------------- results

    def beaten_counts(self) -> np.ndarray:
        """(trials, subsets): distractors scoring >= the mate, per trial (trials in sorted-key order)."""
        cumulative = np.cumsum(self.rank_histogram, axis=1)  # [s, x] = survivors with position <= x
        trials = np.arange(self.trial_keys.size)
        # Trial i is beaten by a survivor of its probe iff that survivor's position > i.
        return (cumulative[:, self.trial_run_end] - cumulative[:, trials]).T

    def result(self, sizes=None, max_rank: int = DEFAULT_MAX_RANK,
               far_targets=DEFAULT_FAR_TARGETS) -> IdentificationResult:
        sizes = tuple(int(n) for n in self.num_distractors) if sizes is None else tuple(int(s) for s in sizes)
        if len(sizes) != self.num_subsets:
            raise ValueError(f"{self.num_subsets} subsets, {len(sizes)} sizes given")
        if self.trial_keys.size == 0:
            raise UserError("identification: no identity has two probe images: nothing to identify")
        beaten = self.beaten_counts()
        ranks = np.arange(1, max_rank + 1)
        cmc = (beaten[:, :, None] < ranks[None, None, :]).mean(axis=0)
        far_targets = tuple(float(f) for f in far_targets)
        tar = np.full((self.num_subsets, len(far_targets)), np.nan)
        thresholds = np.full_like(tar, np.nan)
        roc_far, roc_tar = [], []
        for subset in range(self.num_subsets):
            far, tpr, levels = self._roc(subset)
            roc_far.append(far)
            roc_tar.append(tpr)
            supported, _ = far_targets_supported(int(self.num_negative[subset]), far_targets)
            for t, target in enumerate(far_targets):
                if target not in supported:
                    continue
                within = np.flatnonzero(far <= target)  # far falls as the threshold rises; tar too
                if within.size:
                    tar[subset, t], thresholds[subset, t] = tpr[within[0]], levels[within[0]]
                else:
                    tar[subset, t], thresholds[subset, t] = 0.0, np.inf
        return IdentificationResult(
            sizes=sizes, ranks=ranks, cmc=cmc, far_targets=far_targets, tar_at_far=tar, thresholds=thresholds,
            roc_far=roc_far, roc_tar=roc_tar, num_probes=self.probes.shape[0], num_trials=int(self.trial_keys.size),
            num_positive=int(self.positive_sorted.size), num_negative=self.num_negative.copy(), beaten=beaten,
            trial_probe=self.trial_probe, trial_mate=self.trial_mate, trial_score=self.trial_score)

    def _roc(self, subset: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(FAR, TAR, threshold) at each distinct positive score, thresholds ascending."""
        positives = self.positive_sorted
        first = np.flatnonzero(np.r_[True, positives[1:] != positives[:-1]])  # start of each run of ties
        histogram = self.negative_histogram[subset]
        accepted_negative = histogram.sum() - np.cumsum(histogram)[first]  # negatives with position > first
        accepted_positive = positives.size - first
        far = accepted_negative / max(int(self.num_negative[subset]), 1)
        return far, accepted_positive / positives.size, positives[first]


def _groups(label_index: np.ndarray):
    order = np.argsort(label_index, kind="stable")
    bounds = np.flatnonzero(np.diff(label_index[order])) + 1
    return np.split(order, bounds)


def evaluate_open_set(probes, labels, distractors, sizes=None, chunk_size: int = CHUNK_SIZE,
                      probe_block: int = PROBE_BLOCK, max_rank: int = DEFAULT_MAX_RANK,
                      far_targets=DEFAULT_FAR_TARGETS) -> IdentificationResult:
    """Evaluate against in-memory (or memory-mapped) distractors: subset n = the first n rows.

    `sizes` default to the whole set; each must be <= len(distractors).
    """
    total = len(distractors)
    sizes = (total,) if sizes is None else tuple(sorted({int(s) for s in sizes}))
    if not sizes or sizes[0] < 1 or sizes[-1] > total:
        raise UserError(f"identification: distractor subset sizes must lie in [1, {total}], got {sizes}")
    evaluator = OpenSetEvaluator(probes, labels, len(sizes), probe_block)
    bounds = np.array(sizes)[None, :]
    for start in range(0, sizes[-1], chunk_size):
        stop = min(start + chunk_size, sizes[-1])
        evaluator.add(np.asarray(distractors[start:stop]), np.arange(start, stop)[:, None] < bounds)
    return evaluator.result(sizes, max_rank, far_targets)


# ----------------------------------------------------------------------------- plots

def _figure(width=6.0, height=4.5):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure


def _save(figure, path) -> Path:
    path = Path(path)
    figure.tight_layout()
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png")
    return path


def save_cmc_png(result: IdentificationResult, path, title: str = "MegaFace challenge 1") -> Path:
    """Left: the CMC of each subset; right: rank-1 against the number of distractors (log scale)."""
    figure = _figure(10, 4.2)
    curves, rank1 = figure.subplots(1, 2)
    for s, size in enumerate(result.sizes):
        curves.plot(result.ranks, 100 * result.cmc[s], marker="o", ms=3, label=f"{size:,} distractors")
    curves.set_xlabel("rank")
    curves.set_ylabel("identification rate (%)")
    curves.set_xticks(result.ranks)
    curves.grid(True, alpha=0.3)
    curves.legend(fontsize=7, loc="best")
    curves.set_title(f"{title}: CMC")
    rank1.semilogx(result.sizes, 100 * result.cmc[:, 0], marker="o")
    rank1.set_xlabel("distractors")
    rank1.set_ylabel("rank-1 identification rate (%)")
    rank1.grid(True, which="both", alpha=0.3)
    rank1.set_title(f"rank-1 @ {result.sizes[-1]:,}: {100 * result.cmc[-1, 0]:.2f}%")
    return _save(figure, path)


def save_roc_png(result: IdentificationResult, path, title: str = "MegaFace challenge 1") -> Path:
    """TAR against FAR (log scale) for each subset, with the TAR@FAR operating points."""
    figure = _figure()
    axes = figure.add_subplot()
    for s, size in enumerate(result.sizes):
        visible = result.roc_far[s] > 0
        if visible.any():
            axes.semilogx(result.roc_far[s][visible], result.roc_tar[s][visible], lw=1.2, label=f"{size:,} distractors")
    last = len(result.sizes) - 1
    supported = ~np.isnan(result.tar_at_far[last])
    axes.plot(np.array(result.far_targets)[supported], result.tar_at_far[last][supported], "ko", ms=3,
              label="TAR@FAR")
    axes.set_xlim(min(result.far_targets) / 2, 1)
    axes.set_ylim(0, 1.01)
    axes.set_xlabel("FAR (false accept rate)")
    axes.set_ylabel("TAR (true accept rate)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=7, loc="lower right")
    headline = result.tar(1e-6) if any(math.isclose(f, 1e-6) for f in result.far_targets) else float("nan")
    axes.set_title(f"{title}: verification" + ("" if math.isnan(headline) else f", TAR@FAR=1e-6 {headline:.4f}"))
    return _save(figure, path)


# ----------------------------------------------------------------------------- gallery search (IJB 1:N, TinyFace)

# A gallery of labelled entries (templates or images; distractors carry a label no probe has) searched by
# probes, mated (their identity is in the gallery) or not. Scores are cosines of unit features (float64).
# A probe's rank is 1 + the number of non-mate entries scoring at least as high as its best mate (a tie is
# not a win, as above); the CMC at rank k is the fraction of mated probes with rank <= k. Open set, as NIST
# reports IJB-C 1:N: at a threshold t, FPIR = the fraction of non-mated probes whose top score >= t (a
# stranger named), FNIR = the fraction of mated probes NOT found at rank 1 with a score >= t (a known person
# missed), TPIR = 1 - FNIR.

GALLERY_PROBE_BLOCK = 64
DEFAULT_SEARCH_RANKS = (1, 5, 10)
DEFAULT_FPIR_TARGETS = (1e-2, 1e-1)


@dataclass(frozen=True)
class OpenSetPoint:
    fpir_target: float
    tpir: float
    fpir: float          # achieved (<= the target)
    threshold: float     # accept when the top score >= threshold


@dataclass
class GallerySearch:
    mated: np.ndarray               # (P,) bool: the probe's label is in the gallery
    rank: np.ndarray                # (P,) int64 rank of the best mate; 0 for non-mated probes
    mate_score: np.ndarray          # (P,) the best mate's score; NaN for non-mated
    top_score: np.ndarray           # (P,) the best score over the whole gallery
    average_precision: np.ndarray   # (P,) AP over the ranked gallery; NaN for non-mated
    num_gallery: int

    @property
    def num_mated(self) -> int:
        return int(self.mated.sum())

    def cmc(self, ranks) -> np.ndarray:
        """Identification rate at each rank, over the mated probes."""
        if not self.num_mated:
            raise UserError("identification: no probe has a mate in the gallery: no CMC")
        mated_rank = self.rank[self.mated]
        return np.array([float(np.mean(mated_rank <= r)) for r in ranks])

    @property
    def mean_average_precision(self) -> float:
        return float(np.nanmean(self.average_precision)) if self.num_mated else float("nan")

    def tpir_fpir(self, threshold: float) -> tuple[float, float]:
        """(TPIR, FPIR) at a threshold (NaN where there are no mated / non-mated probes)."""
        hit = (self.rank == 1) & (self.mate_score >= threshold)
        tpir = float(hit[self.mated].mean()) if self.num_mated else float("nan")
        strangers = self.top_score[~self.mated]
        fpir = float(np.mean(strangers >= threshold)) if strangers.size else float("nan")
        return tpir, fpir

    def fnir_fpir(self, threshold: float) -> tuple[float, float]:
        tpir, fpir = self.tpir_fpir(threshold)
        return 1 - tpir, fpir

    def tpir_at_fpir(self, targets=DEFAULT_FPIR_TARGETS) -> list[OpenSetPoint]:
        """TPIR at each FPIR target the non-mated probes support (>= 1/target of them), the threshold being
        the lowest whose FPIR is within the target (`verification.threshold_at_far` on their top scores)."""
        from verification import threshold_at_far

        strangers = self.top_score[~self.mated]
        supported, _ = far_targets_supported(strangers.size, targets)
        points = []
        for target in supported:
            threshold = threshold_at_far(strangers, target)
            tpir, fpir = self.tpir_fpir(threshold)
            points.append(OpenSetPoint(target, tpir, fpir, threshold))
        return points

    def det_curve(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(FPIR, FNIR, threshold) at every distinct top score of a non-mated probe and mate score of a
        mated one, thresholds ascending (FPIR falls, FNIR rises)."""
        hits = np.where((self.rank == 1) & self.mated, self.mate_score, -np.inf)[self.mated]
        strangers = np.sort(self.top_score[~self.mated])
        hits_sorted = np.sort(hits)
        levels = np.unique(np.r_[strangers, hits_sorted[np.isfinite(hits_sorted)]])
        fpir = 1 - np.searchsorted(strangers, levels, side="left") / max(strangers.size, 1)
        tpir = 1 - np.searchsorted(hits_sorted, levels, side="left") / max(hits_sorted.size, 1)
        return fpir, 1 - tpir, levels

    def as_dict(self, ranks=DEFAULT_SEARCH_RANKS, fpir_targets=DEFAULT_FPIR_TARGETS) -> dict:
        out = {"probes": int(self.mated.size), "mated_probes": self.num_mated,
               "non_mated_probes": int((~self.mated).sum()), "gallery": self.num_gallery}
        if self.num_mated:
            out["cmc"] = {str(r): float(v) for r, v in zip(ranks, self.cmc(ranks))}
            out["mAP"] = self.mean_average_precision
        out["tpir_at_fpir"] = {f"{p.fpir_target:g}": {"tpir": p.tpir, "fpir": p.fpir, "threshold": p.threshold}
                               for p in self.tpir_at_fpir(fpir_targets)}
        return out


def search_gallery(probes, probe_labels, gallery, gallery_labels,
                   probe_block: int = GALLERY_PROBE_BLOCK) -> GallerySearch:
    """Search `gallery` (G, D) with `probes` (P, D), unit features; labels are integers (see above). At most
    one `probe_block x G` block of float64 scores lives at a time."""
    probes = _as_features(probes, "probes")
    gallery = _as_features(gallery, "gallery")
    probe_labels, gallery_labels = np.asarray(probe_labels), np.asarray(gallery_labels)
    if probe_labels.shape != (probes.shape[0],) or gallery_labels.shape != (gallery.shape[0],):
        raise UserError(f"identification: {probes.shape[0]} probes and {gallery.shape[0]} gallery entries need as "
                        f"many labels, got {probe_labels.shape} and {gallery_labels.shape}")
    if probes.shape[1] != gallery.shape[1]:
        raise UserError(f"identification: probes have {probes.shape[1]} dimensions, the gallery {gallery.shape[1]}")
    num = probes.shape[0]
    search = GallerySearch(np.isin(probe_labels, gallery_labels), np.zeros(num, np.int64), np.full(num, np.nan),
                           np.full(num, -np.inf), np.full(num, np.nan), gallery.shape[0])
    for start in range(0, num, probe_block):
        stop = min(start + probe_block, num)
        _search_block(search, probes[start:stop] @ gallery.T, probe_labels[start:stop], gallery_labels, start)
    return search


def _search_block(search: GallerySearch, scores: np.ndarray, labels, gallery_labels, first: int) -> None:
    if scores.shape[1]:
        search.top_score[first:first + scores.shape[0]] = scores.max(axis=1)
    is_mate = labels[:, None] == gallery_labels[None, :]
    for row in np.flatnonzero(is_mate.any(axis=1)):
        mates = np.sort(scores[row, is_mate[row]])[::-1]
        others = scores[row, ~is_mate[row]]
        # The i-th best mate (1-based) sits at position i + (non-mates scoring at least as high as it).
        beaten_by = (others[:, None] >= mates[None, :]).sum(axis=0)
        positions = np.arange(1, mates.size + 1) + beaten_by
        probe = first + row
        search.mate_score[probe] = mates[0]
        search.rank[probe] = positions[0]
        search.average_precision[probe] = float(np.mean(np.arange(1, mates.size + 1) / positions))


def save_search_cmc_png(search: GallerySearch, path, max_rank: int = 20, title: str = "CMC") -> Path:
    """The CMC of a gallery search (rank 1..max_rank), with rank-1 and mAP in the title."""
    ranks = np.arange(1, min(max_rank, max(search.num_gallery, 1)) + 1)
    cmc = search.cmc(ranks)
    figure = _figure()
    axes = figure.add_subplot()
    axes.plot(ranks, 100 * cmc, marker="o", ms=3)
    axes.set_xlabel("rank")
    axes.set_ylabel("identification rate (%)")
    axes.grid(True, alpha=0.3)
    axes.set_title(f"{title}: rank-1 {100 * cmc[0]:.2f}%, mAP {100 * search.mean_average_precision:.2f}%")
    return _save(figure, path)


def save_det_png(search: GallerySearch, path, title: str = "DET", threshold: float | None = None) -> Path:
    """The open-set DET curve: FNIR against FPIR (log-log), with the point at `threshold` where given."""
    fpir, fnir, _ = search.det_curve()
    figure = _figure()
    axes = figure.add_subplot()
    visible = (fpir > 0) & (fnir > 0)
    axes.loglog(fpir[visible], fnir[visible], lw=1.2, drawstyle="steps-post")
    if threshold is not None:
        fnir_at, fpir_at = search.fnir_fpir(threshold)
        axes.plot([fpir_at], [fnir_at], "ko", ms=4, label=f"threshold {threshold:.3f}: FPIR {fpir_at:.4f}, "
                                                           f"FNIR {fnir_at:.4f}")
        axes.legend(fontsize=7, loc="upper right")
    axes.set_xlabel("FPIR (strangers named)")
    axes.set_ylabel("FNIR (known people missed)")
    axes.grid(True, which="both", alpha=0.3)
    axes.set_title(title)
    return _save(figure, path)


# ----------------------------------------------------------------------------- gallery / probe identification

def gallery_ranks(probes, probe_labels, gallery, gallery_labels) -> np.ndarray:
    """(P,) rank of each probe's own identity in a gallery (one or more entries per identity): 1 + the number
    of other identities whose best entry scores at least as high as the probe's best mate (a tie is not a
    win, as in the CMC above); scores as `pair_scores`. Every probe's identity must be in the gallery. An identity's
    rank, where `search_gallery`'s is an entry's: the two agree when each identity has one entry."""
    probes, gallery = _as_features(probes, "probes"), _as_features(gallery, "gallery")
    probe_labels, gallery_labels = np.asarray(probe_labels), np.asarray(gallery_labels)
    identities, gallery_index = np.unique(gallery_labels, return_inverse=True)
    position = np.searchsorted(identities, probe_labels)
    position = np.minimum(position, len(identities) - 1)
    missing = identities[position] != probe_labels
    if missing.any():
        raise UserError(f"identification: probe identity {str(probe_labels[np.flatnonzero(missing)[0]])!r} has no "
                        "gallery entry")
    scores = pair_scores(probes, gallery, squared_norms(probes), squared_norms(gallery))
    best = np.full((len(probes), len(identities)), -np.inf, dtype=np.float32)
    for column in range(len(identities)):  # each identity's best-scoring entry
        best[:, column] = scores[:, gallery_index == column].max(axis=1)
    mate = best[np.arange(len(probes)), position]
    beaten = (best >= mate[:, None]).sum(axis=1) - 1
    return 1 + beaten


def cmc_from_ranks(ranks, max_rank: int = DEFAULT_MAX_RANK) -> np.ndarray:
    """(max_rank,) identification rate at ranks 1..max_rank."""
    ranks = np.asarray(ranks)
    return np.array([(ranks <= r).mean() if ranks.size else np.nan for r in range(1, max_rank + 1)])
