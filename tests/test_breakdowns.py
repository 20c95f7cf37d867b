"""evaluation.strata / breakdowns / breakdown_reports: pose bins on the synthetic sets' true yaw, the resolution
sweep, McNemar's test, the reports."""
from __future__ import annotations

import json
import math
from collections import Counter
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from data.synthetic import identity_for, render_face
from evaluation import ValSet, evaluate_set, pose_strata
from evaluation.breakdown_reports import ModelEvaluation, model_labels, write_breakdown_report
from evaluation.breakdowns import (BreakdownSpec, LevelResult, breakdown_scalars, breakdown_set, compare_models,
                                   mcnemar, pose_breakdown, spec_from_config)
from evaluation.strata import DegradedImages, degrade, image_yaw_bins, pose_bin_masks
from utils import UserError
from verification import roc_tar_at_far


class PixelMatcher(torch.nn.Module):
    """A raw-pixel matcher: the grey image minus its mean, L2-normalised."""

    def forward(self, x):
        grey = x.mean(1).flatten(1)
        return F.normalize(grey - grey.mean(1, keepdim=True), dim=1)


def bin_of(yaw: float) -> str:
    """The default bins, written out independently of evaluation.strata."""
    yaw = abs(yaw)
    return "frontal" if yaw < 30 else "half" if yaw < 60 else "profile"


ORDER = ["frontal", "half", "profile"]


@pytest.mark.parametrize("name", ["lfw", "cfp_fp"])
def test_pose_bins_count_the_synthetic_sets_true_yaw(train_data, name):
    valset = ValSet.load(train_data, name)
    expected = Counter("-".join(sorted((bin_of(a), bin_of(b)), key=ORDER.index))
                       for a, b in valset.pose[:, 0].reshape(-1, 2))
    masks = dict(pose_bin_masks(valset.pose))
    assert list(masks) == ["frontal-frontal", "frontal-half", "frontal-profile", "half-half", "half-profile",
                           "profile-profile"]
    assert {label: int(mask.sum()) for label, mask in masks.items() if mask.any()} == dict(expected)
    assert sum(mask.astype(int) for mask in masks.values()).tolist() == [1] * len(valset.issame)  # a partition
    frontal, profile = pose_strata(valset.pose)  # the coarse strata are unions of the bins
    assert (frontal == masks["frontal-frontal"]).all()
    assert (profile == masks["frontal-profile"] | masks["half-profile"] | masks["profile-profile"]).all()
    if name == "cfp_fp":  # one near-frontal and one profile image in every pair, by construction
        assert masks["frontal-profile"].all()


def test_pose_bins_with_other_edges_unknown_yaw_and_bad_edges():
    pose = np.array([[10, 0], [-50, 0], [89, 0], [120, 0], [np.nan, 0], [5, 0], [-45, 0], [45, 0]], np.float32)
    assert image_yaw_bins(pose, (0, 45, 90)).tolist() == [0, 1, 1, 1, -1, 0, 1, 1]  # 45 opens the second bin
    masks = dict(pose_bin_masks(pose, (0, 45, 90)))
    assert {k: v.tolist() for k, v in masks.items()} == {"0to45-0to45": [False] * 4,
                                                         "0to45-45to90": [True, False, False, False],
                                                         "45to90-45to90": [False, True, False, True]}
    for edges in [(10, 30, 90), (0, 60, 30), (0,)]:
        with pytest.raises(UserError, match="--yaw_bins"):
            pose_bin_masks(pose, edges)


def test_pose_breakdown_judges_each_bin_at_the_whole_sets_thresholds(train_data):
    valset = ValSet.load(train_data, "lfw")
    base = evaluate_set(PixelMatcher(), valset, batch_size=16, flip=False)
    rows = pose_breakdown(base, valset.pose, BreakdownSpec(by=("pose",), far=0.1))
    r = base.result
    for row, (label, mask) in zip(rows, pose_bin_masks(valset.pose)):
        assert row.level == label and row.num_pairs == mask.sum() and row.num_negative == (~r.issame[mask]).sum()
        if row.num_pairs:
            assert row.accuracy == pytest.approx(r.pair_correct[mask].mean())
        assert (row.correct == r.pair_correct[mask]).all()
        assert math.isnan(row.tar) == (row.num_negative < 10 or not r.issame[mask].any())


def brute_force_tar(dist, issame, far):
    best = 0.0
    for threshold in np.r_[np.unique(dist), np.inf]:
        accepted = dist < threshold
        if accepted[~issame].mean() <= far:
            best = max(best, accepted[issame].mean())
    return best


def test_roc_tar_at_far_against_brute_force():
    rng = np.random.default_rng(0)
    for _ in range(20):
        issame = rng.random(60) < 0.5
        dist = np.round(rng.normal(1.0 - 0.5 * issame, 0.3), 1)  # rounded: many ties
        for far in (0.05, 0.1, 0.3):
            assert roc_tar_at_far(dist, issame, far) == pytest.approx(brute_force_tar(dist, issame, far))
    assert math.isnan(roc_tar_at_far(dist, issame, 1e-3))  # too few negatives
    assert math.isnan(roc_tar_at_far(dist[~issame], issame[~issame], 0.1))  # no positive


