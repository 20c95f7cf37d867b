"""MTCNN face detection with five landmarks (Zhang et al., "Joint Face Detection and Alignment using
Multi-task Cascaded Convolutional Networks", 2016): the detector in front of `faces.alignment`.

Three cascaded networks: P-Net proposes boxes over an image pyramid, R-Net and O-Net re-score and
refine them, and O-Net also regresses the five landmarks (eyes, nose tip, mouth corners; the order
of `faces.alignment.LANDMARK_NAMES`).

Weights. Nothing is downloaded: the trained weights come from the PyPI wheel `facenet-pytorch`
(MIT licence), which ships them as `facenet_pytorch/data/{pnet,rnet,onet}.pt` (state dicts, read
here with `weights_only=True`). Its own code is never imported -- it pins an old torch and needs
torchvision -- so `make setup` installs it with `pip install --no-deps`. Any folder holding those
three files works too (`MTCNN(weights_dir=...)`).

Conventions: input is an RGB uint8 HxWx3 photo (the networks were trained on RGB, scaled to
[-1, 1) as (x - 127.5) / 128). Coordinates are in pixels, 0-based, x right and y down; a box
(x1, y1, x2, y2) covers the pixels x1 <= x < x2, so its width is x2 - x1 (the original MATLAB code's
1-based inclusive boxes, shifted). Out-of-photo parts of a crop are black, as in the original.
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import torch
from torch import nn

from faces.detection import Face, central_face, face_in_box, overlaps  # noqa: F401 - re-exported
from utils import UserError

WEIGHTS_PACKAGE = "facenet_pytorch"  # the import name of the PyPI wheel facenet-pytorch
WEIGHT_FILES = ("pnet.pt", "rnet.pt", "onet.pt")

P_NET_STRIDE, P_NET_CELL = 2, 12  # P-Net sees 12x12 windows, one every 2 pixels of a pyramid level


class PNet(nn.Module):
    """Fully convolutional proposal network: for every 12x12 window, face probability + box offsets."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.pool1 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)  # face / not face
        self.conv4_2 = nn.Conv2d(32, 4, 1)  # box offsets

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return torch.softmax(self.conv4_1(x), dim=1)[:, 1], self.conv4_2(x)


def _flatten_like_caffe(x: torch.Tensor) -> torch.Tensor:
    # The weights were converted from Caffe models that saw images transposed (MATLAB's column-major
    # layout), so the fully connected layers expect the feature map flattened as (W, H, C).
    return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)


class RNet(nn.Module):
    """Refinement network on 24x24 crops: face probability + box offsets."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.prelu4(self.dense4(_flatten_like_caffe(self.prelu3(self.conv3(x)))))
        return torch.softmax(self.dense5_1(x), dim=1)[:, 1], self.dense5_2(x)


class ONet(nn.Module):
    """Output network on 48x48 crops: face probability, box offsets and the five landmarks."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.pool1 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.pool2 = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.pool3 = nn.MaxPool2d(2, 2, ceil_mode=True)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)  # x of the five points, then y, relative to the crop

    def forward(self, x):
        x = self.pool1(self.prelu1(self.conv1(x)))
        x = self.pool2(self.prelu2(self.conv2(x)))
        x = self.pool3(self.prelu3(self.conv3(x)))
        x = self.prelu5(self.dense5(_flatten_like_caffe(self.prelu4(self.conv4(x)))))
        return torch.softmax(self.dense6_1(x), dim=1)[:, 1], self.dense6_2(x), self.dense6_3(x)


