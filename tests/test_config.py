import json

import pytest

from config import AugmentConfig, Config
from utils import UserError


def test_save_load_round_trip(tmp_path):
    config = Config(net_mode="mobilefacenet", batch_size=64, augment=AugmentConfig(blur_prob=0.3))
    config.save(tmp_path / "config.json")
    assert Config.load(tmp_path / "config.json") == config
    assert json.loads((tmp_path / "config.json").read_text())["augment"]["blur_prob"] == 0.3


@pytest.mark.parametrize("content, message", [
    ('{"batch": 3}', "unknown setting"),
    ('{"augment": {"blur": 1}}', "unknown augment setting"),
    ('{"augment": {"jpeg_prob": 2}}', r"augment.jpeg_prob=2 must be a probability"),
    ("[1, 2]", "expected a mapping of settings"),
    ("{not json", "not valid JSON"),
])
def test_bad_config_files(tmp_path, content, message):
    (tmp_path / "c.json").write_text(content)
    with pytest.raises(UserError, match=message):
        Config.load(tmp_path / "c.json")


def test_missing_config(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        Config.load(tmp_path / "none.json")


def test_yaml_config_and_validation(tmp_path):
    (tmp_path / "run.yaml").write_text("net_mode: mobilefacenet\nbatch_size: 64\nhead_options: {s: 32}\n")
    config = Config.load(tmp_path / "run.yaml")
    assert config.batch_size == 64 and config.head_options == {"s": 32} and config.backbone_name == "mobilefacenet"
    assert Config(net_mode="ir_se", depth=100).backbone_name == "ir_se_100"
    (tmp_path / "bad.yaml").write_text("net_mode: [unclosed\n")
    with pytest.raises(UserError, match="not valid YAML"):
        Config.load(tmp_path / "bad.yaml")


@pytest.mark.parametrize("changes, message", [
    ({"net_mode": "resnet"}, "--net_mode 'resnet': choose one of"),
    ({"lr": 0}, "--lr must be positive"),
    ({"sample_rate": 1.5}, "--sample_rate must be in"),
    ({"milestones": [15, 12]}, "--milestones must be increasing"),
    ({"batch_size": 0}, "--batch_size must be at least 1"),
    ({"max_steps": 0}, "--max_steps must be at least 1"),
    ({"margin_warmup_steps": -1}, "--margin_warmup_steps must be a whole number >= 0"),
    ({"margin_warmup_steps": 2.5}, "--margin_warmup_steps must be a whole number >= 0"),
    ({"lr_reference_batch": -256}, "--lr_reference_batch must be a whole number >= 0"),
    ({"clip_grad_norm": -1.0}, "--clip_grad_norm must be a finite number >= 0"),
    ({"clip_grad_norm": float("inf")}, "--clip_grad_norm must be a finite number >= 0"),
])
def test_invalid_settings(changes, message):
    with pytest.raises(UserError, match=message):
        Config(**changes)


def test_stability_settings_from_yaml_with_an_automatic_scale(tmp_path):
    (tmp_path / "run.yaml").write_text("head_options: {s: auto, m: 0.3}\nmargin_warmup_steps: 500\n"
                                       "clip_grad_norm: 5\nlr_reference_batch: 512\n")
    config = Config.load(tmp_path / "run.yaml")
    assert config.head_options == {"s": "auto", "m": 0.3}
    assert (config.margin_warmup_steps, config.clip_grad_norm, config.lr_reference_batch) == (500, 5, 512)
    assert Config().margin_warmup_steps == Config().lr_reference_batch == 0 and Config().clip_grad_norm == 0.0
