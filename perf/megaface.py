"""MegaFace-style identification speed and memory: identification.OpenSetEvaluator (streamed) against the
straightforward full score matrix, measured in the same run on the same synthetic features.

    python -m perf.megaface [--probes 1000] [--identities 100] [--distractors 100000] [--dim 512]
                            [--streamed_only]

Probes: `--identities` identities with `--probes / --identities` images each (unit vectors around a
random centre, mates at cosine ~0.2, so the ranking is not trivial); distractors: random unit vectors,
generated chunk by chunk from per-chunk seeds, so both methods see the same numbers. Both compute the
CMC (rank 1..10) and TAR@FAR 1e-6..1e-1 for the subsets 10, 100, ... up to `--distractors`:

  full matrix   the usual way: all distractors in one array, `probes @ distractors.T` (P x N float32),
                per-trial counts over its rows, one sorted copy of the negatives per subset for TAR@FAR;
  streamed      OpenSetEvaluator.add per 8,192-distractor chunk as it is generated (as when read from
                the .bin files): never more than one chunk and one 1,024 x 8,192 score block.

Each runs in its own fresh process: wall time, and peak resident memory (VmHWM after resetting it,
minus the resident memory before the run; the probes are made before). Prints both, the ratios, and
the largest difference between their metrics (0 unless scores tie at float32 precision).
"""
from __future__ import annotations

import argparse
import math
import multiprocessing
import re
import sys
import time
from pathlib import Path

import numpy as np

from identification import CHUNK_SIZE, DEFAULT_FAR_TARGETS, OpenSetEvaluator
from perf.report import result

MAX_RANK = 10
MATE_NOISE = 2.0  # |noise| / |centre|: mates at cosine ~ 1 / (1 + 2^2) = 0.2


