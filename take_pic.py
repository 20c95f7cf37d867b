"""Add a person to the facebank from a camera (TreB1eN's take_pic.py): aligned 112x112 faces into <bank>/<name>/.

    python take_pic.py -n NAME [--bank data/facebank] [--camera 0 | --video FILE] [--count 5] [--interval 1.0]

Each picture is the frame's most central face, detected and aligned as every photo is (faces/pipeline.py), saved
as `<bank>/<name>/<date-time>-<k>.jpg`; `facebank.py build` takes 112x112 images as aligned faces. With a display,
the stream is shown: t takes a picture, q quits; without one (a server, OpenCV headless), `--count` pictures are
taken `--interval` seconds apart. `--video FILE` takes them from a clip instead of a camera.
"""
from __future__ import annotations

from datetime import datetime
from pathlib import Path

from utils import CliParser, UserError, atomic_write_bytes, run_cli


def parse_args(argv=None):
    parser = CliParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--name", required=True, help="the person's name: the bank's sub-folder")
    parser.add_argument("--bank", type=Path, default=Path("data/facebank"), help="the facebank folder")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--camera", type=int, default=0, help="camera index")
    source.add_argument("--video", type=Path, default=None, help="take the pictures from this video instead")
    parser.add_argument("--count", type=int, default=5, help="pictures to take without a display")
    parser.add_argument("--interval", type=float, default=1.0,
                        help="seconds of stream between two pictures without a display")
    parser.add_argument("--detector", default="mtcnn", choices=("mtcnn", "yunet"), help="face detector")
    parser.add_argument("--device", default="cpu", help="where MTCNN runs")
    args = parser.parse_args(argv)
    if not args.name.strip() or Path(args.name).name != args.name or args.name.startswith("."):
        parser.error(f"-n/--name must be a plain folder name, got {args.name!r}")
    if args.count < 1 or args.interval < 0:
        parser.error("--count must be >= 1 and --interval >= 0")
    return args


def has_display() -> bool:
    import cv2

    try:
        cv2.namedWindow("take_pic")
        return True
    except cv2.error:  # OpenCV headless, or no display
        return False


def save_face(rgb, detector, folder: Path, number: int) -> Path | None:
    from data.images import encode_jpeg
    from faces.alignment import align_face
    from faces.pipeline import faces_central_first

    faces = faces_central_first(detector, rgb)
    if not faces:
        return None
    path = folder / f"{datetime.now():%Y-%m-%d-%H-%M-%S}-{number}.jpg"
    atomic_write_bytes(path, encode_jpeg(align_face(rgb, faces[0].landmarks), quality=95))
    return path


def main(argv=None) -> int:
    args = parse_args(argv)
    from data.video import open_camera, open_video, read_frames
    from faces.pipeline import make_detector

    source = open_video(args.video) if args.video is not None else open_camera(args.camera)
    detector, folder, saved = make_detector(args.detector, args.device), args.bank / args.name, []
    interactive = args.video is None and has_display()
    spacing = max(1, round(args.interval * source.fps))
    try:
        for index, rgb in enumerate(read_frames(source)):
            if interactive:
                import cv2

                cv2.imshow("take_pic", rgb[:, :, ::-1])
                key = cv2.waitKey(1) & 0xFF
                if key == ord("q"):
                    break
                if key != ord("t"):
                    continue
            elif index % spacing:
                continue
            path = save_face(rgb, detector, folder, len(saved))
            print(f"saved {path}" if path else f"frame {index}: no face, nothing saved")
            saved += [path] if path else []
            if not interactive and len(saved) >= args.count:
                break
    except KeyboardInterrupt:
        pass
    finally:
        source.close()
    if not saved:
        raise UserError(f"{source.name}: no face found in the frames read; nothing saved in {folder}")
    print(f"{len(saved)} pictures of {args.name} in {folder}; now: python facebank.py build --model M --bank {args.bank}")
    return 0


if __name__ == "__main__":
    run_cli(main)
