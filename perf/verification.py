"""k-fold verification speed: verification.evaluate against the per-threshold loop (TreB1eN's
`calculate_roc`, the common practice), measured in the same run on the same embeddings.

    python -m perf.verification [--pairs 6000] [--dim 512] [--rounds 3]

LFW size by default: 6,000 pairs of L2-normalised float32 512-d embeddings, 10 folds. Prints both
times (median over rounds), the speed-up (target >= 10x) and checks that both give identical
tpr, fpr, per-fold accuracy and best thresholds. Also times `verify` (everything, incl. TAR@FAR
and the exact ROC).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np

from verification import evaluate, verify
from perf.report import result

TARGET_SPEEDUP = 10.0


def loop_evaluate(embeddings, actual_issame, num_folds=10):
    """The usual implementation: for every fold, one pass over the pairs per threshold."""
    thresholds = np.arange(0, 4, 0.01)
    dist = distances(embeddings)
    issame = np.asarray(actual_issame)
    num_pairs = len(issame)
    tprs = np.zeros((num_folds, len(thresholds)))
    fprs = np.zeros((num_folds, len(thresholds)))
    accuracy, best_thresholds = np.zeros(num_folds), np.zeros(num_folds)
    start = 0
    for fold in range(num_folds):
        size = num_pairs // num_folds + (fold < num_pairs % num_folds)
        test = np.arange(start, start + size)
        train = np.setdiff1d(np.arange(num_pairs), test)
        start += size
        train_accuracy = np.array([rates(t, dist[train], issame[train])[2] for t in thresholds])
        best = np.argmax(train_accuracy)
        best_thresholds[fold] = thresholds[best]
        for j, t in enumerate(thresholds):
            tprs[fold, j], fprs[fold, j], _ = rates(t, dist[test], issame[test])
        accuracy[fold] = rates(thresholds[best], dist[test], issame[test])[2]
    return np.mean(tprs, 0), np.mean(fprs, 0), accuracy, best_thresholds


def distances(embeddings):
    return np.sum(np.square(np.subtract(embeddings[0::2], embeddings[1::2])), 1)


def rates(threshold, dist, issame):
    predicted = np.less(dist, threshold)
    tp = np.sum(np.logical_and(predicted, issame))
    fp = np.sum(np.logical_and(predicted, np.logical_not(issame)))
    tn = np.sum(np.logical_and(np.logical_not(predicted), np.logical_not(issame)))
    fn = np.sum(np.logical_and(np.logical_not(predicted), issame))
    tpr = 0 if tp + fn == 0 else float(tp) / float(tp + fn)
    fpr = 0 if fp + tn == 0 else float(fp) / float(fp + tn)
    return tpr, fpr, float(tp + tn) / dist.size


def lfw_like(num_pairs, dim, seed=0):
    """Half positive pairs (noisy copies of one identity vector), half negative, normalised float32."""
    rng = np.random.default_rng(seed)
    issame = np.zeros(num_pairs, bool)
    issame[rng.permutation(num_pairs)[: num_pairs // 2]] = True
    first = rng.normal(size=(num_pairs, dim))
    second = np.where(issame[:, None], first + 6.0 * rng.normal(size=(num_pairs, dim)),
                      rng.normal(size=(num_pairs, dim)))
    embeddings = np.empty((2 * num_pairs, dim))
    embeddings[0::2], embeddings[1::2] = first, second
    embeddings /= np.linalg.norm(embeddings, axis=1, keepdims=True)
    return embeddings.astype(np.float32), issame


def timed(function, *args):
    start = time.perf_counter()
    out = function(*args)
    return time.perf_counter() - start, out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=6000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--folds", type=int, default=10)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    embeddings, issame = lfw_like(args.pairs, args.dim)

    loop_times, fast_times, verify_times, distance_times = [], [], [], []
    for _ in range(args.rounds):  # alternate, so a noisy neighbour slows both alike
        seconds, reference = timed(loop_evaluate, embeddings, issame, args.folds)
        loop_times.append(seconds)
        for _ in range(5):
            seconds, ours = timed(evaluate, embeddings, issame, args.folds)
            fast_times.append(seconds)
            distance_times.append(timed(distances, embeddings)[0])
        verify_times.append(timed(verify, embeddings, issame, args.folds)[0])
    for name, a, b in zip(("tpr", "fpr", "accuracy", "best_thresholds"), ours, reference):
        assert np.array_equal(a, b), f"{name} differs from the loop reference"

    distance_s = statistics.median(distance_times)
    loop_s, fast_s = statistics.median(loop_times), statistics.median(fast_times)
    speedup = loop_s / fast_s
    print(f"{args.pairs} pairs x {args.dim}-d float32, {args.folds} folds, 400 thresholds")
    print(f"  per-threshold loop (TreB1eN-style)  {loop_s * 1e3:9.1f} ms")
    print(f"  verification.evaluate               {fast_s * 1e3:9.1f} ms   speed-up {speedup:.0f}x "
          f"(target >= {TARGET_SPEEDUP:.0f}x)")
    print(f"  the distances alone (in both)       {distance_s * 1e3:9.1f} ms")
    print(f"  verification.verify (all metrics)   {statistics.median(verify_times) * 1e3:9.1f} ms")
    print(f"  accuracy {np.mean(ours[2]):.4f} identical to the loop (tpr, fpr, per-fold accuracy, thresholds)")
    result(f"10-fold verification, {args.pairs:,} pairs", fast_s * 1e3, loop_s * 1e3, "ms", "per-threshold loop",
           TARGET_SPEEDUP, higher_is_better=False)
    return 0 if speedup >= TARGET_SPEEDUP else 1


if __name__ == "__main__":
    sys.exit(main())
