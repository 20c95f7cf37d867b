"""experiments/pgaml_vs_arcface.py: a tiny seeded experiment end to end, reruns that skip finished runs, the
paired statistics against hand-computed values, identical starts across arms, and bad configs."""
from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from experiments import pgaml_vs_arcface, runs
from experiments.plan import Comparison, comparisons, load_plan
from experiments.runs import RunOutcome
from experiments.seeded_report import compare_over_seeds, seed_summary
from tests.helpers import run_command, tiny_experiment_config as tiny_config
from utils import UserError

def test_a_tiny_experiment_writes_its_report_and_reruns_skip_finished_runs(tmp_path, monkeypatch, capsys):
    data = {"path": str(tmp_path / "data"),
            "generate": {"classes": 10, "per_class": 8, "val_classes": 8, "val_pairs": 20, "seed": 3}}
    config = tiny_config(tmp_path, data)
    argv = ["--config", config, "--profile", "tiny"]
    assert pgaml_vs_arcface.main(argv) == 0
    out = tmp_path / "out" / "tiny"
    assert (tmp_path / "data" / "cfp_fp" / "pose.npy").is_file()  # generated and prepared from the YAML
    report = (out / "report.md").read_text()
    for name in ("pose_cfp_fp", "resolution_cfp_fp", "curves_cfp_fp", "stability"):
        assert (out / f"{name}.png").stat().st_size > 1000
        assert f"({name}.png)" in report
    assert "Wilcoxon signed-rank test cannot reach p < 0.05" in report and "smallest two-sided p-value with 2" in report
    assert "| pgaml (B) vs arcface (A) | cfp_fp | accuracy |" in report
    results = json.loads((out / "results.json").read_text())
    assert results["epochs"] == 1 and results["steps_per_epoch"] == 10 and results["seeds"] == [0, 1]
    assert set(results["runs"]) == {"arcface", "pgaml"} and set(results["runs"]["pgaml"]) == {"0", "1"}
    run = results["runs"]["arcface"]["0"]
    assert run["steps"] == 4 and [step for step, _ in run["curves"]["cfp_fp"]] == [2, 4]
    assert [step for step, _ in run["curves"]["train/accuracy"]] == [2, 4]  # the log steps' diagnostics
    assert len(run["curves"]["train/loss"]) == 4 and "## Training stability" in report
    assert [row["level"] for row in run["sets"]["cfp_fp"]["resolution"]] == ["res112", "res28"]
    assert {row["level"] for row in run["sets"]["cfp_fp"]["pose"]} >= {"frontal-profile"}
    summary = results["summary"]["arcface"]["cfp_fp"]["accuracy"]
    assert summary["n"] == 2 and summary["mean"] == pytest.approx(np.mean(summary["values"]))
    overall = [r for r in results["comparisons"] if r["metric"] == "accuracy"]
    assert len(overall) == 1 and overall[0]["seeds"] == [0, 1] and overall[0]["mcnemar_pooled"]["pairs"] == 40
    pgaml = [results["runs"]["pgaml"][s]["sets"]["cfp_fp"]["accuracy"] for s in ("0", "1")]
    arcface = [results["runs"]["arcface"][s]["sets"]["cfp_fp"]["accuracy"] for s in ("0", "1")]
    assert overall[0]["per_seed"] == pytest.approx(np.subtract(pgaml, arcface))
    assert {r["metric"] for r in results["comparisons"]} >= {"pose/frontal-profile", "res28"}

    # two runs at a time, each in its own process, compute the same numbers and keep each run's output in a log
    parallel = tmp_path / "parallel"
    assert pgaml_vs_arcface.main(argv + ["--jobs", "2", "--out", str(parallel)]) == 0
    twin = json.loads((parallel / "results.json").read_text())
    for arm, seeds in results["runs"].items():
        for seed, outcome in seeds.items():
            assert twin["runs"][arm][seed]["sets"] == outcome["sets"]
            assert twin["runs"][arm][seed]["curves"] == outcome["curves"]
    assert twin["comparisons"] == results["comparisons"]
    assert "step 4 cfp_fp: accuracy" in (parallel / "runs" / "pgaml" / "seed1.log").read_text()

    # rerun: nothing is trained again; an unfinished run (no results.json) is trained again from scratch
    trained = []
    real = runs.train_and_evaluate
    monkeypatch.setattr(runs, "train_and_evaluate", lambda run, spec: trained.append(run.label) or real(run, spec))
    older = out / "runs" / "arcface" / "seed0" / "results.json"  # written before the train curves were kept
    document = json.loads(older.read_text())                      # and before --fused_sgd existed
    assert document["config"].pop("fused_sgd") == "auto"
    older.write_text(json.dumps({**document, "curves": {"cfp_fp": document["curves"]["cfp_fp"]}}))
    assert pgaml_vs_arcface.main(argv) == 0
    assert trained == []
    reread = json.loads((out / "results.json").read_text())  # the same report from the runs' files alone
    assert reread["comparisons"] == results["comparisons"] and reread["summary"] == results["summary"]
    assert reread["runs"]["arcface"]["0"]["curves"] == run["curves"]  # read back from the run's log
    (out / "runs" / "pgaml" / "seed1" / "results.json").unlink()
    assert pgaml_vs_arcface.main(argv) == 0
    assert trained == ["pgaml/seed1"]
    # a finished run with other settings is refused, not mixed in
    with pytest.raises(UserError, match="finished with other settings .*max_steps"):
        pgaml_vs_arcface.main(argv + ["--max_steps", "3"])


