"""The `llm-router` command: serve, run, ls, convert, quantize."""

from __future__ import annotations

import logging
import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from .cli_console import err, error
from .config import Settings
from .errors import ConfigError, RouterError
from .lifecycle.discovery import Scanner
from .logs import setup_logging
from .reload import ConfigSource

__all__ = ["app", "main"]

app = typer.Typer(
    help="Run and route LLMs of any format behind one OpenAI-compatible endpoint.",
    no_args_is_help=True,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},  # as llama.cpp and Ollama
)
T = TypeVar("T")


def _print_version(value: bool) -> None:
    if value:
        from . import __version__

        print(f"llm-router {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_print_version, is_eager=True, help="Print the version."
        ),
    ] = False,
) -> None:
    """Run and route LLMs of any format behind one OpenAI-compatible endpoint."""


log = logging.getLogger("llm_router")

ConfigOpt = Annotated[
    Path | None,
    typer.Option("--config", "-F", help="YAML or JSON config file (-c is llama-server's -c)."),
]
ModelsDirOpt = Annotated[Path | None, typer.Option("--models-dir", help="Directory of models.")]


def _settings(config: Path | None, **overrides: Any) -> Settings:
    return _read(ConfigSource(config, {k: v for k, v in overrides.items() if v is not None}))


def missing_models_dir(settings: Settings) -> str | None:
    """Why the models directory holds no model, when it is not there to hold any."""
    where = settings.models_dir
    if where.is_dir():
        return None
    if where.exists():
        return f"the models directory {where} is not a directory"
    then = (
        ": `llm-router serve` makes it and puts the bundled models in it"
        if settings.provision_default_models
        else ""
    )
    return f"the models directory {where} does not exist{then}"


def _read(source: ConfigSource) -> Settings:
    try:
        return source.load()
    except ConfigError as exc:
        error(exc.message)
        raise typer.Exit(2) from None


@app.command()
def serve(
    config: ConfigOpt = None,
    host: Annotated[str | None, typer.Option(help="Address to listen on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port to listen on.")] = None,
    models_dir: ModelsDirOpt = None,
    log_level: Annotated[str | None, typer.Option(help="debug, info, warning, error.")] = None,
    models_max: Annotated[int | None, typer.Option(help="Most models loaded at once.")] = None,
    memory_budget: Annotated[str | None, typer.Option(help="e.g. 8GiB or 75%.")] = None,
    autoload: Annotated[
        bool | None,
        typer.Option(
            "--autoload/--no-autoload",
            "--models-autoload/--no-models-autoload",
            help="Load a model when a request names it (llama-server's names too).",
        ),
    ] = None,
    ctx_size: Annotated[
        int | None,
        typer.Option("--ctx-size", "-c", help="llama-server's: context of all slots together."),
    ] = None,
    parallel: Annotated[
        int | None, typer.Option("--parallel", "-np", help="Slots per model (llama-server's).")
    ] = None,
    threads: Annotated[
        int | None, typer.Option("--threads", "-t", help="CPU threads per model.")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option("--batch-size", "-b", help="Most tokens per decode step.")
    ] = None,
    model: Annotated[
        Path | None,
        typer.Option("--model", "-m", help="Serve this one model file (llama-server's)."),
    ] = None,
    alias: Annotated[
        str | None, typer.Option("--alias", "-a", help="The name --model is served under.")
    ] = None,
    api_key: Annotated[
        str | None,
        typer.Option(
            "--api-key",
            help="A key with every scope (llama-server's; as LLM_ROUTER_MASTER_KEY).",
        ),
    ] = None,
    workers: Annotated[
        int,
        typer.Option(
            min=1, help="Router processes on the port (a gateway of remote targets, with Redis)."
        ),
    ] = 1,
    ray: Annotated[
        str | None,
        typer.Option(
            "--ray",
            metavar="ADDRESS",
            help="Deploy onto the Ray cluster at ADDRESS ('auto': ray.address, RAY_ADDRESS or "
            "the local one) and serve until stopped (the ray extra).",
        ),
    ] = None,
) -> None:
    """Serve every model in the models directory over the OpenAI API. llama-server's router
    flags mean what they mean there (README: "Coming from llama-server or Ollama")."""
    from .compat import llama_overrides
    from .gateway.keys import MASTER_ENV

    # A SIGHUP while the server starts (it can take seconds: provisioning, migrations) is
    # held, not fatal: once started, the server reloads if the file changed since it was read
    # (Reloader.catch_up). It ended the process silently, its port already taking requests.
    # A handler, not SIG_IGN: processes started from here do not inherit it.
    signal.signal(signal.SIGHUP, lambda signum, frame: None)
    if api_key and not os.environ.get(MASTER_ENV):  # read by the gateway (its processes too)
        os.environ[MASTER_ENV] = api_key

    try:
        llama = llama_overrides(
            ctx_size=ctx_size,
            parallel=parallel,
            threads=threads,
            batch_size=batch_size,
            model=str(model) if model else None,
            alias=alias,
            models_dir=models_dir,
        )
    except ConfigError as exc:
        error(exc.message)
        raise typer.Exit(2) from None
    overrides = {
        **llama,
        "host": host,
        "port": port,
        "log_level": log_level,
        "models_max": models_max,
        "memory_budget": memory_budget,
        "autoload": autoload,
        **({"models_dir": models_dir} if models_dir else {}),
    }
    # read again by a reload (SIGHUP, POST /admin/reload, watch_config): server/reload.py
    source = ConfigSource(config, {k: v for k, v in overrides.items() if v is not None})
    settings = _read(source)
    setup_logging(settings.log_level, settings.log_format == "json")
    from .cli_serve import start

    start(settings, source, workers, ray)


