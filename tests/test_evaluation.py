import csv
import io

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from data.valsets import convert_bin, is_converted, write_bin
from evaluation import (available_valsets, csv_table, evaluate_valset, markdown_table, pose_strata, resolve_valsets,
                        write_reports)
from tests.helpers import jpeg
from utils import UserError


class PixelNet(torch.nn.Module):
    """Embeds by downsampled pixels: same-image pairs match exactly, others mostly not."""

    def forward(self, x):
        return F.normalize(F.adaptive_avg_pool2d(x, 4).flatten(1), dim=1)


@pytest.fixture
def prepared(tmp_path):
    # pairs 0, 2, 4 are the same image twice (same), 1, 3, 5 different images
    images, issame = [], []
    for pair in range(20):
        same = pair % 2 == 0
        images += [jpeg(pair), jpeg(pair if same else 1000 + pair)]
        issame.append(same)
    write_bin(tmp_path / "lfw.bin", images, issame)
    yaw = np.zeros((40, 2), np.float32)
    yaw[20:, 0] = 75.0  # pairs 10..19 are profile pairs
    np.save(tmp_path / "lfw.pose.npy", yaw)
    convert_bin(tmp_path / "lfw.bin", tmp_path)
    write_bin(tmp_path / "cfp_fp.bin", images[:8], issame[:4])
    convert_bin(tmp_path / "cfp_fp.bin", tmp_path)
    return tmp_path


def test_evaluate_valset_with_pose_strata(prepared):
    outcome = evaluate_valset(PixelNet(), prepared, "lfw", batch_size=7, num_folds=5)
    assert outcome.result.accuracy == 1.0 and outcome.num_frontal == 10 and outcome.num_profile == 10
    assert outcome.frontal_accuracy == 1.0 and outcome.profile_accuracy == 1.0
    assert set(outcome.scalars()) >= {"accuracy", "accuracy_frontal", "accuracy_profile", "auc", "eer"}


def test_pose_strata():
    pose = np.array([[0, 0], [10, 0], [-70, 0], [5, 0], [40, 0], [45, 0]], np.float32)
    frontal, profile = pose_strata(pose)
    assert frontal.tolist() == [True, False, False] and profile.tolist() == [False, True, False]


def test_resolve_valsets(prepared):
    assert resolve_valsets(prepared, "all") == ["lfw", "cfp_fp"]
    assert resolve_valsets(prepared, "cfp_fp") == ["cfp_fp"]
    with pytest.raises(UserError, match="--val_sets: agedb_30 not found under"):
        resolve_valsets(prepared, "lfw,agedb_30")
    with pytest.raises(UserError, match="no val sets"):
        resolve_valsets(prepared / "nothing", "all")


def test_reports(prepared, tmp_path):
    results = [evaluate_valset(PixelNet(), prepared, name, num_folds=2) for name in ("lfw", "cfp_fp")]
    table = markdown_table(results)
    assert table.splitlines()[0].startswith("| set | pairs | accuracy") and "| lfw | 20 | 1.0000 |" in table
    rows = list(csv.reader(io.StringIO(csv_table(results))))
    assert rows[1][0] == "lfw" and rows[2][-1] == "-"  # cfp_fp has no pose: no profile column value
    written = write_reports(results, tmp_path / "report")
    assert [p.name for p in written] == ["results.md", "results.csv", "roc_lfw.png", "roc_cfp_fp.png"]
    assert all(p.stat().st_size > 0 for p in written)


def test_a_bin_not_yet_prepared_is_prepared_on_the_fly(prepared, tmp_path):
    folder = tmp_path / "raw"
    folder.mkdir()
    images = [jpeg(i) for i in range(8)]
    write_bin(folder / "agedb_30.bin", images, [True, False, True, False])
    assert available_valsets(folder) == ["agedb_30"]
    assert resolve_valsets(folder, "agedb_30") == ["agedb_30"]
    assert is_converted(folder, "agedb_30")
    outcome = evaluate_valset(PixelNet(), folder, "agedb_30", num_folds=2)
    assert outcome.result.num_positive == 2


def test_a_bin_that_cannot_be_prepared_in_place_says_how(tmp_path, monkeypatch):
    import evaluation.sets as sets

    write_bin(tmp_path / "lfw.bin", [jpeg(i) for i in range(4)], [True, False])

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")
    monkeypatch.setattr(sets, "convert_bin", read_only)
    with pytest.raises(UserError, match=r"lfw.bin: cannot prepare it here \(Permission denied\); run python "
                                        r"data/prepare_data.py --source .* --out DIR"):
        resolve_valsets(tmp_path, "lfw")
