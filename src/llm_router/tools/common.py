"""What the conversion tools share: their errors and writing an output atomically (into a
temporary sibling, renamed over the target only once complete)."""

from __future__ import annotations

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


@contextmanager
def staged_output(out: Path, *, force: bool, folder: bool) -> Iterator[Path]:
    """Yield a temporary path beside `out` to write to (a fresh folder when `folder`). On a
    clean exit it replaces `out`; on an error it is removed and `out` is left untouched.
    Raises OutputExists when `out` exists and not `force`."""
    if out.exists() and not force:
        raise OutputExists(f"{out} exists; pass force (--force) to overwrite it")
    out.parent.mkdir(parents=True, exist_ok=True)
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
