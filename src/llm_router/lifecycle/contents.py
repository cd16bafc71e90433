"""What a model's files hold: a content hash (blake2b of every byte; of every file of a folder
model) per file state (size, newest mtime, newest ctime), computed once, in a thread, and
shared by whoever asks while it runs. Two readers: the response cache's identity of a model
(cache/identity.py), and the manager, which tells a file only touched (`touch`, `rsync -t`, a
backup tool: a new mtime, the same bytes) from one changed before unloading its model
(manager.py `_compare`).

A `stat` of a file is done on the loop (microseconds); a folder's files are walked in a thread.
The ctime moves when a file is written in place with its mtime put back (`rsync --inplace
-t`), and also for a new hard link or a chmod: it only asks for the hash again."""

from __future__ import annotations

import asyncio
import hashlib
import stat
from pathlib import Path

__all__ = ["Contents", "hash_content"]

_CHUNK = 1 << 20


def hash_content(path: Path) -> str:
    """blake2b of the file's bytes (of a folder: of each file's relative path and bytes).
    Blocks: reads every byte (about a second per GB)."""
    h = hashlib.blake2b(digest_size=20)
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else [path]
    for file in files:
        if file != path:
            h.update(str(file.relative_to(path)).encode() + b"\0")
        with file.open("rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    return h.hexdigest()


class Contents:
    """Content hashes of files, memoized per file state (the newest state of each path only)."""

    def __init__(self) -> None:
        self._hashes: dict[tuple[Path, int, int, int], asyncio.Future[str]] = {}

    async def of(self, path: Path) -> tuple[int, int, str]:
        """(size, newest mtime in ns, hash) of the file or folder as it is now. Raises OSError
        when it is gone or unreadable. A state hashed before costs one `stat` (the response
        cache asks on every cacheable request). Files written while they were hashed are hashed
        again: the bytes read may be either state's (a file rewritten just after its model
        loaded was taken for the loaded one, its new bytes under the old state)."""
        while True:
            size, mtime, ctime = await _state(path)
            key = (path, size, mtime, ctime)
            future = self._hashes.get(key)
            if (
                future is not None
                and future.done()
                and not future.cancelled()
                and (future.exception() is None)
            ):
                return size, mtime, future.result()  # hashed at this state before: one stat
            if future is None:
                future = asyncio.ensure_future(asyncio.to_thread(hash_content, path))
                self._hashes = {k: v for k, v in self._hashes.items() if k[0] != path}
                self._hashes[key] = future
            try:
                content = await asyncio.shield(future)
            except Exception:
                self._hashes.pop(key, None)
                raise
            if await _state(path) == (size, mtime, ctime):
                return size, mtime, content
            self._hashes.pop(key, None)


def _file_state(path: Path) -> tuple[int, int, int] | None:
    """Size, mtime and ctime of a file; None for a folder."""
    st = path.stat()
    if stat.S_ISDIR(st.st_mode):
        return None
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns


async def _state(path: Path) -> tuple[int, int, int]:
    """Size, newest mtime and newest ctime: one `stat` for a file; a folder's files are walked
    in a thread."""
    state = _file_state(path)
    if state is not None:
        return state

    def walk() -> tuple[int, int, int]:
        size = newest = changed = 0
        for file in path.rglob("*"):
            if file.is_file():
                st = file.stat()
                size += st.st_size
                newest = max(newest, st.st_mtime_ns)
                changed = max(changed, st.st_ctime_ns)
        return size, newest, changed

    return await asyncio.to_thread(walk)
