"""What a request may ask of the answer's shape: `response_format` (OpenAI), llama-server's
`json_schema`, and the `regex` and Lark `grammar` extensions; and the tools it offers
(`tools`, `tool_choice`, `parallel_tool_calls`, or OpenAI's deprecated `functions` and
`function_call`), with the tool history in its messages.
Validated here (a 400 names the field); turned into the internal `Constraint` and `Tools`."""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool

from ..errors import BadRequest
from ..types import Constraint, Function, ToolCall, Tools

__all__ = [
    "FunctionCallChoice",
    "FunctionCallIn",
    "FunctionIn",
    "FunctionList",
    "NamedFunction",
    "NamedToolChoice",
    "ResponseFormat",
    "ShapeFields",
    "ToolCallIn",
    "ToolChoice",
    "ToolIn",
    "ToolList",
    "constraint_of",
    "functions_of",
    "tool_calls_of",
    "tools_of",
]

FUNCTION_NAME = r"^[a-zA-Z0-9_-]{1,64}$"  # OpenAI's rule for function names
MAX_TOOLS = 128  # OpenAI's limit


class JsonSchemaFormat(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field("response", max_length=64)
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    strict: StrictBool | None = None


class ResponseFormat(BaseModel):
    """`{"type": "text"}`, `{"type": "json_object"}` or `{"type": "json_schema",
    "json_schema": {"name", "schema", "strict"}}`; llama-server's `{"type": "json_object",
    "schema": {...}}` too, read as it reads it: JSON valid for that schema."""

    model_config = ConfigDict(extra="allow")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema")


class FunctionIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(pattern=FUNCTION_NAME)
    description: str | None = Field(None, max_length=8192)
    parameters: dict[str, Any] | None = None
    strict: StrictBool | None = None


class ToolIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["function"]
    function: FunctionIn


class NamedFunction(BaseModel):
    name: str = Field(pattern=FUNCTION_NAME)


class NamedToolChoice(BaseModel):
    model_config = ConfigDict(extra="allow")

    type: Literal["function"]
    function: NamedFunction


class FunctionCallIn(BaseModel):
    model_config = ConfigDict(extra="allow")

    name: str = Field(max_length=64)
    arguments: str = Field(max_length=1_000_000)


class ToolCallIn(BaseModel):
    """A call in an earlier assistant message."""

    model_config = ConfigDict(extra="allow")

    id: str = Field(max_length=256)
    type: Literal["function"] = "function"
    function: FunctionCallIn


class ShapeFields(BaseModel):
    """Fields that constrain the answer, shared by chat and text completions."""

    response_format: ResponseFormat | None = None
    json_schema: dict[str, Any] | None = Field(
        None, description="llama-server's extension: the answer is JSON valid for this schema."
    )
    regex: str | None = Field(
        None, max_length=65536, description="Extension: the answer matches this regex."
    )
    grammar: str | None = Field(
        None,
        max_length=1_000_000,
        description="Extension: the answer is derived from this Lark grammar (llguidance's), "
        "or llama.cpp's GBNF (`root ::= ...`).",
    )


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice
ToolList = Annotated[list[ToolIn], Field(max_length=MAX_TOOLS)]
FunctionCallChoice = Literal["none", "auto"] | NamedFunction
FunctionList = Annotated[list[FunctionIn], Field(max_length=MAX_TOOLS)]


def constraint_of(fields: ShapeFields) -> Constraint | None:
    """The one constraint the request asks for; BadRequest for more than one."""
    found: list[Constraint] = []
    rf = fields.response_format
    if rf is not None and rf.type == "json_object":
        schema = json.dumps(rf.schema_) if rf.schema_ is not None else '{"type": "object"}'
        found.append(Constraint("json", schema, param="response_format"))
    elif rf is not None and rf.type == "json_schema":
        if rf.json_schema is None or rf.json_schema.schema_ is None:
            raise BadRequest(
                "response_format json_schema needs `json_schema.schema`", param="response_format"
            )
        schema = json.dumps(rf.json_schema.schema_)
        found.append(Constraint("json", schema, bool(rf.json_schema.strict), "response_format"))
    if fields.json_schema is not None:
        found.append(Constraint("json", json.dumps(fields.json_schema), False, "json_schema"))
    if fields.regex is not None:
        found.append(Constraint("regex", fields.regex, True, "regex"))
    if fields.grammar is not None:
        found.append(Constraint("lark", fields.grammar, True, "grammar"))
    if len(found) > 1:
        names = ", ".join(c.param for c in found)
        raise BadRequest(f"ask for one answer shape, not several ({names})", param=found[1].param)
    return found[0] if found else None


def tools_of(
    tools: list[ToolIn] | None, choice: ToolChoice | None, parallel: bool | None
) -> Tools | None:
    """The offered tools as the engines' layer takes them; BadRequest for a `tool_choice`
    that names no offered function, or that asks for calls when none is offered."""
    if not tools:
        if isinstance(choice, NamedToolChoice) or choice == "required":
            raise BadRequest(
                "tool_choice asks for a tool call, but the request offers no tools",
                param="tool_choice",
            )
        return None
    functions = _functions([t.function for t in tools], "tools")
    names = [f.name for f in functions]
    picked: str = (
        "auto"
        if choice is None
        else (choice.function.name if isinstance(choice, NamedToolChoice) else choice)
    )
    if isinstance(choice, NamedToolChoice) and picked not in names:
        raise BadRequest(
            f"tool_choice names function '{picked}', which is not in `tools`", param="tool_choice"
        )
    return Tools(functions, picked, parallel is not False)


def functions_of(
    functions: list[FunctionIn] | None, choice: FunctionCallChoice | None
) -> Tools | None:
    """OpenAI's deprecated `functions` and `function_call` as tools. At most one call is made
    (a legacy answer carries one `function_call`); BadRequest for a `function_call` that names
    no offered function."""
    named = choice.name if isinstance(choice, NamedFunction) else None
    if not functions:
        if named is not None:
            raise BadRequest(
                "function_call names a function, but the request offers no functions",
                param="function_call",
            )
        return None
    offered = _functions(functions, "functions")
    if named is not None and named not in {f.name for f in offered}:
        raise BadRequest(
            f"function_call names function '{named}', which is not in `functions`",
            param="function_call",
        )
    picked = named or ("auto" if choice is None else str(choice))
    return Tools(offered, picked, parallel=False)


# A function declared without `parameters` takes none, as OpenAI reads it: its arguments are
# `{}` (a free-form object let a small model invent some)
NO_PARAMETERS = {"type": "object", "properties": {}, "additionalProperties": False}


def _functions(functions: list[FunctionIn], param: str) -> tuple[Function, ...]:
    out = tuple(
        Function(
            name=f.name,
            description=f.description or "",
            parameters=json.dumps(_parameters(f.parameters, f"{param}[{i}]", param)),
            strict=bool(f.strict),
        )
        for i, f in enumerate(functions)
    )
    if len({f.name for f in out}) != len(out):
        raise BadRequest("two functions offered have the same name", param=param)
    return out


def _parameters(schema: dict[str, Any] | None, at: str, param: str) -> dict[str, Any]:
    """A function's `parameters` as the schema of its arguments, which are a JSON object:
    another `type` is a 400, as OpenAI's; a schema without one is read as an object's."""
    if schema is None:
        return NO_PARAMETERS
    kind = schema.get("type", "object")
    if kind != "object":
        where = f"{at}.function.parameters" if param == "tools" else f"{at}.parameters"
        raise BadRequest(
            f"`{where}` must be a JSON schema of type object (a function's arguments are a "
            f"JSON object), not {json.dumps(kind)}",
            param=where,
        )
    return {"type": "object", **schema}


def tool_calls_of(calls: list[ToolCallIn] | None) -> tuple[ToolCall, ...]:
    return tuple(ToolCall(c.id, c.function.name, c.function.arguments) for c in calls or ())
