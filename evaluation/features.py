"""Embedding a benchmark's image files into one features file, in batches, with progress and resume.

IJB-C holds 469k images and TinyFace 162k: an embedding run takes hours on a CPU, so it must survive an
interruption. `embed_files` writes the features into `<stem>.partial.npy`, a float32 `(N, E)` memory map,
and after every batch flushes it and records in `<stem>.json` how many leading rows are done; a re-run with
the same model, flip setting and image list carries on from there. When every row is done the file becomes
`<stem>.npy` (rename), which a later run loads without embedding anything. The memory held is one batch of
decoded images (twice, with the next one prefetched) plus the map's dirty pages: a few hundred MB whatever N.

Images are read and aligned by `load(index) -> uint8 (3, 112, 112)`, on `workers` threads (OpenCV's
decoding and warping release the GIL), while the model embeds the previous batch.
"""
from __future__ import annotations

import json
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable

import numpy as np

from utils import UserError, atomic_write_text

log = logging.getLogger(__name__)


def run_key(model_path: str | Path, items_file: str | Path, flip: bool, extra: dict | None = None) -> dict:
    """What a features file depends on: the model file, the list of images (size and mtime of each) and flip."""
    def stamp(path):
        path = Path(path)
        info = path.stat()
        return {"path": str(path.resolve()), "size": info.st_size, "mtime_ns": info.st_mtime_ns}
    return {"model": stamp(model_path), "items": stamp(items_file), "flip": bool(flip), **(extra or {})}


def features_paths(stem: str | Path) -> tuple[Path, Path, Path]:
    stem = Path(stem)
    return stem.with_suffix(".npy"), stem.with_suffix(".partial.npy"), stem.with_suffix(".json")


def _read_progress(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None


def embed_files(stem: str | Path, count: int, load: Callable[[int], np.ndarray], embed: Callable[[np.ndarray], np.ndarray],
                key: dict, batch_size: int = 256, workers: int = 2, progress=None) -> np.ndarray:
    """float32 (count, E) features of items 0..count-1 (`load(i)` -> uint8 CHW image, `embed(batch)` -> unit
    features), kept in `<stem>.npy` (see the module docstring); returned memory-mapped (read-only).

    `progress(n)` is called with the number of rows done so far (first with those found done) and after each
    batch."""
    final, partial, progress_file = features_paths(stem)
    recorded = _read_progress(progress_file)
    same_run = recorded is not None and recorded.get("key") == key and recorded.get("total") == count
    if same_run and recorded.get("done") == count and final.is_file():
        features = np.load(final, mmap_mode="r")
        if features.shape[0] == count:
            log.info("%s: all %d features already there", final, count)
            if progress is not None:
                progress(count)
            return features
    done = int(recorded.get("done", 0)) if same_run and partial.is_file() else 0
    features = np.load(partial, mmap_mode="r+") if done else None
    if features is not None and features.shape[0] != count:
        features, done = None, 0
    if done:
        log.info("%s: resuming after %d of %d images", partial, done, count)
    if progress is not None:
        progress(done)
    final.parent.mkdir(parents=True, exist_ok=True)
    batches = [(start, min(start + batch_size, count)) for start in range(done, count, batch_size)]

    def load_batch(bounds):
        start, stop = bounds
        return np.stack([load(i) for i in range(start, stop)]) if workers <= 1 else \
            np.stack(list(pool.map(load, range(start, stop))))

    with ThreadPoolExecutor(max(workers, 1)) as pool, ThreadPoolExecutor(1) as prefetcher:
        upcoming = prefetcher.submit(load_batch, batches[0]) if batches else None
        for i, (start, stop) in enumerate(batches):
            images = upcoming.result()
            upcoming = prefetcher.submit(load_batch, batches[i + 1]) if i + 1 < len(batches) else None
            rows = np.asarray(embed(images), dtype=np.float32)
            if features is None:
                features = np.lib.format.open_memmap(partial, mode="w+", dtype=np.float32, shape=(count, rows.shape[1]))
            features[start:stop] = rows
            features.flush()  # the rows are on disk before the progress file says they are done
            atomic_write_text(progress_file, json.dumps({"key": key, "total": count, "done": stop}) + "\n")
            if progress is not None:
                progress(stop)
    if features is None:
        raise UserError(f"{stem}: no images to embed")
    del features
    partial.replace(final)
    return np.load(final, mmap_mode="r")
