"""Fine-tuning a pretrained backbone (train.py / crossval.py): --pretrained from every family with a fresh head,
--freeze_backbone_epochs, --backbone_lr_mult, --freeze_bn, and the PGAML authors' -p/--with_pose parsed right."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

import train
from config import Config
from data.face_folder import FaceFolderDataset, FaceRecord
from inference.weights import save_backbone_weights
from learner import Learner
from model import build_backbone
from tests.helpers import face_like
from tests.test_weights import assert_same_state, light_state_dict
from training.hooks import Hook
from utils import UserError


def tiny_dataset(num_classes: int = 3, per_class: int = 8) -> FaceFolderDataset:
    records = [FaceRecord(Path(f"{c}_{i}.jpg"), f"id{c}", yaw=float(10 * i - 35), height=1.5 + c)
               for c in range(num_classes) for i in range(per_class)]
    images = np.stack([face_like(k).transpose(2, 0, 1) for k in range(len(records))])
    return FaceFolderDataset(images, records)


def config_for(tmp_path, **changes) -> Config:
    values = dict(data_path=str(tmp_path), work_path=str(tmp_path / "run"), net_mode="mobilefacenet",
                  embedding_size=64, batch_size=8, epochs=2, lr=0.05, num_workers=0, num_threads=1,
                  head="pgaml", val_sets="none", log_every=1, save_every=1000, deterministic=True, seed=3)
    values.update(changes)
    return Config(**values)


def trained_looking_state(name: str, embedding_size: int) -> dict:
    generator = torch.Generator().manual_seed(11)
    model = build_backbone(name, embedding_size=embedding_size)
    return {k: (v + 0.01 * torch.randn(v.shape, generator=generator)) if v.is_floating_point() else v
            for k, v in model.state_dict().items()}


@pytest.mark.parametrize("family, order", [("ours", "RGB"), ("treb1en", "BGR"), ("arcface_torch", "RGB")])
def test_pretrained_weights_of_every_family_with_a_fresh_head(tmp_path, family, order):
    if family == "arcface_torch":
        state, net, size = light_state_dict("r50"), "r50", 512
        torch.save({"state_dict_backbone": state, "global_step": 9}, tmp_path / "backbone.pth")
    else:
        state, net, size = trained_looking_state("mobilefacenet", 64), "mobilefacenet", 64
        model = build_backbone("mobilefacenet", embedding_size=64)
        model.load_state_dict(state)
        if family == "ours":
            save_backbone_weights(model, tmp_path / "backbone.pth")
        else:  # TreB1eN's files are a plain state_dict, no metadata beside them
            torch.save(state, tmp_path / "backbone.pth")
    dataset = tiny_dataset(num_classes=3)
    learner = Learner(config_for(tmp_path, net_mode=net, embedding_size=size, pretrained=str(tmp_path / "backbone.pth")),
                      dataset=dataset, val_sets=[])
    assert_same_state(learner.backbone, state)
    assert learner.conventions["channel_order"] == order  # the recorded (or the family's) channel order is kept
    assert tuple(learner.head.kernel.shape) == (size, 3)  # a fresh head for the new identities


class StateAtEpochs(Hook):
    def __init__(self):
        self.states = []

    def before_train(self, learner):
        self.states.append(self.snapshot(learner))

    def after_epoch(self, learner):
        self.states.append(self.snapshot(learner))

    @staticmethod
    def snapshot(learner):
        return ({k: v.clone() for k, v in learner.backbone.state_dict().items()}, learner.head.kernel.detach().clone())


def changed(before: dict, after: dict, keys=None) -> list[str]:
    return [k for k in (keys or before) if before[k].is_floating_point() and not torch.equal(before[k], after[k])]


def test_freeze_backbone_epochs_trains_the_centres_alone_first(tmp_path):
    hook = StateAtEpochs()
    learner = Learner(config_for(tmp_path, freeze_backbone_epochs=1.0), dataset=tiny_dataset(), val_sets=[],
                      hooks=(hook,))
    learner.train()
    (start, kernel0), (after_one, kernel1), (after_two, kernel2) = hook.states
    assert not changed(start, after_one), "the backbone (weights and BatchNorm statistics) moved while frozen"
    assert not torch.equal(kernel0, kernel1)
    assert changed(after_one, after_two) and not torch.equal(kernel1, kernel2)
    assert learner.backbone.training


def test_freeze_bn_keeps_the_statistics_and_trains_the_weights(tmp_path):
    hook = StateAtEpochs()
    learner = Learner(config_for(tmp_path, freeze_bn=True, epochs=1), dataset=tiny_dataset(), val_sets=[],
                      hooks=(hook,))
    learner.train()
    (start, _), (end, _) = hook.states
    statistics = [k for k in start if k.endswith(("running_mean", "running_var"))]
    assert statistics and not changed(start, end, statistics)
    assert any(k.endswith("conv.weight") for k in changed(start, end))


def test_backbone_lr_mult_scales_the_backbone_groups_only(tmp_path):
    learner = Learner(config_for(tmp_path, backbone_lr_mult=0.1, epochs=1, max_steps=1), dataset=tiny_dataset(),
                      val_sets=[])
    learner.train()
    groups = learner.optimizer.param_groups
    kernel_group = [g for g in groups if any(p is learner.head.kernel for p in g["params"])]
    assert len(kernel_group) == 1 and kernel_group[0]["params"] == [learner.head.kernel]
    assert kernel_group[0]["lr"] == pytest.approx(0.05)
    assert all(g["lr"] == pytest.approx(0.005) for g in groups if g is not kernel_group[0])
    backbone_params = {id(p) for p in learner.backbone.parameters()}
    assert backbone_params == {id(p) for g in groups if g is not kernel_group[0] for p in g["params"]}
    default = Learner(config_for(tmp_path, work_path=str(tmp_path / "other")), dataset=tiny_dataset(), val_sets=[])
    assert len(default.optimizer.param_groups) == 3 and "lr_mult" not in default.optimizer.param_groups[0]


def parse(*argv) -> Config:
    return train.config_from_args(train.build_parser().parse_args([str(a) for a in argv]))


@pytest.mark.parametrize("value, head", [("True", "pgaml"), ("true", "pgaml"), ("1", "pgaml"), ("False", "arcface"),
                                         ("false", "arcface"), ("no", "arcface")])
def test_with_pose_is_parsed_as_a_boolean(value, head):
    assert parse("-p", value).head == head
    assert parse("--with_pose", value).head == head


def test_with_pose_errors():
    with pytest.raises(UserError, match="-p/--with_pose means --head arcface, but --head pgaml is given"):
        parse("-p", "False", "--head", "pgaml")
    with pytest.raises(UserError, match="argument -p/--with_pose: expected true or false, not 'maybe'"):
        parse("-p", "maybe")
    with pytest.raises(UserError, match="--freeze_backbone_epochs and --backbone_lr_mult must not be negative"):
        parse("--backbone_lr_mult", "-1")


def test_fine_tuning_flags_reach_the_config():
    config = parse("--freeze_backbone_epochs", "2", "--backbone_lr_mult", "0.1", "--freeze_bn")
    assert (config.freeze_backbone_epochs, config.backbone_lr_mult, config.freeze_bn) == (2.0, 0.1, True)
    assert not train.runs_crossval(["-b", "16", "-d", "emore"])
    assert train.runs_crossval(["-b", "16", "-e", "20", "-d", "droneface", "-p", "True", "-fold", "5"])
    assert train.runs_crossval(["--data_mode=droneface"]) and train.runs_crossval(["--num_folds", "3"])
