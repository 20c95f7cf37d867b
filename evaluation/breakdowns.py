"""Breakdowns of a verification result: by head pose and by resolution, for one model or several.

- **pose**: the set's pairs by their two images' |yaw| bins (`evaluation.strata.pose_bin_masks`); each
  category's accuracy is that of its pairs judged at the threshold chosen on the WHOLE set's training folds
  (the k-fold result's per-pair correctness), so no category picks a threshold of its own.
- **resolution**: the set's images degraded to each of `resolutions` pixels (`evaluation.strata.
  DegradedImages`, slice by slice from the memmap) and verified again with the same k-fold protocol; a level
  equal to the images' size without blur is the plain result (not embedded twice).

TAR@FAR in both is read from the exact ROC of the level's own pairs (the threshold set on those pairs'
negatives, as IJB-B/C report it), NaN where the level has no positive or fewer than 1/FAR negatives; it can
differ a little from the k-fold TAR@FAR of the main table.

Several models evaluated on the same pairs are compared level by level with McNemar's test on the per-pair
correctness: exact (binomial) when the two models disagree on fewer than `EXACT_BELOW` pairs, else the
continuity-corrected chi-square. Each p-value is one comparison's (no correction for the many levels).
"""
from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass
from typing import Callable

import numpy as np

from evaluation.sets import SetResult, ValSet
from evaluation.strata import DEFAULT_YAW_EDGES, DegradedImages, check_yaw_edges, pose_bin_masks
from utils import UserError
from verification import roc_tar_at_far

log = logging.getLogger(__name__)

BREAKDOWNS = ("pose", "resolution")
DEFAULT_RESOLUTIONS = (112, 56, 28, 20, 14)
BREAKDOWN_FAR = 1e-3
EXACT_BELOW = 25     # discordant pairs under which McNemar's test is the exact binomial one
ALPHA = 0.05         # significance level of the verdicts


@dataclass(frozen=True)
class BreakdownSpec:
    """What to break a result down by, and how finely."""
    by: tuple[str, ...] = ()
    yaw_edges: tuple[float, ...] = DEFAULT_YAW_EDGES
    resolutions: tuple[int, ...] = DEFAULT_RESOLUTIONS
    blur: float = 0.0      # Gaussian sigma in pixels of the full-size image, applied before every downscale
    far: float = BREAKDOWN_FAR

    def __post_init__(self):
        unknown = [name for name in self.by if name not in BREAKDOWNS]
        if unknown:
            raise UserError(f"--by {','.join(self.by)}: unknown breakdown {', '.join(unknown)} "
                            f"(choose from {', '.join(BREAKDOWNS)})")
        object.__setattr__(self, "yaw_edges", check_yaw_edges(self.yaw_edges))
        whole = [isinstance(r, (int, np.integer)) and not isinstance(r, bool) and r >= 1 for r in self.resolutions]
        if not whole or not all(whole):
            raise UserError(f"--resolutions {self.resolutions}: expected positive whole pixel sizes, e.g. 112,56,28")
        if not self.blur >= 0:
            raise UserError(f"--blur {self.blur}: a Gaussian sigma in pixels, 0 or more")
        if not 0 < self.far < 1:
            raise UserError(f"--breakdown_far {self.far}: a FAR in (0, 1), e.g. 0.001")

    def check_fits(self, valset: ValSet) -> None:
        """Fail before any work when a resolution level is larger than the set's images."""
        if "resolution" in self.by:
            too_large = [size for size in self.resolutions if size > min(valset.images.shape[2:])]
            if too_large:
                raise UserError(f"--resolutions {','.join(map(str, too_large))}: larger than {valset.name}'s "
                                f"{valset.images.shape[2]}x{valset.images.shape[3]} images")


def parse_list(text: str | None, flag: str, kind=str) -> tuple:
    """'a,b,c' -> (a, b, c) converted by `kind`; one clear error naming the flag otherwise."""
    items = [item.strip() for item in (text or "").split(",") if item.strip()]
    try:
        return tuple(kind(item) for item in items)
    except ValueError:
        raise UserError(f"{flag} {text}: expected a comma-separated list of {kind.__name__}s") from None


