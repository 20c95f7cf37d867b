"""Train a face-recognition model: `python train.py -n ir_se -b 200` (TreB1eN's IR-SE50 + ArcFace on emore).

`--head pgaml` (the Pose-Guided Angular Margin Loss) also needs the yaw of every training image:
`pose.npy` beside train.rec (data/synthetic.py writes one for its data; try `make demo`).

TreB1eN's short flags (-n/-net, -b, -e, -lr, -w, -d, -depth) keep their meaning; every other flag has a long
name equal to its `config.Config` field. Precedence: Config defaults < `--config FILE` < flags given.
Distributed: `torchrun --nproc_per_node=N train.py ...` (NCCL on GPUs, gloo on CPU).
The PGAML authors' `train.py -b 16 -e 20 -d droneface -p True -fold 5` (any `-d droneface` or `-fold K`) is a
cross-validation on a face folder: crossval.py runs it (README, "Fine-tune on your own data").
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from pathlib import Path

from config import AMP_MODES, FUSED_SGD_MODES, NET_MODES, SCHEDULES, AugmentConfig, Config, data_path_for, read_settings
from utils import CliParser, UserError, run_cli, setup_logging

DEFAULTS = Config()  # the defaults shown in the help texts
HEAD_FLAGS = ("s", "m", "m1", "m2", "m3")
AUGMENT_FLAGS = ("flip_prob", "downscale_prob", "blur_prob", "jpeg_prob")


def build_parser() -> argparse.ArgumentParser:
    from heads import list_heads  # the registry: a new head appears in --help without editing this file
    from inference.loader import add_flip_argument

    parser = CliParser(prog="train.py", description=__doc__, allow_abbrev=False, argument_default=argparse.SUPPRESS)

    group = parser.add_argument_group("data and outputs")

    def flag(*names, help, **kw):
        field = names[-1].lstrip("-")
        default = getattr(DEFAULTS, field, None)
        suffix = f" (default: {default})" if default not in (None, "", []) and "action" not in kw else ""
        group.add_argument(*names, help=help + suffix, **kw)

    flag("--data_path", help="RecordIO folder (train.rec, train.idx, prepared val sets) or image folder")
    group.add_argument("-d", "--data_mode", help="TreB1eN's data set name: emore, ms1m or vgg "
                        "(= --data_path data/faces_<name>); --data_path wins when both are given")
    flag("--work_path", help="outputs: config.json, save/ (checkpoints, model_*.pth), log/ (TensorBoard), history/")
    flag("-w", "--num_workers", type=int, help="data loading processes per training process (default: 1 on a CPU "
                                                "device, half the cores up to 8 on a GPU)")
    flag("--num_threads", type=int, help="torch threads per training process (default: the cores other jobs "
                                         "leave free on a CPU device; all cores with --deterministic)")
    for name in AUGMENT_FLAGS:
        group.add_argument(f"--{name}", type=float, help=f"augmentation probability "
                            f"(default: {getattr(AugmentConfig, name)}; see README)")

    group = parser.add_argument_group("model and head")
    flag("-n", "-net", "--net_mode", choices=NET_MODES, help="backbone family")
    flag("-depth", "--net_depth", "--depth", type=int, choices=(50, 100, 152), help="IR / IR-SE depth")
    flag("--embedding_size", type=int, help="embedding dimension")
    flag("--drop_ratio", type=float, help="dropout before the embedding layer (default: 0.6 IR/IR-SE, 0 IResNet)")
    flag("--pretrained", help="backbone weights to start from: ours, TreB1eN's, arcface_torch's or an .onnx export "
                              "(fine-tuning; the head starts fresh for the new identities)")
    flag("--freeze_backbone_epochs", type=float, help="fine-tuning: epochs during which only the class centres train")
    flag("--backbone_lr_mult", type=float, help="fine-tuning: the backbone's LR as a multiple of the centres' LR")
    flag("--freeze_bn", action="store_true", help="fine-tuning: keep the backbone's BatchNorm statistics as loaded")
    flag("--head", choices=list_heads(), help="margin head")
    group.add_argument("-p", "--with_pose", type=_true_or_false, metavar="true|false",
                       help="the PGAML authors' flag: true = --head pgaml, false = --head arcface")
    # --scale/--margin rather than --s/--m: torchrun's argparse rejects any flag that abbreviates one of its own
    group.add_argument("--scale", dest="s", type=_scale, metavar="S|auto",
                       help="head scale s (default: the head's own, 64 for most); auto: fixed AdaCos' "
                            "sqrt(2) * ln(C - 1) for C classes (7.49 at 200 classes, 16.06 at 85742)")
    group.add_argument("--margin", dest="m", type=float, help="head margin m (arcface 0.5, cosface 0.35, ...)")
    for name in ("m1", "m2", "m3"):
        group.add_argument(f"--{name}", type=float, help=f"head option {name} (pgaml: m1=0.5, m2=0.2; "
                           "combined: m1, m2, m3 as arcface_torch)")
    group.add_argument("--head_option", action="append", metavar="KEY=VALUE",
                        help="any other keyword argument of the head, e.g. t_alpha=0.01 (repeatable)")
    flag("--pose_schedule", type=float, help="pgaml: epochs over which the pose term m2 ramps in from 0")
    group.add_argument("--no_height", dest="use_height", action="store_false",
                       help="pgaml: margin from yaw alone, even where the data has height.npy")
    flag("--sample_rate", type=float, help="Partial FC: fraction of class centres used per step")

    group = parser.add_argument_group("optimisation")
    flag("-b", "--batch_size", type=int, help="images per process per step")
    flag("-e", "--epochs", type=int, help="epochs (the LR schedule spans them)")
    flag("-lr", "--lr", type=float, help="peak learning rate")
    flag("--momentum", type=float, help="SGD momentum")
    flag("--weight_decay", type=float, help="weight decay (none on BatchNorm and biases)")
    flag("--schedule", choices=SCHEDULES, help="LR schedule: step (x lr_gamma at each milestone), cosine, poly")
    flag("--milestones", type=_int_list, help="epochs of the step schedule's LR drops, comma-separated")
    flag("--lr_gamma", type=float, help="LR factor at each milestone")
    flag("--warmup_epochs", type=float, help="linear LR warm-up from 0, in epochs")
    flag("--poly_power", type=float, help="power of the poly schedule")
    flag("--amp", choices=AMP_MODES, help="mixed precision: fp16 (with a gradient scaler) or bf16")
    flag("--channels_last", action="store_true", help="channels-last memory format (faster on tensor cores)")
    flag("--compile", action="store_true", help="torch.compile the backbone")
    flag("--fused_sgd", choices=FUSED_SGD_MODES, help="torch's fused SGD kernel for the dense parameters "
         "(auto: wherever torch has one; off: torch's default SGD)")
    flag("--margin_warmup_steps", type=int, help="the margin ramps linearly from 0 to its value over the first N "
         "steps (0: off; not sphereface, whose lambda schedule does it)")
    flag("--clip_grad_norm", type=float, help="clip the backbone's gradient norm to this (0: off; the class centres "
         "are left out); train/grad_norm logs the norm before clipping")
    flag("--lr_reference_batch", type=int, help="linear scaling rule: peak LR = --lr x global batch / N (0: off)")

    group = parser.add_argument_group("run control")
    flag("--max_steps", type=int, help="stop after this many steps (the LR schedule still spans --epochs)")
    flag("--log_every", type=int, help="steps between logged scalars (0: ~100 per epoch)")
    flag("--eval_every", type=int, help="steps between evaluations (0: 10 per epoch)")
    flag("--save_every", type=int, help="steps between checkpoints (0: 5 per epoch)")
    flag("--keep_checkpoints", type=int, help="newest checkpoints kept")
    flag("--val_sets", help="val sets to evaluate: comma-separated, 'all' or 'none'")
    flag("--val_batch_size", type=int, help="batch size of evaluation")
    add_flip_argument(group, prefix="evaluation: ", dest="val_flip", aliases=("--no_val_flip",))
    flag("--best_metric", help="what model_best.pth maximises: accuracy (mean over val sets) or <set>/<scalar>")
    flag("--val_breakdowns", help="evaluation also by pose bins and/or resolution: 'pose', 'resolution' or both, "
         "comma-separated (val/<set>/pose/<bins>/..., val/<set>/res<N>/...; each resolution below full size "
         "embeds the val sets once more)")
    flag("--val_resolutions", type=_int_list, help="face sizes in pixels of --val_breakdowns resolution")
    flag("--max_nonfinite", type=int, help="consecutive non-finite losses that stop the run")
    flag("--resume", help="'auto' (newest valid checkpoint in <work_path>/save) or a checkpoint file")
    flag("--device", help="auto, cpu, cuda or cuda:N")
    flag("--seed", type=int, help="seed of initialisation, data order and augmentation")
    flag("--deterministic", action="store_true", help="deterministic algorithms (exactly repeatable, slower)")
    group.add_argument("--config", help="a config.json (as every run saves) or YAML file with Config's keys")
    group.add_argument("--find_lr", type=int, nargs="?", const=100, metavar="STEPS",
                        help="run the LR range test for STEPS steps (default 100), plot history/lr_finder.png, exit")
    group.add_argument("--log_level", default="INFO", choices=("DEBUG", "INFO", "WARNING"), help="logging level")
    return parser


def config_from_args(args: argparse.Namespace) -> Config:
    given = dict(vars(args))
    for name in ("config", "find_lr", "log_level"):
        given.pop(name, None)
    values = read_settings(args.config) if getattr(args, "config", None) else {}
    if "data_mode" in given:
        mode_path = data_path_for(given.pop("data_mode"))
        given.setdefault("data_path", mode_path)
    if "with_pose" in given:
        head = "pgaml" if given.pop("with_pose") else "arcface"
        if given.get("head", head) != head:
            raise UserError(f"-p/--with_pose means --head {head}, but --head {given['head']} is given")
        given["head"] = head
    if "net_depth" in given:
        given["depth"] = given.pop("net_depth")
    head_options = dict(values.get("head_options", {}))
    head_options.update({name: given.pop(name) for name in HEAD_FLAGS if name in given})
    for item in given.pop("head_option", []):
        key, sep, text = item.partition("=")
        if not sep:
            raise UserError(f"--head_option {item}: expected KEY=VALUE")
        head_options[key.strip()] = _number(text)
    augment = dict(values.get("augment", {}))
    augment.update({name: given.pop(name) for name in AUGMENT_FLAGS if name in given})
    return Config.from_dict({**values, **given, "head_options": head_options, "augment": augment},
                            source=getattr(args, "config", None) or "flags")


def runs_crossval(argv: list[str]) -> bool:
    """The PGAML authors' `train.py -d droneface ... -fold K` is a cross-validation: crossval.py runs it."""
    for index, arg in enumerate(argv):
        name, _, value = arg.partition("=")
        if name in ("-fold", "--num_folds") or (name in ("-d", "--data_mode") and
                                                (value or (argv[index + 1:] or [""])[0]) == "droneface"):
            return True
    return False


