"""Export a trained backbone to ONNX, with its input conventions, checked against PyTorch.

    python export.py --model work_space/save/model_final.pth --out model.onnx [--format onnx] [--no_dynamic_batch]

Any weights file `eval.py` reads (ours, TreB1eN's, arcface_torch's). The ONNX file records the channel order,
mean, std and input size in its metadata, so every command here loads it back the way the weights were
trained (TreB1eN's: BGR). Before the file appears, onnxruntime and PyTorch embed the same batch and must agree
(cosine >= 0.9999); batches of any size work unless --no_dynamic_batch.
"""
from __future__ import annotations

from pathlib import Path

from inference.loader import add_model_arguments, conventions_overrides, load_model
from utils import CliParser, UserError, run_cli

FORMATS = ("onnx",)


def parse_args(argv=None):
    parser = CliParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--out", type=Path, required=True, help="the exported file")
    parser.add_argument("--format", default="onnx", choices=FORMATS, help="export format")
    parser.add_argument("--no_dynamic_batch", dest="dynamic_batch", action="store_false",
                        help="fix the batch size to 1 (default: any batch size)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.model.suffix.lower() == ".onnx":
        raise UserError(f"{args.model}: already an ONNX model (export.py exports PyTorch weights)")
    if args.out.resolve() == args.model.resolve():
        raise UserError(f"--out {args.out} would overwrite --model")
    from inference.export import export_onnx

    model = load_model(args.model, args.net, "cpu", conventions_overrides(args))
    print(model.describe())
    cosine = export_onnx(model.network, model.conventions, args.out, args.dynamic_batch)
    order = model.conventions["channel_order"]
    print(f"wrote {args.out} ({model.name}, {order} input recorded in its metadata); onnxruntime and PyTorch agree "
          f"to cosine {cosine:.6f}")
    return 0


if __name__ == "__main__":
    run_cli(main)
