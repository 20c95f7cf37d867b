"""The one place where image bytes become RGB uint8 arrays and back (OpenCV, no PIL in the hot path)."""
from __future__ import annotations

import cv2
import numpy as np

from utils import UserError

cv2.setNumThreads(1)  # DataLoader workers already give the parallelism; OpenCV's own threads only contend

JPEG_SOI = b"\xff\xd8"
JPEG_EOI = b"\xff\xd9"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ImageDecodeError(ValueError):
    """The bytes are not a complete JPEG/PNG image (callers add the file and record key)."""


def check_image_bytes(data: bytes | memoryview) -> None:
    """Cheap structural check: a known signature and, for JPEG, the end-of-image marker.

    OpenCV decodes a truncated JPEG into a partly grey image with only a warning, so truncation
    must be caught from the bytes themselves. The end marker is looked for near the end, not at it,
    because some encoders leave a few bytes after it; inside the compressed data 0xFF is always
    byte-stuffed, so FF D9 there can only be the real end marker.
    """
    view = memoryview(data).cast("B")
    if view[:2] == JPEG_SOI:
        if JPEG_EOI not in view[-64:].tobytes():
            raise ImageDecodeError("truncated JPEG (no end-of-image marker)")
    elif view[:8] != PNG_SIGNATURE:
        raise ImageDecodeError("not a JPEG or PNG image")


def decode_rgb(data: bytes | memoryview | np.ndarray) -> np.ndarray:
    """Decode JPEG/PNG bytes to an HxWx3 RGB uint8 array; raise ImageDecodeError if corrupt."""
    check_image_bytes(data)
    buf = np.frombuffer(data, dtype=np.uint8)
    image = cv2.imdecode(buf, cv2.IMREAD_COLOR_RGB)
    if image is None:
        raise ImageDecodeError("corrupt image data")
    return image


def encode_jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
    """Encode an HxWx3 RGB uint8 array as JPEG bytes."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()


def encode_png(rgb: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise ValueError("PNG encoding failed")
    return buf.tobytes()


def read_image_file(path, missing_hint: str = "") -> np.ndarray:
    """The HxWx3 RGB uint8 pixels of an image file; a missing, unreadable or corrupt file is one
    UserError naming it (`missing_hint` is appended when the file does not exist)."""
    try:
        return decode_rgb(path.read_bytes())
    except FileNotFoundError:
        raise UserError(f"{path}: image not found{missing_hint}") from None
    except OSError as err:
        raise UserError(f"{path}: cannot read: {err.strerror or err}") from None
    except ImageDecodeError as err:
        raise UserError(f"{path}: not a valid image: {err}") from None


def read_aligned_face(path, size: int = 112, hint: str = "") -> np.ndarray:
    """An aligned `size` x `size` face file as uint8 CHW RGB; any other size is a UserError (`hint` says
    how to align)."""
    rgb = read_image_file(path, hint)
    if rgb.shape[:2] != (size, size):
        raise UserError(f"{path}: expected an aligned {size}x{size} face, got {rgb.shape[1]}x{rgb.shape[0]}{hint}")
    return rgb.transpose(2, 0, 1)


# The photo formats the detection commands read (align.py, embed.py, the facebank): OpenCV decodes them all.
PHOTO_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


def photo_files(root, recursive: bool = True) -> list[str]:
    """Every photo under `root` (below it with `recursive`, else directly in it), as sorted paths relative to it;
    hidden files and folders are left out."""
    from pathlib import Path

    root = Path(root)
    found = []
    for path in root.rglob("*") if recursive else root.iterdir():
        relative = path.relative_to(root)
        if path.suffix.lower() in PHOTO_SUFFIXES and path.is_file() and not any(
                part.startswith(".") for part in relative.parts):
            found.append(relative.as_posix())
    return sorted(found)
