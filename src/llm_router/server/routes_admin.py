"""Administration over HTTP (the `admin` scope, checked by server/gateway.py): API keys
(`/admin/keys`), usage (`/admin/usage`, JSON or CSV), the audit log (`/admin/audit`): the same
operations as `llm-router keys` / `llm-router usage`, on the same database; and reloading the
configuration (`/admin/reload`, server/reload.py)."""

from __future__ import annotations

import csv
import io
import time
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException

from ..errors import BadRequest, RouterError
from ..gateway.keys import KeySpec
from ..gateway.service import Gateway
from ..gateway.usage import GROUPS, parse_range
from .bodies import JSONRoute
from .reload import Reloader

__all__ = ["routes"]

routes = APIRouter(prefix="/admin", tags=["admin"], route_class=JSONRoute)


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


def _actor(request: Request) -> str | None:
    return getattr(request.state, "key_name", None)


@routes.post("/keys", status_code=201)
async def create_key(spec: KeySpec, request: Request) -> dict[str, Any]:
    """A new key; the secret (`key`) is in this answer only. `unknown_models`: names of its
    allow-list that no model, alias, route or remote target answers to now (a typo)."""
    secret, key = await _gateway(request).create_key(spec, _actor(request))
    resolve = request.app.state.dispatcher.resolve
    unknown = []
    for name in sorted(key.models or ()):
        try:
            resolve(name)
        except RouterError:
            unknown.append(name)
    return {"key": secret, **key.public(), "unknown_models": unknown}


@routes.get("/keys")
async def list_keys(request: Request) -> dict[str, Any]:
    store = await _gateway(request).ensure_store()
    return {"object": "list", "data": [k.public() for k in await store.keys()]}


@routes.get("/keys/{name}")
async def show_key(name: str, request: Request) -> dict[str, Any]:
    gateway = _gateway(request)
    key = await (await gateway.ensure_store()).key(name)
    if key is None:
        raise HTTPException(404, f"no API key named {name!r}")
    return {**key.public(), "spent": gateway.spent(name)}


@routes.delete("/keys/{name}")
async def revoke_key(name: str, request: Request) -> dict[str, Any]:
    """Revoke the key: refused by every router sharing the database within a second."""
    gateway = _gateway(request)
    if not await gateway.revoke_key(name, _actor(request)):
        store = await gateway.ensure_store()
        if await store.key(name) is None:
            raise HTTPException(404, f"no API key named {name!r}")
    return {"name": name, "revoked": True}


@routes.post("/reload")
async def reload(request: Request) -> dict[str, Any]:
    """Read the configuration again and apply what can change while serving: `applied` (the
    fields changed now), `unloaded` (models whose file or options changed; the next request
    loads them again), `restart_required` (changed fields read only at start). An invalid
    configuration is a 400 and changes nothing."""
    reloader: Reloader = request.app.state.reloader
    return await reloader.reload(_actor(request))


@routes.get("/usage", response_model=None)
async def usage(
    request: Request,
    start: str | None = Query(
        None, description="ISO date/time or Unix time; default: 30 days ago."
    ),
    end: str | None = Query(None, description="ISO date/time or Unix time; default: now."),
    group_by: str = Query("key,model,target,day", description=f"Any of {', '.join(GROUPS)}."),
) -> Response | dict[str, Any]:
    """Requests, tokens, cost, errors and latency per group; CSV with `Accept: text/csv`."""
    gateway = _gateway(request)
    begin, finish = parse_range(start, end, time.time())
    groups = [g.strip() for g in group_by.split(",") if g.strip()]
    unknown = [g for g in groups if g not in GROUPS]
    if unknown:
        raise BadRequest(f"cannot group by {unknown}; use {', '.join(GROUPS)}", param="group_by")
    await gateway.flush()
    rows = await (await gateway.ensure_store()).usage(begin, finish, groups)
    if "text/csv" in request.headers.get("accept", ""):
        return Response(to_csv(rows, groups), media_type="text/csv")
    return {"object": "list", "start": begin, "end": finish, "group_by": groups, "data": rows}


@routes.get("/audit")
async def audit(
    request: Request,
    start: str | None = Query(None),
    end: str | None = Query(None),
    limit: int = Query(1000, ge=1, le=10000),
) -> JSONResponse:
    begin, finish = parse_range(start, end, time.time())
    rows = await (await _gateway(request).ensure_store()).audit_log(begin, finish, limit)
    return JSONResponse({"object": "list", "data": rows})


def to_csv(rows: list[dict[str, Any]], groups: list[str]) -> str:
    from ..gateway.usage import COLUMNS

    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=[*groups, *COLUMNS], extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()
