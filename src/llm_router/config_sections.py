"""The configuration's sections for the router's services: the response cache (`cache:`),
the gateway's defaults (`gateway:`) and Ray Serve (`ray:`). Part of the one settings model
of config.py, which imports them; kept apart so each reads on its own."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from .units import parse_bytes, parse_duration

__all__ = [
    "AutoscalingSettings",
    "CacheSettings",
    "GatewaySettings",
    "RaySettings",
    "SemanticCacheSettings",
]


class SemanticCacheSettings(BaseModel):
    """Answers for requests that mean the same (cache/semantic.py): off unless `model` is set."""

    model_config = ConfigDict(extra="forbid")

    model: str | None = Field(
        None, description="Embedding model (id or alias) that embeds requests; null: off."
    )
    threshold: float = Field(
        0.05, ge=0, le=2, description="Largest cosine distance (1 - similarity) that is a hit."
    )
    max_entries: int = Field(10000, ge=1, description="Vectors kept (oldest dropped first).")
    timeout: float = Field(
        0.5,
        gt=0,
        description="Seconds a lookup waits for its embedding (the model busy with other "
        "requests, or loading); then the request goes on without the semantic cache.",
    )


class CacheSettings(BaseModel):
    """Response cache of deterministic requests (temperature 0 or a seed): src/llm_router/cache/."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = Field(True, description="Serve repeated deterministic requests from cache.")
    memory_bytes: str | int = Field(
        "64MiB", description="Size of the in-memory LRU tier (bytes, '64MiB'); 0: no memory tier."
    )
    disk_path: Path | None = Field(
        None, description="SQLite file of the on-disk tier (survives restarts); null: none."
    )
    disk_bytes: str | int = Field(
        "1GiB",
        description="Cap of the on-disk tier's entries (bytes, '1GiB'); least recently used out.",
    )
    redis: bool = Field(False, description="A Redis tier at `redis_url`, shared by replicas.")
    ttl: str | float = Field("1h", description="Time an answer is kept; -1: until evicted.")
    memory_ttl: str | float | None = Field(None, description="Memory tier's TTL; null: `ttl`.")
    disk_ttl: str | float | None = Field(None, description="Disk tier's TTL; null: `ttl`.")
    redis_ttl: str | float | None = Field(None, description="Redis tier's TTL; null: `ttl`.")
    semantic: SemanticCacheSettings = Field(default_factory=lambda: SemanticCacheSettings())

    @field_validator("ttl", "memory_ttl", "disk_ttl", "redis_ttl")
    @classmethod
    def _check_ttl(cls, value: str | float | None) -> str | float | None:
        if value is not None:
            parse_duration(value)
        return value

    @field_validator("memory_bytes")
    @classmethod
    def _check_bytes(cls, value: str | int) -> str | int:
        parse_bytes(value, 0)
        return value

    @field_validator("disk_bytes")
    @classmethod
    def _check_disk_bytes(cls, value: str | int) -> str | int:
        if parse_bytes(value, 0) <= 0:
            raise ValueError("disk_bytes must be a size above 0 (e.g. '1GiB')")
        return value


class GatewaySettings(BaseModel):
    """API keys, limits and usage accounting (the gateway: src/llm_router/gateway/)."""

    model_config = ConfigDict(extra="forbid")

    rpm: int | None = Field(None, ge=1, description="Default requests per minute of every key.")
    tpm: int | None = Field(None, ge=1, description="Default tokens per minute of every key.")
    max_concurrent: int | None = Field(
        None, ge=1, description="Default requests in flight at once per key."
    )
    metrics_public: bool = Field(False, description="Serve /metrics without an admin key.")
    flush_interval: float = Field(
        2.0, gt=0, description="Seconds between writes of the usage gathered in memory."
    )
    refresh_interval: float = Field(
        1.0, gt=0, description="Seconds between re-reads of the keys (revocations, new keys)."
    )


class AutoscalingSettings(BaseModel):
    """Ray Serve autoscaling of the model replicas on the requests each one is serving or has
    queued (Ray's `autoscaling_config`); off unless `max_replicas` is set."""

    model_config = ConfigDict(extra="forbid")

    min_replicas: int = Field(1, ge=0, description="Fewest replicas kept.")
    max_replicas: int | None = Field(
        None, ge=1, description="Most replicas; null: no autoscaling (`replicas` fixed)."
    )
    target_ongoing_requests: float = Field(
        2.0, gt=0, description="Requests running or queued per replica that autoscaling aims at."
    )
    upscale_delay_s: float = Field(10.0, ge=0, description="Seconds over target before adding.")
    downscale_delay_s: float = Field(
        120.0, ge=0, description="Seconds under target before removing."
    )


class RaySettings(BaseModel):
    """`llm-router serve --ray` / `llm-router ray deploy`: the router as Ray Serve's ingress,
    local models on model replicas (see src/llm_router/ray_serve/)."""

    model_config = ConfigDict(extra="forbid")

    address: str | None = Field(
        None, description="Ray cluster to join, e.g. 'auto' or 'ray://head:10001'; null: auto."
    )
    app_name: str = Field("llm-router", min_length=1, description="The Serve application's name.")
    replicas: int = Field(1, ge=1, description="Model replicas (the start, with autoscaling).")
    autoscaling: AutoscalingSettings = Field(default_factory=lambda: AutoscalingSettings())
    models_per_replica: int = Field(
        2, ge=1, description="Models one replica keeps loaded (its LRU, Serve multiplexing)."
    )
    max_ongoing_requests: int = Field(
        8, ge=1, description="Requests one model replica serves at once; more queue in Ray."
    )
    num_cpus: float = Field(
        1.0, ge=0, description="CPUs a model replica reserves; its models' threads by default."
    )
    memory: str | int | None = Field(
        None, description="Memory a model replica reserves (bytes or '2GiB'); null: none."
    )
    resources: dict[str, float] = Field(
        default_factory=dict, description="Custom Ray resources a model replica needs."
    )
    max_replicas_per_node: int | None = Field(
        None, ge=1, description="Most model replicas on one node (spreads them); null: any."
    )
    ingress_replicas: int = Field(1, ge=1, description="Router (HTTP ingress) replicas.")
    ingress_num_cpus: float = Field(0.5, ge=0, description="CPUs a router replica reserves.")
    proxy_location: Literal["HeadOnly", "EveryNode"] = Field(
        "HeadOnly", description="Where Ray's HTTP proxy listens on `host`:`port`."
    )
    retry_window: float = Field(
        30.0, gt=0, description="Seconds a request not yet started is retried on other replicas."
    )

    @field_validator("memory")
    @classmethod
    def _check_memory(cls, value: str | int | None) -> str | int | None:
        if value is not None:
            parse_bytes(value, 1)
        return value
