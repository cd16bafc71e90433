"""Configuration: one pydantic-settings model, loaded once.

Precedence, lowest to highest: defaults < YAML/JSON file (`--config`) < environment
(`LLM_ROUTER_*`, nested keys joined by `__`) < CLI flags. `config_load.load_config` does the
merge; every error names the offending key. This module is the settings' shape."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from .config_sections import (
    CacheSettings,
    GatewaySettings,
    RaySettings,
)
from .units import parse_bytes, parse_duration

__all__ = [
    "BreakerSettings",
    "CacheSettings",
    "Cost",
    "EngineOptions",
    "GatewaySettings",
    "ModelConfig",
    "RouteConfig",
    "Settings",
]

LogLevel = Literal["debug", "info", "warning", "error"]


class EngineOptions(BaseModel):
    """Options passed to a model's engine. Unset fields take the engine's default."""

    model_config = ConfigDict(extra="forbid")

    context_size: int | None = Field(
        None, ge=16, description="Context tokens per parallel slot (default: min(model, 4096))."
    )
    threads: int | None = Field(None, ge=1, description="CPU threads (default: cores present).")
    parallel: int | None = Field(
        None, ge=1, le=64, description="Sequences decoded together (slots)."
    )
    batch_size: int | None = Field(None, ge=1, description="Max tokens per decode step.")
    chat_template: str | None = Field(
        None, description="Jinja chat template overriding the file's."
    )
    dtype: Literal["auto", "float32", "bfloat16", "float16"] | None = Field(
        None, description="transformers: weights' dtype once loaded (default: as saved)."
    )
    allow_pickle: bool | None = Field(
        None,
        description="Load PyTorch checkpoints that need unpickling (runs code from the file).",
    )
    repack: bool | None = Field(
        None,
        description="llama.cpp: repack weights for the CPU's kernels (extra buffer types). "
        "Default: on, off where llama.cpp would use its AMX kernels (they crash, llama.cpp#20824).",
    )
    load_mode: Literal["auto", "none", "mmap", "mlock", "mmap+mlock", "dio"] | None = Field(
        None,
        description="llama.cpp: how the weights are loaded (llama-server's --load-mode): auto "
        "(mmap where the device can), none (read into memory), mmap, mlock or mmap+mlock (kept "
        "in RAM, never paged out: needs `ulimit -l` above the model's size, or CAP_IPC_LOCK), "
        "dio (direct I/O). Default: auto.",
    )

    def merged(self, override: EngineOptions) -> EngineOptions:
        """`override`'s set fields win over this one's."""
        return self.model_copy(update=override.model_dump(exclude_unset=True, exclude_none=True))


class Cost(BaseModel):
    model_config = ConfigDict(extra="forbid")

    input: float = Field(0.0, ge=0, description="Price per 1M prompt tokens.")
    output: float = Field(0.0, ge=0, description="Price per 1M completion tokens.")

    def spend(self, prompt_tokens: int, completion_tokens: int) -> float:
        """What these tokens cost, in the prices' currency."""
        return (prompt_tokens * self.input + completion_tokens * self.output) / 1_000_000


class SamplingDefaults(BaseModel):
    """Sampling values a model uses for the fields a request leaves out, as an Ollama
    Modelfile's PARAMETER lines; a request's own values always win. Unset: llama.cpp's."""

    model_config = ConfigDict(extra="forbid")

    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=0)
    min_p: float | None = Field(None, ge=0, le=1)
    repeat_penalty: float | None = Field(None, gt=0)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    seed: int | None = None
    max_tokens: int | None = Field(None, ge=1, description="Longest answer, in tokens.")
    stop: list[str] | None = Field(None, max_length=4)

    def fill(self, given: Mapping[str, Any]) -> dict[str, Any]:
        """The values to use for what `given` (a request's set fields) leaves out."""
        if not self.model_fields_set:  # nothing configured: the common case, on every request
            return {}
        values = self.model_dump(exclude_none=True)
        if "max_completion_tokens" in given:
            values.pop("max_tokens", None)
        return {k: v for k, v in values.items() if given.get(k) is None}


