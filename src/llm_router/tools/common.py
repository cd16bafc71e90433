"""What the conversion tools share: their errors and writing an output atomically (into a
temporary sibling, renamed over the target only once complete)."""

from __future__ import annotations

import glob
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ..errors import ConversionError, OutputExists

__all__ = ["ConversionError", "OutputExists", "Progress", "staged_output"]

Progress = Callable[[str], None]
"""Called with one line of human-readable progress at a time."""


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif path.exists() or path.is_symlink():
        path.unlink()


def _remove_stale(out: Path) -> None:
    """Stages of earlier runs into `out` whose process is gone (killed, SIGKILL: no clean-up
    ran; they were left beside it for good, a new run staging under its own pid). A stage of
    a process still alive, or of a reused pid, is left alone."""
    prefix = f".{out.name}.partial-"
    for stage in out.parent.glob(glob.escape(prefix) + "*"):
        pid = stage.name[len(prefix) :]
        if pid.isdigit() and not _alive(int(pid)):
            _remove(stage)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


@contextmanager
def staged_output(out: Path, *, force: bool, folder: bool) -> Iterator[Path]:
    """Yield a temporary path beside `out` to write to (a fresh folder when `folder`). On a
    clean exit it replaces `out`; on an error it is removed and `out` is left untouched.
    Raises OutputExists when `out` exists and not `force`."""
    if out.exists() and not force:
        raise OutputExists(f"{out} exists; pass force (--force) to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(out)
    stage = out.parent / f".{out.name}.partial-{os.getpid()}"
    _remove(stage)
    if folder:
        stage.mkdir()
    try:
        yield stage
    except BaseException:
        _remove(stage)
        raise
    if out.exists():
        _remove(out)
    os.replace(stage, out)
