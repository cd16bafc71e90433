"""Prometheus metrics: one registry per app (no module globals).

Request metrics are counted by the serving layer as requests pass; model gauges (status,
memory, slots, queue, engine counters) are read from the manager at scrape time, so they are a
snapshot and cost nothing between scrapes."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from prometheus_client import (
    GC_COLLECTOR,
    PLATFORM_COLLECTOR,
    PROCESS_COLLECTOR,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily
from prometheus_client.registry import Collector

from .engines.base import COUNTERS as _ENGINE_COUNTERS

if TYPE_CHECKING:
    from .config import Cost
    from .lifecycle.manager import ModelManager
    from .routing.dispatcher import Dispatcher
    from .types import Usage

__all__ = ["Metrics"]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120)
_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.25, 0.5, 1, 2.5)
_UNLOAD_REASONS = ("idle", "evicted", "requested")
_LOAD_REASONS = frozenset({"request", "preload", "requested", "restart"})


def unload_reason(reason: object) -> str:
    """A bounded label for an unload's reason (the reason's text names other models)."""
    text = str(reason or "").lower()
    if "cancel" in text:
        return "cancelled"
    return next((r for r in _UNLOAD_REASONS if text.startswith(r)), "other")


# What the engines report, as gauges: the stat's key -> (the metric's name, its help).
# tokens_cached over context_tokens: how full the KV cache is (what vLLM calls cache usage).
_ENGINE_GAUGES = {
    "slots_busy": ("slots_busy", "Slots generating for a request"),
    "slots_idle": ("slots_idle", "Slots free for a request"),
    "tokens_cached": ("tokens_cached", "Tokens held in the KV cache, all slots"),
    "context_total": ("context_tokens", "Tokens the KV cache holds at most, all slots"),
    "threads": ("threads", "Threads the engine decodes with"),
    "parallel": ("parallel", "Slots (sequences decoded at once)"),
}


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # the router process's own: resident memory, open fds, CPU, start time (process_*),
        # the interpreter and its collections (python_*), as any Python exporter has them
        for standard in (PROCESS_COLLECTOR, PLATFORM_COLLECTOR, GC_COLLECTOR):
            r.register(standard)
        self.requests = Counter(
            "llm_router_requests", "Requests finished", ["model", "endpoint", "outcome"], registry=r
        )
        self.tokens = Counter(
            "llm_router_tokens", "Tokens processed", ["model", "kind"], registry=r
        )
        self.http_errors = Counter(
            "llm_router_http_errors",
            "HTTP answers with an error status (499: the client left before any), by the route "
            "template the request matched ('unmatched' for none)",
            ["route", "status"],
            registry=r,
        )
        self.ttft = Histogram(
            "llm_router_time_to_first_token_seconds",
            "Time to first token",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.duration = Histogram(
            "llm_router_request_duration_seconds",
            "Request duration",
            ["model", "endpoint"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.lifecycle = Counter(
            "llm_router_model_events",
            "Model lifecycle events (loaded, unloaded, error...)",
            ["model", "event"],
            registry=r,
        )
        self.fallbacks = Counter(
            "llm_router_fallbacks",
            "Failed attempts a route moved past (then served)",
            ["route", "target", "error"],
            registry=r,
        )
        self.cost = Counter(
            "llm_router_cost",
            "Spend at the configured prices (cost per 1M tokens), in their currency",
            ["model"],
            registry=r,
        )
        self.tpot = Histogram(
            "llm_router_time_per_output_token_seconds",
            "Time per generated token after the first",
            ["model"],
            buckets=_TOKEN_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "llm_router_queue_wait_seconds",
            "Time a request waited for a slot of its local model (including its load)",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.loads = Counter(
            "llm_router_model_loads",
            "Models loaded, by reason (request: a request named it; preload: at start, for "
            "`preload` or `pin`; requested: POST /models/load)",
            ["model", "reason"],
            registry=r,
        )
        self.unloads = Counter(
            "llm_router_model_unloads",
            "Models unloaded, by reason (idle, evicted, requested, cancelled: a load given up, other)",
            ["model", "reason"],
            registry=r,
        )
        self.unload_seconds = Histogram(
            "llm_router_model_unload_seconds",
            "Time from the start of an unload to the memory freed",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self._unloading: dict[str, float] = {}
        self._router: Dispatcher | None = None
        self.cache_lookups = Counter(
            "llm_router_cache_lookups",
            "Response cache lookups by tier (memory, disk, redis; flight: a wait for an identical "
            "request in progress; semantic) and result (hit, miss, near_miss; semantic only: "
            "too_long, a text longer than its embedding model reads; timeout, no vector "
            "within semantic.timeout; unloaded, its model not loaded and no room: skipped)",
            ["tier", "result"],
            registry=r,
        )
        self.cache_evictions = Counter(
            "llm_router_cache_evictions",
            "Response cache entries removed by tier (memory, disk) and reason (size: least "
            "recently used, to stay under the tier's bytes; expired: past the TTL; too_large: "
            "an answer larger than the whole tier, never stored)",
            ["tier", "reason"],
            registry=r,
        )
        self.load_seconds = Histogram(
            "llm_router_model_load_seconds",
            "Model load time",
            ["model"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        # as Prometheus's own prometheus_config_last_reload_successful: alert on 0
        self.reloads = Counter(
            "llm_router_config_reloads",
            "Configuration reloads (SIGHUP, POST /admin/reload, watch_config) by result "
            "(applied; rejected: the file was invalid and nothing changed)",
            ["result"],
            registry=r,
        )
        self.reload_ok = Gauge(
            "llm_router_config_last_reload_successful",
            "1 when the last configuration reload was applied (or none was tried), 0 when it "
            "was rejected",
            registry=r,
        )
        self.reload_ok.set(1)
        self.reload_time = Gauge(
            "llm_router_config_last_reload_success_timestamp_seconds",
            "When the configuration was last read and applied (at start, then each reload)",
            registry=r,
        )
        self.reload_time.set_to_current_time()

    def count_reload(self, applied: bool) -> None:
        self.reloads.labels("applied" if applied else "rejected").inc()
        self.reload_ok.set(1 if applied else 0)
        if applied:
            self.reload_time.set_to_current_time()
            self._priced()

    def watch(self, manager: ModelManager) -> None:
        """Count lifecycle events and expose per-model gauges read at scrape time."""
        manager.events.add_listener(self._on_event)
        manager.observe_wait = self._on_wait
        self.registry.register(_ModelCollector(manager))

    def watch_routing(self, router: Dispatcher) -> None:
        """Expose each target's breaker state, read at scrape time."""
        self.registry.register(_BreakerCollector(router))
        self._router = router
        self._priced()

    def _priced(self) -> None:
        """`llm_router_cost_total` at 0 for every configured model with a price, from the
        start (and each reload) on: a dashboard's spend reads 0 before the first request,
        not "no data"."""
        if self._router is not None:
            for cfg in self._router.settings.models:
                if cfg.cost.input or cfg.cost.output:
                    self.cost.labels(cfg.id)

    def count_cost(self, model: str, usage: Usage, price: Cost) -> None:
        if spent := price.spend(usage.prompt_tokens, usage.completion_tokens):
            self.cost.labels(model).inc(spent)

    def count_cache_hit(
        self, model: str, endpoint: str, usage: Usage, ttft: float | None, elapsed: float
    ) -> None:
        """A request the response cache answered, counted as any answered request (outcome
        `cache_hit`): in latency and time to first token (what the client waited), and in
        tokens, those of the answer it got (as its key's usage counts them); not in time per
        output token (nothing was decoded) nor in cost (a hit is free, as in the key's spend)."""
        self.requests.labels(model, endpoint, "cache_hit").inc()
        self.duration.labels(model, endpoint).observe(elapsed)
        self.tokens.labels(model, "prompt").inc(usage.prompt_tokens)
        if endpoint != "embeddings":
            if ttft is not None:
                self.ttft.labels(model).observe(ttft)
            self.tokens.labels(model, "completion").inc(usage.completion_tokens)

    def count_decode(self, model: str, usage: Usage, ttft: float | None, elapsed: float) -> None:
        """Time per output token after the first (vLLM's and llama.cpp's TPOT)."""
        if ttft is not None and usage.completion_tokens > 1:
            self.tpot.labels(model).observe((elapsed - ttft) / (usage.completion_tokens - 1))

    def _on_event(self, event: dict[str, Any]) -> None:
        model, kind = event["model"], event["event"]
        self.lifecycle.labels(model, kind).inc()
        if kind == "loaded":
            reason = event.get("reason")
            self.loads.labels(model, reason if reason in _LOAD_REASONS else "other").inc()
            if event.get("load_seconds") is not None:
                self.load_seconds.labels(model).observe(event["load_seconds"])
        elif kind == "unloading":
            self._unloading[model] = time.monotonic()
        elif kind == "unloaded":
            self.unloads.labels(model, unload_reason(event.get("reason"))).inc()
            began = self._unloading.pop(model, None)
            if began is not None:
                self.unload_seconds.labels(model).observe(time.monotonic() - began)

    def _on_wait(self, model: str, seconds: float) -> None:
        self.queue_wait.labels(model).observe(seconds)

    def render(self) -> bytes:
        return generate_latest(self.registry)