def default_weights_dir() -> Path | None:
    """Where the installed facenet-pytorch wheel keeps the weights, found without importing it."""
    spec = importlib.util.find_spec(WEIGHTS_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "data"


def find_weights_dir(weights_dir: str | Path | None = None) -> Path:
    """The folder holding pnet.pt, rnet.pt and onet.pt; a UserError names what is missing and how to get it."""
    folder = Path(weights_dir) if weights_dir is not None else default_weights_dir()
    if folder is None:
        raise UserError("MTCNN weights not found: install them with "
                                "'pip install --no-deps facenet-pytorch==2.6.0' (make setup does)")
    missing = [name for name in WEIGHT_FILES if not (folder / name).is_file()]
    if missing:
        raise UserError(f"{folder / missing[0]}: MTCNN weight file not found "
                                f"(expected {', '.join(WEIGHT_FILES)} in {folder})")
    return folder


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float, mode: str = "union") -> np.ndarray:
    """Greedy non-maximum suppression: indices of the kept boxes, highest score first.

    A box is dropped when its `overlaps` with an already kept one exceeds `threshold` ("union" = IoU;
    "min", O-Net's last pass, also removes a small box inside a large one). Ties in score keep the
    earlier box.
    """
    boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    keep = []
    while order.size:
        best, rest = order[0], order[1:]
        keep.append(best)
        order = rest[overlaps(boxes[best], boxes[rest], mode) <= threshold]
    return np.array(keep, dtype=np.int64)


# The cascade below keeps the original MATLAB code's box arithmetic (1-based boxes whose last pixel
# is inclusive, widths sometimes with and sometimes without the +1): the networks were trained and
# their thresholds tuned with exactly these crops, and a one-pixel change moves small faces' landmarks
# by several pixels. Boxes leave `MTCNN.detect` converted to the 0-based half-open convention.

def square(boxes: np.ndarray) -> np.ndarray:
    """The boxes made square around the same centres; side = the longer of x2 - x1 and y2 - y1
    (the original `rerec`)."""
    boxes = boxes.copy()
    width, height = boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]
    side = np.maximum(width, height)
    boxes[:, 0] += width / 2 - side / 2
    boxes[:, 1] += height / 2 - side / 2
    boxes[:, 2:4] = boxes[:, 0:2] + side[:, None]
    return boxes


def apply_offsets(boxes: np.ndarray, offsets: np.ndarray, inclusive: bool = True) -> np.ndarray:
    """Refine boxes by the networks' regression: each side moves by its offset times the box size
    (x2 - x1 + 1 for inclusive boxes; P-Net's windows use x2 - x1, as the original does)."""
    extra = 1.0 if inclusive else 0.0
    size = np.stack([boxes[:, 2] - boxes[:, 0] + extra, boxes[:, 3] - boxes[:, 1] + extra] * 2, axis=1)
    return boxes + offsets * size


def pyramid_scales(height: int, width: int, min_face_size: float, factor: float) -> list[float]:
    """Scales at which a face of `min_face_size` px and up fills P-Net's 12x12 window somewhere."""
    scale = P_NET_CELL / min_face_size
    shortest = min(height, width) * scale
    scales = []
    while shortest >= P_NET_CELL:
        scales.append(scale)
        scale *= factor
        shortest *= factor
    return scales