def test_the_same_seed_gives_every_arm_the_same_start_and_batches(train_data, tmp_path):
    import torch

    from learner import Learner
    plan = load_plan(tiny_config(tmp_path, {"path": str(train_data)}, arms=["arcface", "pgaml", "pgaml_no_height"]),
                     "tiny")
    learners = {(r.arm.name, r.seed): Learner(r.config) for r in plan.runs(80)}
    reference = learners[("arcface", 0)]
    for arm in ("pgaml", "pgaml_no_height"):
        other = learners[(arm, 0)]
        state, expected = other.backbone.state_dict(), reference.backbone.state_dict()
        assert all(torch.equal(state[k], v) for k, v in expected.items())
        assert torch.equal(other.head.kernel, reference.head.kernel)
        assert np.array_equal(other.sampler.permutation(0), reference.sampler.permutation(0))
    seed1 = learners[("arcface", 1)]
    assert not torch.equal(seed1.head.kernel, reference.head.kernel)
    assert not np.array_equal(seed1.sampler.permutation(0), reference.sampler.permutation(0))
    assert learners[("pgaml_no_height", 0)].side_names == ("yaw",) and reference.config.max_steps == 4


def _outcome(arm: str, seed: int, accuracy: float, correct: list[int]) -> RunOutcome:
    return RunOutcome(arm, seed, 4, 1.0, {"lfw": {"pairs": len(correct), "accuracy": accuracy}}, {},
                      {"lfw/accuracy": np.array(correct, dtype=bool)})


def test_paired_statistics_match_hand_computed_values():
    # made-up accuracies of 3 seeds: differences B - A = +0.04, +0.01, +0.03
    baseline = {s: _outcome("arcface", s, a, c) for s, a, c in
                [(0, 0.70, [1, 1, 0, 0, 1]), (1, 0.72, [1, 0, 0, 1, 1]), (2, 0.68, [0, 0, 1, 1, 1])]}
    treatment = {s: _outcome("pgaml", s, b, c) for s, b, c in
                 [(0, 0.74, [1, 1, 1, 1, 0]), (1, 0.73, [1, 1, 1, 1, 1]), (2, 0.71, [1, 0, 1, 1, 1])]}
    row = compare_over_seeds(Comparison("pgaml vs arcface", "arcface", "pgaml"), baseline, treatment, "lfw",
                             "accuracy")
    mean = (0.04 + 0.01 + 0.03) / 3
    std = math.sqrt(((0.04 - mean) ** 2 + (0.01 - mean) ** 2 + (0.03 - mean) ** 2) / 2)
    t = mean / (std / math.sqrt(3))
    assert row["per_seed"] == pytest.approx([0.04, 0.01, 0.03]) and row["mean"] == pytest.approx(mean)
    assert row["std"] == pytest.approx(std)
    assert row["t_test_p"] == pytest.approx(1 - t / math.sqrt(t * t + 2))  # Student t, 2 df: closed form
    half_width = 4.302652729911275 * std / math.sqrt(3)                      # t(0.975, 2 df)
    assert row["ci95"] == pytest.approx([mean - half_width, mean + half_width])
    assert row["wilcoxon_p"] == pytest.approx(0.25)  # all 3 differences positive: 2 / 2**3, the smallest possible
    assert not row["significant"] and "cannot reach p < 0.05" in row["statement"] and "is 0.25" in row["statement"]
    # McNemar pooled over the seeds' 15 pairs: only A right on 1 pair, only B right on 5; exact binomial
    pooled = row["mcnemar_pooled"]
    assert (pooled["only_baseline_right"], pooled["only_treatment_right"], pooled["pairs"]) == (1, 5, 15)
    assert pooled["p_value"] == pytest.approx(2 * (1 + 6) / 2 ** 6) and pooled["method"] == "exact binomial"
    assert seed_summary([0.7, float("nan"), 0.8]) == {"n": 2, "mean": pytest.approx(0.75),
                                                      "std": pytest.approx(math.sqrt(0.005)), "min": 0.7, "max": 0.8,
                                                      "values": [0.7, 0.8]}


