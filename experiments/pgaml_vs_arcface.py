"""Does PGAML help? ArcFace against PGAML (m2 0.2 / 0.4, with and without the height term and the pose schedule),
every arm trained with the same seeds for the same number of steps on the same data, evaluated by pose bin and
resolution, and compared paired over seeds.

    python experiments/pgaml_vs_arcface.py --config experiments/pgaml_vs_arcface.yaml --profile cpu --dry-run
    python experiments/pgaml_vs_arcface.py --config experiments/pgaml_vs_arcface.yaml --profile cpu
    python experiments/pgaml_vs_arcface.py --profile gpu                   (on a GPU machine)
    python experiments/pgaml_vs_arcface.py --only arcface,pgaml_m2_0.2 --seeds 0,1 --max_steps 20   (smoke test)

The YAML names the data (generated with data/synthetic.py and prepared with data/prepare_data.py when the folder
is missing), the recipe, the steps, the seeds and the arms. Each (arm, seed) trains in <out>/runs/<arm>/seed<k>/
(checkpoint, TensorBoard log); a run whose results.json is there is not trained again when the command is rerun,
an unfinished one starts again. The report (report.md, results.json, PNGs) goes to --report_dir (default --out).
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as `python experiments/pgaml_vs_arcface.py`: make the repository root importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from utils import CliParser, UserError, run_cli, setup_logging  # noqa: E402

log = logging.getLogger("experiments")
DEFAULT_CONFIG = "experiments/pgaml_vs_arcface.yaml"


def parse_args(argv=None):
    parser = CliParser(description=__doc__)
    parser.add_argument("--config", default=DEFAULT_CONFIG, help="the experiment's YAML (arms, profiles)")
    parser.add_argument("--profile", default="cpu", help="the YAML's profile to run: cpu (2 cores, under an hour) "
                                                         "or gpu (one H100/H200)")
    parser.add_argument("--out", type=Path, default=None,
                        help="folder of the runs and the report (default: the YAML's out/<profile>)")
    parser.add_argument("--report_dir", type=Path, default=None,
                        help="where report.md, results.json and the PNGs go (default: --out); e.g. a folder to commit")
    parser.add_argument("--only", default=None, metavar="ARM[,ARM]",
                        help="run and report these arms only (default: the profile's arms)")
    parser.add_argument("--seeds", default=None, metavar="S[,S]", help="these seeds instead of the profile's")
    parser.add_argument("--steps", type=int, default=None,
                        help="every run trains this many steps instead of the profile's (its LR schedule spans them; "
                             "the report says so): perf.gpu_session sizes a GPU run to its time this way")
    parser.add_argument("--eval_every", type=int, default=None,
                        help="steps between the learning curves' evaluations instead of the profile's")
    parser.add_argument("--max_steps", type=int, default=None,
                        help="stop every run at this step, the schedule unchanged (smoke tests; the report says so)")
    parser.add_argument("--jobs", type=int, default=None,
                        help="runs trained at a time, each in its own process with the recipe's num_threads, its "
                             "output in <out>/runs/<arm>/seed<k>.log (default: the profile's jobs, else 1)")
    parser.add_argument("--dry-run", "--dry_run", dest="dry_run", action="store_true",
                        help="print the plan (arms x seeds, steps, images) and what is already done; train nothing")
    return parser.parse_args(argv)


def _names(text: str | None, flag: str) -> list[str] | None:
    if text is None:
        return None
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise UserError(f"{flag} {text!r}: expected a comma-separated list")
    return names


def _seeds(text: str | None) -> list[int] | None:
    names = _names(text, "--seeds")
    if names is None:
        return None
    try:
        return [int(n) for n in names]
    except ValueError:
        raise UserError(f"--seeds {text}: expected whole numbers, e.g. 0,1,2") from None


def describe_plan(plan, runs, finished: set[str], num_images: int) -> str:
    """The dry run's text: what would be trained, for how long, on what."""
    from experiments.plan import comparisons
    from experiments.seeded_report import _lr_at_end

    per_epoch, epochs = plan.steps_per_epoch(num_images), plan.epochs(num_images)
    last = plan.last_step
    images = last * plan.batch_size
    evaluations = last // plan.eval_every + (last % plan.eval_every != 0)  # every eval_every steps, and the last
    todo = [r for r in runs if r.label not in finished]
    lr_end = _lr_at_end(plan, num_images, plan.last_step)
    lines = [f"plan: {plan.source}, profile {plan.profile} -> {plan.out}",
             f"data: {plan.data_path} ({num_images} training images"
             + ("" if (plan.data_path / "meta.json").is_file() else ", generated from data.generate first") + ")",
             "recipe: " + ", ".join(f"{k} {v}" for k, v in plan.recipe.items()),
             f"steps: {last} per run" + (f" (--max_steps; the experiment's steps: {plan.steps})" if last != plan.steps
                                         else "")
             + f" = {epochs} epoch(s) of {per_epoch} steps for the schedule; LR at the last step {lr_end:.3g}",
             f"arms x seeds: {len(plan.arms)} x {len(plan.seeds)} = {len(runs)} runs ({len(runs) - len(todo)} "
             f"finished, {len(todo)} to train), seeds {plan.seeds}, "
             + (f"{plan.jobs} at a time, each in its own process" if plan.jobs > 1 else "one at a time")]
    lines += [f"  {arm.name}: {arm.describe()}" for arm in plan.arms]
    lines += [f"images: {last} steps x batch {plan.batch_size} = {images} per run, {images * len(runs)} in all, "
              f"{images * len(todo)} still to train",
              f"evaluation: val sets {plan.val_sets}, {evaluations} evaluations per run (every {plan.eval_every} "
              f"steps and the last), then {len(plan.spec.resolutions)} resolution levels "
              f"{list(plan.spec.resolutions)} and the pose bins {list(plan.spec.yaw_edges)} on the final model",
              "comparisons: " + ("; ".join(c.label for c in comparisons(plan.arms)) or "none")]
    return "\n".join(lines)