class RouteConfig(BaseModel):
    """A virtual model: requests name it like a model and the strategy picks the target."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1)
    strategy: str = Field("balanced", description="Built-in name or 'package.module:obj'.")
    strategy_options: dict[str, Any] = Field(default_factory=dict)
    targets: list[str] = Field(min_length=1)
    fallbacks: list[str] = Field(default_factory=list, description="Tried in order after.")
    retries: int | None = Field(
        None,
        ge=0,
        description="Extra attempts at the targets after the first, round them again when "
        "they are more than the targets; default: every target once. The fallbacks come "
        "after, once each.",
    )
    backoff: float = Field(0.05, ge=0, description="Seconds before a retry, doubled each time.")
    split: dict[str, float] | None = Field(
        None, description="A/B weights by target, sticky per `user` or API key."
    )

    @model_validator(mode="after")
    def _check_split(self) -> RouteConfig:
        """Weights of the route's own targets, none negative, one at least positive."""
        if self.split is None:
            return self
        for name, weight in self.split.items():
            if name not in self.targets:
                raise ValueError(f"split: {name!r} is not one of the route's targets")
            if weight < 0:
                raise ValueError(f"split: the weight of {name!r} is negative")
        if not any(w > 0 for w in self.split.values()):
            raise ValueError("split: at least one weight must be positive")
        return self


class BreakerSettings(BaseModel):
    """Circuit breaker of every target (see routing/breaker.py)."""

    model_config = ConfigDict(extra="forbid")

    failure_threshold: int = Field(5, ge=1)
    error_rate_threshold: float = Field(0.5, gt=0, le=1)
    window: float = Field(60.0, gt=0)
    min_requests: int = Field(10, ge=1)
    cooldown: float = Field(30.0, ge=0)
    half_open_probes: int = Field(1, ge=1)


class ModelConfig(EngineOptions):
    """One `models:` entry. With `path`, the file is served under `id`; with only an `id` that
    matches a file in the models directory, the entry adds options and aliases to it."""

    id: str = Field(min_length=1)
    path: Path | None = None
    aliases: list[str] = Field(default_factory=list)
    engine: str | None = Field(None, description="Engine name; default chosen by format.")
    system_prompt: str | None = Field(
        None, description="System message added to chats that bring none (as Ollama's SYSTEM)."
    )
    keep_alive: str | float | None = Field(
        None,
        description="Idle time before unload: '5m', '30s', 0 (after each request), -1 (never).",
    )
    pin: bool = Field(
        False,
        description="Load at start, never evict or idle-unload this model, and load it again "
        "when its worker dies.",
    )
    # -- routing profile and remote targets ---------------------------------------------------
    provider: Literal["local", "openai"] = Field(
        "local", description="local: a model file we run; openai: any OpenAI-compatible server."
    )
    base_url: str | None = Field(None, description="Remote server's API root, e.g. .../v1.")
    api_key_env: str | None = Field(None, description="Environment variable holding its key.")
    model: str | None = Field(None, description="The remote server's name for it (default: id).")
    timeout: float = Field(
        60.0,
        gt=0,
        description="Seconds to wait for a remote's bytes, and for its first token and between "
        "two on a stream (keep-alives do not count).",
    )
    health_check_interval: float = Field(
        30.0, ge=0, description="Seconds between remote health checks; 0: off."
    )
    quality: float = Field(0.5, ge=0, le=1, description="0..1, for quality-first / balanced.")
    cost: Cost = Field(default_factory=lambda: Cost(), description="Per 1M tokens.")
    context_length: int | None = Field(
        None, ge=1, description="Context a remote target accepts (local: read from the model)."
    )
    sampling: SamplingDefaults = Field(
        default_factory=lambda: SamplingDefaults(),
        description="Sampling for the fields a request leaves out (a request's values win).",
    )
    tools: bool | None = Field(
        None,
        description="Makes tool calls: routes send requests with `tools` only to such targets. "
        "Default: yes (local chat models call tools through a constrained JSON answer).",
    )
    task: Literal["generate", "embed"] | None = Field(
        None,
        description="What a remote target serves: generate (chat and completions) or embed "
        "(embeddings); null: generate. A local model's is read from its files.",
    )

    @model_validator(mode="after")
    def _remote_needs_url(self) -> ModelConfig:
        if self.provider == "openai" and not self.base_url:
            raise ValueError(f"model {self.id!r}: provider openai needs base_url")
        if self.provider == "openai" and self.path is not None:
            raise ValueError(f"model {self.id!r}: a remote target has no path")
        if self.provider == "local" and self.task is not None:
            raise ValueError(
                f"model {self.id!r}: task is for remote targets; a local model's is read "
                "from its files"
            )
        return self

    @field_validator("base_url")
    @classmethod
    def _check_base_url(cls, value: str | None) -> str | None:
        """An http(s) URL with a host: anything else was accepted, then every request to it
        was a 503 "could not be reached" (found from outside)."""
        if value is None:
            return value
        parts = urlsplit(value.strip())
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                f"{value!r} is not an http:// or https:// URL with a host, such as "
                "'http://127.0.0.1:8000/v1'"
            )
        return value.strip()

    @field_validator("keep_alive")
    @classmethod
    def _check_keep_alive(cls, value: str | float | None) -> str | float | None:
        if value is not None:
            parse_duration(value)
        return value

    def engine_options(self) -> EngineOptions:
        return EngineOptions.model_validate(
            self.model_dump(include=set(EngineOptions.model_fields), exclude_unset=True)
        )


