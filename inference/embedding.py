"""Embedding images with a backbone: uint8 batches streamed from arrays or memmaps, flip TTA, input conventions.

The one place where stored images become embeddings, for evaluation during training, eval.py, lfw_eval.py,
megaface.py and the facebank: a batch of uint8 RGB NCHW pixels is read (a memmap slice touches only those
pages), put in the model's channel order and normalised on the device (`inference.conventions`), and
embedded. With `flip=True` the embedding is the L2-normalised sum of the embeddings of the image and its
horizontal flip (TreB1eN's `tta`). Nothing but one batch is ever held as float.

On a CPU the model sees at most `CPU_FORWARD_BATCH` images at a time, in channels_last: an eval-mode forward
gives the same embeddings whatever the batch (within float rounding), and small batches keep the activations
in the caches. Measured on 2 Xeon cores (perf.inference has the end-to-end figure): MobileFaceNet on one
thread 48 img/s at batch 256, 120 img/s at 16, and channels_last input 1.4x over NCHW; IR-SE50 on two threads
12 img/s at 128, 17 at 8-32, 1.13x with channels_last.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from inference.conventions import to_model_input
from inference.runtime import autocast

CPU_FORWARD_BATCH = 16


@torch.inference_mode()
def embed_images(model: torch.nn.Module, images: np.ndarray, batch_size: int = 256,
                 device: torch.device | str = "cpu", flip: bool = True, conventions: dict | None = None,
                 amp_dtype: torch.dtype | None = None, progress=None) -> np.ndarray:
    """L2-normalised float32 embeddings (N, E) of uint8 RGB images (N, 3, H, W), in batches.

    `conventions`: the model's input conventions (channel order, mean, std; default ours, RGB);
    `amp_dtype` (torch.bfloat16 / torch.float16) runs the model under autocast; `progress(n)` is called
    after each batch. `batch_size` images are read at a time; on a CPU they go through the model in chunks of
    `CPU_FORWARD_BATCH`.
    """
    if images.ndim != 4 or images.shape[1] != 3 or images.dtype != np.uint8:
        raise ValueError(f"expected uint8 images (N, 3, H, W), got {images.dtype} {images.shape}")
    was_training = model.training
    model.eval()
    device = torch.device(device)
    on_cpu = device.type == "cpu"
    chunks = []
    try:
        for start in range(0, len(images), batch_size):
            pixels = torch.from_numpy(np.array(images[start:start + batch_size]))  # reads the pages once
            for part in pixels.split(CPU_FORWARD_BATCH) if on_cpu else (pixels,):
                x = to_model_input(part, device, channels_last=on_cpu, conventions=conventions)
                chunks.append(_embed(model, x, flip, device, amp_dtype))
            if progress is not None:
                progress(len(pixels))
    finally:
        model.train(was_training)
    return np.concatenate(chunks) if chunks else np.empty((0, 0), dtype=np.float32)


def _embed(model: torch.nn.Module, x: torch.Tensor, flip: bool, device: torch.device,
           amp_dtype: torch.dtype | None) -> np.ndarray:
    with autocast(device, amp_dtype):
        embeddings = model(x).float()
        if flip:
            embeddings = embeddings + model(x.flip(3)).float()
    return F.normalize(embeddings, dim=1).cpu().numpy()
