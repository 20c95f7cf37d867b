"""Memory at emore's scale: DataLoader workers over a 5.8M-record index keep flat private memory, and a val set
evaluates from its uint8 memmap in memory that does not grow with the set.

    python -m perf.memory [--records 5800000] [--workers 4] [--val_images 12000]

Index: a `train.rec` of 1,000 real 112x112 JPEG records and a `train.idx` of `--records` keys pointing at them in
turn (a 5.8M-record index without 20 GB of images; reading, the index and the per-key tables are those of the real
thing). The same run with 1/100 of the keys gives the growth: a worker's private memory (USS, from
/proc/PID/smaps_rollup) should grow far less than the main process's (what a copy per worker would cost), because
forked workers share the reader's arrays.
Val set: `--val_images` random images written as a prepared set (images.npy memmap) and evaluated through
`evaluation.evaluate_set` with a stand-in backbone (per-channel pooling: the memory path, not a network's); the
growth of anonymous memory is compared with a quarter-size set's (flat: the same) and with the set's own size,
which a loop holding the decoded set in memory (TreB1eN's bcolz arrays read whole) would add. Each size is
measured in a fresh process: in one process the second evaluation reuses heap the first one freed (malloc
keeps it), which once measured the larger set's growth as 0 MiB. Even so the RSS growth of one size moved from
160 to 830 MiB between identical runs on a 2-core EPYC, while the tensors and arrays the evaluation allocated
(torch.profiler's and tracemalloc's records, perf.allocations) repeat to the byte: the flatness target is on
those, and the RSS growth is printed beside them.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import tempfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import torch

from perf.allocations import peak_allocated
from perf.report import result


def rss_kib(pid: str = "self", field: str = "Private") -> int:
    """A process's memory in KiB from /proc/PID/smaps_rollup: private (USS: Private_Clean + Private_Dirty), or one
    field (`Anonymous`: memory not backed by a file, so a memmap's pages in the page cache do not count)."""
    total = 0
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        name, _, value = line.partition(":")
        if (field == "Private" and name.startswith("Private_")) or name == field:
            total += int(value.split()[0])
    return total


def write_index(folder: Path, records: int, distinct: int = 1000) -> None:
    """`records` keys over `distinct` real records, and the meta.json the dataset reads its class count from."""
    from data.images import encode_jpeg
    from data.recordio import IRHeader, pack, frame_record

    rng = np.random.default_rng(0)
    offsets, position = [], 0
    with open(folder / "train.rec", "wb") as rec:
        for i in range(distinct):
            image = np.clip(rng.normal(128, 30, (112, 112, 3)), 0, 255).astype(np.uint8)
            framed = frame_record(pack(IRHeader(0, float(i % 100), i, 0), encode_jpeg(image, quality=60)))
            offsets.append(position)
            rec.write(framed)
            position += len(framed)
    keys = np.arange(records, dtype=np.int64)
    table = np.stack([keys, np.asarray(offsets, dtype=np.int64)[keys % distinct]], axis=1)
    np.savetxt(folder / "train.idx", table, fmt="%d", delimiter="\t")
    (folder / "meta.json").write_text(json.dumps({"num_images": records, "num_classes": 100}))


def worker_memory(folder: Path, workers: int, batches: int) -> tuple[float, float]:
    """(main process USS MiB after opening, mean worker USS MiB after `batches` batches)."""
    from data.datasets import build_loader, open_dataset

    dataset = open_dataset(folder)
    main_mib = rss_kib() / 1024
    loader = build_loader(dataset, 64, workers, seed=0, pin_memory=False)
    iterator = iter(loader)
    for _ in range(batches):
        next(iterator)
    children = Path(f"/proc/self/task/{os.getpid()}/children").read_text().split()  # the workers (Linux)
    worker_mib = [rss_kib(pid) / 1024 for pid in children]
    del iterator
    return main_mib, float(np.mean(worker_mib))


class Pooling(torch.nn.Module):
    """A stand-in backbone: each channel's mean over a 4x4 grid (48-d), so the measure is the data path's."""

    def forward(self, x):
        return torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)


