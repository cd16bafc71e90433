"""The Python API (`from llm_router import Router`) on the bundled real models, in-process:
the same services as the server, so the same answers, errors and cancellation."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from llm_router import Router, defaults
from llm_router.errors import BadRequest, ContextLengthExceeded, ModelNotFound
from llm_router.protocol import ChatCompletion, Completion
from servers import link_models

pytestmark = pytest.mark.timeout(300)

SMOL = defaults.SMOLLM2_FILE.removesuffix(".gguf")
GEMMA = defaults.GEMMA_FILE.removesuffix(".gguf")
PARIS = "What is the capital of France?"
GREEDY = {"temperature": 0, "max_tokens": 24}


@pytest.fixture(scope="module")
def api_models(
    tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path, gemma_gguf: Path
) -> Path:
    folder = link_models(tmp_path_factory.mktemp("api-models"), smollm2_gguf, gemma_gguf)
    assert defaults.place_minilm(folder) is not None
    return folder


@pytest.fixture
async def router(api_models: Path) -> AsyncIterator[Router]:
    async with Router(
        models_dir=str(api_models),
        watch_interval=0,
        spare_workers=False,
        model_defaults={"threads": 2},
    ) as r:
        yield r


async def test_quick_chat_and_generate_answer_with_the_real_model(router: Router) -> None:
    assert router.default_model() == SMOL
    assert {SMOL, GEMMA, defaults.MINILM_ID} <= set(router.models())
    assert "Paris" in await router.quick(PARIS, **GREEDY)
    done = await router.chat([{"role": "user", "content": PARIS}], model=SMOL, **GREEDY)
    assert isinstance(done, ChatCompletion) and done.model == SMOL
    assert "Paris" in (done.choices[0].message.content or "")
    assert done.usage.completion_tokens > 0 and done.usage.prompt_tokens > 5
    text = await router.generate(
        "The capital of France is", model=GEMMA, max_tokens=8, temperature=0
    )
    assert isinstance(text, Completion) and text.model == GEMMA
    assert text.choices[0].text.strip()


async def test_stream_gives_the_same_text_as_chat_and_stops_when_left(router: Router) -> None:
    whole = await router.quick(PARIS, **GREEDY)
    # computed, not the cached answer of quick() above (a cache hit streams as one piece)
    pieces = [p async for p in router.stream(PARIS, cache=False, **GREEDY)]
    assert len(pieces) > 1 and "".join(pieces) == whole
    raw = [
        p
        async for p in router.stream(
            "Once upon a time", model=GEMMA, raw=True, max_tokens=6, temperature=0
        )
    ]
    assert "".join(raw).strip()
    stream = router.stream("Tell me a very long story.", max_tokens=400)
    async for _ in stream:
        break
    await stream.aclose()  # type: ignore[attr-defined]
    state = router.manager.resolve(SMOL)
    assert state.active == 0  # the slot was given back, not held until 400 tokens


async def test_tools_and_a_schema_through_the_python_api(router: Router) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string", "maxLength": 20}},
                "required": ["city"],
            },
        },
    }
    done = await router.chat(
        "Weather in Rome?",
        model=SMOL,
        tools=[tool],
        tool_choice="required",
        parallel_tool_calls=False,
        max_tokens=60,
    )
    (call,) = done.choices[0].message.model_dump()["tool_calls"]
    assert call["function"]["name"] == "get_weather"
    assert isinstance(json.loads(call["function"]["arguments"])["city"], str)
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer"}},
        "required": ["n"],
        "additionalProperties": False,
    }
    fmt = {"type": "json_schema", "json_schema": {"name": "n", "schema": schema}}
    answer = await router.quick(
        "Pick a number.", model=SMOL, response_format=fmt, max_tokens=30, temperature=0
    )
    assert isinstance(json.loads(answer)["n"], int)


async def test_batch_answers_in_order(router: Router) -> None:
    questions = [PARIS, "What is the capital of Italy?", PARIS]
    answers = await router.batch(questions, concurrency=2, **GREEDY)
    assert len(answers) == 3 and answers[0] == answers[2]
    assert "Paris" in answers[0] and "Rom" in answers[1]  # "Rome" or, from SmolLM2, "Roma"


async def test_embed_returns_one_vector_per_input(router: Router) -> None:
    vectors = await router.embed(
        ["a cat", "a kitten", "the stock market"], model=defaults.MINILM_ID
    )
    assert [len(v) for v in vectors] == [384, 384, 384]
    cat, kitten, stocks = vectors
    dot = lambda a, b: sum(x * y for x, y in zip(a, b, strict=True))  # noqa: E731
    assert dot(cat, kitten) > dot(cat, stocks)
    assert len(await router.embed("one", model=defaults.MINILM_ID)) == 1
    # vectors of floats even when base64 is asked (embeddings_response gives the base64)
    (floats,) = await router.embed("a cat", model=defaults.MINILM_ID, encoding_format="base64")
    assert floats == cat
    base64 = await router.embeddings_response(
        "a cat", model=defaults.MINILM_ID, encoding_format="base64"
    )
    assert isinstance(base64.data[0].embedding, str)


async def test_ensemble_and_compare_on_two_local_models(router: Router) -> None:
    voted = await router.ensemble(PARIS, targets=[SMOL, GEMMA, SMOL], mode="vote", **GREEDY)
    assert voted.ensemble.votes is not None
    assert sum(voted.ensemble.votes.values()) == 2.0  # each target asked once
    assert voted.ensemble.chosen == voted.model
    assert "Paris" in (voted.choices[0].message.content or "")
    rows = await router.compare(PARIS, targets=[SMOL, GEMMA], **GREEDY)
    assert [r.model for r in rows] == [SMOL, GEMMA]
    assert all(r.error is None and r.latency_ms > 0 for r in rows)


async def test_bad_input_raises_the_servers_errors(router: Router) -> None:
    with pytest.raises(ModelNotFound):
        await router.quick("hi", model="no-such-model")
    with pytest.raises(BadRequest) as info:
        await router.chat("hi", temperature=-3)
    assert info.value.param == "temperature"
    with pytest.raises(ContextLengthExceeded):
        await router.quick("word " * 20_000, model=SMOL)
    assert "Paris" in await router.quick(PARIS, **GREEDY)  # and it keeps serving


async def test_a_router_must_be_started(api_models: Path) -> None:
    r = Router(models_dir=str(api_models), watch_interval=0)
    with pytest.raises(RuntimeError, match="not started"):
        await r.quick("hi")
    with pytest.raises(RuntimeError, match="not started"):
        r.models()


async def test_a_closed_router_refuses_to_start_again(api_models: Path) -> None:
    """Started again after close(), it said it was running and the next request waited for
    ever (its manager had stopped for good; found from outside)."""
    r = Router(models_dir=str(api_models), watch_interval=0, spare_workers=False)
    async with r:
        assert r.models()
    with pytest.raises(RuntimeError, match="make a new Router"):
        await r.start()
    with pytest.raises(RuntimeError, match="not started"):
        await r.quick("hi")


async def test_a_failed_batch_cancels_the_rest(router: Router) -> None:
    """One prompt too long for the context: the error came at once, and the other prompts
    went on generating in the background, their answers thrown away."""
    prompts = ["word " * 20_000] + [f"Count to {i}." for i in range(6)]
    with pytest.raises(ContextLengthExceeded):
        await router.batch(prompts, model=SMOL, concurrency=2, max_tokens=200, temperature=0)
    state = router.manager.resolve(SMOL)
    assert state.active == 0 and not state.waiters  # nothing left running or queued
    with pytest.raises(ValueError, match="concurrency"):
        await router.batch([PARIS], concurrency=0)  # it waited for ever


async def test_stream_refuses_what_it_cannot_yield(router: Router) -> None:
    """Tool calls and n > 1 streamed nothing, or one answer of n, without a word; an
    embeddings error was pydantic's, not the API's RouterError."""
    tool = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
    with pytest.raises(BadRequest, match="use chat"):
        [t async for t in router.stream(PARIS, model=SMOL, tools=[tool])]
    with pytest.raises(BadRequest, match="use chat"):
        [t async for t in router.stream(PARIS, model=SMOL, n=2)]
    usage = {"include_usage": True}  # a stream's option: accepted by stream()
    text = "".join([t async for t in router.stream(PARIS, stream_options=usage, **GREEDY)])
    assert "Paris" in text
    with pytest.raises(BadRequest) as info:
        await router.embed([], model=defaults.MINILM_ID)
    assert info.value.param == "input"
