"""Name every face in a photo, a video or a camera stream from the facebank (TreB1eN's face_verify.py).

    python face_verify.py --model M [--bank data/facebank] (--image PHOTO | --video FILE | --camera N)
                          [--save [OUT]] [--threshold T | -th D2] [--score] [--every K] [--face_limit N]
                          [--min_face_size PX] [--begin S] [--duration S] [-u] [--no_flip] [--detector mtcnn|yunet]

Every face is detected and aligned, all faces of a frame are embedded in one batch, and each is named by the
person whose mean embedding is nearest (cosine), "Unknown" below the threshold: `--threshold`, else the one
recorded with the model, else the one published with it (OpenCV's 0.363 for SFace). TreB1eN's `-th` is a squared
L2 distance between unit embeddings, d^2 = 2 - 2 cos: its 1.5 is a cosine of 0.25, and `-th` here takes it that
way. `--save` writes the annotated photo or video (every frame, at the input's frame rate) and a CSV + JSON of
the detections beside it. On videos `--every K` runs detection and the model on every K-th frame only and
carries the names to the frames between by box overlap. With no --image/--video, the camera (TreB1eN's default).
"""
from __future__ import annotations

from pathlib import Path

from utils import CliParser, UserError, atomic_write_bytes, run_cli

AUTO = "auto"  # --save without a name: <input>_named.<jpg|avi> beside the input, recording.avi for the camera


def parse_args(argv=None):
    from inference.loader import add_flip_argument, add_model_arguments

    parser = CliParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--bank", type=Path, default=Path("data/facebank"), help="the facebank folder (facebank.py build)")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--image", type=Path, default=None, help="a photo whose faces to name")
    source.add_argument("--video", type=Path, default=None, help="a video file whose faces to name, frame by frame")
    source.add_argument("--camera", type=int, default=None,
                        help="a camera index (the default source, 0, when neither --image nor --video is given)")
    parser.add_argument("-s", "--save", nargs="?", const=AUTO, default=None,
                        help="write the annotated photo/video here (+ .csv and .json of the detections); without a "
                             "name: <input>_named.jpg / .avi, recording.avi for the camera")
    threshold = parser.add_mutually_exclusive_group()
    threshold.add_argument("--threshold", type=float, default=None,
                           help="cosine at or above which a face is the nearest person (default: recorded or published)")
    threshold.add_argument("-th", "--l2_threshold", type=float, default=None,
                           help="the same as TreB1eN's -th: a squared L2 distance between unit embeddings, at or below "
                                "which a face is the nearest person (cosine = 1 - d2/2)")
    parser.add_argument("-c", "--score", action="store_true", help="show each face's cosine beside its name")
    parser.add_argument("--every", type=int, default=1,
                        help="videos and the camera: detect and embed every K-th frame, carry names between")
    parser.add_argument("--face_limit", type=int, default=0, help="name at most the N largest faces of a frame (0: all)")
    parser.add_argument("--min_face_size", type=float, default=20.0,
                        help="ignore faces whose box is smaller than this many pixels (MTCNN also searches no smaller)")
    parser.add_argument("-b", "--begin", type=float, default=0.0, help="videos: start this many seconds in")
    parser.add_argument("-d", "--duration", type=float, default=0.0,
                        help="videos and the camera: stop after this many seconds (0: at the end, or on Ctrl-C)")
    parser.add_argument("-u", "--update", action="store_true", help="rebuild the facebank with this model first")
    parser.add_argument("--detector", default="mtcnn", choices=("mtcnn", "yunet"), help="face detector")
    add_flip_argument(parser)
    parser.add_argument("-tta", "--tta", action="store_true",
                        help="TreB1eN's flag for flip test-time augmentation, which is on already (see --no_flip)")
    args = parser.parse_args(argv)
    if args.every < 1:
        parser.error(f"--every must be >= 1, got {args.every}")
    if args.face_limit < 0 or args.min_face_size < 0 or args.begin < 0 or args.duration < 0:
        parser.error("--face_limit, --min_face_size, --begin and --duration cannot be negative")
    if args.l2_threshold is not None and not 0 <= args.l2_threshold <= 4:
        parser.error(f"-th/--l2_threshold is a squared distance between unit vectors, 0..4; got {args.l2_threshold}")
    if args.image is None and args.video is None and args.camera is None:
        args.camera = 0
    return args


def chosen_threshold(args) -> float:
    from inference.loader import model_threshold

    if args.l2_threshold is not None:
        return 1.0 - args.l2_threshold / 2.0
    threshold = args.threshold if args.threshold is not None else model_threshold(args.model)
    if threshold is None:
        raise UserError(f"{args.model}: no threshold recorded or published with this model; give --threshold T "
                        "(a cosine) or TreB1eN's -th D2 (a squared L2 distance; its 1.5 is cosine 0.25)")
    return threshold


