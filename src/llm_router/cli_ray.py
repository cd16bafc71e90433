"""`llm-router ray deploy|delete` and `llm-router serve --ray ADDRESS`: the same config file
onto a Ray cluster (src/llm_router/ray_serve/; the `ray` extra)."""

from __future__ import annotations

import signal
import threading
from pathlib import Path
from typing import Annotated

import typer

from .cli import _settings, log
from .cli_console import error
from .config import Settings
from .errors import ConfigError

__all__ = ["register", "serve_on_ray"]

AddressOpt = Annotated[
    str | None,
    typer.Option(
        "--address", help="Ray cluster (auto, HOST:6379, ray://HOST:10001); default: ray.address."
    ),
]

ray_app = typer.Typer(
    help="Deploy onto a Ray cluster: the router as Serve's ingress, models on replicas.",
    no_args_is_help=True,
)


def _ray_settings(config: Path | None, host: str | None, port: int | None) -> Settings:
    settings = _settings(config, host=host, port=port)
    try:
        import ray  # noqa: F401
    except ImportError:
        error("Ray is not installed: pip install 'llm-runner-router[ray]'")
        raise typer.Exit(2) from None
    return settings


def _deploy(settings: Settings, address: str | None) -> str:
    from .ray_serve.deploy import deploy

    try:
        return deploy(settings, None if address == "auto" else address)
    except ConfigError as exc:
        error(exc.message)
        raise typer.Exit(2) from None


@ray_app.command("deploy")
def deploy_command(
    config: Annotated[Path, typer.Argument(help="The config file (as for `serve`).")],
    address: AddressOpt = None,
    host: Annotated[str | None, typer.Option(help="Address Serve's proxy listens on.")] = None,
    port: Annotated[int | None, typer.Option(help="Port Serve's proxy listens on.")] = None,
) -> None:
    """Deploy CONFIG onto the cluster and return; it runs there until `ray delete`."""
    settings = _ray_settings(config, host, port)
    url = _deploy(settings, address)
    print(f"deployed '{settings.ray.app_name}': {url}/v1")


@ray_app.command("delete")
def delete_command(
    config: Annotated[Path | None, typer.Argument(help="The config file deployed.")] = None,
    address: AddressOpt = None,
) -> None:
    """Delete the deployed application (ray.app_name) from the cluster."""
    from .ray_serve.deploy import connect, undeploy

    settings = _ray_settings(config, None, None)
    try:
        connect(settings, None if address == "auto" else address)
    except ConfigError as exc:
        error(exc.message)
        raise typer.Exit(2) from None
    undeploy(settings)
    print(f"deleted '{settings.ray.app_name}'")


def serve_on_ray(settings: Settings, address: str) -> None:
    """`serve --ray ADDRESS`: deploy, serve until SIGTERM or Ctrl-C, then delete the app."""
    try:
        import ray  # noqa: F401
    except ImportError:
        error("--ray needs Ray: pip install 'llm-runner-router[ray]'")
        raise typer.Exit(2) from None
    from .ray_serve.deploy import undeploy

    url = _deploy(settings, address)
    stop = threading.Event()  # set after ray.init, whose own handlers abort the process
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    log.info("serving %s on Ray at %s/v1 (Ctrl-C stops)", settings.models_dir, url)
    try:
        stop.wait()
    finally:
        log.info("deleting the Ray application '%s'", settings.ray.app_name)
        undeploy(settings)


def register(app: typer.Typer) -> None:
    app.add_typer(ray_app, name="ray")
