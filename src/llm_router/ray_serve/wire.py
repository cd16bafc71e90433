"""What travels between the router's ingress and a model replica through Ray Serve handles:
the worker channel's own JSON shapes (worker/protocol.py), one message per event, so that an
engine's RouterError crosses as a value (`{"error": ...}`) rather than as a pickled
exception Ray would wrap. Also the settings each side runs with, derived from the user's."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

from ..config import Settings
from ..errors import RouterError
from ..types import Finished, PromptLogprobs, TextDelta
from ..worker.protocol import decode, error_to_wire, events_to_wire

__all__ = [
    "INGRESS_MEMORY",
    "error_message",
    "event_message",
    "ingress_settings",
    "replica_settings",
    "settings_from_wire",
    "settings_to_wire",
]

# The ingress holds no model memory: its manager only opens routes to the model replicas, so
# its budget never refuses or evicts one (each replica keeps its own budget and LRU).
INGRESS_MEMORY = 2**60


def event_message(event: TextDelta | PromptLogprobs | Finished) -> dict[str, Any]:
    """One generation event as the worker channel writes it (without its sequence id)."""
    message = decode(events_to_wire([(0, event)]))
    message.pop("id", None)
    return message


def error_message(exc: RouterError) -> dict[str, Any]:
    return {"error": error_to_wire(exc)}


def settings_to_wire(settings: Settings, cwd: Path) -> dict[str, Any]:
    """The settings, as JSON, with relative paths resolved against `cwd` (Ray's processes
    start elsewhere): every node must see the models directory at the same path."""
    data = settings.model_dump(mode="json")
    for key in ("models_dir", "data_dir"):
        if data.get(key) and not os.path.isabs(data[key]):
            data[key] = str(cwd / data[key])
    return data


def settings_from_wire(data: dict[str, Any]) -> Settings:
    return Settings.model_validate(data)


def ingress_settings(settings: Settings) -> Settings:
    """The router replica's settings: its manager opens one route per model to the model
    deployment (ray_serve/handle.py), which holds no memory here and never needs unloading."""
    return settings.model_copy(
        update={
            "models_max": 0,
            "memory_budget": INGRESS_MEMORY,
            "keep_alive": -1,
            "spare_workers": False,
        }
    )


def replica_settings(settings: Settings) -> Settings:
    """A model replica's settings: it keeps `models_per_replica` models (the same LRU size as
    Serve's multiplexing), its CPUs are its models' threads, and it neither provisions nor
    watches the models directory (the ingress does; an unknown name still re-scans)."""
    ray = settings.ray
    update: dict[str, Any] = {
        "models_max": ray.models_per_replica,
        "watch_interval": 0.0,
        "provision_default_models": False,
        "spare_workers": False,
        "preload": [],
        "models": [m.model_copy(update={"pin": False}) for m in settings.models],
        "thread_budget": settings.thread_budget or max(1, math.floor(ray.num_cpus)),
    }
    if ray.memory is not None:
        update["memory_budget"] = ray.memory
    if settings.model_defaults.threads is None:
        threads = max(1, math.floor(ray.num_cpus))
        update["model_defaults"] = settings.model_defaults.model_copy(update={"threads": threads})
    return settings.model_copy(update=update)
