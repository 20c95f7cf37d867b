"""The experiment's YAML, checked and turned into a plan: the data, one Config per (arm, seed), the breakdowns.

The file holds the arms (name -> head, head_options, use_height, pose_schedule), shared evaluation settings and
one or more profiles (`cpu`, `gpu`), each with its data, recipe (Config fields shared by every run), shared
margin (`s`, `m`: ArcFace's m is PGAML's m1, as in crossval.py), fixed step count, seeds and the arms it runs.
Every run trains for the same `steps`; its `epochs` are derived (ceil(steps / steps per epoch)) and
`max_steps` stops it there, so the LR schedule spans the whole epochs (the plan says where it ends).
A wrong key or value is one UserError naming it (`profiles.cpu.recipe.lr: ...`).
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from config import Config, read_settings
from evaluation.breakdowns import BreakdownSpec
from evaluation.strata import DEFAULT_YAW_EDGES
from utils import UserError

TOP_KEYS = ("description", "out", "arms", "evaluation", "profiles")
PROFILE_KEYS = ("description", "data", "recipe", "margin", "steps", "seeds", "arms", "evaluation", "jobs")
ARM_KEYS = ("head", "head_options", "use_height", "pose_schedule")
DATA_KEYS = ("path", "generate")
GENERATE_KEYS = ("classes", "per_class", "val_classes", "val_pairs", "seed", "workers")
AUTO_SCALE_CHECK_CLASSES = 1000
EVALUATION_KEYS = ("val_sets", "eval_every", "yaw_bins", "resolutions", "blur")
# Config fields the experiment sets itself, run by run: a recipe may not set them
SET_PER_RUN = ("data_path", "work_path", "head", "head_options", "use_height", "pose_schedule", "seed", "epochs",
               "max_steps", "resume", "val_sets", "eval_every", "val_breakdowns", "val_resolutions")
EVALUATION_DEFAULTS = {"val_sets": "all", "eval_every": 100, "yaw_bins": list(DEFAULT_YAW_EDGES),
                       "resolutions": [112, 56, 28, 20, 14], "blur": 0.0}
NO_SAVE = 10**9  # save_every: one checkpoint, at the end of the run
RUNS_FOLDER = "runs"


@dataclass(frozen=True)
class Arm:
    name: str
    head: str
    head_options: dict
    use_height: bool = True
    pose_schedule: float = 0.0

    def as_dict(self) -> dict:
        return {"head": self.head, "head_options": dict(self.head_options), "use_height": self.use_height,
                "pose_schedule": self.pose_schedule}

    def describe(self) -> str:
        options = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in self.head_options.items())
        text = f"{self.head} ({options})"
        if self.head == "pgaml":
            text += f", height term {'on' if self.use_height else 'off'}"
            text += f", pose schedule {self.pose_schedule:g} epochs" if self.pose_schedule else ", no pose schedule"
        return text


@dataclass
class Run:
    arm: Arm
    seed: int
    config: Config

    @property
    def folder(self) -> Path:
        return Path(self.config.work_path)

    @property
    def label(self) -> str:
        return f"{self.arm.name}/seed{self.seed}"


@dataclass
class Plan:
    source: str                   # the YAML file and profile, for messages
    profile: str
    out: Path
    data_path: Path
    generate: dict | None         # data/synthetic.py parameters, None: the folder must exist
    recipe: dict
    steps: int
    seeds: list[int]
    arms: list[Arm]
    spec: BreakdownSpec
    val_sets: str
    eval_every: int
    max_steps: int | None = None  # --max_steps: every run stops there (smoke tests); the schedule is unchanged
    jobs: int = 1                 # runs trained at a time, each in its own process (how, not what, it computes)

    @property
    def batch_size(self) -> int:
        return int(self.recipe.get("batch_size", Config.batch_size))

    @property
    def last_step(self) -> int:
        return min(self.steps, self.max_steps) if self.max_steps else self.steps

    def steps_per_epoch(self, num_images: int) -> int:
        return num_images // self.batch_size

    def epochs(self, num_images: int) -> int:
        per_epoch = self.steps_per_epoch(num_images)
        if per_epoch < 1:
            raise UserError(f"{self.source}: recipe.batch_size {self.batch_size} is larger than the "
                            f"{num_images} training images of {self.data_path}")
        return math.ceil(self.steps / per_epoch)

    def runs(self, num_images: int) -> list[Run]:
        """One Run per (arm, seed), arms in the plan's order, seeds inside."""
        epochs = self.epochs(num_images)
        return [Run(arm, seed, self.run_config(arm, seed, epochs)) for arm in self.arms for seed in self.seeds]

    def run_config(self, arm: Arm, seed: int, epochs: int) -> Config:
        values = {"save_every": NO_SAVE, "keep_checkpoints": 1, **self.recipe,
                  "data_path": str(self.data_path), "work_path": str(self.out / RUNS_FOLDER / arm.name / f"seed{seed}"),
                  "head": arm.head, "head_options": dict(arm.head_options), "use_height": arm.use_height,
                  "pose_schedule": arm.pose_schedule, "seed": seed, "epochs": epochs, "max_steps": self.last_step,
                  "val_sets": self.val_sets, "eval_every": self.eval_every}
        return Config.from_dict(values, source=f"{self.source}: arms.{arm.name}")


