"""Vendor the parts of OpenAI's openapi.yaml our tests validate responses against.

Usage: python scripts/vendor_openai_schemas.py [path/to/openai-openapi.yaml]

Reads the published OpenAPI document (default: ``../shared/openai-openapi.yaml`` relative to the
repository root), keeps the response components in ``ROOTS`` plus every component they reference, and the
field names of the requests in ``REQUESTS``,
drops OpenAPI-only annotations (``x-*``, ``example``, ``discriminator``, ...) and writes
``tests/data/openai_schemas.json``. The layout ``components/schemas/<Name>`` is kept so the
document's own ``#/components/schemas/...`` references still resolve. ``nullable`` is left as
published; ``tests/openai_schema.py`` rewrites it when it loads the file.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
DEFAULT_SOURCE = REPO_ROOT.parent / "shared" / "openai-openapi.yaml"
OUTPUT = REPO_ROOT / "tests" / "data" / "openai_schemas.json"

ROOTS = (
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "CreateCompletionResponse",
    "ListModelsResponse",
    "ErrorResponse",
    "CreateEmbeddingResponse",
    "Model",
    "Response",
    "ResponseStreamEvent",
)
REF_PREFIX = "#/components/schemas/"
# Requests whose field names are vendored (the router forwards only these to remote targets).
REQUESTS = ("CreateChatCompletionRequest", "CreateCompletionRequest", "CreateEmbeddingRequest")

# Keywords whose value is one subschema, a list of subschemas, or a name -> subschema map.
# Everything else (enum, const, default, required, ...) is data and is copied untouched.
SCHEMA_KEYWORDS = frozenset(
    {
        "items",
        "additionalProperties",
        "not",
        "contains",
        "propertyNames",
        "if",
        "then",
        "else",
        "unevaluatedItems",
        "unevaluatedProperties",
        "additionalItems",
    }
)
SCHEMA_LIST_KEYWORDS = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})
SCHEMA_MAP_KEYWORDS = frozenset(
    {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas"}
)
# OpenAPI annotations that mean nothing to a JSON Schema validator.
# Draft 2019-09's recursion (`CompoundFilter`, reached from `Response`'s tools), which draft
# 2020-12 validators refuse (`$recursiveAnchor: true` is not a string): the nested filter is
# left unchecked.
DROPPED_KEYWORDS = frozenset(
    {"example", "discriminator", "externalDocs", "xml", "$recursiveAnchor", "$recursiveRef"}
)

_BaseLoader: Any = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class _Loader(_BaseLoader):  # type: ignore[misc]
    """Safe loader resolving plain scalars as YAML 1.2 does.

    Only ``true``/``false`` become booleans (not ``on``/``yes``/...) and nothing becomes a date,
    so enum values and examples survive the trip to JSON unchanged.
    """


_Loader.yaml_implicit_resolvers = {
    first: [
        (tag, regexp)
        for tag, regexp in resolvers
        if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:timestamp")
    ]
    for first, resolvers in _BaseLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)


def subschemas(schema: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """Yield ``(keyword, subschema)`` for every schema directly nested in ``schema``."""
    for keyword, value in schema.items():
        if keyword in SCHEMA_KEYWORDS:
            yield keyword, value
        elif keyword in SCHEMA_LIST_KEYWORDS:
            yield from ((keyword, item) for item in value)
        elif keyword in SCHEMA_MAP_KEYWORDS:
            yield from ((keyword, item) for item in value.values())


def clean(schema: Any) -> Any:
    """A copy of ``schema`` without OpenAPI-only keywords, at any depth."""
    if not isinstance(schema, dict):
        return schema  # a boolean schema
    out: dict[str, Any] = {}
    for keyword, value in schema.items():
        if keyword.startswith("x-") or keyword in DROPPED_KEYWORDS:
            continue
        if keyword in SCHEMA_KEYWORDS:
            out[keyword] = clean(value)
        elif keyword in SCHEMA_LIST_KEYWORDS:
            out[keyword] = [clean(item) for item in value]
        elif keyword in SCHEMA_MAP_KEYWORDS:
            out[keyword] = {name: clean(item) for name, item in value.items()}
        else:
            out[keyword] = value
    return out


def referenced(schema: Any) -> Iterator[str]:
    """Names of the components ``schema`` references, at any depth."""
    if not isinstance(schema, dict):
        return
    ref = schema.get("$ref")
    if ref is not None:
        if not ref.startswith(REF_PREFIX) or "/" in ref.removeprefix(REF_PREFIX):
            raise SystemExit(f"unsupported $ref {ref!r}: only {REF_PREFIX}<Name> is vendored")
        yield ref.removeprefix(REF_PREFIX).replace("~1", "/").replace("~0", "~")
    for _, sub in subschemas(schema):
        yield from referenced(sub)


def closure(components: dict[str, Any], roots: tuple[str, ...]) -> dict[str, Any]:
    """``roots`` and every component they reference transitively, cleaned, by name."""
    picked: dict[str, Any] = {}
    pending = list(roots)
    while pending:
        name = pending.pop()
        if name in picked:
            continue
        if name not in components:
            raise SystemExit(f"component {name!r} is not in the OpenAPI document")
        picked[name] = clean(components[name])
        pending.extend(referenced(picked[name]))
    return picked


def vendor(source: Path) -> dict[str, Any]:
    """The vendored document built from the OpenAPI YAML at ``source``."""
    with source.open(encoding="utf-8") as stream:
        document = yaml.load(stream, Loader=_Loader)
    info = document.get("info", {})
    return {
        "source": (
            f"Extracted from OpenAI's openapi.yaml (OpenAPI {document.get('openapi')}, "
            f"API version {info.get('version')}) by scripts/vendor_openai_schemas.py; "
            "do not edit by hand, re-run the script."
        ),
        "components": {"schemas": closure(document["components"]["schemas"], ROOTS)},
        "request_fields": {
            name: sorted(fields(document["components"]["schemas"], name)) for name in REQUESTS
        },
    }


def fields(components: dict[str, Any], name: str) -> set[str]:
    """The property names of component `name`, its allOf parts included."""
    schema = components[name]
    found = set(schema.get("properties", {}))
    for part in schema.get("allOf", []):
        if "$ref" in part:
            found |= fields(components, part["$ref"].removeprefix(REF_PREFIX))
        found |= set(part.get("properties", {}))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("source", nargs="?", type=Path, default=DEFAULT_SOURCE)
    args = parser.parse_args(argv)
    source: Path = args.source
    if not source.is_file():
        print(f"error: {source} not found; pass the path to OpenAI's openapi.yaml", file=sys.stderr)
        return 1
    vendored = vendor(source)
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(json.dumps(vendored, sort_keys=True, indent=1) + "\n", encoding="utf-8")
    names = sorted(vendored["components"]["schemas"])
    print(f"wrote {OUTPUT} ({OUTPUT.stat().st_size} bytes, {len(names)} components)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
