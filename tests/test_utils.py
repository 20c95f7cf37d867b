import os
import re
import stat
import subprocess
import sys

import numpy as np
import pytest

from tests.conftest import ROOT
from utils import atomic_path, atomic_save_npy, atomic_write_text


def test_atomic_path_replaces_only_on_success(tmp_path):
    target = tmp_path / "out.txt"
    atomic_write_text(target, "first")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half-written")
            raise RuntimeError("crash while writing")
    assert target.read_text() == "first"
    assert os.listdir(tmp_path) == ["out.txt"]  # no temporary file left behind


def test_atomic_outputs_get_normal_permissions(tmp_path):
    atomic_save_npy(tmp_path / "a.npy", np.arange(3))
    mode = stat.S_IMODE((tmp_path / "a.npy").stat().st_mode)
    umask = os.umask(0)
    os.umask(umask)
    assert mode == 0o666 & ~umask
    np.testing.assert_array_equal(np.load(tmp_path / "a.npy"), np.arange(3))


def test_run_cli_turns_user_errors_into_one_line(tmp_path):
    script = tmp_path / "cli.py"
    script.write_text("import sys; sys.path.insert(0, %r)\n"
                      "from utils import UserError, run_cli\n"
                      "def main():\n    raise UserError('--flag: bad value')\n"
                      "run_cli(main)\n" % str(ROOT))
    result = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                            cwd=ROOT)
    assert result.returncode == 2 and result.stderr == "error: --flag: bad value\n"


def test_help_shows_every_default_once():
    from utils import CliParser

    parser = CliParser(description="line one\n  indented example")
    parser.add_argument("--size", type=int, default=112, help="image side")
    parser.add_argument("--out", default=None, help="output folder (default: --source)")
    parser.add_argument("--flag", action="store_true", help="a switch")
    parser.add_argument("--said", default=3, help="already says it (default: three)")
    text = parser.format_help()
    assert "image side (default: 112)" in text and "(default: None)" not in text
    assert "(default: False)" not in text and text.count("(default: three)") == 1
    assert "\n  indented example" in text  # usage examples keep their layout


@pytest.mark.parametrize("module", ["eval", "lfw_eval", "megaface", "demo", "data.prepare_data", "data.synthetic"])
def test_every_command_documents_its_flags(module, monkeypatch):
    import importlib

    import utils

    seen = []

    def capture(self, args=None, namespace=None):
        seen.append(self)
        raise SystemExit(0)
    monkeypatch.setattr(utils.CliParser, "parse_args", capture)
    with pytest.raises(SystemExit):
        importlib.import_module(module).parse_args([])
    parser = seen[0]
    undocumented = [a.option_strings for a in parser._actions if a.option_strings and not a.help]
    assert not undocumented, f"{module}: flags without help: {undocumented}"
    text = " ".join(parser.format_help().split())
    assert "(default: None)" not in text and not re.search(r"\(default: [^)]*\) \(default:", text)