def resize_area(images: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Area-average resampling of (N, 3, H, W) float images (the reference implementation's choice)."""
    return torch.nn.functional.interpolate(images, size=(height, width), mode="area")


class MTCNN:
    """`MTCNN().detect(rgb)` -> list of `Face`, the most probable first.

    `min_face_size` sets the pyramid's first level: a soft lower bound on the faces found (the box
    regression reaches somewhat below it).

    Defaults are the paper's and facenet-pytorch's: faces from `min_face_size` = 20 px, stage
    thresholds (0.6, 0.7, 0.7), pyramid factor 0.709. NMS: 0.5 within a pyramid level, 0.7 across
    levels and after R-Net (union), 0.7 "min" after O-Net.
    """

    def __init__(self, weights_dir: str | Path | None = None, min_face_size: float = 20.0,
                 thresholds=(0.6, 0.7, 0.7), factor: float = 0.709, device: str | torch.device = "cpu",
                 batch_size: int = 256):
        if min_face_size < P_NET_CELL:
            raise ValueError(f"min_face_size must be >= {P_NET_CELL} pixels, got {min_face_size}")
        if not 0 < factor < 1:
            raise ValueError(f"the pyramid factor must be in (0, 1), got {factor}")
        folder = find_weights_dir(weights_dir)
        self.device = torch.device(device)
        self.pnet, self.rnet, self.onet = (self._load(net, folder / name)
                                           for net, name in zip((PNet(), RNet(), ONet()), WEIGHT_FILES))
        self.min_face_size, self.thresholds, self.factor = float(min_face_size), tuple(thresholds), float(factor)
        self.batch_size = batch_size

    def _load(self, net: nn.Module, path: Path) -> nn.Module:
        what = f"{path}: not an MTCNN {type(net).__name__} state dict"
        try:  # facenet-pytorch's files use torch's legacy (non-zip) format, which weights_only reads too
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:  # noqa: BLE001 - a damaged file fails in many ways; torch's text is pages long
            raise UserError(f"{what} (torch.load with weights_only failed: {type(err).__name__})") from None
        try:
            net.load_state_dict(state)
        except Exception as err:  # noqa: BLE001 - wrong keys or shapes: say which, on one line
            raise UserError(f"{what} ({' '.join(str(err).split())[:200]})") from None
        return net.to(self.device).eval()

    @torch.inference_mode()
    def detect(self, rgb: np.ndarray) -> list[Face]:
        image = np.asarray(rgb)
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"expected an RGB HxWx3 uint8 image, got {image.dtype} {image.shape}")
        photo = torch.from_numpy(np.ascontiguousarray(image)).to(self.device).permute(2, 0, 1)[None].float()
        boxes = self._propose(photo)
        if len(boxes):
            boxes = self._refine(photo, boxes)
        if not len(boxes):
            return []
        boxes, scores, landmarks = self._output(photo, boxes)
        boxes[:, :2] -= 1  # 1-based inclusive -> 0-based half-open
        return [Face(box, float(score), points) for box, score, points in zip(boxes, scores, landmarks)]

    @torch.inference_mode()
    def landmarks_in_box(self, images: np.ndarray, box) -> tuple[np.ndarray, np.ndarray]:
        """O-Net alone on one known face box shared by a batch of same-size images (aligned crops, where the
        face's place is fixed by the alignment): (face probability (N,), landmarks (N, 5, 2) in pixels).

        `images` is uint8 (N, H, W, 3) RGB; `box` (x1, y1, x2, y2) integer pixels, 0-based, end exclusive, may
        reach outside the images (black there, as in `detect`)."""
        images = np.asarray(images)
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[3] != 3:
            raise ValueError(f"expected uint8 images (N, H, W, 3), got {images.dtype} {images.shape}")
        x1, y1, x2, y2 = (int(v) for v in box)
        height, width = images.shape[1:3]
        canvas = np.zeros((len(images), y2 - y1, x2 - x1, 3), np.uint8)
        sx1, sy1, sx2, sy2 = max(x1, 0), max(y1, 0), min(x2, width), min(y2, height)
        canvas[:, sy1 - y1:sy2 - y1, sx1 - x1:sx2 - x1] = images[:, sy1:sy2, sx1:sx2]
        pixels = torch.from_numpy(canvas).to(self.device).permute(0, 3, 1, 2).float()
        scores, _, points = self._run(self.onet, self._normalise(resize_area(pixels, 48, 48)))
        landmarks = np.stack([points[:, :5] * (x2 - x1) + x1, points[:, 5:] * (y2 - y1) + y1], axis=2)
        return scores, landmarks

    @staticmethod
    def _normalise(images: torch.Tensor) -> torch.Tensor:
        return (images - 127.5) * 0.0078125

    def _propose(self, photo: torch.Tensor) -> np.ndarray:
        """Stage 1: P-Net over the pyramid -> square candidate boxes (N, 4)."""
        height, width = photo.shape[2:]
        candidates, scores = [], []
        for scale in pyramid_scales(height, width, self.min_face_size, self.factor):
            level = resize_area(photo, int(height * scale + 1), int(width * scale + 1))
            probability, offsets = self.pnet(self._normalise(level))
            probability, offsets = probability[0].cpu().numpy(), offsets[0].cpu().numpy()
            ys, xs = np.nonzero(probability >= self.thresholds[0])
            if not len(ys):
                continue
            # Window (x, y) covers [2x, 2x + 12) of the level: 1-based pixels (2x + 1) / scale to
            # (2x + 12) / scale of the photo.
            cells = np.stack([xs, ys], axis=1).astype(np.float64) * P_NET_STRIDE
            windows = np.concatenate([np.floor((cells + 1) / scale), np.floor((cells + P_NET_CELL) / scale)], axis=1)
            level_scores = probability[ys, xs].astype(np.float64)
            keep = nms(windows, level_scores, 0.5)
            candidates.append((windows[keep], offsets[:, ys[keep], xs[keep]].T))
            scores.append(level_scores[keep])
        if not candidates:
            return np.zeros((0, 4))
        windows = np.concatenate([w for w, _ in candidates])
        offsets = np.concatenate([o for _, o in candidates])
        keep = nms(windows, np.concatenate(scores), 0.7)
        return square(apply_offsets(windows[keep], offsets[keep], inclusive=False))

    def _crops(self, photo: torch.Tensor, boxes: np.ndarray, size: int) -> torch.Tensor:
        """(N, 3, size, size): each box's pixels (black outside the photo), resized and normalised."""
        height, width = photo.shape[2:]
        crops = torch.zeros((len(boxes), 3, size, size), device=photo.device)
        for i, (x1, y1, x2, y2) in enumerate(np.trunc(boxes).astype(np.int64)):
            left, top, right, bottom = x1 - 1, y1 - 1, x2, y2  # 0-based, half-open
            if right <= left or bottom <= top:
                continue
            canvas = torch.zeros((1, 3, bottom - top, right - left), device=photo.device)
            sx1, sy1, sx2, sy2 = max(left, 0), max(top, 0), min(right, width), min(bottom, height)
            if sx2 > sx1 and sy2 > sy1:
                canvas[:, :, sy1 - top:sy2 - top, sx1 - left:sx2 - left] = photo[:, :, sy1:sy2, sx1:sx2]
            crops[i] = resize_area(canvas, size, size)[0]
        return self._normalise(crops)

    def _run(self, net: nn.Module, crops: torch.Tensor) -> list[np.ndarray]:
        outputs = [[part.cpu().double().numpy() for part in net(crops[i:i + self.batch_size])]
                   for i in range(0, len(crops), self.batch_size)]
        return [np.concatenate(parts) for parts in zip(*outputs)]

    def _refine(self, photo: torch.Tensor, boxes: np.ndarray) -> np.ndarray:
        """Stage 2: R-Net re-scores 24x24 crops -> fewer, better square boxes."""
        scores, offsets = self._run(self.rnet, self._crops(photo, boxes, 24))
        passed = scores > self.thresholds[1]
        boxes, scores, offsets = boxes[passed], scores[passed], offsets[passed]
        keep = nms(boxes, scores, 0.7)
        return square(apply_offsets(boxes[keep], offsets[keep]))

    def _output(self, photo: torch.Tensor, boxes: np.ndarray):
        """Stage 3: O-Net on 48x48 crops -> final boxes, scores and landmarks (0-based pixels)."""
        scores, offsets, points = self._run(self.onet, self._crops(photo, boxes, 48))
        passed = scores > self.thresholds[2]
        boxes, scores, offsets, points = boxes[passed], scores[passed], offsets[passed], points[passed]
        size = np.stack([boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1], axis=1)
        landmarks = np.stack([points[:, :5], points[:, 5:]], axis=2) * size[:, None] + boxes[:, None, :2] - 1
        boxes = apply_offsets(boxes, offsets)
        keep = nms(boxes, scores, 0.7, mode="min")
        return boxes[keep], scores[keep], landmarks[keep]
