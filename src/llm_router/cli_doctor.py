"""`llm-router doctor`: what was detected on this machine, the settings derived from it for each
model and why, the engines installed, and any problem found (an engine missing its extra, a
models directory that cannot be written, a model that cannot be served). Exit status 1 when
there is a problem."""

from __future__ import annotations

import asyncio
import os
import sys
import tempfile

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .cli import ConfigOpt, ModelsDirOpt, _settings, missing_models_dir
from .config import Settings
from .engines import ENGINES, check_available
from .errors import ConfigError, RouterError
from .lifecycle.discovery import Scanner
from .lifecycle.fit import fit
from .machine import detect
from .units import parse_bytes

__all__ = ["models_dir_problem", "register"]


def models_dir_problem(settings_dir: os.PathLike[str]) -> str | None:
    """None when a file can be created in the directory (or, when it does not exist yet, in
    the nearest folder above it that does: the server makes it), else why not. A look only:
    nothing is left made (it made the directory it checked)."""
    path = os.path.abspath(os.fspath(settings_dir))
    existing = path
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        return f"the models directory {path} cannot be made: {existing} is a file"
    try:
        with tempfile.NamedTemporaryFile(dir=existing, prefix=".doctor-"):
            pass
    except OSError as exc:
        return f"the models directory {path} cannot be written: {exc.strerror}"
    return None


def doctor(config: ConfigOpt = None, models_dir: ModelsDirOpt = None) -> None:
    """Print the machine, the derived settings and why, the engines, and any problem."""
    settings = _settings(config, models_dir=models_dir)
    out = Console(width=None if sys.stdout.isatty() else 200, highlight=False)
    machine = detect()
    problems: list[str] = []

    out.print("[bold]Machine[/bold]")
    out.print(f"  cores        {machine.physical_cores} physical, {machine.logical_cores} logical")
    out.print(
        f"  memory       {machine.memory_total / 2**30:.1f} GiB, "
        f"{machine.memory_available / 2**30:.1f} GiB available"
    )
    out.print(
        f"  CPU          {machine.arch}: {', '.join(machine.features) or 'no known features'}"
    )
    budget = parse_bytes(settings.memory_budget, machine.memory_available)
    out.print(f"  budget       {budget / 2**30:.1f} GiB (memory_budget: {settings.memory_budget})")
    threads = settings.thread_budget or machine.physical_cores
    why = "thread_budget" if settings.thread_budget else "the physical cores"
    out.print(f"  threads      {threads}, shared by busy models ({why})")

    engines = Table("engine", "extra", "status", title="Engines", title_justify="left")
    available = set()
    for name, info in sorted(ENGINES.items()):
        if name == "fake":
            continue
        try:
            check_available(name)
        except RouterError:
            engines.add_row(name, info.extra, "[red]missing[/red]")
        else:
            available.add(name)
            engines.add_row(name, info.extra, "installed")
    out.print(engines)

    if problem := models_dir_problem(settings.models_dir):
        problems.append(problem)
    if problem := _open_bind_problem(settings):
        problems.append(problem)
    scanner = Scanner(settings)
    sources = scanner.scan().values() if settings.models_dir.is_dir() else []
    problems += scanner.problems()
    table = Table(
        "model", "engine", "threads", "slots", "context/slot", "batch", "why",
        title=f"Models in {settings.models_dir}", title_justify="left",
    )  # fmt: skip
    for source in sources:
        if source.error:
            problems.append(f"{source.id}: {source.error}")
            continue
        if source.engine not in available and source.engine != "fake":
            extra = ENGINES[source.engine].extra if source.engine in ENGINES else "?"
            problems.append(
                f"{source.id} needs the {source.engine} engine: "
                f"pip install 'llm-runner-router[{extra}]'"
            )
        options = settings.model_defaults.merged(source.config.engine_options())
        fitted = fit(source, options.model_dump(exclude_none=True), budget, machine)
        v = fitted.values
        reasons = sorted(
            {fitted.reasons[k] for k in ("context_size", "parallel") if k in fitted.reasons}
        )
        table.add_row(
            source.id, source.engine, str(v.get("threads", "-")), str(v.get("parallel", "-")),
            str(v.get("context_size", "-")), str(v.get("batch_size", "-")),
            "; ".join(reasons) or "the engine allocates as tokens come",
        )  # fmt: skip
    out.print(table)
    if note := missing_models_dir(settings):
        out.print(f"  {escape(note)}")
    if problems:
        out.print("[bold red]Problems[/bold red]")
        for p in problems:
            out.print(f"  - {p}")
        raise typer.Exit(1)
    out.print("[green]No problems found.[/green]")


def register(app: typer.Typer) -> None:
    app.command()(doctor)


def _open_bind_problem(settings: Settings) -> str | None:
    """What `serve` refuses before it starts: a public address with nobody's key required
    (the doctor said "No problems found" to it; found from outside)."""
    from .gateway.service import check_open_bind

    try:
        asyncio.run(check_open_bind(settings))
    except ConfigError as exc:
        return exc.message
    return None
