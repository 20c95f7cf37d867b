"""verification.py against straightforward loop implementations written here (TreB1eN's way:
one pass over the pairs per threshold, explicit sequential folds), on random embeddings with
deliberately tied distances and degenerate folds."""
from __future__ import annotations

import math

import numpy as np
import pytest

import verification
from utils import UserError
from verification import evaluate, verify

GRID = np.arange(0, 4, 0.01)


# ----------------------------------------------------------------------------- loop references

def loop_folds(num_pairs, num_folds):
    """Sequential (test, train) index lists, the first num_pairs % num_folds folds one larger."""
    folds, start = [], 0
    for fold in range(num_folds):
        size = num_pairs // num_folds + (1 if fold < num_pairs % num_folds else 0)
        test = list(range(start, start + size))
        train = [i for i in range(num_pairs) if not start <= i < start + size]
        folds.append((np.array(test, dtype=int), np.array(train, dtype=int)))
        start += size
    assert start == num_pairs
    return folds


def loop_rates(threshold, dist, same):
    tp = fp = tn = fn = 0
    for d, s in zip(dist, same):
        accepted = d < threshold
        tp += accepted and s
        fp += accepted and not s
        tn += (not accepted) and not s
        fn += (not accepted) and s
    tpr = 0 if tp + fn == 0 else float(tp) / float(tp + fn)
    fpr = 0 if fp + tn == 0 else float(fp) / float(fp + tn)
    return tpr, fpr, float(tp + tn) / len(dist)


def loop_distances(embeddings):
    return np.sum(np.square(np.subtract(embeddings[0::2], embeddings[1::2])), 1)


def loop_evaluate(embeddings, issame, num_folds=10):
    dist, issame = loop_distances(embeddings), np.asarray(issame)
    tprs = np.zeros((num_folds, len(GRID)))
    fprs = np.zeros((num_folds, len(GRID)))
    accuracy, best = np.zeros(num_folds), np.zeros(num_folds)
    for f, (test, train) in enumerate(loop_folds(len(dist), num_folds)):
        train_acc = np.array([loop_rates(t, dist[train], issame[train])[2] for t in GRID])
        best_index = 0
        for j in range(len(GRID)):  # the first maximum
            if train_acc[j] > train_acc[best_index]:
                best_index = j
        best[f] = GRID[best_index]
        for j, t in enumerate(GRID):
            tprs[f, j], fprs[f, j], _ = loop_rates(t, dist[test], issame[test])
        accuracy[f] = loop_rates(GRID[best_index], dist[test], issame[test])[2]
    return np.mean(tprs, 0), np.mean(fprs, 0), accuracy, best


def loop_tar_at_far(embeddings, issame, target, num_folds=10):
    """Largest threshold (among all training distances and +inf) whose training FAR <= target."""
    dist, issame = loop_distances(embeddings).astype(np.float64), np.asarray(issame)
    tars, fars, chosen = [], [], []
    for test, train in loop_folds(len(dist), num_folds):
        best = None
        for t in sorted(set(dist[train].tolist())) + [math.inf]:
            negatives = [d for d, s in zip(dist[train], issame[train]) if not s]
            far = 0 if not negatives else sum(d < t for d in negatives) / len(negatives)
            if far <= target:
                best = t
        pos = [d for d, s in zip(dist[test], issame[test]) if s]
        neg = [d for d, s in zip(dist[test], issame[test]) if not s]
        tars.append(0 if not pos else sum(d < best for d in pos) / len(pos))
        fars.append(0 if not neg else sum(d < best for d in neg) / len(neg))
        chosen.append(best)
    return np.mean(tars), np.std(tars), np.mean(fars), chosen


def loop_auc(dist, issame):
    wins, count = 0.0, 0
    for dp in dist[issame]:
        for dn in dist[~issame]:
            wins += 1.0 if dp < dn else 0.5 if dp == dn else 0.0
            count += 1
    return wins / count


def loop_eer(dist, issame):
    candidates = sorted(set(dist.tolist())) + [np.nextafter(dist.max(), np.inf)]
    points = [(sum(d < t for d in dist[~issame]) / (~issame).sum(),
               sum(d < t for d in dist[issame]) / issame.sum()) for t in candidates]
    for (f0, t0), (f1, t1) in zip(points, points[1:]):
        g0, g1 = f0 + t0 - 1, f1 + t1 - 1
        if g0 < 0 <= g1:
            return f0 + (-g0 / (g1 - g0)) * (f1 - f0)
    return points[0][0]