@dataclass
class LevelResult:
    """One pose category or resolution level of one model on one set."""
    level: str             # 'frontal-half', 'res28'
    num_pairs: int
    num_negative: int
    accuracy: float        # NaN where the level has no pair
    tar: float             # TAR at the spec's FAR (ROC reading); NaN where unsupported
    correct: np.ndarray    # (num_pairs,) bool: each of the level's pairs right at its fold's threshold

    def as_dict(self) -> dict:
        return {"level": self.level, "pairs": self.num_pairs, "negatives": self.num_negative,
                "accuracy": _finite_or_none(self.accuracy), "tar": _finite_or_none(self.tar)}


SetBreakdown = dict  # breakdown name ('pose', 'resolution') -> list[LevelResult]


def _finite_or_none(value: float):
    return float(value) if math.isfinite(value) else None


def pose_breakdown(base: SetResult, pose: np.ndarray, spec: BreakdownSpec) -> list[LevelResult]:
    """Every |yaw| category of the set's pairs, judged on the whole set's k-fold thresholds."""
    r = base.result
    rows = []
    for label, mask in pose_bin_masks(pose, spec.yaw_edges):
        rows.append(LevelResult(label, int(mask.sum()), int((~r.issame[mask]).sum()), r.accuracy_on(mask),
                                roc_tar_at_far(r.distances[mask], r.issame[mask], spec.far), r.pair_correct[mask]))
    return rows


def resolution_breakdown(evaluate: Callable[[ValSet], SetResult], valset: ValSet, base: SetResult,
                         spec: BreakdownSpec) -> list[LevelResult]:
    """The set verified again at every resolution level (`evaluate` embeds and verifies a ValSet)."""
    native = min(valset.images.shape[2:])
    rows = []
    for size in spec.resolutions:
        if size == native and spec.blur == 0:
            result = base.result
        else:
            degraded = ValSet(valset.name, DegradedImages(valset.images, size, spec.blur), valset.issame, valset.pose)
            result = evaluate(degraded).result
        rows.append(LevelResult(f"res{size}", result.issame.size, result.num_negative, result.accuracy,
                                roc_tar_at_far(result.distances, result.issame, spec.far), result.pair_correct))
    return rows


def breakdown_set(evaluate: Callable[[ValSet], SetResult], valset: ValSet, base: SetResult,
                  spec: BreakdownSpec) -> SetBreakdown:
    """The breakdowns `spec.by` of one model's `base` result on `valset`; 'pose' is left out of a set without
    poses. `evaluate(valset)` must use the model and protocol that gave `base`."""
    spec.check_fits(valset)
    out: SetBreakdown = {}
    if "pose" in spec.by:
        if valset.pose is None:
            log.warning("%s: the set has no pose.npy, so no pose breakdown", valset.name)
        else:
            out["pose"] = pose_breakdown(base, valset.pose, spec)
    if "resolution" in spec.by:
        out["resolution"] = resolution_breakdown(evaluate, valset, base, spec)
    return out


def breakdown_scalars(breakdown: SetBreakdown, spec: BreakdownSpec) -> dict[str, float]:
    """Flat scalars for TensorBoard: 'pose/<category>/accuracy', 'res<N>/accuracy', '.../tar@far=<far>' (the
    finite ones)."""
    out = {}
    for name, rows in breakdown.items():
        for row in rows:
            prefix = f"pose/{row.level}" if name == "pose" else row.level
            for key, value in (("accuracy", row.accuracy), (f"tar@far={spec.far:g}", row.tar)):
                if math.isfinite(value):
                    out[f"{prefix}/{key}"] = value
    return out


# ------------------------------------------------------------------------------------ paired comparison

@dataclass(frozen=True)
class PairedTest:
    """McNemar's test of two models on the same pairs of one level."""
    set_name: str
    breakdown: str
    level: str
    model_a: str
    model_b: str
    only_a: int        # pairs model A got right and model B wrong
    only_b: int
    p_value: float
    method: str        # 'exact binomial', 'chi-square (continuity-corrected)' or 'no discordant pairs'

    @property
    def significant(self) -> bool:
        return self.p_value < ALPHA

    def verdict(self) -> str:
        """The reading in plain words: which model is better, or that the difference is not significant."""
        if not self.significant:
            return f"no significant difference (p = {self.p_value:.3g} >= {ALPHA:g})"
        better = self.model_a if self.only_a > self.only_b else self.model_b
        return f"{better} better, significant (p = {self.p_value:.3g} < {ALPHA:g})"

    def as_dict(self) -> dict:
        return {"set": self.set_name, "breakdown": self.breakdown, "level": self.level, "model_a": self.model_a,
                "model_b": self.model_b, "only_a_right": self.only_a, "only_b_right": self.only_b,
                "p_value": self.p_value, "method": self.method, "significant": self.significant,
                "verdict": self.verdict()}


