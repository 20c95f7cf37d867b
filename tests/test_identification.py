"""identification.py: the streamed CMC / TAR@FAR against a brute-force NumPy computation."""
import math

import numpy as np
import pytest

from identification import (
    OpenSetEvaluator,
    evaluate_open_set,
    order_keys,
    pair_scores,
    save_cmc_png,
    save_roc_png,
)
from utils import UserError


def dyadic(rng, rows, dim=8):
    """Features in {-1, -0.5, 0, 0.5, 1}: every score is exact in float32, so ties are real ties and the
    chunked and brute-force computations must agree to the last bit."""
    return (rng.integers(-2, 3, size=(rows, dim)) / 2).astype(np.float32)


def brute_force(probes, labels, distractors, sizes, max_rank, far_targets):
    """Independent reference: the full score matrices in float64, one loop per trial."""
    def scores(a, b):
        a, b = a.astype(np.float64), b.astype(np.float64)
        return 1 - 0.5 * ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)

    probe_scores, distractor_scores = scores(probes, probes), scores(probes, distractors)
    cmc = np.zeros((len(sizes), max_rank))
    tar = np.full((len(sizes), len(far_targets)), np.nan)
    trials = [(i, j) for i in range(len(probes)) for j in range(len(probes)) if i != j and labels[i] == labels[j]]
    positives = np.array([probe_scores[i, j] for i, j in trials if i < j])
    for s, size in enumerate(sizes):
        ranks = np.array([1 + np.sum(distractor_scores[i, :size] >= probe_scores[i, j]) for i, j in trials])
        cmc[s] = [(ranks <= k).mean() for k in range(1, max_rank + 1)]
        negatives = distractor_scores[:, :size].ravel()
        for t, target in enumerate(far_targets):
            if negatives.size < math.ceil(1 / target - 1e-9):
                continue
            best = 0.0
            for threshold in np.unique(positives):
                if (negatives >= threshold).mean() <= target:
                    best = max(best, (positives >= threshold).mean())
            tar[s, t] = best
    return cmc, tar


def labelled_probes(rng, identities=5, per_identity=(1, 2, 3, 4, 5)):
    labels = np.repeat(np.arange(identities), per_identity)
    return dyadic(rng, labels.size), labels


@pytest.mark.parametrize("seed, chunk_size, probe_block", [(0, 4, 3), (1, 7, 2), (2, 1000, 1000), (3, 1, 1)])
def test_streamed_equals_brute_force(seed, chunk_size, probe_block):
    rng = np.random.default_rng(seed)
    probes, labels = labelled_probes(rng)
    distractors = dyadic(rng, 40)
    sizes, far_targets = (3, 10, 40), (1e-3, 1e-2, 5e-2, 1e-1, 0.5)
    result = evaluate_open_set(probes, labels, distractors, sizes, chunk_size=chunk_size,
                               probe_block=probe_block, max_rank=10, far_targets=far_targets)
    cmc, tar = brute_force(probes, labels, distractors, sizes, 10, far_targets)
    assert result.sizes == sizes
    np.testing.assert_array_equal(result.cmc, cmc)
    np.testing.assert_array_equal(np.isnan(result.tar_at_far), np.isnan(tar))
    np.testing.assert_allclose(result.tar_at_far[~np.isnan(tar)], tar[~np.isnan(tar)], rtol=0, atol=1e-12)
    assert result.num_trials == sum(n * (n - 1) for n in (1, 2, 3, 4, 5))
    assert result.num_positive == result.num_trials // 2
    assert list(result.num_negative) == [len(probes) * s for s in sizes]


def test_ties_count_against_the_mate():
    probes = np.array([[1, 0], [1, 0], [0, 1]], np.float32)
    labels = np.array([0, 0, 1])
    # score(probe 0, mate 1) = 1; a distractor equal to the probe ties it, one slightly off does not.
    distractors = np.array([[1, 0], [0.5, 0.5], [-1, 0]], np.float32)
    result = evaluate_open_set(probes, labels, distractors, sizes=(1, 2, 3), chunk_size=2, max_rank=3,
                               far_targets=(0.5,))
    assert result.beaten[:, 0].tolist() == [1, 1]  # both trials (0 -> 1, 1 -> 0) tied by distractor 0
    assert result.cmc[:, 0].tolist() == [0.0, 0.0, 0.0] and result.cmc[:, 1].tolist() == [1.0, 1.0, 1.0]
    # verification: one positive (score 1), negatives >= 1: exactly the two ties out of 3 probes x n
    assert result.roc_far[0].tolist() == [2 / 3]


