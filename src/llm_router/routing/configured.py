"""The Dispatcher's targets and routes as the settings make them (a part of it, as a mixin):
remote targets built from `models:` entries (one pooled aiohttp session, health checks, the
breakers shared through Redis), and all of them replaced on a reload (`reconfigure`), with
the routes. Runs on the event loop, as the whole dispatcher does."""

from __future__ import annotations

import asyncio
import logging
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ..config import Cost, ModelConfig, RouteConfig, Settings
from ..errors import ConfigError
from .breaker import BreakerConfig, CircuitBreaker
from .remote import RemoteTarget
from .shared_breakers import BreakerSync
from .stats import TargetStats
from .strategies import Strategy, load_strategy
from .targets import Target
from .upstream import Upstream, env_proxy

if TYPE_CHECKING:
    import aiohttp

    from ..lifecycle.manager import ModelManager

__all__ = ["Route", "Targets", "load_routes"]

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Route:
    config: RouteConfig
    strategy: Strategy


def load_routes(routes: list[RouteConfig]) -> dict[str, Route]:
    """Name -> route, each with its strategy loaded (load_strategy: imports a strategy named
    'package.module:function'). Raises ConfigError naming the route and its key."""
    loaded: dict[str, Route] = {}
    for i, route in enumerate(routes):
        try:
            strategy = load_strategy(route.strategy, route.strategy_options)
        except ConfigError as exc:
            raise ConfigError(
                f"routes[{i}].strategy (route {route.name!r}): {exc.message}"
            ) from None
        loaded[route.name] = Route(route, strategy)
    return loaded


class Targets:
    if TYPE_CHECKING:  # the dispatcher's state and its other parts, for the type checker
        settings: Settings
        manager: ModelManager
        _session: aiohttp.ClientSession | None
        _breaker: BreakerConfig
        _targets: dict[str, Target]
        _routes: dict[str, Route]
        _health: dict[str, asyncio.Task[None]]
        _shared: BreakerSync | None
        _gone: dict[str, Cost]

        def remotes(self) -> list[RemoteTarget]: ...
        async def _check_health(self, target: Target) -> None: ...

    def _add_remote(self, cfg: ModelConfig) -> None:
        assert self._session is not None, "start() first"
        key = os.environ.get(cfg.api_key_env) if cfg.api_key_env else None
        if cfg.api_key_env and key is None:
            log.warning("target %s: environment variable %s is not set", cfg.id, cfg.api_key_env)
        upstream = Upstream(
            self._session,
            base_url=cfg.base_url or "",
            model=cfg.model or cfg.id,
            api_key=key,
            name=cfg.id,
            read_timeout=cfg.timeout,
            connect_timeout=min(10.0, cfg.timeout),
            proxy=env_proxy(cfg.base_url or ""),
        )
        target = RemoteTarget(
            cfg.id,
            cfg,
            TargetStats(),
            CircuitBreaker(self._breaker, name=cfg.id),
            self.settings.max_tokens_limit,
            upstream=upstream,
        )
        self._targets[cfg.id] = target
        if self._shared is not None:
            self._shared.attach(cfg.id, target.breaker)
        if cfg.health_check_interval > 0:
            self._health[cfg.id] = asyncio.create_task(self._check_health(target))

    def _check_route_names(self, routes: list[RouteConfig]) -> None:
        """Refuse a route named like a model of the models directory (the settings refuse
        one named like a `models:` entry): it would hide the model."""
        found = {s.id for s in self.manager.registry if s.source.origin in ("models_dir", "ollama")}
        for i, route in enumerate(routes):
            if route.name in found:
                raise ConfigError(
                    f"routes[{i}].name: route name {route.name!r} is already the name of a model "
                    f"in models_dir ({self.settings.models_dir}); name the route otherwise"
                )

    def warnings(self) -> list[str]:
        """What the configuration names that is not there, or hides (the registry's
        `warnings`), and the routes' `targets` and `fallbacks` that name nothing served, each
        as a sentence: a typo the route would skip on every request without a word. Not
        errors: a model file dropped into the models directory later makes the name valid.
        (A route named like a model is refused by the settings.)"""
        return self.manager.registry.warnings() + [
            f"route {route.config.name}: {field} entry {name!r} names no model or target "
            "(a typo?); it is skipped until one exists"
            for route in self._routes.values()
            for field, names in (
                ("targets", route.config.targets),
                ("fallbacks", route.config.fallbacks),
            )
            for name in names
            if not self._serves(name)
        ]

    def _warn(self) -> None:
        """Said at start and on a reload (whose answer lists them too: `warnings`)."""
        for warning in self.warnings():
            log.warning("%s", warning)

    def _serves(self, name: str) -> bool:
        if name in self._targets or any(name in r.config.aliases for r in self.remotes()):
            return True
        return self.manager.registry.get(name) is not None  # scanned at start and reload

    def _drop(self, name: str) -> None:
        """Forget the target called `name` (requests already sent to it go on; their outcome
        no longer reaches the routers sharing breakers, where the name may be another's; its
        price stays known to them)."""
        target = self._targets.pop(name, None)
        if target is not None:
            target.breaker.on_change = None
            self._gone[name] = target.config.cost
        if (task := self._health.pop(name, None)) is not None:
            task.cancel()
        if self._shared is not None:
            self._shared.breakers.pop(name, None)

    def reconfigure(self, settings: Settings) -> list[str]:
        """Serve `settings` from now on (a reload, reload.py): the model manager takes the
        local models' entries (ModelManager.reconfigure: the ids it unloads for a change are
        returned), then the routes and remote targets are replaced. A remote target whose
        address, upstream model, key variable, timeout or health checks changed starts afresh
        (a closed breaker, no stats); one whose other fields changed (prices, quality...)
        keeps its breaker and stats. Requests already routed finish where they were sent.
        Raises ConfigError for a route whose strategy cannot be loaded, before anything
        changed."""
        self._check_route_names(settings.routes)
        routes = load_routes(settings.routes)
        unloaded = self.manager.reconfigure(settings)
        self.settings = settings
        before = {*self._routes, *(t.id for t in self.remotes())}
        self._routes = routes
        remotes = {cfg.id: cfg for cfg in settings.models if cfg.provider == "openai"}
        for name, target in list(self._targets.items()):
            if isinstance(target, RemoteTarget):
                cfg = remotes.get(name)
                if cfg is not None and _reach(cfg) == _reach(target.config):
                    target.config = cfg
                    del remotes[name]
                else:
                    self._drop(name)
            elif (state := self.manager.registry.get(name)) is not None and state.id == name:
                target.config = state.source.config
            else:
                self._drop(name)  # gone, or now a remote target or an alias
        for cfg in remotes.values():
            self._add_remote(cfg)
        self._warn()
        after = {*self._routes, *(t.id for t in self.remotes())}
        for name in sorted(after - before):  # GET /models/events: the dashboard follows them
            self.manager.events.publish("added", name)
        for name in sorted(before - after):
            self.manager.events.publish("removed", name)
        return unloaded


def _reach(cfg: ModelConfig) -> tuple[object, ...]:
    """The fields of a remote target's entry its connection and checks are made from."""
    return (cfg.base_url, cfg.model, cfg.api_key_env, cfg.timeout, cfg.health_check_interval)
