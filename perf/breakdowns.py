"""Cost of eval.py --by pose,resolution: a 5-level resolution sweep on 3 sets against a plain evaluation of the
same sets (the baseline, measured in the same run), for one MobileFaceNet.

    python -m perf.breakdowns [--pairs 100] [--resolutions 112,56,28,20,14] [--batch_size 64] [--threads N]

Three synthetic val sets of --pairs pairs each (data.synthetic, prepared into memmaps in a temporary folder),
flip TTA on, 10 folds. Prints the plain evaluation's time, the breakdowns' (pose bins + the sweep) as a ratio
to it, the share of the degradation itself (reading every level's degraded images without embedding), and
the sweep's time projected to sets of LFW's size (12,000 images each) from the measured images/s.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from data.prepare_data import main as prepare
from data.synthetic import generate
from evaluation import ValSet, evaluate_set
from evaluation.breakdowns import BreakdownSpec, breakdown_set, parse_list
from evaluation.strata import DegradedImages
from model import build_backbone

SETS = ("lfw", "cfp_fp", "agedb_30")
LFW_IMAGES = 12_000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=100, help="pairs per synthetic val set")
    parser.add_argument("--resolutions", default="112,56,28,20,14", help="levels of the sweep")
    parser.add_argument("--batch_size", type=int, default=64, help="images per forward pass")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = BreakdownSpec(by=("pose", "resolution"), resolutions=parse_list(args.resolutions, "--resolutions", int))
    torch.manual_seed(0)
    model = build_backbone("mobilefacenet").eval()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "synthetic"
        generate(folder, num_classes=2, per_class=2, val_classes=40, val_pairs=args.pairs, seed=0)
        prepare(["--source", str(folder), "--workers", "1"])
        valsets = [ValSet.load(folder, name) for name in SETS]

        level_s: dict[str, float] = {}

        def evaluate(pairs):
            began = time.perf_counter()
            outcome = evaluate_set(model, pairs, args.batch_size, flip=True)
            level = f"res{pairs.images.size}" if isinstance(pairs.images, DegradedImages) else "plain"
            level_s[level] = level_s.get(level, 0.0) + time.perf_counter() - began
            return outcome

        began = time.perf_counter()
        bases = [evaluate(valset) for valset in valsets]
        plain_s = time.perf_counter() - began
        began = time.perf_counter()
        for valset, base in zip(valsets, bases):
            breakdown_set(evaluate, valset, base, spec)
        sweep_s = time.perf_counter() - began
        began = time.perf_counter()
        for valset in valsets:
            for size in (s for s in spec.resolutions if s != 112):
                view = DegradedImages(valset.images, size)
                for start in range(0, len(view), args.batch_size):
                    view[start:start + args.batch_size]
        degrade_s = time.perf_counter() - began
    num_images = sum(len(v.images) for v in valsets)
    embedded_levels = sum(1 for size in spec.resolutions if size != 112)  # the 112 level is the plain result
    per_image_s = sweep_s / (num_images * embedded_levels)
    print(f"MobileFaceNet, {len(SETS)} sets x {2 * args.pairs} images, flip on, {torch.get_num_threads()} threads, "
          f"levels {','.join(map(str, spec.resolutions))}")
    print(f"  plain evaluation (baseline)        {plain_s:8.1f} s   {num_images / plain_s:6.1f} images/s")
    print(f"  breakdowns (pose + sweep) on top   {sweep_s:8.1f} s   {sweep_s / plain_s:5.2f}x the baseline "
          f"({embedded_levels} levels embedded again; pose bins reuse the plain result)")
    print("  seconds per level, 3 sets: " + ", ".join(f"{level} {seconds:.1f}" for level, seconds in level_s.items()))
    print(f"  of which degrading the images      {degrade_s:8.1f} s   {100 * degrade_s / sweep_s:5.1f}% of the sweep")
    projected = per_image_s * embedded_levels * LFW_IMAGES * len(SETS)
    print(f"  projected to 3 sets of {LFW_IMAGES:,} images: {projected / 60:.0f} min on top of the plain evaluation "
          f"(from the measured images/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