@app.command()
def ls(config: ConfigOpt = None, models_dir: ModelsDirOpt = None) -> None:
    """List the models found, with format, engine, size, quantization and context length."""
    settings = _settings(config, models_dir=models_dir)
    table = Table(
        "id", "format", "engine", "task", "arch", "params", "quant", "context", "size", "note"
    )
    for source in Scanner(settings).scan().values():
        info = source.info
        params = info.parameters if info else None
        table.add_row(
            source.id,
            source.format,
            source.engine,
            source.task or "-",
            (info.architecture or "-") if info else "-",
            f"{params / 1e6:.0f}M" if params else "-",
            (info.quantization or "-") if info else "-",
            str(info.context_length or "-") if info else "-",
            f"{source.identity.size_bytes / 2**20:.1f} MiB",
            (source.error or "").removeprefix(f"{source.path}: "),
        )
    # Piped output gets room for every column rather than the 80 a terminal-less console assumes.
    Console(width=None if sys.stdout.isatty() else 240).print(table)
    if not table.row_count:
        err.print(escape(missing_models_dir(settings) or f"no models in {settings.models_dir}"))


app.command("list", hidden=True)(ls)  # `ollama list`, in the fingers of Ollama's users


@app.command()
def convert(
    src: Annotated[Path, typer.Argument(help="A GGUF file, or an HF folder for --to onnx|gguf.")],
    out: Annotated[Path, typer.Argument(help="Where to write the converted model.")],
    to: Annotated[str, typer.Option("--to", help="hf (safetensors folder), onnx or gguf.")],
    force: Annotated[bool, typer.Option("--force", help="Overwrite OUT if it exists.")] = False,
    precision: Annotated[str, typer.Option(help="ONNX text models: int4, int8 or fp32.")] = "int8",
    outtype: Annotated[str, typer.Option(help="GGUF weights: f16, bf16 or f32.")] = "f16",
) -> None:
    """Convert SRC to another format: GGUF -> HF safetensors, GGUF or HF -> ONNX, HF -> GGUF."""
    from .tools import convert as run_convert

    targets: dict[str, Literal["hf", "onnx", "gguf"]] = {"hf": "hf", "onnx": "onnx", "gguf": "gguf"}
    target = targets.get(to)
    if target is None:
        error(f"--to must be hf, onnx or gguf, not {to!r}")
        raise typer.Exit(2)
    before = _size(src)
    _tool(
        lambda: run_convert(
            src, target, out, force=force, progress=_progress, precision=precision, outtype=outtype
        )
    )
    print(f"{src} ({_mib(before)}) -> {out} ({_mib(_size(out))}, {to})")


@app.command()
def quantize(
    src: Annotated[Path, typer.Argument(help="The GGUF file to quantize.")],
    out: Annotated[Path, typer.Argument(help="Where to write the quantized GGUF.")],
    type_name: Annotated[str, typer.Option("--type", help="Q4_K_M, Q5_K_M, Q8_0, F16...")],
    force: Annotated[bool, typer.Option("--force", help="Overwrite OUT if it exists.")] = False,
) -> None:
    """Quantize a GGUF file to another type with llama.cpp's quantizer."""
    from .tools import quantize as run_quantize

    result = _tool(lambda: run_quantize(src, out, type_name, force=force, progress=_progress))
    print(
        f"{src} ({_mib(result.size_before)}) -> {out} ({_mib(result.size_after)}, "
        f"{result.type_name}) in {result.seconds:.1f} s"
    )


def _tool(work: Callable[[], T]) -> T:
    """Run a conversion tool; its refusals and failures end the command with status 1."""
    try:
        return work()
    except RouterError as exc:
        error(exc.message)
        raise typer.Exit(1) from None


def _progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())
    return path.stat().st_size if path.exists() else 0


def _mib(size: int) -> str:
    return f"{size / 2**20:.1f} MiB"


def _register_commands() -> None:
    """Command groups that live in modules of their own (each has `register(app)`)."""
    # One import and one call per module: cli_keys, cli_models, ... (added as they land).
    from . import cli_bench, cli_chat, cli_doctor, cli_models, cli_pull

    cli_models.register(app)
    cli_chat.register(app)
    cli_pull.register(app)
    cli_bench.register(app)
    cli_doctor.register(app)
    from . import cli_keys

    cli_keys.register(app)
    from . import cli_ray

    cli_ray.register(app)


_register_commands()


def main() -> None:
    app()