def main() -> int:
    if runs_crossval(sys.argv[1:]):  # hand the command line over to crossval.py (which builds on this parser)
        import runpy
        runpy.run_path(str(Path(__file__).with_name("crossval.py")), run_name="__main__")
        return 0
    args = build_parser().parse_args()
    # torchrun: the other ranks report warnings only (rank 0 logs the run)
    main_process = os.environ.get("RANK", "0") == "0"
    setup_logging(getattr(logging, args.log_level) if main_process else logging.WARNING)
    config = config_from_args(args)
    from training import distributed
    from learner import Learner  # torch and the model zoo load after the flags are checked
    try:
        learner = Learner(config)
        if getattr(args, "find_lr", None):
            log_lrs, losses = learner.find_lr(num=args.find_lr)
            best = log_lrs[min(range(len(losses)), key=losses.__getitem__)] if losses else float("nan")
            print(f"LR range test: {len(losses)} steps; lowest smoothed loss at lr {10 ** best:.2e}; "
                  f"plot: {learner.history_dir / 'lr_finder.png'}")
        else:
            learner.train()
    finally:
        distributed.shutdown()
    return 0


def _int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, not {text!r}") from None


def _scale(text: str) -> float | str:
    """--scale: a number, or auto (resolved from the number of classes when the data is open)."""
    if text.strip().lower() == "auto":
        return "auto"
    try:
        return float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or auto, not {text!r}") from None


def _true_or_false(text: str) -> bool:
    """A real boolean flag (the authors' `type=bool` made "False" true)."""
    value = text.strip().lower()
    if value in ("true", "1", "yes"):
        return True
    if value in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")


def _number(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


if __name__ == "__main__":
    run_cli(main)
