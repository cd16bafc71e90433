"""Deploying onto a Ray cluster: the Serve application built from the settings (`build`),
and `deploy`, which joins the cluster, starts Serve's HTTP proxy on `host`:`port` and runs
the application (replacing one of the same name). `llm-router ray deploy` leaves it running
on the cluster; `llm-router serve --ray` stays in the foreground and deletes it on exit.

Three deployments: the router (ingress.py, `ingress_replicas`), the models (replica.py:
`replicas` or autoscaling, the CPUs, memory and resources of `ray:`) and the directory of
which replica holds what (directory.py, one replica, no CPU)."""

from __future__ import annotations

import logging
import os
import socket
from pathlib import Path
from typing import Any

from ..config import Settings
from ..errors import ConfigError
from ..units import parse_bytes

__all__ = ["build", "connect", "deploy", "model_options", "undeploy"]

log = logging.getLogger(__name__)
HEALTH_CHECK_PERIOD = 2.0  # seconds; a replica also starts its manager on its first check


def model_options(settings: Settings) -> dict[str, Any]:
    """The model deployment's Serve options, from `ray:`."""
    ray = settings.ray
    actor: dict[str, Any] = {"num_cpus": ray.num_cpus}
    if ray.memory is not None:
        actor["memory"] = parse_bytes(ray.memory, 1)
    if ray.resources:
        actor["resources"] = dict(ray.resources)
    options: dict[str, Any] = {
        "name": "models",
        "ray_actor_options": actor,
        "max_ongoing_requests": ray.max_ongoing_requests,
        "health_check_period_s": HEALTH_CHECK_PERIOD,
        # a model may take a while to load; Serve's default health check timeout is 30 s
        "graceful_shutdown_timeout_s": settings.unload_grace + 5,
    }
    if ray.max_replicas_per_node is not None:
        options["max_replicas_per_node"] = ray.max_replicas_per_node
    scale = ray.autoscaling
    if scale.max_replicas is not None:
        options["autoscaling_config"] = {
            "min_replicas": scale.min_replicas,
            "initial_replicas": ray.replicas,
            "max_replicas": max(scale.max_replicas, scale.min_replicas),
            "target_ongoing_requests": scale.target_ongoing_requests,
            "upscale_delay_s": scale.upscale_delay_s,
            "downscale_delay_s": scale.downscale_delay_s,
        }
    else:
        options["num_replicas"] = ray.replicas
    return options


def build(settings: Settings, cwd: Path) -> Any:
    """The Serve application (bound, not yet running) for `settings`."""
    from ray import serve

    from .directory import Directory
    from .ingress import RouterIngress
    from .replica import replica_class
    from .wire import settings_to_wire

    wire = settings_to_wire(settings, cwd)
    ray = settings.ray
    directory = serve.deployment(
        name="directory", num_replicas=1, ray_actor_options={"num_cpus": 0}
    )(Directory).bind()
    models = serve.deployment(**model_options(settings))(replica_class(ray.models_per_replica))
    ingress = serve.deployment(
        name="router",
        num_replicas=ray.ingress_replicas,
        ray_actor_options={"num_cpus": ray.ingress_num_cpus},
        max_ongoing_requests=max(100, settings.max_connections),
    )(RouterIngress)
    return ingress.bind(wire, str(cwd), models.bind(wire, str(cwd), directory), directory)


def connect(settings: Settings, address: str | None) -> None:
    """Join the Ray cluster at `address`, else `ray.address`, else RAY_ADDRESS or a running
    local cluster ("auto"). Raises ConfigError, saying what to do, when none answers."""
    import ray

    where = address or settings.ray.address or os.environ.get("RAY_ADDRESS") or "auto"
    _reachable(where)
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        ray.init(address=where, ignore_reinit_error=True, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ConfigError(
            f"cannot join the Ray cluster at {where!r}: {exc}. Start one with `ray start "
            "--head` (or name a running one with --ray ADDRESS / ray.address)"
        ) from None


def _reachable(where: str) -> None:
    """Refuse at once a HOST:PORT where nothing listens (Ray itself retries for minutes)."""
    if where == "auto" or "://" in where:
        return
    host, _, port = where.rpartition(":")
    try:
        socket.create_connection((host or "127.0.0.1", int(port)), timeout=5).close()
    except (OSError, ValueError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise ConfigError(
            f"no Ray cluster answers at {where!r} ({reason}). Start one with `ray start "
            "--head`, or name a running one with --ray ADDRESS / ray.address"
        ) from None


def deploy(settings: Settings, address: str | None, cwd: Path | None = None) -> str:
    """Join the cluster, start Serve's proxy and run the application; returns its URL once
    every deployment is running. Raises ConfigError when the cluster cannot be joined."""
    from ray import serve

    connect(settings, address)
    serve.start(
        http_options={"host": settings.host, "port": settings.port},
        proxy_location=settings.ray.proxy_location,
    )
    app = build(settings, cwd or Path.cwd())
    serve.run(app, name=settings.ray.app_name, route_prefix="/")
    url = f"http://{settings.host}:{settings.port}"
    log.info("deployed '%s' on Ray: %s", settings.ray.app_name, url)
    return url


def undeploy(settings: Settings) -> None:
    """Delete the application (its replicas stop; Serve and the cluster stay up)."""
    from ray import serve

    serve.delete(settings.ray.app_name)
