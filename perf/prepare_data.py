"""Per-record rates of data/prepare_data.py's steps, projected to the full emore set, beside TreB1eN's way.

    python -m perf.prepare_data [--records 40000] [--workers 2]

Builds a .rec of `--records` synthetic 112x112 JPEGs (a few hundred distinct renders repeated: decode cost
depends on the pixels, not on which face) and a .bin of 6,000 pairs, then times each step. The baseline,
timed in the same run, is what TreB1eN's `load_mx_rec` does per record: decode, then save through PIL
(a re-encode; it writes .jpg at PIL's default quality). Projection: 5,822,653 emore images; the seven emore
.bin sets hold 2 x (6000+6000+7000+7000+6000+6000+5000) = 86,000 images.
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image

from data.images import decode_rgb
from data.prepare_data import main as prepare
from data.recordio import IRHeader, RecordReader, RecordWriter, pack, write_property
from data.synthetic import generate
from data.valsets import read_bin, write_bin
from perf.report import result

EMORE_IMAGES = 5_822_653
EMORE_VAL_IMAGES = 86_000


def build_rec(source: Path, folder: Path, records: int, per_class: int = 100) -> None:
    reader = RecordReader(source / "train.rec")
    keys = [k for k in reader.keys.tolist() if k != 0 and reader.read_unpacked(k)[0].flag == 0]
    images = [bytes(reader.read_unpacked(k)[1]) for k in keys]
    num_classes = records // per_class
    with RecordWriter(folder / "train.rec") as writer:
        writer.write(0, pack(IRHeader(0, [records + 1, records + 1 + num_classes], 0, 0), b""))
        for i in range(records):
            writer.write(i + 1, pack(IRHeader(0, float(i // per_class), i + 1, 0), images[i % len(images)]))
        for label in range(num_classes):
            first = 1 + label * per_class
            writer.write(records + 1 + label, pack(IRHeader(0, [first, first + per_class], 0, 0), b""))
    write_property(folder, num_classes)


def build_bin(source: Path, folder: Path) -> None:
    bins, _ = read_bin(source / "lfw.bin")
    write_bin(folder / "lfw.bin", [bins[i % len(bins)] for i in range(12_000)], [i % 2 == 0 for i in range(6_000)])


def timed(argv: list[str]) -> float:
    start = time.perf_counter()
    prepare(argv)
    return time.perf_counter() - start


def treb1en_style_rate(folder: Path, out: Path, count: int) -> float:
    reader = RecordReader(folder / "train.rec")
    out.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    for key in range(1, count + 1):
        header, data = reader.read_unpacked(key)
        label_dir = out / str(int(header.label))
        label_dir.mkdir(exist_ok=True)
        Image.fromarray(decode_rgb(data)).save(label_dir / f"{key}.jpg")
    return count / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--records", type=int, default=40_000)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        generate(tmp / "renders", 20, 20, val_pairs=100, seed=0, workers=args.workers)
        data = tmp / "emore"
        build_rec(tmp / "renders", data, args.records)
        n, w = args.records, str(args.workers)
        seconds = {
            "scan, decode check": timed(["--source", str(data), "--out", str(tmp / "a"), "--workers", w]),
            "scan, structural only": timed(["--source", str(data), "--out", str(tmp / "b"), "--workers", w,
                                            "--skip_decode_check"]),
            "unpack": timed(["--source", str(data), "--out", str(tmp / "a"), "--workers", w, "--unpack"]),
        }
        build_bin(tmp / "renders", data)
        val_seconds = timed(["--source", str(data), "--out", str(tmp / "a"), "--workers", w])
        baseline = treb1en_style_rate(data, tmp / "treb1en", min(n, 5000))
    print(f"\nprepare_data.py with --workers {w}, {n} records of 112x112 JPEG, 12,000 val images:")
    print(f"  {'step':28s} {'img/s':>9s} {'full emore':>11s}")
    total = 0.0
    for step, sec in seconds.items():
        rate = n / sec
        if step != "scan, structural only":
            total += EMORE_IMAGES / rate
        print(f"  {step:28s} {rate:9.0f} {EMORE_IMAGES / rate / 60:9.1f} min")
    val_rate = 12_000 / val_seconds
    total += EMORE_VAL_IMAGES / val_rate
    print(f"  {'val sets (.bin -> .npy)':28s} {val_rate:9.0f} {EMORE_VAL_IMAGES / val_rate / 60:9.1f} min")
    print(f"  full emore, default steps + --unpack: {total / 60:.1f} min (target: well under 60)")
    result("prepare_data.py --unpack", n / seconds["unpack"], baseline, "img/s", "TreB1eN-style unpack")
    print(f"  TreB1eN-style unpack (decode + PIL re-encode, 1 process): {baseline:.0f} img/s, "
          f"{EMORE_IMAGES / baseline / 60:.1f} min; ours unpack is {n / seconds['unpack'] / baseline:.1f}x faster")
    return 0


if __name__ == "__main__":
    sys.exit(main())
