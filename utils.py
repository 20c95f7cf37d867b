"""Small helpers shared by every module: user-facing errors, atomic writes, logging set-up, seeding."""
from __future__ import annotations

import argparse
import contextlib
import logging
import multiprocessing
import os
import random
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterator

import numpy as np


class UserError(Exception):
    """An error the user caused (bad flag, missing or corrupt file): shown as one line, exit status 2."""


class DefaultsHelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Every option's help ends with its default, unless the help already says it (or there is none to
    say: no default, a switch, a suppressed one); the description keeps its own line breaks (usage examples)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or action.default in (None, False, argparse.SUPPRESS) or action.nargs == 0:
            return text
        return f"{text} (default: %(default)s)"


class CliParser(argparse.ArgumentParser):
    """argparse with errors as UserError: one 'error: ...' line and exit status 2 through run_cli,
    instead of argparse's usage dump; help shows every default (`DefaultsHelpFormatter`)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        raise UserError(message)


def run_cli(main: Callable[[], int | None]) -> None:
    """Run a CLI entry point; a UserError becomes one 'error: ...' line on stderr and exit status 2."""
    try:
        code = main()
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, durable: bool = True, keep_suffix: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; it replaces `path` only if the block succeeds.

    A crash or an error inside the block leaves any earlier `path` untouched and removes the
    temporary file, so readers never see a half-written output. `durable` flushes the data to disk
    before the rename (skip it only for many small files whose loss a re-run repairs). `keep_suffix`
    ends the temporary name with `path`'s suffix, for writers that choose a format by it (OpenCV's).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = f".tmp{path.suffix}" if keep_suffix else ".tmp"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600 files; outputs get the usual permissions
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        if durable:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def path_under(path: str | os.PathLike, root: str | os.PathLike) -> str:
    """`path` relative to `root` for reports, or as it is where it lies elsewhere (a list may name files outside)."""
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def read_text_lines(path: str | os.PathLike, what: str) -> list[str]:
    """The lines of a UTF-8 text file a user names; a missing or unreadable one is a UserError naming `what`
    (e.g. '--pairs_file x.txt' or 'x.txt: noise list')."""
    try:
        return Path(path).read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise UserError(f"{what}: not found") from None
    except (OSError, UnicodeDecodeError) as err:
        raise UserError(f"{what}: cannot read: {err}") from None


def atomic_write_bytes(path: str | os.PathLike, data: bytes, durable: bool = True) -> None:
    with atomic_path(path, durable) as tmp:
        tmp.write_bytes(data)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_save_npy(path: str | os.PathLike, array: np.ndarray) -> None:
    """np.save to a temporary name, then rename (np.save itself would append '.npy' to the temp name)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            np.save(f, array)


def parallel_map(func, jobs: list, workers: int) -> Iterator:
    """`map(func, jobs)` in order, in `workers` forked processes when that helps (results stream back).

    Fork, not spawn: the jobs' module state (an open mmap, a list of encoded images) is inherited, not pickled.
    """
    if workers > 1 and len(jobs) > 1:
        with multiprocessing.get_context("fork").Pool(workers) as pool:
            yield from pool.imap(func, jobs)
    else:
        yield from map(func, jobs)


def default_output_dir(given: Path | None, command: str, name: str) -> Path:
    """A command's report folder: `given` (its --out), else work_space/<command>/<name>."""
    return Path(given) if given is not None else Path("work_space") / command / name


def setup_logging(level: int = logging.INFO) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    # matplotlib warns once per missing mathtext font (about 30 lines) and falls back to DejaVu Sans: harmless
    logging.getLogger("matplotlib.font_manager").setLevel(logging.ERROR)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    try:
        import torch
        torch.manual_seed(seed)
    except ImportError:  # the data tools work without torch
        pass