def val_memory(folder: Path, images: int) -> tuple[float, float, float]:
    """(peak growth of anonymous memory MiB while evaluating, peak of the tensors and arrays it allocated MiB, the
    set's size MiB)."""
    import threading

    from evaluation import ValSet, evaluate_set

    name = folder / f"big{images}"
    name.mkdir()
    stored = np.lib.format.open_memmap(name / "images.npy", mode="w+", dtype=np.uint8, shape=(images, 3, 112, 112))
    rng = np.random.default_rng(1)
    for start in range(0, images, 1000):
        stored[start:start + 1000] = rng.integers(0, 256, (min(1000, images - start), 3, 112, 112), dtype=np.uint8)
    stored.flush()
    del stored
    np.save(name / "issame.npy", np.arange(images // 2) % 2 == 0)
    valset = ValSet.load(folder, name.name)
    # no warm-up: what it frees, malloc keeps and the measured evaluation reuses, by chance more or less of it;
    # from a fresh process (main) torch's one-off allocations are the same at every size
    before, peak, running = rss_kib(field="Anonymous"), [0], [True]

    def watch():
        while running[0]:
            peak[0] = max(peak[0], rss_kib(field="Anonymous"))
    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    _, tensors, arrays = peak_allocated(lambda: evaluate_set(Pooling(), valset, batch_size=256))
    running[0] = False
    watcher.join()
    return (peak[0] - before) / 1024, (tensors + arrays) / 2**20, valset.images.nbytes / 2**20


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=5_800_000, help="keys in the large index (emore: 5.8M)")
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers")
    parser.add_argument("--batches", type=int, default=50, help="batches read before measuring the workers")
    parser.add_argument("--val_images", type=int, default=12_000, help="images of the val set (LFW: 12,000)")
    args = parser.parse_args(argv)
    torch.set_num_threads(2)
    rows = {}
    with tempfile.TemporaryDirectory() as work:
        for label, records in (("small", max(1000, args.records // 100)), ("large", args.records)):
            folder = Path(work) / label
            folder.mkdir()
            write_index(folder, records)
            rows[label] = (records, *worker_memory(folder, args.workers, args.batches))
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as fresh:
            quarter = fresh.submit(val_memory, Path(work), args.val_images // 4).result()
        with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as fresh:
            growth, allocated, size = fresh.submit(val_memory, Path(work), args.val_images).result()
    print(f"{'index keys':>12s} {'main USS MiB':>13s} {'worker USS MiB':>15s}  ({args.workers} workers, fork)")
    for records, main_mib, worker_mib in rows.values():
        print(f"{records:12,d} {main_mib:13.1f} {worker_mib:15.1f}")
    small, large = rows["small"], rows["large"]
    print(f"worker private memory, {large[0]:,} keys against {small[0]:,}: {large[2] / small[2]:.2f}x "
          f"(flat = 1.00); the main process holds the index ({large[1] - small[1]:.0f} MiB more)")
    print(f"val set of {args.val_images:,} images ({size:.0f} MiB): peak anonymous memory grew {growth:.0f} MiB while "
          f"evaluating ({growth / size:.1%} of the set); the tensors and arrays it allocated peaked at "
          f"{allocated:.1f} MiB")
    added, copy = max(large[2] - small[2], 0.1), large[1] - small[1]
    print(f"a worker's private memory grew {added:.1f} MiB with the index, against {copy:.0f} MiB for a copy of it")
    result(f"DataLoader worker memory added by a {large[0]:,}-key index", added, copy, "MiB",
           "a per-worker copy of the index", target=10, higher_is_better=False)
    print(f"  against {args.val_images // 4:,} images ({quarter[2]:.0f} MiB): anonymous memory {quarter[0]:.0f} MiB, "
          f"tensors and arrays {quarter[1]:.1f} MiB (flat = the same: one batch, its float copies, the embeddings)")
    # the target is on the allocators' own record: RSS growth moved by hundreds of MiB between identical runs
    # (what malloc keeps, library buffers), and is printed beside it
    result(f"val set evaluation, {args.val_images:,} images: peak tensor + array memory", allocated, quarter[1],
           "MiB", f"{args.val_images // 4:,} images", target=0.9, higher_is_better=False)
    result(f"val set evaluation, {args.val_images:,} images: peak memory growth (RSS)", growth, size, "MiB",
           "the set held in memory", higher_is_better=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
