"""Input pipeline throughput, one process (= one DataLoader worker), against two baselines measured in the same run.

    python -m perf.data_loader [--classes 60] [--per-class 50] [--rounds 5] [--data DIR]

  raw decode      cv2.imdecode of the same JPEG bytes already in memory: the limit of any pipeline
  RecordDataset   ours: read from train.rec by key + decode to RGB + random flip -> uint8 CHW tensor
  TreB1eN-style   unpacked folder, PIL open per item, flip, float ToTensor + Normalize (as its ImageFolder)

Rounds alternate between the three so that a noisy neighbour slows all of them alike; each rate is the
median over rounds. Targets: RecordDataset >= 80% of raw decode, >= 2x the TreB1eN-style rate.
Also prints steady-state DataLoader rates (2 workers, batch 64) for RecordDataset and the TreB1eN-style
dataset, to the main process.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from config import AugmentConfig
from data.datasets import RecordDataset, build_loader
from data.prepare_data import main as prepare
from data.recordio import RecordReader
from data.synthetic import generate
from perf.report import result

TARGET_OF_RAW, TARGET_OF_TREB1EN = 0.8, 2.0


class TreB1eNStyleDataset(Dataset):
    """What TreB1eN's ImageFolder + RandomHorizontalFlip + ToTensor + Normalize does, without torchvision."""

    def __init__(self, root: Path):
        self.samples = [(p, int(p.parent.name)) for p in sorted(root.glob("*/*.jpg"))]
        self.rng = np.random.default_rng(0)

    def __len__(self):
        return len(self.samples)

    def __getitem__(self, index):
        path, label = self.samples[index]
        with open(path, "rb") as f:
            image = Image.open(f).convert("RGB")
        if self.rng.random() < 0.5:
            image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
        array = np.asarray(image, dtype=np.float32) / 255.0
        tensor = torch.from_numpy(array.transpose(2, 0, 1).copy())
        return (tensor - 0.5) / 0.5, label


def consume(items) -> None:
    for _ in items:
        pass


def rate(fn, count: int) -> float:
    start = time.perf_counter()
    fn()
    return count / (time.perf_counter() - start)


def measure(data: Path, rounds: int) -> dict[str, float]:
    ours = RecordDataset(data, AugmentConfig(flip_prob=0.5))
    reader = RecordReader(data / "train.rec")
    encoded = [bytes(reader.read_unpacked(int(k))[1]) for k in ours.keys]
    treb1en = TreB1eNStyleDataset(data / "imgs")
    n = len(ours)
    # Items are dropped as they come, as a worker drops them after collating: a list holding every item
    # would make Python's garbage collector rescan thousands of live tuples, dicts and tensors.
    runs = {
        "raw decode": lambda: consume(cv2.imdecode(np.frombuffer(b, np.uint8), cv2.IMREAD_COLOR_RGB) for b in encoded),
        "RecordDataset": lambda: consume(ours[i] for i in range(n)),
        "TreB1eN-style": lambda: consume(treb1en[i] for i in range(n)),
    }
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            rates[name].append(rate(run, n))
    return {name: statistics.median(values) for name, values in rates.items()}


def loader_rates(data: Path, batch_size: int = 64, workers: int = 2, repeats: int = 8,
                 warmup_batches: int = 4) -> dict[str, float]:
    """Steady-state DataLoader rates: the data set is repeated so that forking the workers and filling
    their queues (timed out through the warm-up batches) does not dominate a small benchmark set."""
    ours = build_loader(ConcatDataset([RecordDataset(data, AugmentConfig())] * repeats), batch_size,
                        num_workers=workers)
    treb1en = DataLoader(ConcatDataset([TreB1eNStyleDataset(data / "imgs")] * repeats), batch_size=batch_size,
                         shuffle=True, num_workers=workers, drop_last=True, prefetch_factor=4)
    out = {}
    for name, loader in (("RecordDataset", ours), ("TreB1eN-style", treb1en)):
        count = 0
        for batch_index, (images, *_) in enumerate(loader):
            if batch_index == warmup_batches:
                start, count = time.perf_counter(), 0
            count += len(images)
        out[name] = count / (time.perf_counter() - start)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--classes", type=int, default=60)
    parser.add_argument("--per-class", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--data", type=Path, default=None, help="reuse a generated folder instead of a temporary one")
    args = parser.parse_args()
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as tmp:
        data = args.data or Path(tmp) / "synthetic"
        if not (data / "train.rec").is_file():
            generate(data, args.classes, args.per_class, val_pairs=20, seed=0, workers=2)
        if not (data / "imgs" / ".complete").is_file():
            prepare(["--source", str(data), "--workers", "2", "--unpack", "--skip_decode_check"])
        rates = measure(data, args.rounds)
        loaders = loader_rates(data)
    ours, raw, treb1en = rates["RecordDataset"], rates["raw decode"], rates["TreB1eN-style"]
    print(f"\nimages/s in one process (median of {args.rounds} alternating rounds, 112x112 JPEG):")
    for name, value in rates.items():
        print(f"  {name:15s} {value:9.0f}")
    print(f"  RecordDataset / raw decode    = {ours / raw:.2f}  (target >= {TARGET_OF_RAW})  "
          f"{'PASS' if ours / raw >= TARGET_OF_RAW else 'FAIL'}")
    print(f"  RecordDataset / TreB1eN-style = {ours / treb1en:.2f}  (target >= {TARGET_OF_TREB1EN})  "
          f"{'PASS' if ours / treb1en >= TARGET_OF_TREB1EN else 'FAIL'}")
    print("DataLoader, 2 workers, batch 64 (TreB1eN-style yields float tensors, ours uint8):")
    for name, value in loaders.items():
        print(f"  {name:15s} {value:9.0f}")
    print(f"  ratio = {loaders['RecordDataset'] / loaders['TreB1eN-style']:.2f}")
    result("decode, one process (RecordDataset)", ours, treb1en, "img/s", "TreB1eN-style", TARGET_OF_TREB1EN)
    result("DataLoader, 2 workers, batch 64", loaders["RecordDataset"], loaders["TreB1eN-style"], "img/s",
           "TreB1eN-style")
    return 0


if __name__ == "__main__":
    sys.exit(main())
