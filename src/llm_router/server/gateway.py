"""The gateway's ASGI middleware: API keys, scopes, model allow-lists, budgets and rate limits
for every route (the hot OpenAI routes included: they pass user middleware, asgi.ServerApp),
then usage accounting once the response is done.

Per request with auth on: one header scan, the key's SHA-256 (cached for recent keys), one
dictionary lookup, the limiter (gateway/limits.py) for keys with limits, and an append to the
usage batch. The body is read
here only for a key with a model allow-list (to see the `model` it asks for) and for the
audited admin routes; it is then replayed to the route unchanged. A refused inference request
(rate limits, budget, allow-list, scope; a draining server's 503, told by server/drain.py) has
its body read for the model it asks, named in its usage row: the cost of one JSON parse of a
body the client sent anyway, at most `max_body_bytes`.

The authenticated key's name goes on the scope's state (`scope["state"]["key_name"]`, as
`request.state.key_name`) for request logs, and its id for A/B splits (`api_key_id`: what
routing's `api_key_id` makes of the bearer token, the key's digest cut short, so the route does
not hash it again); the route leaves its record (serving/route_info.py's `RouteInfo`) at
`scope["state"]["route"]`, read here after the response. Per-key counters are plain sums,
read by Prometheus at scrape time (`KeyMetrics`)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ..errors import ModelNotFound, PermissionDenied, RateLimited, RouterError
from ..gateway.accounting import record_route, serve_keyless, started_status
from ..gateway.keys import ApiKey, required_scope
from ..gateway.service import Gateway
from ..routing.admission import prompt_gate
from .asgi import BodyTooLarge, body_once, loopback_hosts, send_json
from .errors import envelope, not_served, retry_after, status_of

__all__ = ["GatewayMiddleware", "KeyMetrics", "Refusals", "presented_key", "visible"]

Header = tuple[bytes, bytes]
DRAINED_READ = 1.0  # seconds a draining server's refusal waits for the body's model name
_AUDITED = {"/models/load": "model.load", "/models/unload": "model.unload"}
_MODEL_BODIES = frozenset({"POST"})
_HOT_ROUTES = (
    ("POST", "/v1/chat/completions"),
    ("POST", "/v1/completions"),
    ("POST", "/v1/embeddings"),
    ("GET", "/v1/models"),
)
_UNKNOWN: Any = object()


class KeyMetrics(Collector):
    """Per-key counters on the app's registry (key names are chosen by admins, so the label
    set stays bounded): `llm_router_key_tokens{key,kind}`, `llm_router_key_spend{key}` and
    `llm_router_key_requests{key,status}`. Summed in plain dictionaries as requests end, and
    turned into Prometheus counters at scrape time (a snapshot; a request costs no locks)."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._keys: dict[str, list[float]] = {}  # key -> [prompt, completion, spend]
        self._done: dict[tuple[str, int], int] = {}  # (key, status) -> requests
        registry.register(self)

    def count(self, key: str, status: int, prompt: int, completion: int, cost: float) -> None:
        """Count one request."""
        sums = self._keys.get(key)
        if sums is None:
            sums = self._keys[key] = [0, 0, 0.0]
        sums[0] += prompt
        sums[1] += completion
        sums[2] += cost
        done = (key, status)
        self._done[done] = self._done.get(done, 0) + 1

    def collect(self) -> Iterator[CounterMetricFamily]:
        tokens = CounterMetricFamily(
            "llm_router_key_tokens", "Tokens used per API key", labels=["key", "kind"]
        )
        spend = CounterMetricFamily(
            "llm_router_key_spend", "Spend per API key (config prices)", labels=["key"]
        )
        requests = CounterMetricFamily(
            "llm_router_key_requests", "Requests per API key", labels=["key", "status"]
        )
        for key, (prompt, completion, spent) in list(self._keys.items()):
            tokens.add_metric([key, "prompt"], prompt)
            tokens.add_metric([key, "completion"], completion)
            spend.add_metric([key], spent)
        for (key, status), count in list(self._done.items()):
            requests.add_metric([key, str(status)], count)
        yield from (tokens, spend, requests)


