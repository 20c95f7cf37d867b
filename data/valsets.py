"""Verification sets: insightface `.bin` pickles (read safely) and their uint8 `.npy` form.

A `.bin` is a pickle of `(bins, issame_list)`: `bins` holds the encoded images (JPEG/PNG bytes), two per
pair, `issame_list` one bool per pair. Pickles can run code, so they are read with an unpickler that
builds nothing but lists, tuples, bytes, bools, ints and NumPy bools.

Converted layout (replaces TreB1eN's bcolz arrays), under `<out>/<name>/`:
  images.npy  uint8 (2P, 3, 112, 112) RGB, pair i = images 2i and 2i+1
  issame.npy  bool (P,)
  pose.npy    float32 (2P, 2) yaw, pitch in degrees, when `<name>.pose.npy` lies beside the .bin
Both load with `np.load(..., mmap_mode="r")`, so evaluation streams from disk.
"""
from __future__ import annotations

import io
import os
import pickle
from pathlib import Path
from typing import Sequence

import numpy as np

from data.images import ImageDecodeError, decode_rgb
from utils import UserError, atomic_path, atomic_save_npy, atomic_write_bytes, parallel_map

KNOWN_VALSETS = ("lfw", "agedb_30", "cfp_fp", "cfp_ff", "calfw", "cplfw", "vgg2_fp")
IMAGE_SIZE = (112, 112)


class ValsetError(UserError):
    """A malformed .bin or converted val set; the message names the file (and image index)."""


# ---------------------------------------------------------------- safe unpickling

class RefusedPickle(pickle.UnpicklingError):
    """The pickle asks for something other than plain data (a global, a NumPy array, a non-bool dtype)."""


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Python 3 pickles bytes at protocol <= 2 as _codecs.encode(text, 'latin1'); allow nothing else.
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise RefusedPickle("_codecs.encode is allowed only for latin1 byte strings")
    return text.encode("latin1")


def _numpy_scalar(dtype: np.dtype, data: bytes) -> np.bool_:
    if not isinstance(dtype, np.dtype) or dtype != np.bool_ or not isinstance(data, bytes):
        raise RefusedPickle(f"only NumPy bool scalars are allowed, not {dtype!r}")
    return np.frombuffer(data, dtype=np.bool_, count=1)[0]


def _numpy_dtype(name, align=False, copy=False) -> np.dtype:
    if name not in ("b1", "?", "bool"):
        raise RefusedPickle(f"only the NumPy bool dtype is allowed, not {name!r}")
    return np.dtype(np.bool_)


_ALLOWED_GLOBALS = {
    ("_codecs", "encode"): _latin1_encode,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): _numpy_dtype,
}


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise RefusedPickle(f"global '{module}.{name}' is not allowed in a .bin file") from None


def safe_load_pickle(data: bytes):
    # encoding='bytes' makes Python 2 `str` objects (the image bytes of old .bin files) come back as bytes.
    return _RestrictedUnpickler(io.BytesIO(data), encoding="bytes").load()


# ---------------------------------------------------------------- .bin files

def read_bin(path: str | os.PathLike) -> tuple[list[bytes], np.ndarray]:
    """Read a verification .bin safely; return (encoded images, issame bool array)."""
    path = Path(path)
    if not path.is_file():
        raise ValsetError(f"{path}: file not found")
    try:
        obj = safe_load_pickle(path.read_bytes())
    except RefusedPickle as err:
        raise ValsetError(f"{path}: refused to unpickle: {err}") from None
    except Exception as err:  # truncated or non-pickle bytes raise many different types
        raise ValsetError(f"{path}: not a verification .bin pickle ({type(err).__name__}: {err})") from None
    return _validate_bin_contents(path, obj)


def _validate_bin_contents(path: Path, obj) -> tuple[list[bytes], np.ndarray]:
    if not isinstance(obj, (tuple, list)) or len(obj) != 2:
        raise ValsetError(f"{path}: expected a pickled (bins, issame_list) pair, got {type(obj).__name__}")
    bins, issame = obj
    if not isinstance(bins, (list, tuple)) or not isinstance(issame, (list, tuple)):
        raise ValsetError(f"{path}: bins and issame_list must be lists")
    for i, item in enumerate(bins):
        if not isinstance(item, (bytes, bytearray)):
            raise ValsetError(f"{path}: image {i} is a {type(item).__name__}, expected encoded image bytes")
    for i, item in enumerate(issame):
        if not isinstance(item, (bool, int, np.bool_)) or item not in (0, 1):
            raise ValsetError(f"{path}: issame_list[{i}] is {item!r}, expected a bool")
    if len(bins) % 2:
        raise ValsetError(f"{path}: odd number of images ({len(bins)}); pairs need two each")
    if len(bins) != 2 * len(issame):
        raise ValsetError(f"{path}: {len(bins)} images but {len(issame)} pairs (expected 2 images per pair)")
    return [bytes(b) for b in bins], np.asarray(issame, dtype=bool)


