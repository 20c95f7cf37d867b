import os
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
