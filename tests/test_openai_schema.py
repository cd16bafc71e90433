"""Tests of the OpenAI schema helper itself, on hand-written objects shaped like real responses."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from llm_router.protocol import (
    OPENAI_CHAT_FIELDS,
    OPENAI_COMPLETION_FIELDS,
    OPENAI_EMBEDDING_FIELDS,
)
from openai_schema import SCHEMAS_FILE, components, validate

ROOTS = {
    "CreateChatCompletionResponse",
    "CreateChatCompletionStreamResponse",
    "CreateCompletionResponse",
    "ListModelsResponse",
    "ErrorResponse",
    "CreateEmbeddingResponse",
    "Model",
}


def chat_completion() -> dict[str, Any]:
    return {
        "id": "chatcmpl-123",
        "object": "chat.completion",
        "created": 1741570283,
        "model": "smollm2-135m-instruct",
        "choices": [
            {
                "index": 0,
                "message": {"role": "assistant", "content": "Hello!", "refusal": None},
                "logprobs": None,
                "finish_reason": "stop",
            }
        ],
        "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12},
        "system_fingerprint": "fp_local",
    }


def stream_chunk(**choice: Any) -> dict[str, Any]:
    return {
        "id": "chatcmpl-123",
        "object": "chat.completion.chunk",
        "created": 1741570283,
        "model": "smollm2-135m-instruct",
        "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": None, **choice}],
    }


def completion() -> dict[str, Any]:
    return {
        "id": "cmpl-123",
        "object": "text_completion",
        "created": 1741570283,
        "model": "smollm2-135m-instruct",
        "choices": [{"index": 0, "text": " world", "logprobs": None, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 16, "total_tokens": 17},
    }


def test_vendored_file_names_its_source_and_holds_every_root() -> None:
    vendored = json.loads(SCHEMAS_FILE.read_text(encoding="utf-8"))
    assert "openapi.yaml" in vendored["source"]
    assert "scripts/vendor_openai_schemas.py" in vendored["source"]
    assert set(components()) >= ROOTS


def test_chat_completion_passes() -> None:
    validate("CreateChatCompletionResponse", chat_completion())


def test_chat_completion_without_choices_fails() -> None:
    body = chat_completion()
    del body["choices"]
    with pytest.raises(AssertionError, match=r"at \$: 'choices' is a required property"):
        validate("CreateChatCompletionResponse", body)


def test_chat_completion_message_without_refusal_fails() -> None:
    body = chat_completion()
    del body["choices"][0]["message"]["refusal"]
    with pytest.raises(AssertionError, match=r"at \$\.choices\[0\]\.message: 'refusal'"):
        validate("CreateChatCompletionResponse", body)


@pytest.mark.parametrize("finish_reason", [None, "stop", "length"])
def test_stream_chunk_passes(finish_reason: str | None) -> None:
    validate("CreateChatCompletionStreamResponse", stream_chunk(finish_reason=finish_reason))


def test_stream_chunk_nullable_enum_still_restricts_values() -> None:
    with pytest.raises(AssertionError, match=r"at \$\.choices\[0\]\.finish_reason: 'done'"):
        validate("CreateChatCompletionStreamResponse", stream_chunk(finish_reason="done"))


def test_stream_chunk_nullable_ref_admits_null_and_checks_objects() -> None:
    chunk = stream_chunk(logprobs=None) | {"usage": None}
    validate("CreateChatCompletionStreamResponse", chunk)
    chunk["usage"] = {"prompt_tokens": 9}
    with pytest.raises(AssertionError, match=r"at \$\.usage: 'completion_tokens'"):
        validate("CreateChatCompletionStreamResponse", chunk)


def test_error_response_passes() -> None:
    error = {
        "message": "The model `gpt-5` does not exist.",
        "type": "invalid_request_error",
        "param": None,
        "code": "model_not_found",
    }
    validate("ErrorResponse", {"error": error})


def test_framework_default_error_fails() -> None:
    with pytest.raises(AssertionError, match=r"at \$: 'error' is a required property"):
        validate("ErrorResponse", {"detail": "Not Found"})


def test_list_models_passes() -> None:
    model = {"id": "smollm2-135m-instruct", "object": "model", "created": 0, "owned_by": "local"}
    validate("ListModelsResponse", {"object": "list", "data": [model]})


def test_completion_passes() -> None:
    validate("CreateCompletionResponse", completion())


def test_completion_with_wrong_object_fails() -> None:
    body = completion() | {"object": "chat.completion"}
    with pytest.raises(AssertionError, match=r"at \$\.object: 'chat\.completion' is not one of"):
        validate("CreateCompletionResponse", body)


def test_embedding_response_passes() -> None:
    body = {
        "object": "list",
        "model": "some-embedder",
        "data": [{"object": "embedding", "index": 0, "embedding": [0.1, -0.2]}],
        "usage": {"prompt_tokens": 2, "total_tokens": 2},
    }
    validate("CreateEmbeddingResponse", body)


def test_unknown_component_is_a_key_error() -> None:
    with pytest.raises(KeyError, match="CreateChatCompletionResponse"):
        validate("NoSuchComponent", {})


def test_the_fields_passed_on_upstream_are_openais() -> None:
    """protocol.py's field lists (what reaches a remote target) match OpenAI's published
    request schemas, vendored by scripts/vendor_openai_schemas.py."""
    vendored = json.loads((Path(__file__).parent / "data" / "openai_schemas.json").read_text())
    fields = vendored["request_fields"]
    assert sorted(OPENAI_CHAT_FIELDS) == fields["CreateChatCompletionRequest"]
    assert sorted(OPENAI_COMPLETION_FIELDS) == fields["CreateCompletionRequest"]
    assert sorted(OPENAI_EMBEDDING_FIELDS) == fields["CreateEmbeddingRequest"]
