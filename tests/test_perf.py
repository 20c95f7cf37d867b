"""perf/ harnesses that the GPU runs lean on, run here at toy sizes: they must finish and report sane numbers
(speed itself is never asserted: these machines are noisy)."""
from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def test_training_benchmark_measures_ours_and_both_baselines(tmp_path, capsys):
    from perf import training

    out = tmp_path / "rows.json"
    assert training.main(["--device", "cpu", "--nets", "mobilefacenet", "--batches", "4", "--classes", "50",
                          "--precisions", "fp32", "--heads", "arcface,pgaml", "--steps", "1", "--warmup", "1",
                          "--pfc_classes", "400", "--pfc_rate", "0.25", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    assert [(r["trainer"], r["head"], r["classes"]) for r in rows] == [
        ("ours", "arcface", 50), ("ours", "pgaml", 50), ("treb1en", "arcface", 50), ("arcface_torch", "arcface", 50),
        ("ours", "arcface", 400), ("arcface_torch", "arcface", 400)]
    assert all(r["images_per_s"] > 0 and r["tflops_per_s"] > 0 and r["utilisation"] is None for r in rows)
    assert all(0 <= r["data_wait_fraction"] < 1 for r in rows if r["trainer"] == "ours")
    printed = capsys.readouterr().out
    assert printed.count("ours (fp32) / ") == 3 and "GPU target 3x" in printed and "GPU target 1.3x" in printed
    # each comparison is printed as soon as its baseline is measured: a run stopped part-way keeps it
    lines = printed.splitlines()
    first_result = next(i for i, x in enumerate(lines) if x.startswith("RESULT "))
    assert printed.count("RESULT ") == 3 and lines[first_result - 1].startswith("treb1en ")


def test_treb1en_head_is_arcface_with_its_fallback():
    import math

    import torch

    from perf.training import treb1en_arcface_logits

    kernel = torch.eye(2)
    embeddings = torch.tensor([[1.0, 0.0], [-1.0, 0.0]])  # angle 0 and pi to class 0
    logits = treb1en_arcface_logits(embeddings, kernel, torch.tensor([0, 0]))
    assert logits[0, 0] == pytest.approx(64 * math.cos(0.5))           # cos(theta + m)
    assert logits[1, 0] == pytest.approx(64 * (-1 - 0.5 * math.sin(0.5)))  # past pi - m: cos(theta) - m sin(m)
    assert logits[0, 1] == pytest.approx(0.0, abs=1e-6)               # other classes: s cos(theta)


def test_run_all_gathers_results_into_a_table(tmp_path):
    from perf import run_all

    out = tmp_path / "RESULTS.md"
    run_all.main(["--only", "verification", "--out", str(out)])  # its exit says whether the target was met
    text = out.read_text()
    row = next(line for line in text.splitlines() if line.startswith("| verification |"))
    assert "10-fold verification, 6,000 pairs" in row and "(per-threshold loop)" in row and row.count("x |") == 2
    assert "Machine: " in text and "## GPU training (not run here: no GPU)" in text
    assert "python -m perf.training --device cuda" in text and "### `python -m perf.verification`" in text


def test_run_all_refuses_unknown_names(tmp_path):
    from perf import run_all

    with pytest.raises(SystemExit):
        run_all.main(["--only", "nothing", "--out", str(tmp_path / "r.md")])
    assert not (tmp_path / "r.md").exists()


def test_optimizer_benchmark_times_fused_against_the_default_step(capsys):
    from perf import optimizer

    assert optimizer.main(["--device", "cpu", "--nets", "mobilefacenet", "--rounds", "1", "--steps", "1"]) == 0
    printed = capsys.readouterr().out
    line = json.loads(next(x for x in printed.splitlines() if x.startswith("RESULT "))[len("RESULT "):])
    assert line["measure"] == "SGD step, mobilefacenet (cpu)" and line["baseline_name"] == "torch's per-tensor loop"
    assert line["ours"] > 0 and line["baseline"] > 0 and "183 tensors" in printed


def test_profile_step_reports_the_share_outside_operators(capsys):
    from perf import profile_step

    assert profile_step.main(["--batch", "4", "--classes", "20", "--steps", "1", "--warmup", "1", "--top", "3"]) == 0
    printed = capsys.readouterr().out
    assert "aten::" in printed and "of the profiled steps outside any operator (Python)" in printed
    assert '"unit": "% of the step"' in printed


def test_memory_benchmark_measures_workers_and_a_val_set(capsys):
    from perf import memory

    assert memory.main(["--records", "20000", "--workers", "1", "--batches", "2", "--val_images", "1024"]) == 0
    printed = capsys.readouterr().out
    assert "worker private memory, 20,000 keys against 1,000" in printed
    assert printed.count("RESULT ") == 3 and "val set of 1,024 images" in printed
    assert "peak tensor + array memory" in printed and "tensors and arrays" in printed


def test_peak_allocated_counts_what_the_call_allocates_above_what_was_live():
    import numpy as np
    import torch

    from perf.allocations import peak_allocated

    live = torch.ones(4_000_000), np.ones(4_000_000)  # 16 MB and 32 MB before the call: not counted

    def call():
        a = torch.empty(2_500_000)           # 10 MB of tensor, freed before the next one: the peak is the larger
        del a
        b = torch.empty(5_000_000)           # 20 MB
        c = np.empty(1_250_000)              # 10 MB of array
        return float(b.numel() + c.size) + live[0][0].item()

    value, tensors, arrays = peak_allocated(call)
    assert value == 6_250_001.0
    assert 20_000_000 <= tensors < 21_000_000 and 10_000_000 <= arrays < 11_000_000


def test_partial_fc_tensor_memory_counts_the_step_above_what_was_live():
    import torch

    import partial_fc
    from heads import build_margin
    from perf.partial_fc import SGD_SETTINGS, step_tensor_memory

    classes, batch, width = 20_000, 64, 128
    torch.manual_seed(0)
    embeddings, labels = torch.randn(batch, width), torch.randint(0, classes, (batch,))
    measured = {}
    for rate, sparse in ((0.1, True), (1.0, False)):
        module = partial_fc.PartialFC(width, classes, build_margin("arcface"), sample_rate=rate, sparse_grad=sparse)
        optimizer = partial_fc.SGD([module.kernel], **SGD_SETTINGS)
        module(embeddings.clone().requires_grad_(), labels).backward()  # the momentum buffer exists from here on
        optimizer.step()
        optimizer.zero_grad()
        measured[rate] = step_tensor_memory(module, optimizer, embeddings.clone().requires_grad_(), labels)
    dense_gradient, logits = classes * width * 4, batch * classes * 4
    # the full rate holds at least the dense kernel gradient and the logits; the centres and momentum (live
    # before the step) are not counted, so it stays well under three times that
    print(measured, dense_gradient, logits)
    assert dense_gradient + logits <= measured[1.0] < 3 * (dense_gradient + logits + 2 * classes * width * 4)
    assert 0 < measured[0.1] < measured[1.0] / 4