class _ModelCollector(Collector):
    def __init__(self, manager: ModelManager) -> None:
        self._manager = manager

    def collect(self) -> Iterator[Any]:
        states = self._manager.snapshots()
        status = GaugeMetricFamily(
            "llm_router_model_status",
            "1 for the model's current status",
            labels=["model", "status"],
        )
        memory = GaugeMetricFamily(
            "llm_router_model_memory_bytes", "Measured RSS of the model's worker", labels=["model"]
        )
        active = GaugeMetricFamily(
            "llm_router_model_active_requests", "Requests holding a slot", labels=["model"]
        )
        queued = GaugeMetricFamily(
            "llm_router_model_queued_requests", "Requests waiting", labels=["model"]
        )
        gauges = {
            k: GaugeMetricFamily(f"llm_router_engine_{name}", doc, labels=["model"])
            for k, (name, doc) in _ENGINE_GAUGES.items()
        }
        counters = {
            k: CounterMetricFamily(f"llm_router_engine_{k}", doc, labels=["model"])
            for k, doc in _ENGINE_COUNTERS.items()
        }
        for s in states:
            status.add_metric([s.id, s.status.value], 1)
            active.add_metric([s.id], s.active)
            queued.add_metric([s.id], s.queued)
            if s.memory_bytes is not None:
                memory.add_metric([s.id], s.memory_bytes)
            info = s.runtime or {}
            for k, family in gauges.items():
                if isinstance(info.get(k), int):
                    family.add_metric([s.id], info[k])
            for k, value in s.counters.items():  # its workers' before it too: never down
                counters[k].add_metric([s.id], value)
        budget = GaugeMetricFamily("llm_router_memory_budget_bytes", "Memory budget")
        budget.add_metric([], self._manager.budget)
        used = GaugeMetricFamily(
            "llm_router_memory_used_bytes",
            "Memory counted against the budget: the models' workers (measured, or estimated "
            "while loading) and the spare workers",
        )
        used.add_metric([], self._manager.memory_used())
        yield from (status, memory, active, queued, budget, used)
        yield from (*gauges.values(), *counters.values())