class Refusals:
    """Records refused inference requests as usage (status, the model asked, no tokens): the
    gateway's own refusals, and an outer layer's (`drained`: a draining server's 503)."""

    def __init__(self, gateway: Gateway, metrics: KeyMetrics | None) -> None:
        self.gateway = gateway
        self.metrics = metrics
        self.metrics_public = gateway.settings.gateway.metrics_public
        self.limit = gateway.settings.max_body_bytes  # what is read of a body, for its model

    async def drained(self, scope: Scope, receive: Receive, status: int) -> None:
        """Record a request refused before the gateway saw it, when it is an inference request
        with a valid key (keyless, when such requests are recorded at all: auth off with a
        database). Reads the body for the model asked: call it before answering."""
        gw = self.gateway
        method, path = scope.get("method", "GET"), scope["path"]
        if scope["type"] != "http" or required_scope(method, path, self.metrics_public) != (
            "inference"
        ):
            return
        key: ApiKey | None = None
        if gw.active:
            try:
                key = gw.authenticate(presented_key(scope["headers"]))
            except RouterError:
                return  # no key of ours: nobody's usage
            if "inference" not in key.scopes:
                return
        elif gw.store is None:
            return
        model = ""
        with contextlib.suppress(TimeoutError):  # outside BodyGuard: its body_timeout is not
            async with asyncio.timeout(DRAINED_READ):  # on this read; a stalled body costs
                model = await _asked(receive, self.limit)  # its model's name, not the refusal
        self.record(key, path, status, model)

    def record(self, key: ApiKey | None, path: str, status: int, model: str) -> None:
        self.gateway.record(
            key,
            model=model,
            target="",
            route=path,
            prompt_tokens=0,
            completion_tokens=0,
            cached_tokens=0,
            status=status,
            latency=0.0,
            ttft=None,
        )
        if self.metrics is not None and key is not None:
            self.metrics.count(key.name, status, 0, 0, 0.0)


class GatewayMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        gateway: Gateway,
        resolve: Callable[[str], str] | None = None,
        metrics: KeyMetrics | None = None,
        served: Callable[[Scope], bool] | None = None,
        refusals: Refusals | None = None,
    ) -> None:
        self.app = app
        self.gateway = gateway
        self.resolve = resolve
        self.metrics = metrics
        self.refusals = refusals or Refusals(gateway, metrics)
        self.served = served  # whether a route serves this path (a 404 is not an admin's)
        self.metrics_public = gateway.settings.gateway.metrics_public
        self.loopback = loopback_hosts() | {"testclient", "127.0.0.1"}
        self._scopes = {  # the hot routes' scopes, looked up without string tests
            (m, p): required_scope(m, p, self.metrics_public) for m, p in _HOT_ROUTES
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        gw = self.gateway
        if not gw.active or scope["type"] not in ("http", "websocket"):
            if gw.mode == "auto" and scope["type"] in ("http", "websocket"):
                client = scope.get("client")
                if client and not (client[0] in self.loopback or client[0].startswith("127.")):
                    await _refuse(scope, send, _no_keys())
                    return
            if gw.store is not None and scope["type"] == "http":
                if self._inference(scope):
                    await serve_keyless(gw, self.app, scope, receive, send)  # usage, no key
                    return
                if scope.get("method") == "POST" and scope["path"] in _AUDITED:
                    await self._audited_keyless(scope, receive, send)  # audit, no key
                    return
            await self.app(scope, receive, send)
            return
        method = scope.get("method", "GET")
        path = scope["path"]
        need = self._scopes.get((method, path), _UNKNOWN)
        if need is _UNKNOWN:
            need = required_scope(method, path, self.metrics_public)
        if need is None:
            await self.app(scope, receive, send)
            return
        key: ApiKey | None = None
        body: bytes | None = None
        try:
            key = gw.authenticate(presented_key(scope["headers"]))
            state = scope.setdefault("state", {})
            state["key_name"] = key.name  # in the log line of a refusal for its scope too
            if need not in key.scopes:
                if need == "admin" and self.served is not None and not self.served(scope):
                    # a path nothing serves (Ollama's /api/chat...) needs no admin to be told so
                    await _refuse_raw(send, 404, not_served(path), "not_found")
                    return
                raise PermissionDenied(
                    f"The API key '{key.name}' lacks the '{need}' scope this operation needs "
                    f"(it has: {', '.join(sorted(key.scopes))})"
                )
            state["api_key_id"] = key.hash[:16]  # routing's id of the key (A/B): its hash
            state["api_key"] = key  # a request that lasts asks again (key_still_valid)
            if key.models is not None:  # listings show only what the key may use (`visible`)
                state["model_allowed"] = lambda name, allowed=key.models: self._allowed(
                    allowed, name
                )
            if method in _MODEL_BODIES and (
                (key.models is not None and need == "inference") or path in _AUDITED
            ):
                try:
                    body, receive = await _buffer(receive)
                except BodyTooLarge as exc:  # a chunked body over `max_body_bytes`
                    await _refuse_raw(send, 413, str(exc.detail), "body_too_large")
                    return
                if key.models is not None and need == "inference":
                    self._check_models(key, body)
            if need != "inference":
                await self._call_admin(scope, receive, send, key.name, body)
                return
            gw.check_budget(key)
            socket = scope["type"] == "websocket"  # /v1/ws: its handshake is no request; each
            # of its messages comes back here as one, limited and counted then
            admission = None if socket else gw.limiter.admit_now(key) or await gw.limiter.admit(key)
        except RouterError as exc:
            if key is not None and need == "inference" and scope["type"] == "http":
                # a refusal is usage too, with the model asked: the body is read for it (before
                # the answer: the server takes no more of it after), when it was not yet
                model = (
                    await _asked(receive, self.refusals.limit) if body is None else _model_of(body)
                )
                # refused before its admission: the key's windows as they are (a 429 of a
                # limit has them already)
                seen = [] if hasattr(exc, "headers") else await gw.limiter.look(key)
                await _refuse(scope, send, exc, seen)
                self._record_refusal(key, path, status_of(exc)[0], model)
                return
            await _refuse(scope, send, exc)
            return
        if admission is None:
            await self.app(scope, receive, send)
            return
        await self._call_inference(scope, receive, send, key, admission)

    async def _audited_keyless(self, scope: Scope, receive: Receive, send: Send) -> None:
        """A load or unload served without a key (auth off, or a loopback client before any
        key exists) is audited as a keyed one, with no actor (`null`, as a reload's)."""
        try:
            body, receive = await _buffer(receive)
        except BodyTooLarge as exc:
            await _refuse_raw(send, 413, str(exc.detail), "body_too_large")
            return
        await self._call_admin(scope, receive, send, None, body)

    async def _call_admin(
        self, scope: Scope, receive: Receive, send: Send, actor: str | None, body: bytes | None
    ) -> None:
        status = 0

        async def sending(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        await self.app(scope, receive, sending)
        action = _AUDITED.get(scope["path"])
        if action and status == 200 and body is not None:
            model = _field(body, "model")
            await self.gateway.audit(actor, action, model if isinstance(model, str) else "")

    async def _call_inference(
        self, scope: Scope, receive: Receive, send: Send, key: ApiKey, admission: Any
    ) -> None:
        gw = self.gateway
        started = time.perf_counter()
        state = scope["state"]
        if admission.views:  # the x-ratelimit-* headers, as the prompt's charge left them,
            state["response_headers"] = admission.header_list  # added by server/front.py
        # a key with tokens per minute: the target counts the prompt before it runs it
        gate = prompt_gate.set(admission if admission.limits.tpm is not None else None)
        try:
            await self.app(scope, receive, send)
        finally:
            prompt_gate.reset(gate)
            gw.limiter.release(admission)
            status = started_status(state)
            prompt, completion, cost = record_route(gw, key, scope, status, started)
            if self.metrics is not None:
                self.metrics.count(key.name, status or 499, prompt, completion, cost)
            if admission.limits.tpm is not None and (
                prompt + completion or admission.prompt_charged
            ):
                await gw.limiter.charge(admission, prompt + completion)

    def _record_refusal(self, key: ApiKey, path: str, status: int, model: str) -> None:
        self.refusals.record(key, path, status, model)

    def _inference(self, scope: Scope) -> bool:
        method, path = scope.get("method", "GET"), scope["path"]
        need = self._scopes.get((method, path), _UNKNOWN)
        if need is _UNKNOWN:
            need = required_scope(method, path, self.metrics_public)
        return bool(need == "inference")

    def _check_models(self, key: ApiKey, body: bytes) -> None:
        """404 for a model the key may not use, as if it did not exist."""
        assert key.models is not None
        try:
            data = json.loads(body)
        except (ValueError, RecursionError):  # nested past the parser's depth: a 500 was
            return  # the route answers the malformed body
        if not isinstance(data, dict):
            return
        asked = [(data[f], f) for f in ("model", "judge") if isinstance(data.get(f), str)]
        default = self.gateway.settings.default_model
        if "model" not in data and "targets" not in data and default:  # served the default
            asked.append((default, "model"))
        if isinstance(data.get("targets"), list):  # /v1/compare, /v1/ensemble
            asked += [(t, "targets") for t in data["targets"] if isinstance(t, str)]
        for name, field in asked:
            if not self._allowed(key.models, name):
                raise ModelNotFound(f"The model '{name}' does not exist", param=field)

    def _allowed(self, allowed: frozenset[str], name: str) -> bool:
        if name in allowed:
            return True
        if self.resolve is None:
            return False
        try:
            canonical = self.resolve(name)
        except RouterError:
            return False
        for entry in allowed:
            try:
                if self.resolve(entry) == canonical:
                    return True
            except RouterError:
                continue
        return False


def key_still_valid(request: Any) -> bool:
    """Whether the request's API key is still good (True without one): a stream that lasts
    stops serving a key revoked or expired since it began."""
    key = getattr(request.state, "api_key", None)
    return key is None or bool(request.app.state.gateway.still_valid(key))


def visible(request: Any, name: str) -> bool:
    """Whether the request's API key may see the model `name` (any, for a key with no
    allow-list or with auth off): model listings leave out the others."""
    allowed = getattr(request.state, "model_allowed", None)
    return allowed is None or bool(allowed(name))


def _no_keys() -> RouterError:
    return PermissionDenied(
        "This server has no API keys yet, so it serves clients on this machine only. Create "
        "one (`llm-router keys create NAME`) or set LLM_ROUTER_MASTER_KEY, or set `auth: off`."
    )


def presented_key(headers: list[Header]) -> str | None:
    """The key a request carries: `Authorization: Bearer KEY` (OpenAI's), or as llama-server
    also takes it, the bare key as the Authorization header, or an `X-Api-Key` header (as
    Anthropic's SDK sends it). The gateway checks it; with auth off it is still the sticky
    id of A/B splits (routes_openai.route_info_of)."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.decode("latin-1").strip().partition(" ")
            if scheme.lower() == "bearer":
                return token.strip()
            return scheme if not token else None  # a bare key; another scheme is no key
        if name == b"x-api-key":
            return value.decode("latin-1").strip()
    return None


def _field(body: bytes, name: str) -> Any:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return data.get(name) if isinstance(data, dict) else None


async def _asked(receive: Receive, limit: int) -> str:
    """The `model` a refused request's body names ("" for none, or a body over `limit`
    bytes): read for its usage row; the request is refused whatever it says."""
    try:
        body = await _read(receive, limit)
    except BodyTooLarge:
        return ""
    return "" if body is None else _model_of(body)


async def _read(receive: Receive, limit: int | None = None) -> bytes | None:
    """The whole body (None once it is over `limit` bytes: the rest is left unread)."""
    chunks, size = [], 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        size += len(chunks[-1])
        if limit is not None and size > limit:
            return None
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _model_of(body: bytes) -> str:
    model = _field(body, "model")
    return model if isinstance(model, str) else ""


async def _buffer(receive: Receive) -> tuple[bytes, Receive]:
    """The whole body, and a `receive` that gives it again, then what follows (a disconnect)."""
    body = await _read(receive) or b""
    return body, body_once(body, receive)


async def _refuse_raw(send: Send, status: int, message: str, code: str) -> None:
    await send_json(send, status, envelope(message, "invalid_request_error", None, code))


async def _refuse(
    scope: Scope, send: Send, exc: RouterError, headers: list[Header] | None = None
) -> None:
    status, type_, code = status_of(exc)
    headers = [*(headers or ())]
    if isinstance(exc, RateLimited):
        if exc.retry_after is not None:
            headers.append((b"retry-after", retry_after(exc.retry_after).encode()))
        headers += getattr(exc, "headers", [])
    if status == 401:
        headers.append((b"www-authenticate", b"Bearer"))
    await send_json(send, status, envelope(exc.message, type_, exc.param, code), headers, scope)
