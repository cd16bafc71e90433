"""The router as Ray Serve's HTTP ingress: each replica runs the single-machine app
(`create_app`: the same routes, middleware, errors, headers and streaming), built once the
replica starts, with an IngressManager whose models live on the model deployment
(handle.py). More ingress replicas scale out the HTTP front; Serve's proxy spreads
connections over them."""

from __future__ import annotations

import contextlib
import logging
import os
from typing import Any

from ray import serve

from ..engines import LoadSpec
from ..lifecycle.discovery import ModelSource
from ..lifecycle.manager import ModelManager
from .directory import ReplicaView
from .handle import DeploymentPool
from .wire import ingress_settings, settings_from_wire

__all__ = ["IngressManager", "RouterIngress"]


class IngressManager(ModelManager):
    """The router's ModelManager with a DeploymentPool: a model's load spec names it by id,
    as the model replicas know it (each fits the engine options to its own node)."""

    def _spec(self, source: ModelSource) -> LoadSpec:
        return LoadSpec(source.id)


@serve.ingress()
class RouterIngress:
    """Constructed by Serve with the settings (JSON), the CLI's working directory and the
    handles of the model deployment and the directory; `__serve_build_asgi_app__` builds the
    app on the replica's event loop, and Serve runs its lifespan (start, then stop)."""

    def __init__(self, settings: dict[str, Any], cwd: str, models: Any, directory: Any) -> None:
        with contextlib.suppress(OSError):
            os.chdir(cwd)
        self._settings = ingress_settings(settings_from_wire(settings))
        self._models = models
        self._directory = directory

    async def __serve_build_asgi_app__(self) -> Any:
        from ..server.app import create_app

        settings = self._settings
        logging.getLogger("llm_router").setLevel(settings.log_level.upper())  # Ray's handlers
        pool = DeploymentPool(self._models, ReplicaView(self._directory), settings)
        return create_app(settings, IngressManager(settings, pool=pool))
