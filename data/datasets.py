"""Training data: RecordIO and image-folder datasets, augmentation, the DataLoader builder.

Datasets yield `(image, label, side)`: `image` a uint8 RGB CHW NumPy array (a view of the decoded pixels,
flipped or not; `collate_batch` turns a list of items into tensors), `label` an int, `side` a dict of
float32 side information (`yaw`, `pitch` in degrees, `height` in metres) for the images that have it
(`pose.npy` / `height.npy` beside the data, indexed by record key; NaN = unknown). The conversion to float
and the normalisation happen once per batch, on the device, in `inference.conventions.to_model_input`.

Augmentation is drawn from a per-sample random generator seeded by (seed, epoch, index), so a sample's
augmentation does not depend on which worker loads it or on where a resumed run restarts.
"""
from __future__ import annotations

import json
import logging
import os
import signal
from pathlib import Path

import cv2
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, RandomSampler, Sampler, SequentialSampler

from config import AugmentConfig
from data.images import ImageDecodeError, decode_rgb, encode_jpeg
from data.recordio import RecordError, RecordReader, class_label, detect_layout, read_property
from utils import UserError

log = logging.getLogger(__name__)



# ---------------------------------------------------------------- augmentation

def augment(rgb: np.ndarray, side: dict, rng: "SampleRandom", cfg: AugmentConfig) -> np.ndarray:
    """Random flip (negating yaw) and optional long-distance degradation of an HWC RGB uint8 image."""
    if rng.random() < cfg.flip_prob:
        rgb = rgb[:, ::-1]  # a view: the batch copy (collate_batch) is the only copy made
        if "yaw" in side:
            side["yaw"] = -side["yaw"]
    if cfg.downscale_prob and rng.random() < cfg.downscale_prob:
        rgb = _downscale(rgb, rng.uniform(cfg.downscale_min, 1.0))
    if cfg.blur_prob and rng.random() < cfg.blur_prob:
        rgb = cv2.GaussianBlur(np.ascontiguousarray(rgb), (0, 0), rng.uniform(0.3, cfg.blur_sigma_max))
    if cfg.jpeg_prob and rng.random() < cfg.jpeg_prob:
        rgb = _recompress(rgb, rng.randint(cfg.jpeg_quality_min, 95))
    return rgb


def _downscale(rgb: np.ndarray, scale: float) -> np.ndarray:
    height, width = rgb.shape[:2]
    small = cv2.resize(np.ascontiguousarray(rgb), (max(1, round(width * scale)), max(1, round(height * scale))),
                       interpolation=cv2.INTER_AREA)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR)


def _recompress(rgb: np.ndarray, quality: int) -> np.ndarray:
    # through the RGB-aware codec helpers: JPEG's luma/chroma split must see the true colours
    return decode_rgb(encode_jpeg(np.ascontiguousarray(rgb), quality))


class SampleRandom:
    """Uniform draws for one sample: SplitMix64 over (seed, epoch, index, draw number).

    Seeding a Random or a NumPy generator per image costs 5-20 us, a fifth of a decode; this costs
    ~0.5 us per draw and depends on nothing but its arguments.
    """
    MASK = (1 << 64) - 1

    def __init__(self, seed: int, epoch: int, index: int):
        # distinct (seed, epoch, index) give distinct states for index < 2**32, epoch < 2**24
        self.state = _splitmix64((seed * 0xD1B54A32D192ED03 ^ epoch << 32 ^ index) & self.MASK)

    def random(self) -> float:
        self.state = (self.state + 0x9E3779B97F4A7C15) & self.MASK
        return _splitmix64(self.state) / 2.0**64

    def uniform(self, low: float, high: float) -> float:
        return low + (high - low) * self.random()

    def randint(self, low: int, high: int) -> int:
        """An integer in [low, high], both included (as random.randint)."""
        return low + int(self.random() * (high - low + 1))


def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & SampleRandom.MASK
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & SampleRandom.MASK
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & SampleRandom.MASK
    return x ^ (x >> 31)


def sample_rng(seed: int, epoch: int, index: int) -> SampleRandom:
    return SampleRandom(seed, epoch, index)


# ---------------------------------------------------------------- side information

class SideInfo:
    """Per-key pose and capture height from `pose.npy` (N, 2) and `height.npy` (N,).

    Held in memory as one float32 table (70 MB for emore's 5.8 M keys, shared by forked workers):
    indexing a memmap costs ~100 us per item, as much as decoding the image.
    """

    def __init__(self, folder: Path):
        columns, self.names = [], []
        pose = _load_sidecar(folder / "pose.npy", ndim=2)
        if pose is not None:
            columns += [pose[:, 0], pose[:, 1]]
            self.names += ["yaw", "pitch"]
        height = _load_sidecar(folder / "height.npy", ndim=1)
        if height is not None:
            columns.append(height)
            self.names.append("height")
        num_keys = max((len(c) for c in columns), default=0)
        self.table = np.full((num_keys, len(columns)), np.nan, dtype=np.float32)
        for i, column in enumerate(columns):
            self.table[:len(column), i] = column
        self.missing = np.full(len(columns), np.nan, dtype=np.float32)

    def __bool__(self) -> bool:
        return bool(self.names)

    def lookup(self, key: int) -> dict:
        if not self.names:
            return {}
        row = self.table[key] if key < len(self.table) else self.missing
        return dict(zip(self.names, row))


