"""The domain error tree. No HTTP here: `server/errors.py` maps each class to a status and an
OpenAI error `type`/`code` in one table. Errors are classified by class, never by message text."""

from __future__ import annotations

__all__ = [
    "AuthenticationFailed",
    "BadRequest",
    "ConfigError",
    "Conflict",
    "ContextLengthExceeded",
    "ConversionError",
    "DatabaseUnavailable",
    "EngineError",
    "EngineUnavailable",
    "InsufficientMemory",
    "InvalidModelFile",
    "ModelLoadFailed",
    "ModelNotFound",
    "ModelNotLoaded",
    "ModelUnloaded",
    "OutputExists",
    "PermissionDenied",
    "QueueFull",
    "QuotaExceeded",
    "RateLimited",
    "ReloadRejected",
    "RouterError",
    "ServerBusy",
    "Unsupported",
    "UpstreamBusy",
    "UpstreamError",
    "UpstreamRateLimited",
    "UpstreamTimeout",
    "UpstreamUnavailable",
    "WorkerDied",
]


class RouterError(Exception):
    """Base of every error this package raises on purpose.

    `param` names the request field at fault, when there is one; `tried`, for a request a
    route could not serve, what the route tried and why each failed (its answer's
    `x-llm-router-route`, as a served request's names its plan)."""

    tried = ""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


class ConfigError(RouterError):
    """The configuration is invalid; the message names the offending key."""


class ReloadRejected(ConfigError):
    """A reload was asked for and not done: the configuration read is invalid, or there is
    none to read again. The server goes on with the settings it had."""


class BadRequest(RouterError):
    """The request is malformed or asks for something impossible."""


class Unsupported(BadRequest):
    """The request is valid for OpenAI's API but asks for what this server does not do (an
    image, audio or a file as input)."""


class ContextLengthExceeded(BadRequest):
    """The prompt does not fit in the model's context window."""


class ModelNotFound(RouterError):
    """No model, alias or route by that name. `name`: the name asked, when the error is about
    one (the server's answer then names the models it may have meant: server/errors.py)."""

    def __init__(self, message: str, *, param: str | None = None, name: str | None = None) -> None:
        super().__init__(message, param=param)
        self.name = name


class ModelNotLoaded(BadRequest):
    """The model is unloaded and autoload is off for this request."""


class InvalidModelFile(RouterError):
    """A file looks like a model but cannot be read (truncated, corrupt header)."""


class EngineUnavailable(RouterError):
    """The engine a model needs is not installed; the message names the extra."""


class ModelLoadFailed(RouterError):
    """Loading the model failed; the model stays in `error` until its file changes or a
    load is asked for explicitly."""


class LoadInterrupted(ModelLoadFailed):
    """A load that did not fail by itself: its worker was killed (the OOM killer, a person) or
    it ran past `worker_start_timeout` on a busy machine. Not held against the model: the next
    request loads it again."""


class EngineError(RouterError):
    """The engine failed while serving a request."""


class WorkerDied(EngineError):
    """The worker process of a model exited while requests were in flight."""


class ModelUnloaded(WorkerDied):
    """The model was unloaded on purpose (an unload, an eviction, a reload's change) while the
    request was in flight, after `unload_grace`: its worker did not die, it was stopped."""


class InsufficientMemory(RouterError):
    """The model can never fit in the memory budget, or beside the pinned models."""


class QueueFull(RouterError):
    """Too many requests wait for this model; retry after `retry_after` seconds (None: no
    retry can pass, e.g. a prompt larger than a whole minute of its key's tokens)."""

    def __init__(self, message: str, *, retry_after: float | None = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class ServerBusy(QueueFull):
    """The server as a whole is over its queue limit, or a request waited past its deadline."""


class ServerStopping(ServerBusy):
    """The server stopped (its drain grace ran out, or a second signal came) before the
    request ended."""


class UpstreamRateLimited(QueueFull):
    """A remote target answered 429 (its own rate limit): another target, or this one after
    `retry_after`, may serve. Apart from a full local queue in route reasons and metrics."""


class RateLimited(QueueFull):
    """An API key went over one of its limits (requests or tokens per minute, requests at once)."""


class QuotaExceeded(RateLimited):
    """An API key spent its budget for the period; `retry_after` is when the period ends."""


# -- the gateway (API keys) ---------------------------------------------------------------


class AuthenticationFailed(RouterError):
    """No API key, an unknown one, a revoked one or an expired one."""


class PermissionDenied(RouterError):
    """The API key is valid but lacks the scope this operation needs."""


class Conflict(BadRequest):
    """What the request would make exists already (a key of that name)."""


class DatabaseUnavailable(RouterError):
    """The gateway's database (keys, usage, audit) cannot be reached now; the request path
    does not need it, the administration does. Retry after `retry_after` seconds."""

    retry_after = 5.0


class UpstreamUnavailable(EngineError):
    """The upstream could not be reached or did not answer in time (connect error, timeout,
    connection dropped mid-answer), or said it is unavailable (503). Another target, or a
    retry after `retry_after` seconds, may work."""

    def __init__(self, message: str, *, retry_after: float = 1.0) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class UpstreamBusy(UpstreamUnavailable):
    """The upstream answered 503 with a Retry-After: it cannot serve for now (draining for a
    restart, overloaded, its own targets failing) and said when to come back. Like a 429, no
    sign it is broken: routes leave it out for `retry_after` (routing/dispatcher.py)."""


class UpstreamTimeout(UpstreamUnavailable):
    """The upstream took longer than `timeout` to send its next bytes: maybe down, maybe only
    busy with a long generation (a request's own size decides that): another target may
    answer, but the target's breaker does not count it against it by itself. `answered`:
    the upstream's answer had begun (its status and headers came) before the wait ran out;
    when it had not, the router checks the target's health (routing/dispatcher.py)."""

    def __init__(self, message: str, *, answered: bool = True) -> None:
        super().__init__(message)
        self.answered = answered


class UpstreamError(EngineError):
    """The upstream answered with a server error (5xx) or refused our credentials (401/403);
    `status` is its HTTP status. Another target may work."""

    def __init__(self, message: str, *, status: int) -> None:
        super().__init__(message)
        self.status = status


# -- conversion tools (tools/) --------------------------------------------------------------


class ConversionError(RouterError):
    """A conversion or quantization failed; the message says at which step and why."""


class OutputExists(ConversionError):
    """The output path exists and `force` was not given."""