# ----------------------------------------------------------------------------- data

def unit_pairs(seed, num_pairs, dim=16, noise=0.9, dtype=np.float32):
    """Normalised embeddings; positives are noisy copies (so distances spread over the grid)."""
    rng = np.random.default_rng(seed)
    first = rng.normal(size=(num_pairs, dim))
    issame = rng.random(num_pairs) < 0.5
    second = np.where(issame[:, None], first + noise * rng.normal(size=(num_pairs, dim)),
                      rng.normal(size=(num_pairs, dim)))
    embeddings = np.empty((2 * num_pairs, dim))
    embeddings[0::2], embeddings[1::2] = first, second
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    return embeddings.astype(dtype), issame


def tied_pairs(seed, num_pairs):
    """Embeddings in {0, +-0.5} in 4 dims: squared distances are multiples of 0.25, so many pairs
    tie and many distances equal a grid threshold exactly (where `<` matters)."""
    rng = np.random.default_rng(seed)
    embeddings = rng.choice([-0.5, 0.0, 0.5], size=(2 * num_pairs, 4)).astype(np.float32)
    issame = rng.random(num_pairs) < 0.4
    close = embeddings[0::2][issame]
    embeddings[1::2][issame] = close  # positives identical -> distance 0 ties
    flip = rng.random(num_pairs) < 0.5
    embeddings[1::2][issame & flip, 0] = 0.5 - embeddings[0::2][issame & flip, 0]
    return embeddings, issame


CASES = [
    ("unit-f32", lambda: unit_pairs(0, 97), 10),
    ("unit-f64", lambda: unit_pairs(1, 120, dtype=np.float64), 10),
    ("unit-5folds", lambda: unit_pairs(2, 53, dim=8), 5),
    ("tied", lambda: tied_pairs(3, 90), 10),
    ("tied-2folds", lambda: tied_pairs(4, 41), 2),
]


def degenerate_case():
    """The first fold has no positive pair, the last no negative; a pair repeated 5 times."""
    embeddings, issame = unit_pairs(5, 60, noise=0.6)
    issame[:6] = False
    issame[-6:] = True
    embeddings[2:12] = np.tile(embeddings[0:2], (5, 1))
    return embeddings, issame


# ----------------------------------------------------------------------------- evaluate

@pytest.mark.parametrize("name, make, folds", CASES + [("degenerate", degenerate_case, 10)],
                         ids=lambda x: x if isinstance(x, str) else "")
def test_evaluate_identical_to_loop_reference(name, make, folds):
    embeddings, issame = make()
    expected = loop_evaluate(embeddings, issame, folds)
    got = evaluate(embeddings, list(issame), num_folds=folds)
    assert len(got) == 4
    for value, reference in zip(got, expected):
        assert value.shape == reference.shape
        np.testing.assert_array_equal(value, reference)


def test_evaluate_one_pair_per_fold_and_single_class():
    embeddings, issame = unit_pairs(6, 12)
    for labels in (issame, np.ones(12, bool), np.zeros(12, bool)):
        for value, reference in zip(evaluate(embeddings, labels, 12), loop_evaluate(embeddings, labels, 12)):
            np.testing.assert_array_equal(value, reference)


def test_fold_sizes_match_sklearn_kfold():
    # sklearn KFold(n_splits=k, shuffle=False): P // k each, the first P % k one more.
    np.testing.assert_array_equal(verification.fold_sizes(13, 5), [3, 3, 3, 2, 2])
    np.testing.assert_array_equal(verification.fold_sizes(6000, 10), [600] * 10)
    for test, _ in loop_folds(97, 10):
        assert len(test) in (9, 10)


# ----------------------------------------------------------------------------- verify

@pytest.mark.parametrize("name, make, folds", CASES + [("degenerate", degenerate_case, 10)],
                         ids=lambda x: x if isinstance(x, str) else "")
