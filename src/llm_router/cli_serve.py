"""What `llm-router serve` does once its settings are read: the checks a start refuses on
before the port opens (a public address without a key, a data or models directory that
cannot be made, a port in use), then one server process, `--workers N` of them, or a Ray
deployment; the exit status says how it ended (cli.py holds the command and its options)."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from typing import Any

import typer

from .cli_console import error
from .config import Settings
from .errors import ConfigError
from .lifecycle.discovery import Scanner
from .reload import ConfigSource

__all__ = ["start"]

log = logging.getLogger("llm_router")


def start(settings: Settings, source: ConfigSource, workers: int, ray: str | None) -> None:
    """Serve until stopped. Raises typer.Exit with the command's status: 2 for a
    configuration refused, 3 for a server that never started, the signal's after a drain."""
    if ray is not None:
        from .cli_ray import serve_on_ray

        serve_on_ray(settings, ray)
        return
    from .gateway.service import check_open_bind
    from .gateway.store import check_data_dir
    from .server.run import listen, run_one

    try:
        # refused at once, and before the port opens: nothing listens beyond this machine
        # without a key, not even for the moment the check takes
        asyncio.run(check_open_bind(settings))
        if workers > 1:
            _serve_many(settings, workers, source)
            return
        sock = listen(settings.host, settings.port)  # a port in use: before anything is made
        check_data_dir(settings)
        if settings.provision_default_models and not settings.models_dir.is_dir():
            from .cli_doctor import models_dir_problem

            if problem := models_dir_problem(settings.models_dir):  # a traceback at start-up
                raise ConfigError(problem)
    except ConfigError as exc:
        error(exc.message)
        raise typer.Exit(2) from None
    settings = settings.model_copy(update={"port": sock.getsockname()[1]})  # --port 0
    pool = _early_spares(settings)  # before the server's own imports (~0.9 s): in parallel
    log.info("serving %s on http://%s:%d", settings.models_dir, settings.host, settings.port)
    try:
        served = run_one(settings, pool, [sock], source=source)
    except ConfigError as exc:  # found while building the app: a route's strategy, say
        error(exc.message)
        raise typer.Exit(2) from None
    if not served:
        raise typer.Exit(3)


def _serve_many(settings: Settings, workers: int, source: ConfigSource) -> None:
    from .server.run import run_many

    try:
        status = run_many(settings, workers, source)
    except ConfigError as exc:
        error(exc.message)
        raise typer.Exit(2) from None
    if status < 0:  # stopped by a signal: end by it, as one process does (143 after SIGTERM)
        signal.signal(-status, signal.SIG_DFL)
        os.kill(os.getpid(), -status)
        status = 128 - status
    raise typer.Exit(status)


def _early_spares(settings: Settings) -> Any:
    """A worker pool whose spares (one per engine the models directory needs) start now, so
    that they have imported their engine libraries when the first request comes."""
    from .worker.pool import WorkerPool

    pool = WorkerPool(settings.spare_workers)
    try:
        engines = {s.engine for s in Scanner(settings, quiet=True).scan().values() if not s.error}
        pool.start_early(engines)
    except OSError as exc:  # a best effort: the pool starts spares later anyway
        log.warning("could not start spare workers early: %s", exc)
    return pool
