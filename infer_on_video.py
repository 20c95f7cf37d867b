"""Name the faces of a video from the facebank, with TreB1eN's infer_on_video.py flags (face_verify.py --video).

    python infer_on_video.py --model M [-f video.mp4] [-s recording] [-th D2 | --threshold T] [-c] [-b S] [-d S]
                             [-u] [--every K] [any other face_verify.py flag]

`-f`: the video (as given, else in the facebank folder, where TreB1eN kept it); `-s`: the annotated output
(`.avi` added when the name has no suffix), every frame written at the input's rate, with a CSV + JSON of the
detections beside it; `-th`: TreB1eN's squared L2 distance (cosine = 1 - d2/2); `-c` shows scores; `-b` / `-d`:
start and length in seconds; `-u` rebuilds the facebank first. Unlike TreB1eN's, frames without a face are
written too, at the input's own size.
"""
from __future__ import annotations

from pathlib import Path

from utils import CliParser, run_cli


def main(argv=None) -> int:
    import face_verify

    parser = CliParser(description=__doc__.split("\n\n")[0],
                       epilog="Every other flag is face_verify.py's (python face_verify.py -h): --model, --bank, "
                              "--threshold / -th, -c, -b, -d, -u, --every, --face_limit, --min_face_size, --detector, "
                              "--no_flip, --device, --net.")
    parser.add_argument("-f", "--file_name", type=Path, default=Path("video.mp4"), help="the video to name faces in")
    parser.add_argument("-s", "--save_name", type=Path, default=Path("recording"),
                        help="the annotated video (.avi when no suffix is given)")
    parser.add_argument("--bank", type=Path, default=Path("data/facebank"), help="the facebank folder")
    args, rest = parser.parse_known_args(argv)
    video = args.file_name
    if not video.exists() and not video.is_absolute() and (args.bank / video).exists():
        video = args.bank / video
    out = args.save_name if args.save_name.suffix else args.save_name.with_suffix(".avi")
    return face_verify.main(["--video", str(video), "--save", str(out), "--bank", str(args.bank), *rest])


if __name__ == "__main__":
    run_cli(main)
