"""Build or list the facebank: the known people whose faces face_verify.py names.

    python facebank.py build --model M [--bank data/facebank] [--aligned] [--no_flip] [--detector mtcnn|yunet]
    python facebank.py list [--bank data/facebank]

The bank folder holds one sub-folder of photos per person (TreB1eN's `data/facebank/<name>/*.jpg`). `build`
writes facebank.npz + facebank.json into it; a rebuild embeds again only the people whose photos changed.
Photos without a usable face are listed, not used; 112x112 images (take_pic.py's) are taken as aligned faces.
"""
from __future__ import annotations

from pathlib import Path

from utils import CliParser, run_cli

DEFAULT_BANK = Path("data/facebank")


def parse_args(argv=None):
    from inference.loader import add_flip_argument, add_model_arguments

    parser = CliParser(description=__doc__.split("\n\n")[0])
    actions = parser.add_subparsers(dest="action", required=True, parser_class=CliParser)
    build = actions.add_parser("build", help="embed every person's photos into the bank")
    add_model_arguments(build)
    build.add_argument("--bank", type=Path, default=DEFAULT_BANK, help="the facebank folder (<name>/<photo>)")
    build.add_argument("--aligned", action="store_true", help="the photos are aligned 112x112 faces already")
    build.add_argument("--detector", default="mtcnn", choices=("mtcnn", "yunet"), help="face detector for photos")
    add_flip_argument(build)
    build.add_argument("-tta", "--tta", action="store_true",
                       help="TreB1eN's flag for flip test-time augmentation, which is on already (see --no_flip)")
    listing = actions.add_parser("list", help="the people in the bank and their photo counts")
    listing.add_argument("--bank", type=Path, default=DEFAULT_BANK, help="the facebank folder")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from inference.facebank import Facebank, build_bank

    if args.action == "list":
        bank = Facebank.load(args.bank)
        for name in bank.names:
            print(f"{name}: {len(bank.people[name]['embeddings'])} photos")
        print(f"{len(bank.names)} people; {len(bank.failed)} photos left out" + "".join(f"\n  {f}" for f in bank.failed))
        return 0
    from faces.pipeline import make_detector
    from inference.faces_in_files import FaceReader
    from inference.loader import conventions_overrides, load_model

    model = load_model(args.model, args.net, args.device, conventions_overrides(args))
    read = FaceReader(args.aligned, None if args.aligned else make_detector(args.detector, args.device),
                      accept_aligned=True, one_person=True)  # take_pic.py's crops
    bank, report = build_bank(args.bank, model, read, args.flip)
    print(f"{args.bank}: {len(bank.names)} people ({report['embedded']} embedded, {report['reused']} unchanged), "
          f"{sum(len(p['embeddings']) for p in bank.people.values())} photos used, {len(bank.failed)} left out"
          + "".join(f"\n  {f}" for f in bank.failed))
    return 0


if __name__ == "__main__":
    run_cli(main)