def test_subsets_by_membership_equal_separate_runs():
    rng = np.random.default_rng(5)
    probes, labels = labelled_probes(rng)
    distractors = dyadic(rng, 30)
    membership = rng.random((30, 2)) < 0.5
    evaluator = OpenSetEvaluator(probes, labels, num_subsets=2, probe_block=4)
    for start in range(0, 30, 8):
        evaluator.add(distractors[start:start + 8], membership[start:start + 8])
    together = evaluator.result(max_rank=5, far_targets=(0.1,))
    for subset in range(2):
        alone = evaluate_open_set(probes, labels, distractors[membership[:, subset]], max_rank=5, far_targets=(0.1,))
        np.testing.assert_array_equal(together.cmc[subset], alone.cmc[0])
        np.testing.assert_array_equal(together.tar_at_far[subset], alone.tar_at_far[0])
        assert together.sizes[subset] == membership[:, subset].sum()


def test_perfect_and_hopeless_separation():
    rng = np.random.default_rng(0)
    centres = np.linalg.qr(rng.normal(size=(64, 64)))[0][:4].astype(np.float32)
    labels = np.repeat(np.arange(4), 3)
    probes = centres[labels] + 0.01 * rng.normal(size=(12, 64)).astype(np.float32)
    probes /= np.linalg.norm(probes, axis=1, keepdims=True)
    far_from_all = np.linalg.qr(rng.normal(size=(64, 64)))[0][:, 10:30].T.astype(np.float32)
    far_from_all -= (far_from_all @ centres.T) @ centres  # orthogonal to every identity
    far_from_all /= np.linalg.norm(far_from_all, axis=1, keepdims=True)
    good = evaluate_open_set(probes, labels, far_from_all, far_targets=(0.1,))
    assert good.rank1() == 1.0 and good.tar(0.1) == 1.0
    hopeless = evaluate_open_set(probes, labels, np.repeat(probes[:1], 20, axis=0), far_targets=(0.1,))
    assert hopeless.cmc[0, 0] < 1.0


def test_order_keys_sort_like_floats():
    values = np.array([-np.inf, -3.5, -1e-30, -0.0, 0.0, 1e-30, 0.25, 1.0, 7e30, np.inf], np.float32)
    keys = order_keys(values)
    assert np.all(np.diff(keys[1:-1]) >= 0) and keys[3] == keys[4]
    shuffled = np.random.default_rng(0).permutation(values)
    assert np.array_equal(shuffled[np.argsort(order_keys(shuffled), kind="stable")] , np.sort(shuffled))


def test_pair_scores_is_cosine_for_unit_vectors():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(5, 16)).astype(np.float32)
    b = rng.normal(size=(7, 16)).astype(np.float32)
    a /= np.linalg.norm(a, axis=1, keepdims=True)
    b /= np.linalg.norm(b, axis=1, keepdims=True)
    np.testing.assert_allclose(pair_scores(a, b), a @ b.T, atol=1e-6)


def test_unsupported_far_is_nan_and_errors():
    probes = np.array([[1, 0], [1, 0]], np.float32)
    result = evaluate_open_set(probes, [0, 0], np.array([[0, 1]], np.float32), far_targets=(1e-6, 0.5))
    assert math.isnan(result.tar(1e-6)) and result.tar(0.5) == 1.0
    with pytest.raises(UserError, match="no identity has two probe images"):
        evaluate_open_set(probes, [0, 1], np.array([[0, 1]], np.float32))
    with pytest.raises(UserError, match="row 1 is not finite"):
        evaluate_open_set(probes, [0, 0], np.array([[0, 1], [np.nan, 0]], np.float32))
    with pytest.raises(UserError, match="3 dimensions"):
        evaluate_open_set(probes, [0, 0], np.zeros((2, 3), np.float32))


