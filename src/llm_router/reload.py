"""Reading the configuration again while serving (`POST /admin/reload`, SIGHUP): where it came
from (`ConfigSource`), and what of a new reading a running server takes (`Plan`, pure).

What applies at once (`LIVE`): the model entries (local and remote: options, aliases, prices,
pins, keep-alive, system prompts, sampling defaults), `model_defaults`, the routes, and the
lifecycle's limits (models_max, the memory budget, keep-alive, preload, queues, autoload).
Everything else (the address, the data directory and database, Redis, auth and the gateway's
defaults, the cache, logs and tracing, CORS and body limits, breaker tuning, Ray) is read once
at start: a change there is reported as needing a restart and not applied, so the settings a
server runs with are always one consistent reading plus the live fields of a later one."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import Settings
from .config_load import load_config

__all__ = ["LIVE", "SETTLE", "ConfigSource", "Plan", "Settling", "plan", "stamp"]

SETTLE = 2.0  # seconds a changed file must stay unchanged before `watch_config` reads it
LIVE = frozenset(
    {
        "models",
        "model_defaults",
        "routes",
        "models_max",
        "memory_budget",
        "keep_alive",
        "keep_alive_max",
        "preload",
        "queue_per_model",
        "queue_total",
        "queue_timeout",
        "unload_grace",
        "drain_after",
        "autoload",
        "max_n",
        "send_timeout",
    }
)


@dataclass
class ConfigSource:
    """Where the settings were read from: the file and the command line's overrides (the
    environment is read again as it is then). `first`: the first reading, what the server
    started from; `read`: see `load`. Picklable: `serve --workers N` sends it to each router process."""

    path: Path | None = None
    overrides: dict[str, Any] = field(default_factory=dict)
    first: Settings | None = field(default=None, repr=False, compare=False)
    read: tuple[int, int, int] | None = field(default=None, repr=False, compare=False)

    def load(self) -> Settings:
        """A fresh reading; raises ConfigError naming the key when it is invalid. `read`:
        the file's `stamp` as it was read (or tried)."""
        if self.path is not None:
            self.read = stamp(self.path)
        settings = load_config(self.path, self.overrides)
        if self.first is None:
            self.first = settings
        return settings


@dataclass(frozen=True)
class Plan:
    """What a reload does: `settings` to run with from now on (the running ones with the live
    fields of the new reading), the live fields that changed, and the other fields whose new
    values wait for a restart."""

    settings: Settings
    applied: tuple[str, ...]
    restart_required: tuple[str, ...]


def plan(running: Settings, read: Settings, new: Settings) -> Plan:
    """The reload of `new` into a server running with `running`, which was started from
    the reading `read` (they differ where the server adjusted what it read: a port of 0
    bound, `--workers` turning off the directory watch). A field changed if `new` differs
    from `read`, so those adjustments never count as changes."""
    fields = sorted(Settings.model_fields)
    applied = tuple(f for f in fields if f in LIVE and getattr(new, f) != getattr(running, f))
    waiting = tuple(f for f in fields if f not in LIVE and getattr(new, f) != getattr(read, f))
    update = {f: getattr(new, f) for f in applied}
    return Plan(running.model_copy(update=update), applied, waiting)


class Settling:
    """When a watched file's change may be read (`watch_config`): once the file has stayed as
    it is for `looks` looks after the one that saw the change. A file written in several
    steps shows each part in turn, and a part can be a valid configuration (all but the
    `routes:` of it, say: every route would go). Only time tells a finished file from one
    whose writer paused; a pause longer than the settling is still read as it stands (the
    README says so, and to rename a finished file over the old one instead). Pure: the
    caller looks and says what it saw."""

    def __init__(self, looks: int) -> None:
        self.looks = looks
        self._stamp: object = self  # nothing seen yet
        self._same = 0

    def settled(self, now: tuple[int, int, int] | None) -> bool:
        """`now`: the file's stamp at this look (one that differs from what was read)."""
        if now != self._stamp:
            self._stamp, self._same = now, 0
            return False
        self._same += 1
        return self._same >= self.looks


def stamp(path: Path) -> tuple[int, int, int] | None:
    """What changes when the file is written or replaced (its inode, size, mtime); None
    while it is missing."""
    try:
        st = path.stat()
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)