class Settings(BaseSettings):
    """Everything the server reads at start. See config.example.yaml for each option."""

    model_config = SettingsConfigDict(
        env_prefix="LLM_ROUTER_", env_nested_delimiter="__", extra="forbid"
    )

    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    models_dir: Path = Path("models")
    log_level: LogLevel = "info"
    provision_default_models: bool = True
    watch_interval: float = Field(2.0, ge=0, description="Seconds between directory scans; 0: off.")
    watch_config: bool = Field(
        False, description="Reload when the --config file changes (llama-swap's --watch-config)."
    )
    autoload: bool = True
    default_model: str | None = Field(
        None,
        max_length=256,
        description="The model (id, alias or route) of a request that names none; "
        "`serve -m FILE` sets it to that model, as llama-server serves its one model.",
    )
    model_defaults: EngineOptions = Field(default_factory=EngineOptions)
    models: list[ModelConfig] = Field(default_factory=list)
    routes: list[RouteConfig] = Field(default_factory=list)
    breaker: BreakerSettings = Field(default_factory=lambda: BreakerSettings())
    max_connections: int = Field(
        1024, ge=1, description="Open connections served at once; more are answered 503."
    )
    max_event_subscribers: int = Field(
        64,
        ge=1,
        description="Clients of GET /models/events at once (503 past it); one API key, half (429).",
    )
    send_timeout: float = Field(
        30.0, gt=0, description="Seconds a stream may wait for a client that reads nothing."
    )
    forward_fields: list[str] = Field(
        default_factory=list,
        description="Request fields passed on to remote targets besides OpenAI's own.",
    )
    max_tokens_limit: int = Field(
        32768, ge=1, description="Most tokens one answer may ask for (capped, not refused)."
    )
    max_n: int = Field(8, ge=1, le=128, description="Most answers (`n`) one request may ask for.")
    ensemble_scorers: dict[str, str] = Field(
        default_factory=dict,
        description="Best-of scorers a request may name: {name: 'package.module:function'}.",
    )
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024)
    body_timeout: float = Field(
        60.0,
        gt=0,
        description="Seconds a request's body may take to arrive once its route reads it; then 408.",
    )
    header_timeout: float = Field(
        10.0,
        gt=0,
        description="Seconds a request's line and headers may take to arrive; then 408, closed.",
    )
    allowed_hosts: list[str] = Field(
        default_factory=list,
        description="Host names served besides loopback names and IP addresses; '*': any.",
    )
    cors_origins: list[str] = Field(
        default_factory=list, description="Origins whose web pages may call the API (CORS)."
    )
    worker_start_timeout: float = Field(120.0, gt=0)
    models_max: int = Field(4, ge=0, description="Most models loaded at once; 0: no limit.")
    memory_budget: str | int = Field(
        "80%", description="Bytes (or '12GiB') or a percentage of available RAM for loaded models."
    )
    keep_alive: str | float = Field("5m", description="Default idle time before unload.")
    keep_alive_max: str | float = Field(
        "1h", description="Longest idle time a request's own keep_alive may ask for; -1: any."
    )
    preload: list[str] = Field(default_factory=list, description="Models loaded at start-up.")
    queue_per_model: int = Field(64, ge=0, description="Requests waiting per model; over: 429.")
    queue_total: int = Field(512, ge=0, description="Requests waiting in all; over: 503.")
    queue_timeout: float = Field(300.0, gt=0, description="Seconds a request may wait; then 503.")
    unload_grace: float = Field(10.0, ge=0, description="Seconds in-flight requests get on unload.")
    drain_after: float = Field(
        1.0,
        ge=0,
        description="Seconds a load waits for room before busy models stop taking new "
        "requests; also the least a model serves once loaded before it is evicted or drained "
        "for another's load (two models taking turns in one place swap at most this often).",
    )
    spare_workers: bool = Field(
        True, description="Keep a started worker per engine ready, so a cold load skips start-up."
    )
    drain_grace: float = Field(
        30.0,
        ge=0,
        description="Seconds in-flight requests get to finish after SIGTERM (new ones: 503).",
    )
    thread_budget: int | None = Field(
        None, ge=1, description="CPU threads shared by busy models (default: cores present)."
    )
    data_dir: Path | None = Field(
        None,
        description="Directory of the server's state (keys, usage: llm-router.db); "
        "default: $XDG_DATA_HOME/llm-router, else ~/.local/share/llm-router.",
    )
    database_url: str | None = Field(
        None,
        description="SQLAlchemy URL of the state database, e.g. postgresql://...; "
        "default: SQLite in data_dir.",
    )
    redis_url: str | None = Field(
        None,
        description="Redis shared by several routers: rate limits, requests at once, key "
        "revocations (pub/sub) and remote targets' circuit breakers.",
    )
    auth: Literal["auto", "on", "off"] = Field(
        "auto",
        description="API keys: 'auto' is on once a key or LLM_ROUTER_MASTER_KEY exists, else "
        "loopback clients only; 'off' serves anyone.",
    )
    gateway: GatewaySettings = Field(default_factory=lambda: GatewaySettings())
    ray: RaySettings = Field(
        default_factory=lambda: RaySettings(),
        description="Ray Serve deployment (`serve --ray`, `ray deploy`); unused otherwise.",
    )
    cache: CacheSettings = Field(default_factory=lambda: CacheSettings())
    log_format: Literal["text", "json"] = Field(
        "text", description="Log lines as text or as one JSON object each."
    )
    log_requests: bool = Field(True, description="One log line per request (access log).")
    log_prompts: bool = Field(
        False, description="Put prompt and answer text into the request log lines."
    )
    otel_endpoint: str | None = Field(
        None,
        description="OTLP endpoint for OpenTelemetry traces (the `otel` extra); "
        "default: OTEL_EXPORTER_OTLP_ENDPOINT; neither: no tracing.",
    )

    @field_validator("auth", mode="before")
    @classmethod
    def _auth_words(cls, value: Any) -> Any:
        """YAML reads a bare `auth: off` as false (and `on` as true): the same words."""
        return {False: "off", True: "on"}.get(value, value) if isinstance(value, bool) else value

    @field_validator("keep_alive", "keep_alive_max")
    @classmethod
    def _check_duration(cls, value: str | float) -> str | float:
        parse_duration(value)
        return value

    @field_validator("models_dir")
    @classmethod
    def _a_directory(cls, value: Path) -> Path:
        """A file given as the directory (llama-server's `-m FILE` habit) was found out at
        start-up, as a traceback from provisioning into it."""
        if value.exists() and not value.is_dir():
            raise ValueError(
                f"{value} is a file, not a directory of models: give its directory, or serve "
                "that one file with `llm-router serve -m FILE`"
            )
        return value

    @field_validator("memory_budget")
    @classmethod
    def _check_budget(cls, value: str | int) -> str | int:
        parse_bytes(value, 1)
        return value

    @field_validator("models")
    @classmethod
    def _unique_ids(cls, models: list[ModelConfig]) -> list[ModelConfig]:
        seen: set[str] = set()
        for model in models:
            for name in (model.id, *model.aliases):
                if name in seen:
                    raise ValueError(f"model name {name!r} is used twice")
                seen.add(name)
        return models

    @model_validator(mode="after")
    def _route_names(self) -> Settings:
        """Route names are unique and no model's; a route's targets and fallbacks are models,
        not routes (routes do not nest: a route named there would never be tried)."""
        names = {n for m in self.models for n in (m.id, *m.aliases)}
        routes = [r.name for r in self.routes]
        for i, route in enumerate(self.routes):  # names first: they explain what follows
            if route.name in names:
                raise ValueError(
                    f"route name {route.name!r} is already a model name: name the route otherwise"
                )
            if route.name in routes[:i]:
                raise ValueError(f"route name {route.name!r} is used twice")
        for route in self.routes:
            for name in (*route.targets, *route.fallbacks):
                if name in routes:
                    raise ValueError(
                        f"route {route.name!r} names the route {name!r} as a target: a route's "
                        "targets and fallbacks are models (routes do not nest)"
                    )
        return self

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, **_sources):  # type: ignore[no-untyped-def, override]
        # load_config merges file, env and CLI itself, so only explicit values count here.
        return (init_settings,)