def test_report_and_plots(tmp_path):
    rng = np.random.default_rng(3)
    probes, labels = labelled_probes(rng)
    result = evaluate_open_set(probes, labels, dyadic(rng, 50), sizes=(10, 50), far_targets=(1e-3, 1e-1))
    table = result.markdown()
    assert "| 50 |" in table and "rank-1" in table and "TAR@FAR=0.001" in table
    report = result.as_dict()
    assert [s["distractors"] for s in report["subsets"]] == [10, 50]
    assert report["subsets"][0]["tar_at_far"]["0.001"] is None  # 15 x 10 negatives < 1000
    for save, name in ((save_cmc_png, "cmc.png"), (save_roc_png, "roc.png")):
        assert save(result, tmp_path / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


# ----------------------------------------------------------------------------- gallery search and open-set metrics

def _unit(rows):
    rows = np.asarray(rows, dtype=np.float64)
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_gallery_search_ranks_ties_ap_and_open_set(tmp_path):
    from identification import save_det_png, save_search_cmc_png, search_gallery

    angle = np.deg2rad([0, 30, 30, 60, 90])
    gallery = _unit(np.c_[np.cos(angle), np.sin(angle)])
    gallery_labels = np.array([1, 2, -100, 1, 3])         # a distractor ties with label 2's entry
    probes = _unit([[np.cos(np.deg2rad(30)), np.sin(np.deg2rad(30))], [1, 0], [-1, 0.2]])
    probe_labels = np.array([2, 1, 7])                     # probe 2 is a stranger
    search = search_gallery(probes, probe_labels, gallery, gallery_labels, probe_block=2)
    assert list(search.mated) == [True, True, False]
    # probe 0: its mate ties with the distractor (a tie is not a win) -> rank 2
    assert list(search.rank) == [2, 1, 0]
    assert search.cmc([1, 2]).tolist() == [0.5, 1.0]
    # probe 1 has mates at positions 1 and 4 (angles 0 and 60; the 30-degree two come first): AP = (1/1 + 2/4) / 2
    assert search.average_precision[1] == pytest.approx(0.75) and search.average_precision[0] == pytest.approx(0.5)
    assert search.mean_average_precision == pytest.approx(0.625)
    stranger_top = search.top_score[2]
    tpir, fpir = search.tpir_fpir(stranger_top)
    assert (tpir, fpir) == (0.5, 1.0)                      # the stranger is named; probe 1 found at rank 1
    fnir, fpir = search.fnir_fpir(np.nextafter(stranger_top, 1))
    assert (fnir, fpir) == (0.5, 0.0)
    fpir_curve, fnir_curve, levels = search.det_curve()
    assert np.all(np.diff(levels) > 0) and np.all(np.diff(fpir_curve) <= 0) and np.all(np.diff(fnir_curve) >= 0)
    assert search.tpir_at_fpir([0.5, 1e-2]) == []          # one non-mated probe measures no FPIR below 1
    report = search.as_dict((1, 2), ())
    assert report["cmc"] == {"1": 0.5, "2": 1.0} and report["non_mated_probes"] == 1
    for path in (save_search_cmc_png(search, tmp_path / "cmc.png"), save_det_png(search, tmp_path / "det.png",
                                                                               threshold=0.5)):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(UserError, match="dimensions"):
        search_gallery(probes, probe_labels, np.ones((2, 3)), [1, 2])


def test_tpir_at_fpir_is_the_lowest_threshold_within_the_target():
    from identification import search_gallery

    rng = np.random.default_rng(0)
    gallery = _unit(rng.normal(size=(20, 16)))
    labels = np.arange(20)
    mated = _unit(gallery + 0.6 * rng.normal(size=(20, 16)))
    strangers = _unit(rng.normal(size=(30, 16)))
    search = search_gallery(np.r_[mated, strangers], np.r_[labels, np.full(30, 99)], gallery, labels)
    (point,) = search.tpir_at_fpir([0.1])
    tops = np.sort(search.top_score[~search.mated])[::-1]
    assert point.fpir <= 0.1 and tops[3] < point.threshold <= np.nextafter(tops[3], 1)  # 3 of 30 may pass
    best = max(search.tpir_fpir(t)[0] for t in np.r_[search.mate_score[search.mated], tops, np.inf]
               if search.tpir_fpir(t)[1] <= 0.1)
    assert point.tpir == best
