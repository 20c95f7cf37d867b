"""Wall time of one 5-fold x 2-head (ArcFace, PGAML) cross-validation with MobileFaceNet on the synthetic
DroneFace-like folder (target: under 15 minutes on 2 CPU cores), and the fold table it produces.

    python -m perf.crossval [--distances 8] [--epochs 5] [--pretrain_steps 60 | --pretrained FILE] [--out DIR]

Setup (timed, outside the target): the DroneFace-like folder (11 subjects x 4 heights x `--distances`), and a
starting model — MobileFaceNet + ArcFace trained for `--pretrain_steps` steps on a synthetic emore set of OTHER
identities (another seed), saved as a weights file, so the folds fine-tune from pretrained weights as the PGAML
authors do. Then `crossval.py --compare arcface,pgaml -fold 5` from it. The baseline measured in the same run is
the time the folds spend in their training steps (`Learner.train`): the ratio total / training says what the
protocol's embedding, scoring and reporting add.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import crossval
import learner as learner_module
from config import Config
from data import synthetic
from inference.weights import save_backbone_weights
from learner import Learner
from utils import setup_logging


def pretrain(out: Path, steps: int, seed: int) -> Path:
    emore = out / "emore_pretrain"
    synthetic.generate(emore, num_classes=100, per_class=20, val_classes=10, val_pairs=20, seed=seed + 100,
                       workers=2)
    config = Config(data_path=str(emore), work_path=str(out / "pretrain_run"), net_mode="mobilefacenet",
                    batch_size=64, epochs=2, lr=0.05, warmup_epochs=0.3, max_steps=steps, val_sets="none",
                    head="arcface", head_options={"s": 64.0, "m": 0.5}, num_workers=1, seed=seed, save_every=10_000)
    run = Learner(config)
    run.train()
    path = out / "model_pretrained.pth"
    save_backbone_weights(run.backbone, path, run.conventions)
    return path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("work_space/perf_crossval"), help="scratch and report folder")
    parser.add_argument("--distances", type=int, default=8, help="DroneFace distance IDs per subject and height")
    parser.add_argument("--epochs", type=int, default=5, help="fine-tuning epochs per fold")
    parser.add_argument("--pretrain_steps", type=int, default=60, help="steps of the starting model (0: none)")
    parser.add_argument("--pretrained", type=Path, default=None, help="start from this weights file instead of "
                        "pretraining one (e.g. <out>/model_pretrained.pth of an earlier run)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    setup_logging()
    started = time.perf_counter()
    faces = args.out / "droneface"
    synthetic.generate_droneface(faces, identities=11, distances=args.distances, seed=args.seed, workers=2)
    generated = time.perf_counter()
    start_from = args.pretrained or (pretrain(args.out, args.pretrain_steps, args.seed) if args.pretrain_steps else None)
    pretrained = time.perf_counter()

    training_s = []
    real_train = learner_module.Learner.train

    def timed_train(self):
        began = time.perf_counter()
        try:
            return real_train(self)
        finally:
            training_s.append(time.perf_counter() - began)
    learner_module.Learner.train = timed_train
    flags = ["--data_path", str(faces), "-d", "droneface", "--compare", "arcface,pgaml", "-fold", "5",
             "-n", "mobilefacenet", "-b", "16", "-e", str(args.epochs), "-lr", "0.005",
             "--milestones", str(max(1, args.epochs - 1)), "--freeze_backbone_epochs", "1", "--freeze_bn",
             "--num_workers", "0", "--seed", str(args.seed), "--out", str(args.out / "report")]
    if start_from:
        flags += ["--pretrained", str(start_from)]
    crossval.main(flags)
    learner_module.Learner.train = real_train
    total = time.perf_counter() - pretrained
    print(f"\nsetup: DroneFace-like folder {generated - started:.0f} s, starting model {pretrained - generated:.0f} s")
    print(f"cross-validation (5 folds x 2 heads, {args.epochs} epochs): {total:.0f} s = {total / 60:.1f} min "
          f"(target < 15 min); training steps {sum(training_s):.0f} s over {len(training_s)} runs; "
          f"total / training = {total / max(sum(training_s), 1e-9):.2f}x")
    return 0


if __name__ == "__main__":
    main()