def test_comparisons_pair_the_arms_that_differ_in_one_setting(tmp_path, train_data):
    plan = load_plan(tiny_config(tmp_path, {"path": str(train_data)}), "tiny",
                     only=["arcface", "pgaml", "pgaml_no_height"])
    assert [(c.kind, c.treatment, c.baseline) for c in comparisons(plan.arms)] == [
        ("pgaml vs arcface", "pgaml", "arcface"), ("pgaml vs arcface", "pgaml_no_height", "arcface"),
        ("height term", "pgaml", "pgaml_no_height")]
    arms = {a.name: a for a in plan.arms}
    assert arms["arcface"].head_options == {"s": 16.0, "m": 0.3}
    assert arms["pgaml"].head_options == {"s": 16.0, "m1": 0.3, "m2": 0.2}


def test_the_dry_run_prints_the_plan_and_trains_nothing(tmp_path, train_data, capsys):
    config = tiny_config(tmp_path, {"path": str(train_data)})
    assert pgaml_vs_arcface.main(["--config", config, "--profile", "tiny", "--dry-run", "--seeds", "0,1,2"]) == 0
    text = capsys.readouterr().out
    assert "arms x seeds: 2 x 3 = 6 runs (0 finished, 6 to train)" in text
    assert "4 steps x batch 8 = 32 per run, 192 in all" in text and "pgaml vs arcface" in text
    assert not (tmp_path / "out").exists()
    # --steps and --eval_every replace the profile's (perf.gpu_session sizes runs this way)
    assert pgaml_vs_arcface.main(["--config", config, "--profile", "tiny", "--dry-run", "--steps", "15",
                                  "--eval_every", "5"]) == 0
    text = capsys.readouterr().out
    assert "steps: 15 per run = 2 epoch(s) of 10 steps" in text and "3 evaluations per run (every 5 steps" in text


@pytest.mark.parametrize("change, message", [
    (lambda s: s["profiles"]["tiny"]["recipe"].update(lrr=0.1), "profiles.tiny.recipe.lrr: unknown key"),
    (lambda s: s["profiles"]["tiny"]["recipe"].update(epochs=3), "profiles.tiny.recipe.epochs: set by the experiment"),
    (lambda s: s["arms"]["pgaml"]["head_options"].update(m3=1), "arms.pgaml.head_options.m3: unknown key"),
    (lambda s: s["arms"]["arcface"].update(head="arcfase"), "arms.arcface.head: 'arcfase' is not a head"),
    (lambda s: s["profiles"]["tiny"].update(seeds=[0, 0]), "profiles.tiny.seeds: expected a list of distinct"),
    (lambda s: s["profiles"]["tiny"].update(steps=0), "profiles.tiny.steps: expected a whole number >= 1"),
    (lambda s: s["evaluation"].update(resolutions=[112, 0]), "evaluation.resolutions"),
    (lambda s: s["profiles"]["tiny"].update(arms=["arcface", "cosface"]), "cosface is not an arm"),
    (lambda s: s.update(armz={}), "experiment.yaml: armz: unknown key"),
])
def test_a_bad_config_key_is_one_error_naming_it(tmp_path, train_data, change, message):
    path = tiny_config(tmp_path, {"path": str(train_data)})
    settings = yaml.safe_load(open(path))
    change(settings)
    with open(path, "w") as f:
        yaml.safe_dump(settings, f)
    with pytest.raises(UserError, match=message.replace("(", r"\(").replace("[", r"\[")):
        load_plan(path, "tiny")


def test_the_command_exits_2_with_one_line_on_a_bad_key(tmp_path, train_data):
    path = tiny_config(tmp_path, {"path": str(train_data)}, stepz=4)
    result = run_command("experiments/pgaml_vs_arcface.py", "--config", path, "--profile", "tiny", "--dry-run")
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr
    assert "profiles.tiny.stepz: unknown key" in result.stderr


def test_a_run_that_fails_in_its_own_process_is_one_error_naming_it(tmp_path, train_data):
    path = tiny_config(tmp_path, {"path": str(train_data)}, evaluation={"val_sets": "no_such_set"})
    result = run_command("experiments/pgaml_vs_arcface.py", "--config", path, "--profile", "tiny", "--jobs", "2")
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert [line.startswith("error") for line in lines].count(True) == 1, result.stderr
    error = lines[-1]
    assert error.startswith("error: arcface/seed") and "no_such_set not found" in error and ".log)" in error
    log_path = error[error.index("(its output: ") + 13:-1]
    assert "no_such_set not found" in open(log_path).read()