def _load_sidecar(path: Path, ndim: int) -> np.ndarray | None:
    if not path.is_file():
        return None
    try:
        array = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as err:
        raise UserError(f"{path}: not a readable .npy array ({err})") from None
    if array.ndim != ndim or (ndim == 2 and array.shape[1] < 2):
        raise UserError(f"{path}: unexpected shape {array.shape}")
    return array


# ---------------------------------------------------------------- datasets

class _AugmentedDataset(Dataset):
    def __init__(self, augment_cfg: AugmentConfig | None, seed: int):
        self.augment_cfg = augment_cfg
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Change the augmentation draw; DataLoader workers see it from the next iterator on."""
        self.epoch = epoch

    def _finish(self, rgb: np.ndarray, label: int, side: dict, index: int):
        if self.augment_cfg is not None:
            rgb = augment(rgb, side, sample_rng(self.seed, self.epoch, index), self.augment_cfg)
        # A CHW view of the HWC pixels, possibly flipped: no copy until collate_batch writes the batch.
        # (A torch tensor cannot hold the flipped view; making one per image costs ~8% of the throughput.)
        return rgb.transpose(2, 0, 1), label, side


class RecordDataset(_AugmentedDataset):
    """Images straight from `train.rec` (any label style of data/recordio.py); no unpacking needed."""

    def __init__(self, folder: str | os.PathLike, augment_cfg: AugmentConfig | None = None, seed: int = 0):
        super().__init__(augment_cfg, seed)
        self.folder = Path(folder)
        self.reader = RecordReader(self.folder / "train.rec", self.folder / "train.idx")
        self.layout = detect_layout(self.reader)
        self.keys = self.layout.image_keys
        self.num_classes = self._num_classes()
        self.side_info = SideInfo(self.folder)

    def _num_classes(self) -> int:
        meta_path = self.folder / "meta.json"
        if meta_path.is_file():
            return int(json.loads(meta_path.read_text())["num_classes"])
        prop = read_property(self.folder)
        if prop is not None:
            return prop[0]
        log.warning("%s: no property or meta.json; reading every label to count classes "
                    "(run data/prepare_data.py once to avoid this)", self.folder)
        return 1 + max(int(class_label(self.reader.read_unpacked(int(k))[0])) for k in self.keys)

    def __len__(self) -> int:
        return len(self.keys)

    def __getitem__(self, index: int):
        key = int(self.keys[index])
        label, data = self.reader.read_image(key)
        try:
            rgb = decode_rgb(data)
        except ImageDecodeError as err:
            raise RecordError(f"{self.reader.rec_path}: record key {key}: {err}") from None
        return self._finish(rgb, int(label), self.side_info.lookup(key), index)


class FolderDataset(_AugmentedDataset):
    """TreB1eN's ImageFolder layout `imgs/<class>/<image>`.

    Class folders named by integers (as `prepare_data.py --unpack` writes them) keep those numbers as labels,
    so they match the RecordIO labels; other names are numbered in sorted order. Image files named by
    record key (`<key>.jpg`) find their side information in `pose.npy`/`height.npy` beside `imgs/`.
    """

    EXTENSIONS = (".jpg", ".jpeg", ".png")

    def __init__(self, root: str | os.PathLike, augment_cfg: AugmentConfig | None = None, seed: int = 0):
        super().__init__(augment_cfg, seed)
        self.root = Path(root)
        if not self.root.is_dir():
            raise UserError(f"{self.root}: image folder not found")
        self.paths, self.labels = self._index()
        self.num_classes = int(self.labels.max()) + 1 if len(self.labels) else 0
        self.side_info = SideInfo(self.root.parent)

    def _index(self) -> tuple[list[Path], np.ndarray]:
        class_dirs = sorted(p for p in self.root.iterdir() if p.is_dir())
        if all(d.name.isdigit() for d in class_dirs):
            labels_of = {d: int(d.name) for d in class_dirs}
        else:
            labels_of = {d: i for i, d in enumerate(class_dirs)}
        paths, labels = [], []
        for class_dir in class_dirs:
            for path in sorted(class_dir.iterdir()):
                if path.suffix.lower() in self.EXTENSIONS:
                    paths.append(path)
                    labels.append(labels_of[class_dir])
        if not paths:
            raise UserError(f"{self.root}: no images found (expected <class>/<image>.jpg)")
        return paths, np.asarray(labels, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int):
        path = self.paths[index]
        try:
            rgb = decode_rgb(path.read_bytes())
        except ImageDecodeError as err:
            raise UserError(f"{path}: {err}") from None
        side = self.side_info.lookup(int(path.stem)) if self.side_info and path.stem.isdigit() else {}
        return self._finish(rgb, int(self.labels[index]), side, index)


def open_dataset(path: str | os.PathLike, augment_cfg: AugmentConfig | None = None, seed: int = 0):
    """A RecordDataset for a RecordIO folder, a FolderDataset for an image folder (or a folder holding imgs/)."""
    path = Path(path)
    if (path / "train.rec").is_file():
        return RecordDataset(path, augment_cfg, seed)
    if (path / "imgs").is_dir():
        return FolderDataset(path / "imgs", augment_cfg, seed)
    if path.is_dir():
        return FolderDataset(path, augment_cfg, seed)
    if not path.exists():
        raise UserError(f"{path}: the training data folder does not exist: put insightface's RecordIO folder there "
                        f"(train.rec, train.idx, property, *.bin; README, 'Data') and run python data/prepare_data.py "
                        f"--source {path}, or give --data_path")
    raise UserError(f"{path}: neither a RecordIO folder (train.rec) nor an image folder")


# ---------------------------------------------------------------- loading

def collate_batch(batch: list) -> tuple[torch.Tensor, torch.Tensor, dict]:
    """Stack (image, label, side) items into uint8 (B,3,H,W), int64 (B,) and float32 (B,) tensors.

    Inside a DataLoader worker the image batch is allocated in shared memory, as PyTorch's default
    collate does, so handing it to the main process copies nothing.
    """
    first = batch[0][0]
    images = torch.empty((len(batch), *first.shape), dtype=torch.uint8)
    if torch.utils.data.get_worker_info() is not None:
        images.share_memory_()
    pixels = images.numpy()
    for i, (image, _, _) in enumerate(batch):
        pixels[i] = image
    labels = torch.tensor([label for _, label, _ in batch], dtype=torch.int64)
    side = {name: torch.from_numpy(np.array([s[name] for _, _, s in batch], dtype=np.float32))
            for name in batch[0][2]}
    return images, labels, side


class ResumableSampler(Sampler):
    """The training order: one permutation per epoch, drawn from (seed, epoch) alone, cut into global
    batches of `batch_size * world_size`; rank r takes the r-th slice of each. `set_position(epoch,
    samples_done)` starts mid-epoch, so a resumed run sees exactly the batches an uninterrupted run would
    (at another world size it continues from the same place in the same permutation). The last partial
    global batch of an epoch is dropped.
    """

    def __init__(self, num_samples: int, batch_size: int, rank: int = 0, world_size: int = 1, seed: int = 0):
        self.num_samples, self.batch_size = num_samples, batch_size
        self.rank, self.world_size, self.seed = rank, world_size, seed
        self.global_batch = batch_size * world_size
        self.steps_per_epoch = num_samples // self.global_batch
        if self.steps_per_epoch == 0:
            raise UserError(f"{num_samples} training images do not fill one global batch of {self.global_batch} "
                            "(--batch_size x processes)")
        self.epoch, self.start_step = 0, 0

    def set_position(self, epoch: int, samples_done: int = 0) -> None:
        self.epoch, self.start_step = epoch, min(samples_done // self.global_batch, self.steps_per_epoch)

    def permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.num_samples)

    def __iter__(self):
        order = self.permutation(self.epoch)
        for step in range(self.start_step, self.steps_per_epoch):
            first = step * self.global_batch + self.rank * self.batch_size
            yield from order[first:first + self.batch_size].tolist()

    def __len__(self) -> int:
        return (self.steps_per_epoch - self.start_step) * self.batch_size


def build_loader(dataset: Dataset, batch_size: int, num_workers: int = 0, shuffle: bool = True,
                 seed: int = 0, drop_last: bool = True, pin_memory: bool | None = None,
                 sampler: Sampler | None = None) -> DataLoader:
    """DataLoader with a DistributedSampler when torch.distributed is initialised (or the given `sampler`).

    Workers are not persistent, so each epoch's iterator sees the dataset's current `set_epoch`. The
    loader has its own generator, so creating an iterator does not consume torch's global random state
    (which a resumed run restores).
    """
    if sampler is not None:
        pass
    elif torch.distributed.is_available() and torch.distributed.is_initialized():
        sampler = DistributedSampler(dataset, shuffle=shuffle, seed=seed, drop_last=drop_last)
    elif shuffle:
        sampler = RandomSampler(dataset, generator=torch.Generator().manual_seed(seed))
    else:
        sampler = SequentialSampler(dataset)
    if pin_memory is None:
        pin_memory = torch.cuda.is_available()
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler, num_workers=num_workers,
                      collate_fn=collate_batch, pin_memory=pin_memory, drop_last=drop_last,
                      prefetch_factor=4 if num_workers > 0 else None, worker_init_fn=ignore_stop_signals,
                      generator=torch.Generator().manual_seed(seed))


def ignore_stop_signals(worker_id: int) -> None:
    """In a DataLoader worker: SIGINT and SIGTERM are the main process's to handle.

    `timeout`, systemd, SLURM and Kubernetes signal the whole process group. A worker that died of the
    signal would make the main process's next batch raise ("DataLoader worker ... killed by signal"), and
    one that ran the inherited handler would log the stop twice; ignoring them lets the main process finish
    its step, save and shut the workers down itself."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
