"""demo.py end to end on the small synthetic folder: both heads trained, evaluated and compared with the raw-pixel
matcher and the untrained network, overall, by pose bin and by resolution."""
from __future__ import annotations

import demo


def test_demo_trains_both_heads_and_writes_the_comparison(train_data, tmp_path, capsys):
    work = tmp_path / "demo"
    assert demo.main(["--data_path", str(train_data), "--work_path", str(work), "--max_steps", "2",
                      "-b", "8", "-w", "0", "--resolutions", "112,14"]) == 0
    report = (work / "results.md").read_text()
    table = report[:report.index("\n\n") + 1]  # the comparison table, then the breakdowns
    for model in ("raw pixels", "untrained", "arcface", "pgaml"):
        for name in ("lfw", "cfp_fp", "agedb_30"):
            assert f"| {model} | {name} | 40 |" in table
    for head in ("arcface", "pgaml"):
        assert (work / head / "save" / "model_best.pth").is_file()
        assert any((work / head / "log").glob("events.out.tfevents.*"))
    assert "profile pairs" in table and table in capsys.readouterr().out and report.startswith(table)
    assert "## lfw: pose" in report and "## cfp_fp: resolution" in report and "| res14 | arcface vs pgaml |" in report
    for figure in ("pose_lfw.png", "resolution_lfw.png", "resolution_agedb_30.png"):
        assert (work / "breakdowns" / figure).stat().st_size > 1000
    # run again: the previous demo runs are replaced, not refused or mixed in
    assert demo.main(["--data_path", str(train_data), "--work_path", str(work), "--max_steps", "1",
                      "-b", "8", "-w", "0", "--resolutions", "112"]) == 0
    from training.checkpoint import list_checkpoints
    assert [p.name for p in list_checkpoints(work / "arcface" / "save")] == ["checkpoint_step00000001.pt"]