def test_sigterm_to_the_command_stops_the_runs_in_their_own_processes(tmp_path, train_data):
    """`kill <pid>` of the command (not of its process group): the runs training in their processes stop too."""
    from training.run_log import read_scalars

    path = tiny_config(tmp_path, {"path": str(train_data)}, steps=400)
    process = subprocess.Popen([sys.executable, "experiments/pgaml_vs_arcface.py", "--config", path, "--profile",
                                "tiny", "--jobs", "2"], cwd=Path(__file__).resolve().parent.parent,
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    runs_dir = tmp_path / "out" / "tiny" / "runs"
    deadline = time.monotonic() + 240
    while not all((runs_dir / "arcface" / seed / "log").is_dir()
                  and any(read_scalars(runs_dir / "arcface" / seed / "log", "train/loss")) for seed in ("seed0", "seed1")):
        assert process.poll() is None, process.stderr.read()
        assert time.monotonic() < deadline, "the runs did not start"
        time.sleep(0.1)
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=120) == 2
    stderr = process.stderr.read()
    assert "Traceback" not in stderr and stderr.strip().splitlines()[-1].startswith("error: "), stderr
    assert "stopped by SIGTERM" in stderr
    for seed in ("seed0", "seed1"):
        assert "stopped by SIGTERM at step" in (runs_dir / "arcface" / f"{seed}.log").read_text()
        assert not (runs_dir / "arcface" / seed / "results.json").exists()


def test_the_shipped_yaml_plans_both_profiles():
    cpu = load_plan("experiments/pgaml_vs_arcface.yaml", "cpu")
    gpu = load_plan("experiments/pgaml_vs_arcface.yaml", "gpu")
    assert [a.name for a in cpu.arms] == ["arcface", "pgaml_m2_0.2", "pgaml_m2_0.4"] and cpu.seeds == [0, 1, 2]
    assert cpu.steps == 372 and cpu.recipe["net_mode"] == "mobilefacenet" and cpu.batch_size == 32
    assert cpu.jobs == 2 and cpu.recipe["num_threads"] == 1 and gpu.jobs == 3  # 2 x 1 thread fills 2 cores
    assert [a.name for a in gpu.arms] == [a.name for a in cpu.arms] and len(gpu.seeds) >= 3
    assert gpu.batch_size == 256 and gpu.recipe["net_mode"] == "ir_se"
    every_arm = load_plan("experiments/pgaml_vs_arcface.yaml", "gpu", only=list(yaml.safe_load(
        open("experiments/pgaml_vs_arcface.yaml"))["arms"]))
    kinds = [c.kind for c in comparisons(every_arm.arms)]
    assert (kinds.count("pgaml vs arcface"), kinds.count("height term"), kinds.count("pose schedule")) == (8, 4, 4)
    assert {a.head_options["m2"] for a in every_arm.arms if a.head == "pgaml"} == {0.2, 0.4}
    assert all(len(r.config.to_dict()) for r in every_arm.runs(40000))  # every run's Config is valid


def test_data_generated_with_other_parameters_is_refused(tmp_path, train_data):
    from experiments.plan import ensure_data
    generate = {"classes": 12, "per_class": 8, "val_classes": 8, "val_pairs": 40, "seed": 3}
    plan = load_plan(tiny_config(tmp_path, {"path": str(train_data), "generate": generate}), "tiny")
    with pytest.raises(UserError, match="data.generate.classes is 12 but .* was generated with 10"):
        ensure_data(plan)
    plan.generate["classes"] = 10
    assert ensure_data(plan)["num_images"] == 80  # the same parameters: the folder is used as it is
    meta_path = train_data / "meta_synthetic.json"
    meta = json.loads(meta_path.read_text())
    meta_path.write_text(json.dumps({**meta, "version": meta["version"] - 1}))
    try:
        with pytest.raises(UserError, match="made by version .* of data/synthetic.py"):
            ensure_data(plan)
    finally:
        meta_path.write_text(json.dumps(meta))


def test_profile_gap_is_cfp_ff_minus_cfp_fp_per_seed():
    from experiments.seeded_report import profile_gaps

    def outcome(seed, ff, fp):
        return RunOutcome("arcface", seed, 4, 1.0, {"cfp_ff": {"pairs": 4, "accuracy": ff},
                                                    "cfp_fp": {"pairs": 4, "accuracy": fp}}, {}, {})
    gaps = profile_gaps({"arcface": {0: outcome(0, 0.9, 0.7), 1: outcome(1, 0.85, 0.75)}})
    assert gaps["arcface"]["values"] == pytest.approx([0.2, 0.1]) and gaps["arcface"]["mean"] == pytest.approx(0.15)
    assert profile_gaps({"arcface": {0: _outcome("arcface", 0, 0.7, [1, 0])}}) == {}  # no cfp sets: no gap