def output_path(args) -> Path | None:
    if args.save is None or args.save != AUTO:
        return None if args.save is None else Path(args.save)
    if args.image is not None:
        return args.image.with_name(f"{args.image.stem}_named.jpg")
    if args.video is not None:
        return args.video.with_name(f"{args.video.stem}_named.avi")
    return Path("recording.avi")


def name_image(args, namer, threshold: float, out: Path | None) -> int:
    import cv2

    from data.images import read_image_file
    from inference.naming import detection_rows, draw_names, write_detections

    rgb = read_image_file(args.image)
    faces = namer(rgb)
    for face in faces:
        x1, y1, x2, y2 = face.box
        print(f"{face.name}\t{face.score:.3f}\tbox {x1:.0f},{y1:.0f},{x2:.0f},{y2:.0f}")
    known = sum(face.name != "Unknown" for face in faces)
    print(f"{len(faces)} faces in {args.image}, {known} known (threshold {threshold:.3f})")
    if out is not None:
        ok, encoded = cv2.imencode(out.suffix or ".jpg", draw_names(rgb, faces, args.score))
        if not ok:
            raise UserError(f"--save {out}: OpenCV cannot write that image format")
        atomic_write_bytes(out, encoded.tobytes())
        written = write_detections(out, detection_rows(0, faces), {"source": str(args.image), "threshold": threshold})
        print(f"wrote {out}, {written[0]} and {written[1]}")
    return 0


def name_stream(args, namer, threshold: float, out: Path | None) -> int:
    from contextlib import nullcontext

    from tqdm import tqdm

    from data.video import VideoOut, open_camera, open_video, read_frames
    from inference.naming import detection_rows, draw_names, name_frames, write_detections

    source = open_video(args.video) if args.video is not None else open_camera(args.camera)
    total = source.frame_count
    if total is not None:
        start = round(args.begin * source.fps)
        total = max(0, total - start) if not args.duration else min(max(0, total - start),
                                                                    round(args.duration * source.fps))
    rows, frames, names = [], 0, set()
    writer = VideoOut(out, source.fps, source.size) if out is not None else nullcontext()
    try:
        with writer, tqdm(total=total, unit="frame", desc=source.name, leave=False) as bar:
            stream = read_frames(source, args.begin, args.duration)
            try:
                for index, rgb, faces in name_frames(stream, namer, args.every):
                    rows += detection_rows(index, faces)
                    names.update(face.name for face in faces)
                    if out is not None:
                        writer.write(draw_names(rgb, faces, args.score))
                    frames += 1
                    bar.update()
            except KeyboardInterrupt:  # the camera's way to stop: what was seen so far is kept
                if args.video is not None:
                    raise
    finally:
        source.close()
    if frames == 0:
        raise UserError(f"{source.name}: no frames could be read"
                        + (f" from {args.begin:g} s on" if args.begin else ""))
    seen = sorted(names - {"Unknown"})
    print(f"{frames} frames of {source.name} ({source.fps:g} fps), {len(rows)} faces named "
          f"({', '.join(seen) if seen else 'nobody known'}{'; some Unknown' if 'Unknown' in names else ''}), "
          f"detection every {args.every} frame{'s' if args.every > 1 else ''}, threshold {threshold:.3f}")
    if out is not None:
        written = write_detections(out, rows, {"source": source.name, "fps": source.fps, "frames": frames,
                                               "every": args.every, "threshold": threshold})
        print(f"wrote {out} ({frames} frames), {written[0]} and {written[1]}")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    from faces.pipeline import make_detector
    from inference.facebank import Facebank, build_bank, check_model
    from inference.faces_in_files import FaceReader
    from inference.loader import conventions_overrides, load_model
    from inference.naming import FaceNamer

    model = load_model(args.model, args.net, args.device, conventions_overrides(args))
    detector = make_detector(args.detector, args.device, min_face_size=max(args.min_face_size, 12.0))
    if args.update:
        read = FaceReader(False, detector, accept_aligned=True, one_person=True)
        _, report = build_bank(args.bank, model, read, args.flip)
        print(f"{args.bank}: facebank updated ({report['embedded']} people embedded, {report['reused']} unchanged)")
    bank = Facebank.load(args.bank)
    check_model(bank, model, args.bank)
    threshold = chosen_threshold(args)
    namer = FaceNamer(detector, model, bank, threshold, args.flip, args.face_limit, args.min_face_size)
    out = output_path(args)
    if args.image is not None:
        return name_image(args, namer, threshold, out)
    return name_stream(args, namer, threshold, out)


if __name__ == "__main__":
    run_cli(main)