class _BreakerCollector(Collector):
    def __init__(self, router: Dispatcher) -> None:
        self._router = router

    def collect(self) -> Iterator[Any]:
        state = GaugeMetricFamily(
            "llm_router_breaker_state",
            "1 for the target's circuit breaker state",
            labels=["model", "state"],
        )
        in_flight = GaugeMetricFamily(
            "llm_router_target_in_flight_requests",
            "Requests in flight at the target (local or remote)",
            labels=["model"],
        )
        failures = CounterMetricFamily(
            "llm_router_target_failures",
            "Attempts that failed because of the target (transport error, timeout, 5xx, crash, "
            "a failed load), whether a fallback or retry then served or not",
            labels=["model"],
        )
        retries = CounterMetricFamily(
            "llm_router_retries",
            "Attempts a route sent to the target after an earlier attempt of the same request "
            "failed, whether that attempt then served or not",
            labels=["route", "target"],
        )
        for target in self._router.targets():
            state.add_metric([target.id, str(target.breaker.state)], 1)
            in_flight.add_metric([target.id], target.stats.in_flight)
            failures.add_metric([target.id], target.stats.failures)
        for (route, target_id), count in list(self._router.retries.items()):
            retries.add_metric([route, target_id], count)
        yield state
        yield in_flight
        yield failures
        yield retries