LOOK_ALIKE_TRAITS = ("head_axes", "skin", "hair", "iris", "lips", "hairline", "widow_peak", "hair_stripes", "greying",
                     "base_age", "ear_height")


def clean_pairs(num_pairs: int = 200, seed: int = 11, look_alikes: bool = False, profile_every: int = 0) -> ValSet:
    """Clean renders (even light, plain background) of pairs, half of them same (even pairs), near-frontal
    (|yaw| < 5) but for the second image of every `profile_every`-th pair pair (|yaw| 60-90). With `look_alikes`,
    a different pair's second person shares the first one's head shape, skin, hair and ears, so only the
    face's own features (eyes, brows, nose, mouth, moles) tell them apart."""
    rng = np.random.default_rng(seed)
    images, issame, yaw = [], [], []
    for pair in range(num_pairs):
        same = pair % 2 == 0
        first = identity_for(seed, 2 * pair)
        second = identity_for(seed, 2 * pair + 1)
        if look_alikes:
            second = replace(second, **{key: getattr(first, key) for key in LOOK_ALIKE_TRAITS})
        profile = profile_every and (pair // 2) % profile_every == 0
        for person, turned in ((first, False), (first if same else second, profile)):
            yaw.append(rng.uniform(60, 90) * rng.choice([-1, 1]) if turned else rng.uniform(-5, 5))
            images.append(render_face(person, yaw[-1], 0.0))
        issame.append(same)
    pose = np.stack([yaw, np.zeros(len(yaw))], 1).astype(np.float32)
    return ValSet("clean", np.stack(images).transpose(0, 3, 1, 2).copy(), np.array(issame), pose)


def test_pose_breakdown_shows_a_pixel_matcher_failing_on_profiles():
    """An untrained network is near chance in every bin, so a raw-pixel matcher stands in for a model that
    has learnt something: on clean renders it recognises frontal pairs and not frontal-profile ones."""
    valset = clean_pairs(profile_every=2)
    base = evaluate_set(PixelMatcher(), valset, batch_size=64, flip=False)
    rows = {row.level: row for row in pose_breakdown(base, valset.pose, BreakdownSpec(by=("pose",), far=0.1))}
    assert rows["frontal-frontal"].num_pairs == rows["frontal-profile"].num_pairs == 100
    assert rows["frontal-frontal"].accuracy >= 0.75 and rows["frontal-profile"].accuracy <= 0.65, rows
    assert rows["frontal-frontal"].tar > rows["frontal-profile"].tar


def test_resolution_sweep_lowers_a_pixel_matchers_accuracy():
    """An untrained network is near chance at every level on the synthetic faces, and a raw-pixel matcher on the
    generated sets too (their lighting, background and pose nuisance drown the pixels); the renders are drawn
    at 64 px with identity in coarse geometry, so 14 px still keeps much of it. So: a pixel matcher on clean
    renders whose different pairs are look-alikes, with levels down to 4 px."""
    valset, calls = clean_pairs(look_alikes=True), []

    def evaluate(pairs):
        calls.append(pairs.images.size if isinstance(pairs.images, DegradedImages) else 112)
        return evaluate_set(PixelMatcher(), pairs, batch_size=64, flip=False)

    base = evaluate(valset)
    rows = breakdown_set(evaluate, valset, base, BreakdownSpec(by=("resolution",), resolutions=(112, 14, 8, 4),
                                                                far=0.05))["resolution"]
    accuracy = [row.accuracy for row in rows]
    assert [row.level for row in rows] == ["res112", "res14", "res8", "res4"]
    assert calls == [112, 14, 8, 4]  # the full-size level is the plain result, not embedded twice
    assert accuracy[0] == base.result.accuracy >= 0.75
    assert all(a > b for a, b in zip(accuracy, accuracy[1:])) and accuracy[0] - accuracy[-1] >= 0.15, accuracy


class CountingImages:
    """An array that records which slices are read."""

    def __init__(self, images):
        self.images, self.read = images, []
        self.shape, self.dtype, self.ndim = images.shape, images.dtype, images.ndim

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        self.read.append(index)
        return self.images[index]


def test_degraded_images_are_degraded_slice_by_slice(tmp_path):
    import cv2

    rng = np.random.default_rng(1)
    np.save(tmp_path / "images.npy", rng.integers(0, 256, (10, 3, 112, 112), dtype=np.uint8))
    memmap = np.load(tmp_path / "images.npy", mmap_mode="r")
    counting = CountingImages(memmap)
    view = DegradedImages(counting, 20, blur_sigma=1.0)
    assert view.shape == memmap.shape and len(view) == 10 and view.dtype == np.uint8
    batch = view[2:5]
    assert counting.read == [slice(2, 5)] and batch.shape == (3, 3, 112, 112)
    hwc = cv2.GaussianBlur(memmap[3].transpose(1, 2, 0).copy(), (0, 0), 1.0)
    small = cv2.resize(hwc, (20, 20), interpolation=cv2.INTER_AREA)
    expected = cv2.resize(small, (112, 112), interpolation=cv2.INTER_LINEAR).transpose(2, 0, 1)
    assert (batch[1] == expected).all() and (view[3] == expected).all()
    assert (degrade(memmap[:2], 112) == memmap[:2]).all()  # full size, no blur: the images themselves
    with pytest.raises(UserError, match="--resolutions 200"):
        DegradedImages(memmap, 200)


def test_mcnemar_against_hand_computed_values():
    def correctness(both, only_a, only_b, neither):
        a = [True] * both + [True] * only_a + [False] * only_b + [False] * neither
        b = [True] * both + [False] * only_a + [True] * only_b + [False] * neither
        return np.array(a), np.array(b)

    # 10 discordant pairs: exact, two-sided 2 * P(X <= 2 | n = 10, p = 1/2) = 2 * (1 + 10 + 45) / 1024
    assert mcnemar(*correctness(50, 2, 8, 5)) == (2, 8, pytest.approx(112 / 1024), "exact binomial")
    # 40 discordant pairs: (|10 - 30| - 1)^2 / 40 = 9.025, chi-square with 1 degree of freedom
    only_a, only_b, p, method = mcnemar(*correctness(100, 10, 30, 20))
    assert (only_a, only_b, method) == (10, 30, "chi-square (continuity-corrected)")
    assert p == pytest.approx(math.erfc(math.sqrt(9.025 / 2)))
    assert mcnemar(*correctness(5, 0, 0, 3)) == (0, 0, 1.0, "no discordant pairs")


def level(name, correct, accuracy=0.5):
    return LevelResult(name, len(correct), 1, accuracy, float("nan"), np.array(correct))


def test_compare_models_says_plainly_whether_significant(tmp_path):
    a = {"lfw": {"resolution": [level("res112", [True] * 40), level("res14", [True] * 30 + [False] * 10)]}}
    b = {"lfw": {"resolution": [level("res112", [True] * 38 + [False] * 2), level("res14", [False] * 40)]}}
    tests = compare_models({"arcface": a, "pgaml": b})
    assert [(t.level, t.only_a, t.only_b, t.method) for t in tests] == [
        ("res112", 2, 0, "exact binomial"), ("res14", 30, 0, "chi-square (continuity-corrected)")]
    assert tests[0].verdict() == "no significant difference (p = 0.5 >= 0.05)"
    assert not tests[0].significant and tests[1].significant
    assert tests[1].verdict().startswith("arcface better, significant (p = ")
    models = [ModelEvaluation("arcface", "a.pth", [], a), ModelEvaluation("pgaml", "b.pth", [], b)]
    written = write_breakdown_report(models, tests, BreakdownSpec(by=("resolution",), resolutions=(112, 14)),
                                     tmp_path / "report")
    assert [p.name for p in written] == ["breakdowns.md", "results.json", "resolution_lfw.png"]
    document = json.loads(written[1].read_text())
    assert document["models"]["pgaml"]["sets"]["lfw"]["resolution"][1] == {
        "level": "res14", "pairs": 40, "negatives": 1, "accuracy": 0.5, "tar": None}
    assert document["comparisons"][1]["significant"] is True
    markdown = written[0].read_text()
    assert "| res14 | 40 | 1 | 0.5000 | - | 0.5000 | - |" in markdown and "arcface vs pgaml" in markdown


def test_breakdown_scalars_and_the_training_spec():
    spec = BreakdownSpec(by=("pose", "resolution"), far=0.01)
    breakdown = {"pose": [level("frontal-half", [True, False]), LevelResult("half-half", 0, 0, float("nan"),
                                                                            float("nan"), np.zeros(0, bool))],
                 "resolution": [LevelResult("res28", 2, 1, 0.75, 0.5, np.ones(2, bool))]}
    assert breakdown_scalars(breakdown, spec) == {"pose/frontal-half/accuracy": 0.5, "res28/accuracy": 0.75,
                                                  "res28/tar@far=0.01": 0.5}

    class Settings:
        val_breakdowns, val_resolutions = "", [112, 28]
    assert spec_from_config(Settings()) is None
    Settings.val_breakdowns = "pose, resolution"
    assert spec_from_config(Settings()).by == ("pose", "resolution")
    Settings.val_breakdowns = "colour"
    with pytest.raises(UserError, match="--val_breakdowns colour: unknown breakdown colour"):
        spec_from_config(Settings())
    Settings.val_breakdowns, Settings.val_resolutions = "resolution", [0]
    with pytest.raises(UserError, match="--val_resolutions"):
        spec_from_config(Settings())


def test_model_labels_are_distinct():
    assert model_labels(["a/model_final.pth", "b/model_final.pth", "c/pgaml.onnx"]) == [
        "a/model_final", "b/model_final", "pgaml"]
    assert model_labels(["x.pth", "x.pth"]) == ["x#1", "x#2"]
