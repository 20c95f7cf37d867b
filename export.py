"""Export a trained backbone to ONNX, with its input conventions, checked against PyTorch (or back).

    python export.py --model work_space/save/model_final.pth --out model.onnx [--format onnx] [--no_dynamic_batch]
                     [--fp16]
    python export.py --model backbone.onnx --format pth --out model_r50.pth    # ONNX -> our backbone, to fine-tune
    python export.py --model work_space/save/model_final.pth --format torchscript --out model.pt

Any weights file `eval.py` reads (ours, TreB1eN's, arcface_torch's). The ONNX file records the channel order,
mean, std and input size in its metadata, so every command here loads it back the way the weights were
trained (TreB1eN's: BGR). Before the file appears, onnxruntime and PyTorch embed the same batch and must agree
(cosine >= 0.9999; 0.999 for a float16 export with --fp16); batches of any size work unless --no_dynamic_batch. `--format pth` maps an ONNX face model
(arcface_torch's IResNet exports, the insightface zoo's r50/r100, our exports) onto our matching backbone
(`inference/onnx_import.py`); `train.py --pretrained FILE.onnx` does the same on the fly.
"""
from __future__ import annotations

from pathlib import Path

from inference.loader import add_model_arguments, conventions_overrides, load_model
from utils import CliParser, UserError, run_cli

FORMATS = ("onnx", "torchscript", "pth")


def parse_args(argv=None):
    parser = CliParser(description=__doc__.split("\n\n")[0])
    add_model_arguments(parser)
    parser.add_argument("--out", type=Path, required=True, help="the exported file (.onnx, or .pth with --format pth)")
    parser.add_argument("--format", default="onnx", choices=FORMATS, help="export format")
    parser.add_argument("--no_dynamic_batch", dest="dynamic_batch", action="store_false",
                        help="fix the batch size to 1 (default: any batch size)")
    parser.add_argument("--fp16", action="store_true",
                        help="ONNX in float16 (weights, input and output; half the file size), checked against the "
                             "float32 model to cosine >= 0.999")
    args = parser.parse_args(argv)
    if args.fp16 and args.format != "onnx":
        parser.error(f"--fp16 applies to --format onnx, not {args.format}")
    return args


def onnx_to_pth(args) -> int:
    """An ONNX model's weights in our matching backbone, saved as model_*.pth + conventions JSON."""
    from inference.weights import load_backbone_weights, save_backbone_weights

    backbone, meta = load_backbone_weights(args.net, args.model)
    conventions = {k: meta[k] for k in ("channel_order", "mean", "std", "input_size")}
    conventions.update({k: v for k, v in conventions_overrides(args).items() if v is not None})
    save_backbone_weights(backbone, args.out, conventions)
    print(f"wrote {args.out}: {meta['backbone']} with the weights of {args.model} ({conventions['channel_order']}, "
          f"mean {conventions['mean']:.4f}, std {conventions['std']:.4f}); fine-tune with --pretrained {args.out}")
    return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.out.resolve() == args.model.resolve():
        raise UserError(f"--out {args.out} would overwrite --model")
    if args.format == "pth":
        if args.model.suffix.lower() != ".onnx":
            raise UserError(f"--format pth converts an .onnx model; {args.model} is PyTorch weights already")
        return onnx_to_pth(args)
    if args.model.suffix.lower() == ".onnx":
        raise UserError(f"{args.model}: already an ONNX model (--format pth converts it to PyTorch weights)")
    from inference.export import export_onnx, export_torchscript

    model = load_model(args.model, args.net, "cpu", conventions_overrides(args))
    print(model.describe())
    if args.format == "torchscript":
        cosine = export_torchscript(model.network, model.conventions, args.out)
        print(f"wrote {args.out} ({model.name}, TorchScript; conventions in its extra file input_conventions.json); "
              f"the reloaded module agrees to cosine {cosine:.6f}")
        return 0
    cosine = export_onnx(model.network, model.conventions, args.out, args.dynamic_batch, fp16=args.fp16)
    order = model.conventions["channel_order"]
    print(f"wrote {args.out} ({model.name}{', float16' if args.fp16 else ''}, {order} input recorded in its "
          f"metadata); onnxruntime and PyTorch agree to cosine {cosine:.6f}")
    return 0


if __name__ == "__main__":
    run_cli(main)
