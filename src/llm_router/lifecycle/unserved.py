"""What a models directory holds and does not serve, said rather than skipped: a link named like
a model whose target is gone (or a loop), and a folder holding models one level down (a `.gguf`
in a folder of its own, an `org/repo` layout), which is not served (models are read from the
top of the directory; a path-like id would be a naming scheme of its own)."""

from __future__ import annotations

import errno
import os
from pathlib import Path

from ..errors import InvalidModelFile
from ..formats.detect import detect

__all__ = ["broken_link", "models_inside", "nested_problem"]


def broken_link(path: Path) -> str:
    """Why the symbolic link `path` (which does not resolve) serves nothing."""
    try:
        path.stat()
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "is a loop of symbolic links"
        return f"is a symbolic link to {os.readlink(path)}, which does not exist"
    return "cannot be read"


def models_inside(folder: Path) -> tuple[str, ...]:
    """The models one level down in `folder` (a folder that is no model itself): a `.gguf`
    put in a folder of its own, an `org/repo` layout."""
    if not folder.is_dir():
        return ()
    names = []
    try:
        children = sorted(c for c in folder.iterdir() if not c.name.startswith("."))
    except OSError:
        return ()
    for child in children:
        try:
            model = detect(child) is not None
        except InvalidModelFile:
            model = True
        except OSError:
            model = False
        if model:
            names.append(child.name)
    return tuple(names)


def nested_problem(folder: Path, names: tuple[str, ...]) -> str:
    shown = ", ".join(names[:3]) + (" ..." if len(names) > 3 else "")
    return (
        f"{folder.name}/ holds models one level down ({shown}), which are not served: models "
        f"are read from the top of the models directory; move them up, or link them there "
        f"(ln -s {folder.name}/{names[0]} .)"
    )