def mcnemar(correct_a, correct_b) -> tuple[int, int, float, str]:
    """(only A right, only B right, two-sided p-value, method) of McNemar's test on paired correctness."""
    from scipy import stats  # here: training imports this module, and only comparisons need scipy

    correct_a, correct_b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if correct_a.shape != correct_b.shape:
        raise ValueError(f"paired correctness of different shapes {correct_a.shape} and {correct_b.shape}")
    only_a, only_b = int((correct_a & ~correct_b).sum()), int((~correct_a & correct_b).sum())
    discordant = only_a + only_b
    if discordant == 0:
        return only_a, only_b, 1.0, "no discordant pairs"
    if discordant < EXACT_BELOW:
        return only_a, only_b, float(stats.binomtest(only_a, discordant, 0.5).pvalue), "exact binomial"
    statistic = (abs(only_a - only_b) - 1) ** 2 / discordant
    return only_a, only_b, float(stats.chi2.sf(statistic, df=1)), "chi-square (continuity-corrected)"


def compare_models(breakdowns: dict[str, dict[str, SetBreakdown]]) -> list[PairedTest]:
    """McNemar's test for every two models (model -> set -> breakdown), every set, breakdown and level with
    pairs."""
    tests = []
    for model_a, model_b in itertools.combinations(breakdowns, 2):
        for set_name, by_kind in breakdowns[model_a].items():
            for kind, rows in by_kind.items():
                other = {row.level: row for row in breakdowns[model_b].get(set_name, {}).get(kind, [])}
                for row in rows:
                    if row.num_pairs and row.level in other:
                        tests.append(PairedTest(set_name, kind, row.level, model_a, model_b,
                                                *mcnemar(row.correct, other[row.level].correct)))
    return tests


# -------------------------------------------------------------------------------------------- CLI flags

def add_breakdown_arguments(parser) -> None:
    """eval.py's --by / --yaw_bins / --resolutions / --blur / --breakdown_far."""
    group = parser.add_argument_group("breakdowns (pose bins, resolution sweep, several models)")
    group.add_argument("--by", default=None,
                       help=f"comma-separated breakdowns: {', '.join(BREAKDOWNS)} (pose needs the set's pose.npy); "
                            "written to <out>/breakdowns.md, results.json and a PNG per set and breakdown (default: none)")
    group.add_argument("--yaw_bins", default=",".join(f"{e:g}" for e in DEFAULT_YAW_EDGES),
                       help="|yaw| bin edges in degrees for --by pose (3 bins: frontal, half, profile)")
    group.add_argument("--resolutions", default=",".join(map(str, DEFAULT_RESOLUTIONS)),
                       help="--by resolution: face sizes in pixels; each is an area downscale and a bilinear "
                            "upscale back to the images' size, applied batch by batch")
    group.add_argument("--blur", type=float, default=0.0,
                       help="--by resolution: Gaussian blur sigma (pixels of the full-size image) before each "
                            "downscale; 0 = none")
    group.add_argument("--breakdown_far", type=float, default=BREAKDOWN_FAR,
                       help="the FAR of the breakdowns' TAR column (read from each level's own ROC)")


def spec_from_args(args) -> BreakdownSpec:
    return BreakdownSpec(by=parse_list(args.by, "--by"), yaw_edges=parse_list(args.yaw_bins, "--yaw_bins", float),
                         resolutions=parse_list(args.resolutions, "--resolutions", int), blur=args.blur,
                         far=args.breakdown_far)


def spec_from_config(config) -> BreakdownSpec | None:
    """Training's breakdowns (`Config.val_breakdowns`, `val_resolutions`), None when it asks for none."""
    by = parse_list(config.val_breakdowns, "--val_breakdowns")
    if not by:
        return None
    try:
        return BreakdownSpec(by=by, resolutions=tuple(config.val_resolutions))
    except UserError as err:
        raise UserError(str(err).replace("--by", "--val_breakdowns").replace("--resolutions", "--val_resolutions"))\
            from None