def test_verify_accuracy_and_pair_flags(name, make, folds):
    embeddings, issame = make()
    _, _, accuracy, best = loop_evaluate(embeddings, issame, folds)
    result = verify(embeddings, issame, num_folds=folds)
    np.testing.assert_array_equal(result.fold_accuracy, accuracy)
    np.testing.assert_array_equal(result.best_thresholds, best)
    assert result.accuracy == np.mean(accuracy) and result.accuracy_std == np.std(accuracy)
    # each pair is judged once, in its own fold, at that fold's threshold
    dist = loop_distances(embeddings).astype(np.float64)
    for f, (test, _) in enumerate(loop_folds(len(issame), folds)):
        assert (result.fold_of_pair[test] == f).all()
        np.testing.assert_array_equal(result.pair_correct[test], (dist[test] < best[f]) == issame[test])
        assert result.pair_correct[test].mean() == accuracy[f]
    assert result.accuracy_on(np.ones(len(issame), bool)) == result.pair_correct.mean()
    assert math.isnan(result.accuracy_on(np.zeros(len(issame), bool)))


def test_tar_at_far_with_duplicate_far_values_matches_loop():
    embeddings, issame = tied_pairs(7, 400)
    dist = loop_distances(embeddings)
    negatives = dist[~issame]
    # many tied negative distances: the training FAR curve repeats values (interp1d would refuse it)
    assert len(np.unique(negatives)) < len(negatives) / 10
    targets = (0.1, 0.05, 0.01, 0.005)
    result = verify(embeddings, issame, num_folds=10, far_targets=targets)
    assert [e.far_target for e in result.tar_at_far] == list(targets) and not result.skipped_far_targets
    for entry in result.tar_at_far:
        tar, tar_std, far, chosen = loop_tar_at_far(embeddings, issame, entry.far_target)
        np.testing.assert_array_equal(entry.thresholds, chosen)
        assert entry.tar == pytest.approx(tar, abs=1e-15)
        assert entry.tar_std == pytest.approx(tar_std, abs=1e-15)
        assert entry.far == pytest.approx(far, abs=1e-15)


@pytest.mark.parametrize("seed", [8, 9])
def test_tar_at_far_continuous_distances_match_loop(seed):
    embeddings, issame = unit_pairs(seed, 150, noise=0.7)
    result = verify(embeddings, issame, num_folds=5, far_targets=(0.3, 0.1, 0.02))
    for entry in result.tar_at_far:
        tar, tar_std, far, chosen = loop_tar_at_far(embeddings, issame, entry.far_target, num_folds=5)
        np.testing.assert_array_equal(entry.thresholds, chosen)
        assert (entry.tar, entry.tar_std, entry.far) == pytest.approx((tar, tar_std, far), abs=1e-15)
    assert result.tar(0.1) is result.tar_at_far[1]


def test_far_targets_the_pair_count_cannot_support_are_skipped():
    embeddings, issame = unit_pairs(10, 300)
    num_negative = int((~issame).sum())
    assert 100 <= num_negative < 1000
    result = verify(embeddings, issame)
    assert [e.far_target for e in result.tar_at_far] == [1e-2, 1e-1]
    assert result.skipped_far_targets == (1e-6, 1e-5, 1e-4, 1e-3)
    with pytest.raises(KeyError):
        result.tar(1e-3)
    assert verification.far_targets_supported(10**6, [1e-6])[0] == (1e-6,)
    assert verification.far_targets_supported(10**6 - 1, [1e-6])[1] == (1e-6,)


@pytest.mark.parametrize("make", [lambda: unit_pairs(11, 80), lambda: tied_pairs(12, 80), degenerate_case])
def test_auc_and_eer_match_brute_force(make):
    embeddings, issame = make()
    dist = loop_distances(embeddings).astype(np.float64)
    result = verify(embeddings, issame)
    assert result.auc == pytest.approx(loop_auc(dist, issame), abs=1e-12)
    assert result.eer == pytest.approx(loop_eer(dist, issame), abs=1e-12)
    assert result.roc_fpr[0] == result.roc_tpr[0] == 0 and result.roc_fpr[-1] == result.roc_tpr[-1] == 1
    # every ROC point is what its threshold gives
    for fpr, tpr, t in list(zip(result.roc_fpr, result.roc_tpr, result.roc_thresholds))[::7]:
        assert fpr == (dist[~issame] < t).mean() and tpr == (dist[issame] < t).mean()


