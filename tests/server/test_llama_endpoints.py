"""llama-server's own endpoints (/tokenize, /detokenize, /apply-template, /props) per model, and
OpenAI's deprecated `functions` / `function_call` on chat completions.

On the bundled models through a real server: tokens as llama.cpp's own tokenizer gives them
(llama-cpp-python's bindings on the same GGUF, loaded vocabulary only) and as llama-server
built from the same source answers (`make test` builds it: bench/build_llama_server.sh); the
template's prompt is what a chat evaluates. Status codes and envelopes in process, on the
fake engine (tests/inproc.py)."""

from __future__ import annotations

import ctypes
import json
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from inproc import app_client, fake_models
from json_schemas import WEATHER
from llm_router.config import ModelConfig, RouteConfig
from openai_schema import validate
from servers import GEMMA, SMOL, Server, free_port, new_server

ROOT = Path(__file__).resolve().parents[2]
TEXTS = [
    "What is the capital of France?",
    "héllo wörld 🌍, 東京 and  two  spaces\n\ttab",
    "<|im_start|>user\nhi<|im_end|>\n<start_of_turn>model\n",
    "",
]
QUESTION = [{"role": "user", "content": "What is the weather in Paris?"}]


def post(srv: Server, path: str, body: dict[str, Any]) -> Any:
    r = httpx.post(srv.url + path, json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r.json()


def piece_bytes(piece: str | list[int]) -> bytes:
    return piece.encode() if isinstance(piece, str) else bytes(piece)


# -- tokenize, detokenize ---------------------------------------------------------------------


@pytest.mark.parametrize("model", [SMOL, GEMMA])
def test_tokenize_then_detokenize_gives_the_text_back(server: Server, model: str) -> None:
    for text in TEXTS:
        for parse_special in (True, False):
            body = {"model": model, "content": text, "parse_special": parse_special}
            tokens = post(server, "/tokenize", body)["tokens"]
            assert all(isinstance(t, int) for t in tokens)
            back = post(server, "/detokenize", {"model": model, "tokens": tokens})
            assert back == {"content": text}


@pytest.mark.parametrize("model", [SMOL, GEMMA])
def test_pieces_join_to_the_text(server: Server, model: str) -> None:
    for text in TEXTS:
        plain = post(server, "/tokenize", {"model": model, "content": text})["tokens"]
        body = {"model": model, "content": text, "with_pieces": True}
        pieces = post(server, "/tokenize", body)["tokens"]
        assert [p["id"] for p in pieces] == plain
        assert b"".join(piece_bytes(p["piece"]) for p in pieces) == text.encode()
    # A piece that is part of a character comes as its bytes (llama-server's shape).
    body = {"model": SMOL, "content": "🌍", "with_pieces": True}
    pieces = [p["piece"] for p in post(server, "/tokenize", body)["tokens"]]
    assert any(isinstance(p, list) for p in pieces)


def test_add_special_adds_what_the_model_adds(server: Server) -> None:
    """Gemma's tokenizer adds a BOS, SmolLM2's adds nothing."""
    for model, bos in ((GEMMA, "<bos>"), (SMOL, None)):
        plain = post(server, "/tokenize", {"model": model, "content": "Hi"})["tokens"]
        special = post(server, "/tokenize", {"model": model, "content": "Hi", "add_special": True})
        if bos is None:
            assert special["tokens"] == plain
        else:
            assert special["tokens"][1:] == plain
            first = post(server, "/detokenize", {"model": model, "tokens": special["tokens"][:1]})
            assert first == {"content": bos}


class Vocab:
    """llama.cpp's tokenizer on a GGUF, through llama-cpp-python's own bindings, vocabulary
    only (no weights, no context): the reference the server's answers are checked against."""

    def __init__(self, path: Path) -> None:
        import llama_cpp as lc

        self.lc = lc
        params = lc.llama_model_default_params()
        params.vocab_only = True
        self.model = lc.llama_model_load_from_file(str(path).encode(), params)
        assert self.model, path
        self.vocab = lc.llama_model_get_vocab(self.model)

    def tokenize(self, text: str, add_special: bool, parse_special: bool) -> list[int]:
        data = text.encode()
        buf = (self.lc.llama_token * (len(data) + 8))()
        n = self.lc.llama_tokenize(
            self.vocab, data, len(data), buf, len(buf), add_special, parse_special
        )
        assert n >= 0
        return list(buf[:n])

    def piece(self, token: int) -> bytes:
        buf = ctypes.create_string_buffer(256)
        n = self.lc.llama_token_to_piece(self.vocab, token, buf, 256, 0, True)
        assert n >= 0
        return buf.raw[:n]

    def close(self) -> None:
        self.lc.llama_model_free(self.model)


@pytest.mark.parametrize("model", [SMOL, GEMMA])
def test_tokens_are_llama_cpps(server: Server, model: str, models_dir: Path) -> None:
    """Every combination of `add_special` and `parse_special`, and every piece, as llama.cpp's
    tokenizer gives them; and as llama-server gives them, when it has been built."""
    vocab = Vocab(next(models_dir.glob(f"{model}*.gguf")))
    try:
        for text in TEXTS:
            for add_special in (False, True):
                for parse_special in (False, True):
                    body = {
                        "model": model,
                        "content": text,
                        "add_special": add_special,
                        "parse_special": parse_special,
                        "with_pieces": True,
                    }
                    got = post(server, "/tokenize", body)["tokens"]
                    want = vocab.tokenize(text, add_special, parse_special)
                    assert [p["id"] for p in got] == want, (text, add_special, parse_special)
                    assert [piece_bytes(p["piece"]) for p in got] == [vocab.piece(t) for t in want]
    finally:
        vocab.close()


def llama_server_binary() -> Path | None:
    """llama-server as bench/build_llama_server.sh builds it from the source llama-cpp-python
    vendors, if it has been built on this machine."""
    import llama_cpp

    path = (
        ROOT / "bench" / ".llama-server" / f"build-{llama_cpp.__version__}" / "bin" / "llama-server"
    )
    return path if path.is_file() and os.access(path, os.X_OK) else None


@contextmanager
def llama_server(binary: Path, model: Path, workdir: Path) -> Iterator[str]:
    """llama-server on `model`, on 127.0.0.1 and a free port; stopped by its pid."""
    from llm_router.engines.llamacpp import model_params

    port = free_port()
    repack = bool(model_params(None).use_extra_bufts)  # as our engine (llama.cpp#20824)
    args = [str(binary), "-m", str(model), "--host", "127.0.0.1", "--port", str(port)]
    args += ["-c", "2048", "-np", "1", "--jinja", "--no-warmup"]
    args += [] if repack else ["--no-repack"]
    log = workdir / f"llama-server-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            try:
                if httpx.get(url + "/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("model", [SMOL, GEMMA])
def test_answers_are_llama_servers(
    server: Server, models_dir: Path, tmp_path: Path, model: str
) -> None:
    """The same requests to llama-server built from the same llama.cpp source (`make test`
    builds it: bench/build_llama_server.sh): the same tokens, pieces and text, the same names
    in /props, and for SmolLM2 (whose file carries its template; Gemma's carries none, which
    llama-server replaces by another) the same template and /apply-template prompt."""
    binary = llama_server_binary()
    assert binary is not None, "llama-server is not built: run `make test` (make llama-server)"
    messages = [{"role": "system", "content": "Be brief."}, *QUESTION]
    with llama_server(binary, next(models_dir.glob(f"{model}*.gguf")), tmp_path) as peer:
        for text in TEXTS:
            for add_special in (False, True):
                for with_pieces in (False, True):
                    body = {"content": text, "add_special": add_special, "with_pieces": with_pieces}
                    ours = post(server, "/tokenize", {"model": model, **body})
                    theirs = httpx.post(peer + "/tokenize", json=body, timeout=60).json()
                    assert ours == theirs, body
                ids = [p["id"] for p in ours["tokens"]]
                mine = post(server, "/detokenize", {"model": model, "tokens": ids})
                assert mine == httpx.post(peer + "/detokenize", json={"tokens": ids}).json()
        props = httpx.get(peer + "/props").json()
        ours_props = httpx.get(server.url + "/props", params={"model": model}).json()
        assert set(ours_props) <= set(props)  # llama-server's names, nothing of our own
        assert ours_props["bos_token"] == props["bos_token"]
        assert ours_props["eos_token"] == props["eos_token"]
        theirs_params = props["default_generation_settings"]["params"]
        params = ours_props["default_generation_settings"]["params"]
        for name in ("samplers", "n_probs", "n_keep", "stream", "top_k", "seed"):
            assert params[name] == theirs_params[name], name  # samplers was null
        assert props["total_slots"] == 1 and ours_props["total_slots"] == 4  # as started
        if model == SMOL:
            assert ours_props["chat_template"] == props["chat_template"]
            for extra in ({}, {"add_generation_prompt": False}):  # false: no assistant header
                body = {"messages": messages, **extra}
                mine = post(server, "/apply-template", {"model": model, **body})
                theirs = httpx.post(peer + "/apply-template", json=body).json()
                assert mine == {"prompt": theirs["prompt"]}, extra


# llama-server's sampler fields, each on its own and together: with the same seed the same text
# as llama-server's (the same chain in the same order, fed the prompt first)
SAMPLERS: list[dict[str, Any]] = [
    {},
    {"repeat_penalty": 1.3},
    {"presence_penalty": 1.0, "frequency_penalty": 0.5, "repeat_last_n": 8},
    {"typical_p": 0.7},
    {"top_n_sigma": 1.0},
    {"xtc_probability": 0.9, "xtc_threshold": 0.05},
    {"dry_multiplier": 0.8, "dry_allowed_length": 1, "dry_sequence_breakers": ["\n"]},
    {"dynatemp_range": 0.5, "dynatemp_exponent": 2},
    {"mirostat": 1, "mirostat_tau": 3},
    {"mirostat": 2, "mirostat_eta": 0.2, "temperature": 1.2},
    {"top_k": 0, "top_p": 0.9, "min_p": 0, "min_keep": 3, "typical_p": 0.9},
    {"temperature": 0, "repeat_penalty": 1.5},
    {"temperature": 0, "dry_multiplier": 1.0, "dry_allowed_length": 1},
    {"temperature": 0, "xtc_probability": 1.0, "xtc_threshold": 0.05},
    # `samplers`: the chain's order, and only those (top-p and min-p left out here)
    {"samplers": ["top_k", "temperature"]},
    {"samplers": "kmt", "min_p": 0.2},
    {"samplers": ["temperature", "top-k", "nucleus", "min_p"], "repeat_penalty": 1.3},
    {"samplers": ["penalties", "top_k", "typical_p", "temperature"], "repeat_penalty": 1.3},
    {"samplers": [], "temperature": 0},
    {"samplers": ["xtc", "temperature"], "temperature": 0, "xtc_probability": 1.0},
]


def test_sampled_answers_are_llama_servers(
    server: Server, models_dir: Path, tmp_path: Path
) -> None:
    binary = llama_server_binary()
    assert binary is not None, "llama-server is not built: run `make test` (make llama-server)"
    prompt = "The history of the city of Paris is long. The city of Paris"
    with llama_server(binary, next(models_dir.glob(f"{SMOL}*.gguf")), tmp_path) as peer:
        for extra in SAMPLERS:
            for seed in (7, 1234):
                body = {"prompt": prompt, "max_tokens": 32, "seed": seed, **extra}
                ours = post(server, "/v1/completions", {"model": SMOL, **body})
                theirs = httpx.post(peer + "/v1/completions", json=body, timeout=120)
                assert theirs.status_code == 200, theirs.text
                text = theirs.json()["choices"][0]["text"]
                assert ours["choices"][0]["text"] == text, (extra, seed)


async def test_llama_sampler_values_out_of_bounds_are_400s(tmp_path: Path) -> None:
    bad = {
        "mirostat": 3,
        "typical_p": 1.5,
        "xtc_probability": "0.5",
        "dry_sequence_breakers": [],
        "dry_allowed_length": -1,
        "repeat_last_n": -2,
        "min_keep": True,
        "samplers": ["top_k", "infill"],
    }
    async with app_client(tmp_path) as client:
        for field, value in bad.items():
            body = {"model": "chat", "prompt": "hi", field: value}
            r = await client.post("/v1/completions", json=body)
            assert r.status_code == 400, (field, r.text)
            error = r.json()["error"]
            assert error["param"] == field and field in error["message"], error
        ok = {"model": "chat", "prompt": "hi", "mirostat": 2, "dry_penalty_last_n": -1}
        assert (await client.post("/v1/completions", json=ok)).status_code == 200


# -- apply-template ---------------------------------------------------------------------------


@pytest.mark.parametrize("model", [SMOL, GEMMA])
@pytest.mark.parametrize(
    "extra",
    [
        {},
        {"tools": [{"type": "function", "function": WEATHER}], "tool_choice": "required"},
        {"functions": [WEATHER], "function_call": {"name": "get_weather"}},
    ],
    ids=["plain", "tools", "functions"],
)
def test_the_template_prompt_is_what_the_chat_evaluates(
    server: Server, client: openai.OpenAI, model: str, extra: dict[str, Any]
) -> None:
    """Its tokens (with `add_special`, as llama-server's chat tokenizes it) are as many as the
    chat's `usage.prompt_tokens`, for a conversation of several turns, with tools or without."""
    messages = [
        {"role": "user", "content": "Hello!"},
        {"role": "assistant", "content": "Hi. How can I help?"},
        *QUESTION,
    ]
    prompt = post(server, "/apply-template", {"model": model, "messages": messages, **extra})
    assert prompt["prompt"].rstrip().endswith(("assistant", "Assistant:", "model"))
    body = {"model": model, "content": prompt["prompt"], "add_special": True}
    tokens = post(server, "/tokenize", body)["tokens"]
    chat = client.chat.completions.create(
        model=model, messages=messages, max_tokens=1, temperature=0, **extra
    )
    assert chat.usage is not None and chat.usage.prompt_tokens == len(tokens)
    if extra:
        assert "get_weather" in prompt["prompt"]  # the tools are written into the prompt


def test_add_generation_prompt_false_leaves_the_assistant_header_off(
    server: Server, client: openai.OpenAI
) -> None:
    """llama-server's `add_generation_prompt: false` was accepted and ignored, on
    /apply-template and on chat (found from outside): the prompt has no assistant header, and
    the chat evaluates that prompt; a prefill is continued either way."""
    body = {"model": SMOL, "messages": QUESTION}
    full = post(server, "/apply-template", body)["prompt"]
    bare = post(server, "/apply-template", {**body, "add_generation_prompt": False})["prompt"]
    assert full == bare + "<|im_start|>assistant\n"
    tokens = post(server, "/tokenize", {"model": SMOL, "content": bare, "add_special": True})
    chat = client.chat.completions.create(
        model=SMOL,
        messages=QUESTION,  # type: ignore[arg-type]
        max_tokens=1,
        temperature=0,
        extra_body={"add_generation_prompt": False},
    )
    assert chat.usage is not None and chat.usage.prompt_tokens == len(tokens["tokens"])
    prefill = [*QUESTION, {"role": "assistant", "content": "The capital"}]
    for agp in (True, False):
        prompt = post(
            server, "/apply-template", {**body, "messages": prefill, "add_generation_prompt": agp}
        )
        assert prompt["prompt"] == full + "The capital", agp


def test_chat_template_kwargs_reach_the_template(tmp_path: Path, smollm2_gguf: Path) -> None:
    """llama-server's `chat_template_kwargs` (variables for the Jinja template, as
    `enable_thinking`) were accepted and ignored: the template now sees them, on
    /apply-template and in the chat's prompt; they cannot replace the messages."""
    template = (
        "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
        "{% if add_generation_prompt %}<|im_start|>assistant\n"
        "{% if enable_thinking %}<think>{{ budget }}{% endif %}{% endif %}"
    )
    model = {"id": "thinker", "path": str(smollm2_gguf), "chat_template": template}
    srv = new_server(tmp_path, models=[model])
    try:
        body: dict[str, Any] = {"model": "thinker", "messages": QUESTION}
        plain = post(srv, "/apply-template", body)["prompt"]
        kwargs = {"enable_thinking": True, "budget": 7, "messages": []}
        asked = {**body, "chat_template_kwargs": kwargs}
        thinking = post(srv, "/apply-template", asked)["prompt"]
        assert thinking == plain + "<think>7"
        counts = []
        for extra in ({}, {"chat_template_kwargs": kwargs}):
            chat = post(srv, "/v1/chat/completions", {**body, "max_tokens": 1, **extra})
            counts.append(chat["usage"]["prompt_tokens"])
        tokens = post(srv, "/tokenize", {"model": "thinker", "content": "<think>7"})["tokens"]
        assert counts[1] == counts[0] + len(tokens)
    finally:
        srv.stop()


def test_the_template_prompt_has_the_configured_system_prompt(server: Server) -> None:
    prompt = post(server, "/apply-template", {"model": SMOL, "messages": QUESTION})["prompt"]
    assert prompt.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>")
    assert prompt.endswith("<|im_start|>assistant\n")


def test_an_earlier_call_is_rendered_as_the_model_is_asked_to_call(server: Server) -> None:
    """The call object holds only `name` and `arguments` (the answer's shape); its id, which
    the models copied into their next call's arguments, is not in the prompt."""
    history = [
        *QUESTION,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 C"},
    ]
    for extra in ({"tools": [{"type": "function", "function": WEATHER}]}, {}):
        body = {"model": SMOL, "messages": history, **extra}
        prompt = post(server, "/apply-template", body)["prompt"]
        call = '{"tool_calls": [{"name": "get_weather", "arguments": {"city": "Paris"}}]}'
        assert call in prompt and "Sunny, 21 C" in prompt
        assert "call_1" not in prompt


# -- props ------------------------------------------------------------------------------------


@pytest.mark.parametrize("model", [SMOL, GEMMA])
def test_props_show_the_context_and_slots_models_reports(server: Server, model: str) -> None:
    r = httpx.get(server.url + "/props", params={"model": model}, timeout=120)
    assert r.status_code == 200, r.text
    props = r.json()
    runtime = server.models()[model]["runtime"]
    assert props["default_generation_settings"]["n_ctx"] == runtime["context_size"] == 2048
    assert props["total_slots"] == runtime["parallel"]
    assert props["model_alias"] == model
    assert props["modalities"]["vision"] is False
    assert props["build_info"].startswith("llm-router ")
    assert props["chat_template"] and props["bos_token"] and props["eos_token"]
    assert "model_path" not in props and str(server.config_path.parent) not in r.text


def test_props_without_a_model_are_the_routers(server: Server) -> None:
    props = httpx.get(server.url + "/props", timeout=10).json()
    assert props["role"] == "router" and props["models_autoload"] is True
    assert props["build_info"].startswith("llm-router ")


# -- legacy functions -------------------------------------------------------------------------


def test_functions_are_answered_with_a_function_call(client: openai.OpenAI) -> None:
    done = client.chat.completions.create(
        model=SMOL,
        messages=QUESTION,
        functions=[WEATHER],
        function_call={"name": "get_weather"},
        temperature=0,
        max_tokens=200,
    )
    validate("CreateChatCompletionResponse", done.model_dump(exclude_unset=True))
    choice = done.choices[0]
    assert choice.finish_reason == "function_call"
    message = choice.message
    assert message.tool_calls is None and message.content is None
    assert message.function_call is not None and message.function_call.name == "get_weather"
    jsonschema.validate(json.loads(message.function_call.arguments), WEATHER["parameters"])

    name, arguments, finish = "", "", None
    first: list[str] = []
    for chunk in client.chat.completions.create(
        model=SMOL,
        messages=QUESTION,
        functions=[WEATHER],
        function_call={"name": "get_weather"},
        temperature=0,
        max_tokens=200,
        stream=True,
    ):
        delta = chunk.choices[0].delta
        assert not delta.tool_calls
        if delta.function_call is not None:
            first = first or [delta.function_call.name or ""]
            name += delta.function_call.name or ""
            arguments += delta.function_call.arguments or ""
        finish = chunk.choices[0].finish_reason or finish
    assert first == ["get_weather"] and name == "get_weather"  # the name first, once
    assert finish == "function_call"
    assert arguments == message.function_call.arguments


def test_function_call_none_and_a_function_history(client: openai.OpenAI) -> None:
    done = client.chat.completions.create(
        model=SMOL,
        messages=QUESTION,
        functions=[WEATHER],
        function_call="none",
        temperature=0,
        max_tokens=20,
    )
    assert done.choices[0].message.function_call is None and done.choices[0].message.content
    history: list[Any] = [
        *QUESTION,
        {
            "role": "assistant",
            "content": None,
            "function_call": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
        },
        {"role": "function", "name": "get_weather", "content": "Sunny and 21 degrees."},
    ]
    answer = client.chat.completions.create(
        model=SMOL, messages=history, functions=[WEATHER], temperature=0, max_tokens=40
    )
    assert answer.choices[0].finish_reason in ("stop", "length", "function_call")


# -- llama-server's request fields on /v1 ------------------------------------------------------


def test_n_probs_reports_the_alternatives(client: openai.OpenAI) -> None:
    """llama-server's `n_probs` (it was accepted and ignored, `logprobs` null: found from
    outside): chat gives what `logprobs: true` + `top_logprobs` give, completions what
    `logprobs` gives; past 20 a 400 naming it."""
    ask: dict[str, Any] = {"model": SMOL, "messages": QUESTION, "max_tokens": 4, "temperature": 0}
    chat = client.chat.completions.create(**ask, extra_body={"n_probs": 3})
    asked = client.chat.completions.create(**ask, logprobs=True, top_logprobs=3)
    assert chat.choices[0].logprobs is not None and chat.choices[0].logprobs.content
    assert all(len(t.top_logprobs) == 3 for t in chat.choices[0].logprobs.content)
    assert chat.choices[0].logprobs == asked.choices[0].logprobs
    prompt = {"model": SMOL, "prompt": "The capital of France is", "max_tokens": 4}
    done = client.completions.create(**prompt, temperature=0, extra_body={"n_probs": 2})
    logprobs = done.choices[0].logprobs
    assert logprobs is not None and logprobs.top_logprobs and len(logprobs.top_logprobs) == 4
    assert all(len(top) == 2 for top in logprobs.top_logprobs)
    for bad in (21, -1, "3"):
        with pytest.raises(openai.BadRequestError) as info:
            client.completions.create(**prompt, extra_body={"n_probs": bad})
        assert info.value.param == "n_probs", bad


# -- errors, in process -----------------------------------------------------------------------

ROUTES = ("/tokenize", "/detokenize", "/apply-template")
BODIES: dict[str, dict[str, Any]] = {
    "/tokenize": {"content": "hello"},
    "/detokenize": {"tokens": [104, 105]},
    "/apply-template": {"messages": [{"role": "user", "content": "hi"}]},
}


@pytest.fixture
async def app(tmp_path: Path) -> AsyncIterator[httpx.AsyncClient]:
    """The app on a fake model `chat` (alias `chatty`), a remote target `box` (never asked)
    and a route `auto`."""
    (chat,) = fake_models(tmp_path, chat={})
    remote = ModelConfig(
        id="box", provider="openai", base_url="http://127.0.0.1:9/v1", health_check_interval=0
    )
    async with app_client(
        tmp_path,
        models=[chat.model_copy(update={"aliases": ["chatty"]}), remote],
        routes=[RouteConfig(name="auto", targets=["chat"])],
    ) as c:
        yield c


def error(r: httpx.Response, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    validate("ErrorResponse", r.json())
    body: dict[str, Any] = r.json()["error"]
    return body


async def test_each_endpoint_answers_for_a_model_or_its_alias(app: httpx.AsyncClient) -> None:
    for name in ("chat", "chatty"):
        r = await app.post("/tokenize", json={"model": name, "content": "hi", "add_special": True})
        assert r.json() == {"tokens": [256, 104, 105]}
        r = await app.post("/detokenize", json={"model": name, "tokens": [256, 104, 105]})
        assert r.json() == {"content": "<s>hi"}
        r = await app.post("/apply-template", json={"model": name, **BODIES["/apply-template"]})
        assert r.json() == {"prompt": "user: hi\nassistant:"}
        r = await app.get("/props", params={"model": name})
        assert r.json()["model_alias"] == "chat" and r.json()["total_slots"] == 4


async def test_unknown_models_are_404(app: httpx.AsyncClient) -> None:
    for path in ROUTES:
        r = await app.post(path, json={"model": "nope", **BODIES[path]})
        assert error(r, 404)["code"] == "model_not_found"
    r = await app.get("/props", params={"model": "nope"})
    assert error(r, 404)["param"] == "model"


async def test_routes_and_remote_targets_are_400(app: httpx.AsyncClient) -> None:
    for name, kind in (("auto", "a route"), ("box", "a remote target")):
        for path in ROUTES:
            r = await app.post(path, json={"model": name, **BODIES[path]})
            err = error(r, 400)
            assert err["param"] == "model" and kind in err["message"] and path in err["message"]
        assert error(await app.get("/props", params={"model": name}), 400)["param"] == "model"


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/tokenize", {"content": "x"}, "model"),
        ("/tokenize", {"model": "chat"}, "content"),
        ("/tokenize", {"model": "chat", "content": 5}, "content"),
        ("/tokenize", {"model": "chat", "content": "x" * 1_000_001}, "content"),
        ("/tokenize", {"model": "chat", "content": "x", "add_special": "yes"}, "add_special"),
        ("/tokenize", {"model": "chat", "content": "x", "with_pieces": 1}, "with_pieces"),
        ("/detokenize", {"model": "chat"}, "tokens"),
        ("/detokenize", {"model": "chat", "tokens": [-1]}, "tokens.[0]"),
        ("/detokenize", {"model": "chat", "tokens": ["a"]}, "tokens.[0]"),
        ("/detokenize", {"model": "chat", "tokens": [70000]}, "tokens"),  # not in its vocabulary
        ("/apply-template", {"model": "chat"}, "messages"),
        ("/apply-template", {"model": "chat", "messages": []}, "messages"),
        ("/apply-template", {"model": "m" * 257, "messages": [{"role": "user"}]}, "model"),
    ],
)
async def test_missing_and_wrong_fields_name_the_parameter(
    app: httpx.AsyncClient, path: str, body: dict[str, Any], param: str
) -> None:
    assert error(await app.post(path, json=body), 400)["param"] == param


async def test_bad_legacy_function_requests_are_400s(app: httpx.AsyncClient) -> None:
    chat = {"model": "chat", "messages": QUESTION}
    cases: list[tuple[dict[str, Any], str]] = [
        ({"functions": [WEATHER], "function_call": {"name": "nope"}}, "function_call"),
        ({"function_call": {"name": "get_weather"}}, "function_call"),
        ({"functions": [WEATHER, WEATHER]}, "functions"),
        (
            {"functions": [WEATHER], "tools": [{"type": "function", "function": WEATHER}]},
            "functions",
        ),
        ({"functions": [{**WEATHER, "name": "bad name!"}]}, "functions.[0].name"),
    ]
    for extra, param in cases:
        r = await app.post("/v1/chat/completions", json={**chat, **extra})
        assert error(r, 400)["param"] == param, extra