def make_probes(num_probes: int, identities: int, dim: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    labels = np.arange(num_probes) % identities
    centres = rng.normal(size=(identities, dim))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    probes = centres[labels] + MATE_NOISE * rng.normal(size=(num_probes, dim)) / math.sqrt(dim)
    return (probes / np.linalg.norm(probes, axis=1, keepdims=True)).astype(np.float32), labels


def distractor_chunk(index: int, rows: int, dim: int, seed: int = 1) -> np.ndarray:
    chunk = np.random.default_rng([seed, index]).normal(size=(rows, dim)).astype(np.float32)
    return chunk / np.linalg.norm(chunk, axis=1, keepdims=True)


def chunks(total: int, dim: int):
    for index, start in enumerate(range(0, total, CHUNK_SIZE)):
        yield start, distractor_chunk(index, min(CHUNK_SIZE, total - start), dim)


def subset_sizes(total: int) -> tuple[int, ...]:
    return tuple(10 ** k for k in range(1, 7) if 10 ** k < total) + (total,)


# ----------------------------------------------------------------------------- the two methods

def streamed(probes, labels, total, dim):
    sizes = subset_sizes(total)
    evaluator = OpenSetEvaluator(probes, labels, len(sizes))
    for start, chunk in chunks(total, dim):
        evaluator.add(chunk, np.arange(start, start + len(chunk))[:, None] < np.array(sizes)[None, :])
    result = evaluator.result(sizes, MAX_RANK, DEFAULT_FAR_TARGETS)
    return result.cmc, result.tar_at_far


def full_matrix(probes, labels, total, dim):
    sizes = subset_sizes(total)
    distractors = np.concatenate([chunk for _, chunk in chunks(total, dim)])
    scores = probes @ distractors.T                         # (P, N): the whole score matrix
    probe_scores = probes @ probes.T
    same = labels[:, None] == labels[None, :]
    np.fill_diagonal(same, False)
    positives = probe_scores[np.triu(same, 1)]
    cmc = np.zeros((len(sizes), MAX_RANK))
    tar = np.full((len(sizes), len(DEFAULT_FAR_TARGETS)), np.nan)
    for s, size in enumerate(sizes):
        beaten = np.concatenate([(scores[i, :size, None] >= probe_scores[i, same[i]][None, :]).sum(0)
                                 for i in range(len(probes))])
        cmc[s] = [(beaten < k).mean() for k in range(1, MAX_RANK + 1)]
        negatives = np.sort(scores[:, :size], axis=None)[::-1]  # descending
        for t, far in enumerate(DEFAULT_FAR_TARGETS):
            if negatives.size >= math.ceil(1 / far - 1e-9):
                allowed = math.floor(far * negatives.size + 1e-9)  # false accepts allowed
                tar[s, t] = (positives > negatives[allowed]).mean()
    return cmc, tar


# ----------------------------------------------------------------------------- measurement

def _status_kib(field: str) -> int:
    return int(re.search(rf"{field}:\s+(\d+)", Path("/proc/self/status").read_text()).group(1))


def measure(method_name: str, args, queue) -> None:
    """In a fresh process: make the probes, then time `method` and take its peak memory above the start."""
    probes, labels = make_probes(args.probes, args.identities, args.dim)
    method = {"streamed": streamed, "full": full_matrix}[method_name]
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
        how = "VmHWM"
    except OSError:
        how = "VmHWM without reset (includes start-up)"
    before = _status_kib("VmRSS")
    start = time.perf_counter()
    cmc, tar = method(probes, labels, args.distractors, args.dim)
    seconds = time.perf_counter() - start
    queue.put({"seconds": seconds, "peak_mib": (_status_kib("VmHWM") - before) / 1024,
               "start_mib": before / 1024, "how": how, "cmc": cmc, "tar": tar})


def run_in_fresh_process(method_name: str, args) -> dict:
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=measure, args=(method_name, args, queue))
    process.start()
    report = queue.get()
    process.join()
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probes", type=int, default=1000)
    parser.add_argument("--identities", type=int, default=100)
    parser.add_argument("--distractors", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--streamed_only", action="store_true",
                        help="measure the streamed evaluator alone (sizes where the full matrix does not fit)")
    args = parser.parse_args()
    full = None if args.streamed_only else run_in_fresh_process("full", args)
    ours = run_in_fresh_process("streamed", args)
    sizes = subset_sizes(args.distractors)
    trials = args.probes * (args.probes // args.identities - 1)
    print(f"{args.probes:,} probes ({args.identities} identities, {trials:,} trials) x {args.distractors:,} "
          f"distractors, {args.dim}-d float32; subsets {', '.join(f'{s:,}' for s in sizes)}; "
          f"rank 1..{MAX_RANK}, TAR@FAR {min(DEFAULT_FAR_TARGETS):g}..{max(DEFAULT_FAR_TARGETS):g}")
    for name, report in (("full score matrix", full), ("streamed (OpenSetEvaluator)", ours)):
        if report is not None:
            print(f"  {name:28s} {report['seconds']:7.2f} s   peak memory {report['peak_mib']:8.1f} MiB "
                  f"above the {report['start_mib']:.0f} MiB at start")
    print(f"  rank-1 @ {sizes[-1]:,}: {100 * ours['cmc'][-1, 0]:.2f}%, TAR@FAR=1e-6: {ours['tar'][-1, 0]:.4f}")
    if full is None:
        return 0
    print(f"  speed-up {full['seconds'] / ours['seconds']:.2f}x, peak memory {full['peak_mib'] / ours['peak_mib']:.1f}x "
          f"smaller ({ours['how']})")
    cmc_gap = np.abs(full["cmc"] - ours["cmc"]).max()
    tar_gap = np.nanmax(np.abs(full["tar"] - ours["tar"]))
    print(f"  largest difference between the two: CMC {cmc_gap:.2g}, TAR@FAR {tar_gap:.2g}")
    result(f"MegaFace scoring, {args.distractors:,} distractors", ours["seconds"], full["seconds"], "s",
           "full score matrix", higher_is_better=False)
    result("MegaFace scoring, peak memory", ours["peak_mib"], full["peak_mib"], "MiB", "full score matrix",
           higher_is_better=False)
    return 0 if cmc_gap < 1e-3 and tar_gap < 1e-3 else 1


if __name__ == "__main__":
    sys.exit(main())