def test_auc_and_eer_extremes():
    separable = np.array([0.1, 0.2, 0.3, 1.0, 1.5, 2.0])
    labels = np.array([True, True, True, False, False, False])
    fpr, tpr, thresholds = verification.exact_roc(separable, labels)
    assert verification.roc_auc(fpr, tpr) == 1.0
    assert verification.equal_error_rate(fpr, tpr, thresholds)[0] == 0.0
    fpr, tpr, thresholds = verification.exact_roc(np.ones(6), labels)  # all tied
    assert verification.roc_auc(fpr, tpr) == 0.5
    assert verification.equal_error_rate(fpr, tpr, thresholds)[0] == 0.5


def test_single_class_has_no_auc():
    embeddings, _ = unit_pairs(13, 20)
    result = verify(embeddings, np.ones(20, bool), num_folds=4)
    assert math.isnan(result.auc) and math.isnan(result.eer)
    assert result.accuracy == np.mean(loop_evaluate(embeddings, np.ones(20, bool), 4)[2])


def test_scalars_and_summary():
    embeddings, issame = unit_pairs(14, 200)
    result = verify(embeddings, issame)
    scalars = result.scalars()
    assert scalars["accuracy"] == result.accuracy and "tar@far=0.01" in scalars
    assert result.summary().startswith("accuracy ")


# ----------------------------------------------------------------------------- plots

@pytest.fixture(scope="module")
def result():
    pytest.importorskip("matplotlib")
    embeddings, issame = unit_pairs(15, 300)
    return verify(embeddings, issame)


def test_roc_png_written_atomically(result, tmp_path):
    path = verification.save_roc_png(result, tmp_path / "plots" / "lfw_roc.png", title="lfw")
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 5000
    assert sorted(p.name for p in path.parent.iterdir()) == ["lfw_roc.png"]


def test_roc_figure_axes(result):
    figure = verification.roc_figure(result, "lfw")
    axes = figure.axes[0]
    assert axes.get_xscale() == "log" and axes.get_xlabel().startswith("FAR")


def test_roc_image_goes_into_tensorboard(result, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    from torch.utils.tensorboard import SummaryWriter

    image = verification.roc_image_for_tensorboard(result, "lfw")
    assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    assert image.min() < 100 < 250 <= image.max()  # not blank
    chw = verification.roc_image_for_tensorboard(result, "lfw", dataformats="CHW")
    assert chw.shape == (3,) + image.shape[:2]
    writer = SummaryWriter(log_dir=str(tmp_path))
    writer.add_image("val/lfw/roc", image, global_step=3, dataformats="HWC")
    writer.add_figure("val/lfw/roc_figure", verification.roc_figure(result, "lfw"), global_step=3)
    writer.close()
    events = EventAccumulator(str(tmp_path), size_guidance={"images": 0})
    events.Reload()
    assert set(events.Tags()["images"]) == {"val/lfw/roc", "val/lfw/roc_figure"}
    stored = events.Images("val/lfw/roc")[0]
    assert (stored.step, stored.height, stored.width) == (3, image.shape[0], image.shape[1])


# ----------------------------------------------------------------------------- bad input

@pytest.mark.parametrize("function", [evaluate, verify])
def test_bad_input_is_a_user_error(function):
    embeddings, issame = unit_pairs(16, 20)
    with pytest.raises(UserError, match="even number"):
        function(embeddings[:-1], issame)
    with pytest.raises(UserError, match="20 pairs but actual_issame has 19"):
        function(embeddings, issame[:-1])
    nan = embeddings.copy()
    nan[7, 3] = np.nan
    with pytest.raises(UserError, match="pair 3"):
        function(nan, issame)
    with pytest.raises(UserError, match="more than the 20 pairs"):
        function(embeddings, issame, num_folds=21)
    with pytest.raises(UserError, match="integer >= 2"):
        function(embeddings, issame, num_folds=1)
    with pytest.raises(UserError, match="2-D"):
        function(embeddings[0], issame)
    with pytest.raises(UserError, match="booleans"):
        function(embeddings, issame.astype(int) * 2)


def test_other_bad_arguments():
    embeddings, issame = unit_pairs(17, 20)
    with pytest.raises(UserError, match="PCA"):
        evaluate(embeddings, issame, pca=128)
    with pytest.raises(UserError, match=r"\(0, 1\)"):
        verify(embeddings, issame, far_targets=(0.0,))
    result = verify(embeddings, issame, num_folds=2)
    with pytest.raises(UserError, match="mask"):
        result.accuracy_on(np.ones(3, bool))