def write_bin(path: str | os.PathLike, images: Sequence[bytes], issame: Sequence[bool]) -> None:
    """Write a verification .bin readable by insightface and TreB1eN (pickle of (bins, issame_list))."""
    if len(images) != 2 * len(issame):
        raise ValueError(f"{len(images)} images for {len(issame)} pairs: need exactly two per pair")
    payload = ([bytes(b) for b in images], [bool(s) for s in issame])
    atomic_write_bytes(path, pickle.dumps(payload, protocol=4))


# ---------------------------------------------------------------- conversion to .npy

def converted_paths(out_dir: str | os.PathLike, name: str) -> dict[str, Path]:
    folder = Path(out_dir) / name
    return {"images": folder / "images.npy", "issame": folder / "issame.npy", "pose": folder / "pose.npy"}


def is_converted(out_dir: str | os.PathLike, name: str) -> bool:
    """A conversion is complete when issame.npy (written last) exists and agrees with images.npy."""
    paths = converted_paths(out_dir, name)
    if not (paths["images"].is_file() and paths["issame"].is_file()):
        return False
    try:
        images, issame = load_valset(out_dir, name)
    except ValsetError:
        return False
    return images.shape[0] == 2 * issame.shape[0]


def convert_bin(bin_path: str | os.PathLike, out_dir: str | os.PathLike, workers: int = 1,
                progress=None) -> Path:
    """Decode every image of a .bin into `<out_dir>/<name>/images.npy` (+ issame.npy, pose.npy).

    `progress(n)` is called as images are decoded. Outputs appear atomically; images first, issame last.
    """
    bin_path = Path(bin_path)
    name = bin_path.stem
    images, issame = read_bin(bin_path)
    pose = _read_pose_sidecar(bin_path, len(images))
    paths = converted_paths(out_dir, name)
    with atomic_path(paths["images"]) as tmp:
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=(len(images), 3, *IMAGE_SIZE))
        _decode_into(array, images, bin_path, workers, progress)
        array.flush()
        del array
    if pose is not None:
        atomic_save_npy(paths["pose"], pose)
    atomic_save_npy(paths["issame"], issame)
    return paths["images"].parent


def _read_pose_sidecar(bin_path: Path, num_images: int) -> np.ndarray | None:
    sidecar = bin_path.with_name(bin_path.stem + ".pose.npy")
    if not sidecar.is_file():
        return None
    try:
        pose = np.load(sidecar, allow_pickle=False)
    except (ValueError, OSError) as err:
        raise ValsetError(f"{sidecar}: not a .npy array ({err})") from None
    if pose.shape != (num_images, 2):
        raise ValsetError(f"{sidecar}: shape {pose.shape}, expected ({num_images}, 2) (yaw, pitch per image)")
    return pose.astype(np.float32)


CHUNK = 256


def _decode_into(array: np.ndarray, images: list[bytes], bin_path: Path, workers: int, progress) -> None:
    chunks = [(start, images[start:start + CHUNK]) for start in range(0, len(images), CHUNK)]
    _store_chunks(array, parallel_map(_decode_chunk, chunks, workers), bin_path, progress)


def _store_chunks(array, results, bin_path: Path, progress) -> None:
    for start, decoded, error in results:
        if error is not None:
            raise ValsetError(f"{bin_path}: image {error[0]}: {error[1]}")
        array[start:start + len(decoded)] = decoded
        if progress is not None:
            progress(len(decoded))


def _decode_chunk(job: tuple[int, list[bytes]]):
    """Decode a chunk to uint8 CHW; return (start, array, None) or (start, None, (index, reason))."""
    start, encoded = job
    out = np.empty((len(encoded), 3, *IMAGE_SIZE), dtype=np.uint8)
    for i, data in enumerate(encoded):
        try:
            rgb = decode_rgb(data)
        except ImageDecodeError as err:
            return start, None, (start + i, str(err))
        if rgb.shape[:2] != IMAGE_SIZE:
            return start, None, (start + i, f"image is {rgb.shape[1]}x{rgb.shape[0]}, expected "
                                            f"{IMAGE_SIZE[1]}x{IMAGE_SIZE[0]} aligned faces")
        out[i] = rgb.transpose(2, 0, 1)
    return start, out, None


def load_valset(root: str | os.PathLike, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Memory-map a converted val set: (images uint8 (2P,3,112,112), issame bool (P,))."""
    paths = converted_paths(root, name)
    try:
        images = np.load(paths["images"], mmap_mode="r")
        issame = np.load(paths["issame"])
    except (OSError, ValueError) as err:
        raise ValsetError(f"{paths['images'].parent}: cannot load converted val set ({err})") from None
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != 3:
        raise ValsetError(f"{paths['images']}: expected uint8 (N, 3, H, W), got {images.dtype} {images.shape}")
    if issame.dtype != np.bool_ or images.shape[0] != 2 * issame.shape[0]:
        raise ValsetError(f"{paths['issame']}: {issame.shape[0]} pairs do not match {images.shape[0]} images")
    return images, issame


def load_valset_pose(root: str | os.PathLike, name: str) -> np.ndarray | None:
    path = converted_paths(root, name)["pose"]
    return np.load(path) if path.is_file() else None
