"""`llm-router pull SOURCE`: a model from an https:// URL or the Hugging Face Hub into the
models directory, with a progress bar, resume and a sha256 check (tools/pull.py)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from .cli import ConfigOpt, ModelsDirOpt, _settings
from .cli_console import err, error
from .tools.pull import PullError, pull

__all__ = ["register"]


def pull_command(
    source: Annotated[
        str,
        typer.Argument(
            help="https://... URL, or a Hub reference: org/repo/file.gguf, org/repo:Q4_K_M."
        ),
    ],
    config: ConfigOpt = None,
    models_dir: ModelsDirOpt = None,
    sha256: Annotated[
        str | None, typer.Option(help="Expected sha256 (default: the Hub's, for Hub files).")
    ] = None,
    name: Annotated[str | None, typer.Option(help="File name in the models directory.")] = None,
) -> None:
    """Download a model into the models directory: resumed when interrupted, checked against
    its sha256, and visible to a running server only once complete."""
    settings = _settings(config, models_dir=models_dir)
    bar = Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),  # MiB, as the last line says
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=err,
        transient=not sys.stderr.isatty(),
        disable=not sys.stderr.isatty(),
    )
    task = bar.add_task(name or source.rsplit("/", 1)[-1], total=None)

    def progress(done: int, total: int | None) -> None:
        bar.update(task, completed=done, total=total)

    try:
        with bar:
            path = pull(source, settings.models_dir, name=name, sha256=sha256, progress=progress)
    except PullError as exc:
        error(exc.message)
        raise typer.Exit(1) from None
    size = path.stat().st_size
    print(f"pulled {path.name} ({size / 2**20:.1f} MiB) into {settings.models_dir}")


def register(app: typer.Typer) -> None:
    app.command("pull")(pull_command)
