"""JSON schemas for the structured-output tests: nested objects, arrays with item counts, enums,
`const`, patterns, bounded numbers, `$defs`/`$ref`, `anyOf`, `additionalProperties: false`,
required and optional properties. Strings and arrays are bounded so that even a tiny model,
decoding greedily, finishes every answer within the tests' `max_tokens`."""

from __future__ import annotations

from typing import Any

S = {"type": "string", "maxLength": 24}  # a short free string
NAME = {"type": "string", "pattern": "^[A-Z][a-z]{1,10}$"}


def obj(props: dict[str, Any], required: list[str] | None = None, **extra: Any) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": props,
        "required": list(props) if required is None else required,
        "additionalProperties": False,
        **extra,
    }


SCHEMAS: list[dict[str, Any]] = [
    # scalars in an object
    obj({"answer": S}),
    obj({"count": {"type": "integer", "minimum": 0, "maximum": 10}}),
    obj({"temperature": {"type": "number", "minimum": -50, "maximum": 60}}),
    obj({"ok": {"type": "boolean"}}),
    obj({"nothing": {"type": "null"}}),
    obj({"name": NAME, "age": {"type": "integer", "minimum": 1, "maximum": 120}}),
    obj({"year": {"type": "integer", "minimum": 1900, "maximum": 2100}}),
    obj({"ratio": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1}}),
    obj({"score": {"type": "integer", "minimum": -5, "maximum": -1}}),
    obj({"big": {"type": "integer", "minimum": 1000000, "maximum": 1000010}}),
    # enums and const
    obj({"colour": {"enum": ["red", "green", "blue"]}}),
    obj({"kind": {"const": "fruit"}, "name": S}),
    obj({"level": {"enum": [1, 2, 3]}, "label": {"enum": ["low", "mid", "high"]}}),
    obj({"mixed": {"enum": ["a", 1, True, None]}}),
    obj({"version": {"const": 2}, "stable": {"const": True}}),
    # patterns
    obj({"code": {"type": "string", "pattern": "^[A-Z]{3}-[0-9]{3}$"}}),
    obj({"date": {"type": "string", "pattern": "^20[0-9]{2}-(0[1-9]|1[0-2])-([0-2][0-9])$"}}),
    obj({"hex": {"type": "string", "pattern": "^#[0-9a-f]{6}$"}}),
    obj({"word": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 12}}),
    obj({"phone": {"type": "string", "pattern": "^\\+[0-9]{7,12}$"}}),
    # string lengths
    obj({"initials": {"type": "string", "minLength": 2, "maxLength": 3}}),
    obj({"title": {"type": "string", "minLength": 5, "maxLength": 30}}),
    # arrays with item counts
    obj({"tags": {"type": "array", "items": S, "minItems": 1, "maxItems": 3}}),
    obj({"numbers": {"type": "array", "items": {"type": "integer"}, "minItems": 3, "maxItems": 3}}),
    obj({"empty": {"type": "array", "items": S, "maxItems": 0}}),
    obj(
        {
            "matrix": {
                "type": "array",
                "items": {
                    "type": "array",
                    "items": {"type": "integer", "minimum": 0, "maximum": 9},
                    "minItems": 2,
                    "maxItems": 2,
                },
                "minItems": 2,
                "maxItems": 2,
            }
        }
    ),
    obj({"flags": {"type": "array", "items": {"type": "boolean"}, "maxItems": 4}}),
    obj({"pair": {"type": "array", "prefixItems": [S, {"type": "integer"}], "items": False}}),
    obj(
        {
            "people": {
                "type": "array",
                "items": obj({"name": NAME, "age": {"type": "integer", "minimum": 0}}),
                "minItems": 1,
                "maxItems": 2,
            }
        }
    ),
    # nested objects
    obj({"address": obj({"city": S, "zip": {"type": "string", "pattern": "^[0-9]{5}$"}})}),
    obj({"a": obj({"b": obj({"c": {"type": "integer", "maximum": 99, "minimum": 0}})})}),
    obj(
        {
            "user": obj(
                {"name": NAME, "email": {"type": "string", "pattern": "^[a-z]+@[a-z]+\\.com$"}}
            ),
            "active": {"type": "boolean"},
        }
    ),
    obj({"point": obj({"x": {"type": "number"}, "y": {"type": "number"}}), "label": S}),
    # required vs optional
    obj({"name": S, "nickname": S}, required=["name"]),
    obj({"id": {"type": "integer", "minimum": 1, "maximum": 999}, "note": S}, required=["id"]),
    obj({"a": S, "b": S, "c": S}, required=[]),
    obj({"x": {"type": "integer"}, "y": {"type": "integer"}}, required=["y"]),
    # anyOf
    obj({"value": {"anyOf": [{"type": "integer", "maximum": 100}, {"type": "null"}]}}),
    obj(
        {
            "id": {
                "anyOf": [
                    {"type": "string", "pattern": "^u[0-9]{3}$"},
                    {"type": "integer", "minimum": 0, "maximum": 9},
                ]
            }
        }
    ),
    {"anyOf": [obj({"cat": S}), obj({"dog": S})]},
    obj(
        {
            "shape": {
                "anyOf": [
                    obj({"radius": {"type": "number", "minimum": 0}}),
                    obj({"side": {"type": "number", "minimum": 0}}),
                ]
            }
        }
    ),
    # $defs and $ref
    {
        "$defs": {"item": obj({"name": S, "price": {"type": "number", "minimum": 0}})},
        **obj({"item": {"$ref": "#/$defs/item"}}),
    },
    {
        "$defs": {"item": obj({"sku": {"type": "string", "pattern": "^[A-Z]{2}[0-9]{2}$"}})},
        **obj(
            {
                "items": {
                    "type": "array",
                    "items": {"$ref": "#/$defs/item"},
                    "minItems": 1,
                    "maxItems": 2,
                }
            }
        ),
    },
    {
        "$defs": {
            "colour": {"enum": ["red", "green", "blue"]},
            "pixel": obj(
                {
                    "c": {"$ref": "#/$defs/colour"},
                    "alpha": {"type": "number", "minimum": 0, "maximum": 1},
                }
            ),
        },
        **obj({"pixel": {"$ref": "#/$defs/pixel"}}),
    },
    # top-level shapes other than an object
    {
        "type": "array",
        "items": {"type": "integer", "minimum": 0, "maximum": 9},
        "minItems": 2,
        "maxItems": 4,
    },
    {"type": "integer", "minimum": 10, "maximum": 20},
    {"enum": ["yes", "no"]},
    {"type": "string", "pattern": "^[A-Z][a-z]+ [A-Z][a-z]+$", "maxLength": 24},
    {"type": "boolean"},
    # mixed, realistic shapes
    obj(
        {
            "title": S,
            "rating": {"type": "integer", "minimum": 1, "maximum": 5},
            "tags": {"type": "array", "items": {"enum": ["good", "bad", "ok"]}, "maxItems": 2},
        }
    ),
    obj(
        {
            "city": S,
            "forecast": {
                "type": "array",
                "items": obj(
                    {
                        "day": {"enum": ["mon", "tue", "wed"]},
                        "high": {"type": "integer", "minimum": -30, "maximum": 50},
                    }
                ),
                "minItems": 1,
                "maxItems": 3,
            },
        }
    ),
    obj(
        {
            "status": {"enum": ["open", "closed"]},
            "assignee": {"anyOf": [NAME, {"type": "null"}]},
            "priority": {"type": "integer", "minimum": 1, "maximum": 3},
        },
        required=["status", "priority"],
    ),
    obj(
        {
            "steps": {"type": "array", "items": S, "minItems": 2, "maxItems": 3},
            "done": {"type": "boolean"},
        }
    ),
    obj(
        {
            "lat": {"type": "number", "minimum": -90, "maximum": 90},
            "lon": {"type": "number", "minimum": -180, "maximum": 180},
        }
    ),
]


# A function the tool-calling tests offer (OpenAI's `function` object; wrap it as
# {"type": "function", "function": WEATHER} for `tools`).
WEATHER: dict[str, Any] = {
    "name": "get_weather",
    "description": "The current weather in a city.",
    "parameters": {
        "type": "object",
        "properties": {
            "city": {"type": "string", "maxLength": 40},
            "unit": {"enum": ["celsius", "fahrenheit"]},
        },
        "required": ["city", "unit"],
        "additionalProperties": False,
    },
}
