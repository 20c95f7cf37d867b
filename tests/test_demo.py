"""demo.py end to end on the small synthetic folder: both heads trained, evaluated and compared."""
from __future__ import annotations

import demo


def test_demo_trains_both_heads_and_writes_the_comparison(train_data, tmp_path, capsys):
    work = tmp_path / "demo"
    assert demo.main(["--data_path", str(train_data), "--work_path", str(work), "--max_steps", "2",
                      "-b", "8", "-w", "0"]) == 0
    table = (work / "results.md").read_text()
    for head in ("arcface", "pgaml"):
        for name in ("lfw", "cfp_fp", "agedb_30"):
            assert f"| {head} | {name} | 40 |" in table
        assert (work / head / "save" / "model_best.pth").is_file()
        assert any((work / head / "log").glob("events.out.tfevents.*"))
    assert "profile pairs" in table and table in capsys.readouterr().out
    # run again: the previous demo runs are replaced, not refused or mixed in
    assert demo.main(["--data_path", str(train_data), "--work_path", str(work), "--max_steps", "1",
                      "-b", "8", "-w", "0"]) == 0
    from training.checkpoint import list_checkpoints
    assert [p.name for p in list_checkpoints(work / "arcface" / "save")] == ["checkpoint_step00000001.pt"]
