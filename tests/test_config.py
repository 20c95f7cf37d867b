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
    ("[1, 2]", "expected a JSON object"),
    ("{not json", "not valid JSON"),
])
def test_bad_config_files(tmp_path, content, message):
    (tmp_path / "c.json").write_text(content)
    with pytest.raises(UserError, match=message):
        Config.load(tmp_path / "c.json")


def test_missing_config(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        Config.load(tmp_path / "none.json")