def _warn(plan, num_images: int) -> None:
    if len(plan.seeds) < 3:
        log.warning("%d seed(s): fewer than 3, the paired tests are weaker still", len(plan.seeds))
    epochs = plan.epochs(num_images)
    for arm in plan.arms:
        if arm.pose_schedule > epochs:
            log.warning("arms.%s.pose_schedule %g epochs is longer than the run (%d epochs): the pose term never "
                        "reaches m2", arm.name, arm.pose_schedule, epochs)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    setup_logging(logging.INFO)
    from experiments.plan import comparisons, ensure_data, load_plan, planned_images
    from experiments.runs import load_finished, train_runs
    from experiments.seeded_report import write_report

    plan = load_plan(args.config, args.profile, args.out, _names(args.only, "--only"), _seeds(args.seeds),
                     args.max_steps, args.jobs, args.steps, args.eval_every)
    if args.dry_run:
        num_images = planned_images(plan)
        if num_images is None:
            raise UserError(f"{plan.source}: data.path {plan.data_path} is not prepared and there is no "
                            "data.generate block")
        runs = plan.runs(num_images)
        done = {r.label for r in runs if load_finished(r) is not None}
        print(describe_plan(plan, runs, done, num_images))
        return 0
    meta = ensure_data(plan)
    _warn(plan, meta["num_images"])
    runs = plan.runs(meta["num_images"])
    outcomes = {run.label: load_finished(run) for run in runs}  # every settings mismatch fails before training
    todo = [run for run in runs if outcomes[run.label] is None]
    for run in runs:
        if outcomes[run.label] is not None:
            log.info("%s: finished before (%s), not trained again", run.label, run.folder / "results.json")
    for index, (run, outcome) in enumerate(train_runs(todo, plan.spec, plan.jobs), 1):
        outcomes[run.label] = outcome
        accuracies = ", ".join(f"{name} {entry['accuracy']:.3f}" for name, entry in outcome.sets.items())
        log.info("[%d/%d] %s: finished in %.0f s: %s", index, len(todo), run.label, outcome.seconds, accuracies)
    by_arm = {arm.name: {} for arm in plan.arms}
    for run in runs:
        by_arm[run.arm.name][run.seed] = outcomes[run.label]
    command = "python experiments/pgaml_vs_arcface.py " + " ".join(argv)
    written = write_report(plan, meta, by_arm, comparisons(plan.arms), args.report_dir or plan.out, command.strip())
    print(f"report: {written[0]} (results.json and {len(written) - 2} PNGs beside it)")
    return 0


if __name__ == "__main__":
    run_cli(main)
