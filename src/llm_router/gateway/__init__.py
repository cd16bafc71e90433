"""The gateway: API keys with scopes and model allow-lists, per-key limits and budgets, usage
accounting and an audit log, with its state in SQLite or PostgreSQL (no HTTP here: the ASGI
middleware is server/gateway.py, the admin routes server/routes_admin.py, the CLI
cli_keys.py)."""

from __future__ import annotations

from .keys import ApiKey, KeySpec
from .limits import Limiter
from .service import Gateway
from .store import Store

__all__ = ["ApiKey", "Gateway", "KeySpec", "Limiter", "Store"]
