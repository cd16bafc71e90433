"""Check JSON objects against OpenAI's published API schemas, as real clients would see them.

The schemas are vendored in ``data/openai_schemas.json`` by ``scripts/vendor_openai_schemas.py``.
The source is OpenAPI 3.1 but still marks many fields ``nullable: true`` in the OpenAPI 3.0 style,
which JSON Schema ignores; the file is loaded and rewritten once per process so such fields also
admit ``null``. Validators are cached per component and are read-only afterwards.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError
from referencing import Registry
from referencing.jsonschema import DRAFT202012

__all__ = ["SCHEMAS_FILE", "components", "validate"]

SCHEMAS_FILE = Path(__file__).parent / "data" / "openai_schemas.json"
_BASE_URI = "urn:openai:openapi"
_MAX_MESSAGE = 300

# Keywords whose value is one subschema, a list of them, or a name -> subschema map.
_SCHEMA_KEYWORDS = frozenset(
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
    }
)
_SCHEMA_LIST_KEYWORDS = frozenset({"allOf", "anyOf", "oneOf", "prefixItems"})
_SCHEMA_MAP_KEYWORDS = frozenset({"properties", "patternProperties", "$defs", "dependentSchemas"})
# Keywords that constrain a value whatever its type, so a `null` must bypass them via anyOf.
_TYPE_INDEPENDENT = frozenset({"$ref", "allOf", "anyOf", "oneOf", "not", "const", "if"})


def _admit_null(schema: dict[str, Any]) -> dict[str, Any]:
    """``schema`` widened to also accept ``null``.

    A plain typed node gets ``"null"`` added to its ``type`` (and ``None`` to its ``enum``), which
    keeps error messages direct; anything with a ``$ref`` or combinator is wrapped in ``anyOf``.
    """
    if "type" in schema and not _TYPE_INDEPENDENT & schema.keys():
        types = [schema["type"]] if isinstance(schema["type"], str) else list(schema["type"])
        widened = {**schema, "type": types if "null" in types else [*types, "null"]}
        if "enum" in schema and None not in schema["enum"]:
            widened["enum"] = [*schema["enum"], None]
        return widened
    return {"anyOf": [schema, {"type": "null"}]}


def _from_openapi(schema: Any) -> Any:
    """A copy of ``schema`` with every ``nullable`` turned into JSON Schema, at any depth."""
    if not isinstance(schema, dict):
        return schema  # a boolean schema
    out: dict[str, Any] = {}
    for keyword, value in schema.items():
        if keyword in _SCHEMA_KEYWORDS:
            out[keyword] = _from_openapi(value)
        elif keyword in _SCHEMA_LIST_KEYWORDS:
            out[keyword] = [_from_openapi(item) for item in value]
        elif keyword in _SCHEMA_MAP_KEYWORDS:
            out[keyword] = {name: _from_openapi(item) for name, item in value.items()}
        elif keyword != "nullable" and not keyword.startswith("x-"):
            out[keyword] = value
    return _admit_null(out) if schema.get("nullable") is True else out


@cache
def _schemas() -> dict[str, Any]:
    vendored = json.loads(SCHEMAS_FILE.read_text(encoding="utf-8"))
    schemas = {
        name: _from_openapi(schema) for name, schema in vendored["components"]["schemas"].items()
    }
    for schema in schemas.values():
        Draft202012Validator.check_schema(schema)
    return schemas


@cache
def _registry() -> Registry[Any]:
    document = {"components": {"schemas": _schemas()}}
    registry: Registry[Any] = Registry().with_resource(
        _BASE_URI, DRAFT202012.create_resource(document)
    )
    return registry


@cache
def _validator(component: str) -> Draft202012Validator:
    if component not in _schemas():
        raise KeyError(f"unknown component {component!r}; vendored: {', '.join(components())}")
    schema = {"$ref": f"{_BASE_URI}#/components/schemas/{component}"}
    return Draft202012Validator(schema, registry=_registry())


def components() -> list[str]:
    """Names of the vendored components, sorted."""
    return sorted(_schemas())


def _lines(error: ValidationError, indent: str = "  ") -> Iterator[str]:
    """``error`` and, for anyOf/oneOf, why each plausible alternative failed, one per line."""
    message = error.message
    if len(message) > _MAX_MESSAGE:
        message = message[: _MAX_MESSAGE - 3] + "..."
    yield f"{indent}at {error.json_path}: {message} [{error.validator}]"
    # Alternatives that rejected the value for its type alone (e.g. the `null` of a nullable
    # field) say nothing useful when another alternative got further.
    deeper = [e for e in error.context if list(e.relative_schema_path)[1:] != ["type"]]
    for sub in sorted(deeper or error.context, key=lambda e: e.json_path):
        yield from _lines(sub, indent + "  ")


def validate(component: str, instance: object) -> None:
    """Assert that ``instance`` conforms to OpenAI's ``components/schemas/<component>``.

    Raises ``AssertionError`` naming the JSON path and the failed constraint of every violation,
    and ``KeyError`` for a component that was not vendored.
    """
    errors = sorted(_validator(component).iter_errors(instance), key=lambda e: e.json_path)
    if errors:
        lines = [f"{component}: {len(errors)} violation(s) of OpenAI's schema"]
        for error in errors:
            lines.extend(_lines(error))
        raise AssertionError("\n".join(lines))