# ------------------------------------------------------------------------------------------ reading

def _mapping(value, where: str, allowed) -> dict:
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise UserError(f"{where}: expected a mapping")
    unknown = sorted(set(value) - set(allowed))
    if unknown:
        expected = "a train.py setting (a Config field)" if len(allowed) > 12 else ", ".join(allowed)
        name = f"{where} {unknown[0]}" if where.endswith(":") else f"{where}.{unknown[0]}"
        raise UserError(f"{name}: unknown key (expected {expected})")
    return value


def _int(value, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise UserError(f"{where}: expected a whole number >= {minimum}, got {value!r}")
    return value


def _number(value, where: str, minimum: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= minimum:
        raise UserError(f"{where}: expected a number >= {minimum:g}, got {value!r}")
    return float(value)


def read_arm(name: str, values, where: str, margin: dict) -> Arm:
    """An arm from its YAML mapping; the shared margin (s, m) is mapped onto the head's own options."""
    from crossval import head_options_for
    from heads import build_margin, list_heads

    values = _mapping(values, where, ARM_KEYS)
    head = values.get("head")
    if head not in list_heads():
        raise UserError(f"{where}.head: {head!r} is not a head (choose from {', '.join(list_heads())})")
    own = _mapping(values.get("head_options"), f"{where}.head_options", _margin_options(head))
    use_height = values.get("use_height", True)
    if not isinstance(use_height, bool):
        raise UserError(f"{where}.use_height: expected true or false, got {use_height!r}")
    pose_schedule = _number(values.get("pose_schedule", 0.0), f"{where}.pose_schedule")
    if pose_schedule and head != "pgaml":
        raise UserError(f"{where}.pose_schedule: applies to head pgaml only")
    options = {**head_options_for(head, margin), **own}
    try:  # a check of the options only: each run resolves s=auto from its own data's number of classes
        build_margin(head, num_classes=AUTO_SCALE_CHECK_CLASSES, **options)
    except (UserError, TypeError, ValueError) as err:
        raise UserError(f"{where}.head_options: {err}") from None
    return Arm(name, head, options, use_height, pose_schedule)


def _margin_options(head: str) -> list[str]:
    import inspect

    from heads import MARGINS
    return [p for p in inspect.signature(MARGINS[head].__init__).parameters if p != "self"]


def read_spec(values: dict, where: str) -> BreakdownSpec:
    try:
        return BreakdownSpec(by=("pose", "resolution"), yaw_edges=tuple(values["yaw_bins"]),
                             resolutions=tuple(values["resolutions"]), blur=values["blur"])
    except (UserError, TypeError) as err:
        message = str(err)
        for flag, key in (("--yaw_bins", "yaw_bins"), ("--resolutions", "resolutions"), ("--blur", "blur")):
            message = message.replace(flag, f"{where}.{key}")
        raise UserError(message if where in message else f"{where}: {message}") from None


def read_recipe(values, where: str) -> dict:
    values = _mapping(values, where, [f.name for f in Config.__dataclass_fields__.values()])
    taken = [k for k in values if k in SET_PER_RUN]
    if taken:
        raise UserError(f"{where}.{taken[0]}: set by the experiment for each run (arms, seeds, steps, data, "
                        "evaluation), not by the recipe")
    try:
        Config.from_dict(values, source=where)
    except UserError as err:
        raise UserError(f"{where}: {str(err).removeprefix(where + ': ')}") from None
    return dict(values)


def read_data(values, where: str) -> tuple[Path, dict | None]:
    values = _mapping(values, where, DATA_KEYS)
    if not isinstance(values.get("path"), str) or not values["path"]:
        raise UserError(f"{where}.path: the prepared emore-format folder (generated there when missing)")
    generate = values.get("generate")
    if generate is not None:
        generate = _mapping(generate, f"{where}.generate", GENERATE_KEYS)
        missing = [k for k in ("classes", "per_class") if k not in generate]
        if missing:
            flag = missing[0].replace("_", "-")
            raise UserError(f"{where}.generate.{missing[0]}: missing (data/synthetic.py --{flag})")
        minimum = {"classes": 2, "per_class": 1, "val_classes": 2, "val_pairs": 2, "seed": 0, "workers": 1}
        for key, value in generate.items():
            _int(value, f"{where}.generate.{key}", minimum[key])
    return Path(values["path"]), generate


def load_plan(path: str | Path, profile: str, out: str | Path | None = None, only: list[str] | None = None,
              seeds: list[int] | None = None, max_steps: int | None = None, jobs: int | None = None,
              steps: int | None = None, eval_every: int | None = None) -> Plan:
    """The plan of `profile` in the YAML at `path`, with the command line's overrides."""
    source = str(path)
    settings = read_settings(path)
    _mapping(settings, f"{source}:", TOP_KEYS)
    profiles = _mapping(settings.get("profiles"), f"{source}: profiles", settings.get("profiles") or {})
    if profile not in profiles:
        raise UserError(f"{source}: profiles.{profile}: no such profile (have: {', '.join(profiles) or 'none'})")
    where = f"{source}: profiles.{profile}"
    chosen = _mapping(profiles[profile], where, PROFILE_KEYS)
    for key in ("data", "recipe", "steps", "seeds"):
        if key not in chosen:
            raise UserError(f"{where}.{key}: missing")
    margin = _mapping(chosen.get("margin"), f"{where}.margin", ("s", "m", "m1"))
    defined = _mapping(settings.get("arms"), f"{source}: arms", settings.get("arms") or {})
    if not defined:
        raise UserError(f"{source}: arms: define at least two arms (name: {{head, head_options, ...}})")
    wanted = only if only else chosen.get("arms", list(defined))
    if not isinstance(wanted, list) or not wanted:
        raise UserError(f"{where}.arms: expected a list of arm names")
    unknown = [name for name in wanted if name not in defined]
    if unknown:
        flag = "--only" if only else f"{where}.arms"
        raise UserError(f"{flag}: {unknown[0]} is not an arm of {source} (arms: {', '.join(defined)})")
    arms = [read_arm(name, defined[name], f"{source}: arms.{name}", margin) for name in dict.fromkeys(wanted)]

    seeds = seeds if seeds is not None else chosen["seeds"]
    if (not isinstance(seeds, list) or not seeds or len(set(seeds)) != len(seeds)
            or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds)):
        raise UserError(f"{where}.seeds: expected a list of distinct whole numbers >= 0, got {seeds!r}")
    steps = _int(steps, "--steps", 1) if steps is not None else _int(chosen["steps"], f"{where}.steps", 1)
    if max_steps is not None:
        _int(max_steps, "--max_steps", 1)
    jobs = _int(jobs, "--jobs", 1) if jobs is not None else _int(chosen.get("jobs", 1), f"{where}.jobs", 1)
    shared = _mapping(settings.get("evaluation"), f"{source}: evaluation", EVALUATION_KEYS)
    evaluation = {**EVALUATION_DEFAULTS, **shared, **_mapping(chosen.get("evaluation"), f"{where}.evaluation",
                                                              EVALUATION_KEYS)}
    eval_every = (_int(eval_every, "--eval_every", 1) if eval_every is not None
                  else _int(evaluation["eval_every"], f"{where}.evaluation.eval_every", 1))
    if not isinstance(evaluation["val_sets"], str):
        raise UserError(f"{where}.evaluation.val_sets: 'all' or a comma-separated list of val set names")
    data_path, generate = read_data(chosen["data"], f"{where}.data")
    out_dir = Path(out) if out is not None else Path(settings.get("out") or "work_space/experiments") / profile
    return Plan(source=source, profile=profile, out=out_dir, data_path=data_path, generate=generate,
                recipe=read_recipe(chosen["recipe"], f"{where}.recipe"), steps=steps, seeds=list(seeds), arms=arms,
                spec=read_spec(evaluation, f"{where}.evaluation"), val_sets=evaluation["val_sets"],
                eval_every=eval_every, max_steps=max_steps, jobs=jobs)


# ------------------------------------------------------------------------------------------ data

def data_ready(folder: Path) -> bool:
    """A prepared emore folder: train.rec with meta.json (data/prepare_data.py's scan) beside it."""
    return (folder / "train.rec").is_file() and (folder / "meta.json").is_file()


def check_generated(folder: Path, generate: dict, source: str) -> None:
    """A synthetic folder made with other parameters than the YAML's, or by another version of the generator, is
    refused (its numbers would not match)."""
    meta_path = folder / "meta_synthetic.json"
    if not meta_path.is_file():
        return
    meta = json.loads(meta_path.read_text())
    from data.synthetic import GENERATOR_VERSION
    if meta.get("version") != GENERATOR_VERSION:
        raise UserError(f"{source}: {folder} was made by version {meta.get('version')} of data/synthetic.py, this "
                        f"one is version {GENERATOR_VERSION} ({meta_path}); remove the folder to generate it anew")
    names = {"classes": "num_classes", "per_class": "per_class", "val_classes": "val_classes",
             "val_pairs": "val_pairs", "seed": "seed"}
    for key, meta_key in names.items():
        if key in generate and meta.get(meta_key) != generate[key]:
            raise UserError(f"{source}: data.generate.{key} is {generate[key]} but {folder} was generated with "
                            f"{meta.get(meta_key)} ({meta_path}); remove the folder or change data.path")


def ensure_data(plan: Plan) -> dict:
    """The prepared data folder's meta.json, generating (data/synthetic.py) and preparing it first if missing."""
    folder = plan.data_path
    if plan.generate is not None:
        check_generated(folder, plan.generate, plan.source)
    if not data_ready(folder):
        if plan.generate is None:
            raise UserError(f"{plan.source}: data.path {folder}: no prepared train.rec + meta.json there, and no "
                            "data.generate block to make it")
        from data.prepare_data import main as prepare
        from data.synthetic import generate

        options = {k: v for k, v in plan.generate.items() if k not in ("classes", "per_class")}
        if not (folder / "meta_synthetic.json").is_file():  # written last: a complete generation
            generate(folder, plan.generate["classes"], plan.generate["per_class"], **options)
        workers = str(plan.generate.get("workers", 1))
        if prepare(["--source", str(folder), "--workers", workers]) != 0:
            raise UserError(f"{folder}: data/prepare_data.py failed")
    return json.loads((folder / "meta.json").read_text())


def planned_images(plan: Plan) -> int | None:
    """Training images: from the prepared folder, else from the generation parameters (dry run)."""
    if data_ready(plan.data_path):
        return int(json.loads((plan.data_path / "meta.json").read_text())["num_images"])
    if plan.generate is not None:
        return plan.generate["classes"] * plan.generate["per_class"]
    return None


# ------------------------------------------------------------------------------------------ comparisons

@dataclass(frozen=True)
class Comparison:
    kind: str        # 'pgaml vs arcface', 'height term', 'pose schedule'
    baseline: str    # arm A
    treatment: str   # arm B: the difference is B - A

    @property
    def label(self) -> str:
        return f"{self.treatment} vs {self.baseline}"


def comparisons(arms: list[Arm]) -> list[Comparison]:
    """Each PGAML arm against each ArcFace arm; height on vs off and schedule vs none between PGAML arms that
    differ in that alone."""
    out = []
    arcface = [a for a in arms if a.head == "arcface"]
    pgaml = [a for a in arms if a.head == "pgaml"]
    for treatment in pgaml:
        out += [Comparison("pgaml vs arcface", base.name, treatment.name) for base in arcface]
    for a in pgaml:
        for b in pgaml:
            same_options = a.head_options == b.head_options
            if same_options and a.pose_schedule == b.pose_schedule and not a.use_height and b.use_height:
                out.append(Comparison("height term", a.name, b.name))
            if same_options and a.use_height == b.use_height and a.pose_schedule == 0 and b.pose_schedule > 0:
                out.append(Comparison("pose schedule", a.name, b.name))
    return out
