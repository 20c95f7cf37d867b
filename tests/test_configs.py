"""The YAML presets in configs/: each loads, survives a JSON round trip, holds the values written in it,
reads the same through train.py's flag parsing, and demo.yaml stays what demo.py runs."""
import dataclasses
from pathlib import Path

import pytest
import yaml

import demo
import train
from config import AugmentConfig, Config

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
EXPECTED = {"ir_se50_emore.yaml", "mobilefacenet_emore.yaml", "r100_ms1mv3_pfc.yaml", "pgaml_finetune.yaml",
            "demo.yaml", "small_data.yaml"}
PRESETS = sorted(CONFIGS.glob("*.yaml"))
DEFAULTS = {f.name: getattr(Config(), f.name) for f in dataclasses.fields(Config)}


def parse(*argv) -> Config:
    """What train.py builds from its command line."""
    return train.config_from_args(train.build_parser().parse_args([str(a) for a in argv]))


def test_the_presets_are_all_there():
    assert {p.name for p in PRESETS} == EXPECTED


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_preset_loads_and_round_trips_through_json(path, tmp_path):
    config = Config.load(path)
    config.save(tmp_path / "config.json")
    assert Config.load(tmp_path / "config.json").to_dict() == config.to_dict()


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_preset_holds_the_values_written_in_it(path):
    written = yaml.safe_load(path.read_text())
    config = Config.load(path)
    for key, value in written.items():
        if key == "augment":
            assert dataclasses.asdict(config.augment) == {**dataclasses.asdict(AugmentConfig()), **value}
            continue
        assert getattr(config, key) == value, key
        # YAML 1.1 reads `5e-4` as a string: each value must have its field's type (an int passes as a float)
        default = DEFAULTS[key]
        if isinstance(default, bool):
            assert isinstance(value, bool), key
        elif isinstance(default, float):
            assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{key}: {value!r}"
        elif default is not None and value is not None:
            assert isinstance(value, type(default)), f"{key}: {value!r}"


@pytest.mark.parametrize("path", PRESETS, ids=lambda p: p.name)
def test_train_reads_the_preset(path):
    assert parse("--config", path).to_dict() == Config.load(path).to_dict()


def test_flags_beside_the_preset_override_it():
    path = CONFIGS / "ir_se50_emore.yaml"
    config = parse("--config", path, "-b", 8, "--margin", 0.4)
    preset = Config.load(path)
    assert config.batch_size == 8 and preset.batch_size == 200
    assert config.head_options == {"s": 64.0, "m": 0.4}
    assert config.to_dict() == preset.replace(batch_size=8, head_options={"s": 64.0, "m": 0.4}).to_dict()


def test_demo_preset_is_what_demo_runs():
    assert demo.run_config(demo.parse_args([]), "arcface").to_dict() == Config.load(CONFIGS / "demo.yaml").to_dict()
