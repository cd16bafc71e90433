"""Bad input and broken parts: each gets a clear answer, and the server keeps serving."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from openai_schema import validate
from servers import GEMMA, SMOL, MakeClient, Server, alive, link_models, new_server

HELLO = [{"role": "user", "content": "Hello"}]


def _post(server: Server, path: str, **kwargs: object) -> httpx.Response:
    return httpx.post(server.url + path, timeout=60, **kwargs)  # type: ignore[arg-type]


def test_prompt_longer_than_context(client: openai.OpenAI) -> None:
    """The 400 says the context is each slot's: a user who started the server with
    llama-server's `-c 1024` read "maximum context length is 256 tokens" as a bug (there one
    request may use all 1024; found from outside)."""
    long_prompt = "apple " * 3000
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=SMOL, prompt=long_prompt, max_tokens=4)
    assert info.value.code == "context_length_exceeded"
    assert (
        "is 2048 tokens" in info.value.message
        and "each of this model's 4 slots" in info.value.message
    )
    assert "-np" in info.value.message
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=SMOL, messages=[{"role": "user", "content": long_prompt}], stream=True
        )
    assert info.value.code == "context_length_exceeded"
    # and the model still serves
    assert client.completions.create(model=SMOL, prompt="Hi", max_tokens=2).choices[0].text


def test_a_chat_of_a_hundred_thousand_short_messages_is_refused_at_once(
    server: Server, client: openai.OpenAI
) -> None:
    """3 MB of one-letter messages, under the body limit: llama.cpp's tokenizer took minutes
    over their turn markers, in the model's decode loop, and every request to the model
    waited (found from outside). Now a 400 before tokenizing, and the model serves on. (Sent
    with httpx: the openai client itself takes a minute to prepare 100,000 messages.)"""
    messages = [{"role": "user", "content": "h"}] * 100_000
    r = _post(server, "/v1/chat/completions", json={"model": SMOL, "messages": messages})
    assert r.status_code == 400, r.text
    validate("ErrorResponse", r.json())
    assert r.json()["error"]["code"] == "context_length_exceeded"
    assert "at least" in r.json()["error"]["message"]
    answer = client.chat.completions.create(model=SMOL, messages=HELLO, max_tokens=2)  # type: ignore[arg-type]
    assert answer.choices[0].message.content


@pytest.mark.parametrize(
    "window",
    [
        {"repeat_last_n": 2**31 - 1, "presence_penalty": 0.5},
        {"dry_penalty_last_n": 2**31 - 1, "dry_multiplier": 0.8},
    ],
    ids=["repeat_last_n", "dry_penalty_last_n"],
)
def test_a_window_longer_than_the_context_harms_no_other_stream(
    tmp_path: Path, smollm2_gguf: Path, make_client: MakeClient, window: dict[str, object]
) -> None:
    """llama.cpp allocates a penalty or DRY window whole for each sequence: 2^31-1 tokens was
    an 8 GiB buffer, the worker died (std::bad_alloc, or the kernel's OOM killer) and cut
    every other stream on the model (found from outside). A sequence never holds more than
    its context: the window is that long at most, the answer comes and the other stream goes
    on. The server may map 6 GB, so that a regression fails here and not on the machine."""
    srv = Server(
        tmp_path, {"models_dir": str(link_models(tmp_path / "models", smollm2_gguf))}
    ).start(address_space=6_000_000_000)
    client = make_client(srv)
    try:
        client.completions.create(model=SMOL, prompt="Hi", max_tokens=1)  # load it
        pid = srv.worker_of(smollm2_gguf.name)
        other = client.completions.create(
            model=SMOL, prompt="Count: 1, 2, 3,", max_tokens=60, temperature=0, stream=True
        )
        chunks = iter(other)
        for _ in range(3):
            next(chunks)
        answer = client.chat.completions.create(
            model=SMOL, messages=HELLO, max_tokens=5, temperature=0.7, extra_body=window
        )
        assert answer.choices[0].message.content
        rest = list(chunks)  # an error event raises here
        assert rest[-1].choices[0].finish_reason == "length"
        assert srv.worker_of(smollm2_gguf.name) == pid
    finally:
        srv.stop()


def test_body_over_limit_without_content_length_is_413(server: Server) -> None:
    """Through uvicorn: a chunked body carries no Content-Length and is counted as it arrives
    (the in-process tests in test_http.py cover every route and status)."""

    def chunks() -> Iterator[bytes]:
        for _ in range(9):
            yield b"x" * (1024 * 1024)

    r = _post(
        server,
        "/v1/chat/completions",
        content=chunks(),
        headers={"content-type": "application/json"},
    )
    assert r.status_code == 413
    validate("ErrorResponse", r.json())
    assert "over the limit" in r.json()["error"]["message"]
    ok = _post(
        server,
        "/v1/chat/completions",
        json={"model": SMOL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
    )
    assert ok.status_code == 200


def test_truncated_model_reports_error_others_serve(
    tmp_path: Path, smollm2_gguf: Path, make_client: MakeClient
) -> None:
    models = link_models(tmp_path / "models", smollm2_gguf)
    srv = new_server(tmp_path, models_dir=str(models), watch_interval=0.2)
    try:
        data = smollm2_gguf.read_bytes()
        (models / "broken.gguf").write_bytes(data[: len(data) // 2])
        (models / "notes.txt").write_text("not a model")
        entry = srv.wait_status("broken", "error", timeout=10)
        assert "truncated" in entry["status"]["error"]
        assert str(models) not in entry["status"]["error"]  # GET /models shows no paths
        assert "notes" not in srv.models()
        client = make_client(srv)
        started = time.monotonic()
        with pytest.raises(openai.InternalServerError) as info:
            client.completions.create(model="broken", prompt="Hi", max_tokens=2)
        assert "truncated" in str(info.value) and str(models) not in str(info.value)
        assert time.monotonic() - started < 30  # answered, not retried forever
        ok = client.chat.completions.create(model=SMOL, messages=HELLO, max_tokens=3)
        assert ok.choices[0].message.content
    finally:
        srv.stop()


def test_a_model_llama_cpp_cannot_load_says_why(
    tmp_path: Path, smollm2_gguf: Path, make_client: MakeClient
) -> None:
    """A GGUF whose header reads well but whose tensors llama.cpp refuses (a shape swapped)
    answered "llama.cpp could not load x.gguf" and nothing more: llama.cpp said why in its
    log only, which the worker silences (found from outside). The answer says it, once: the
    next request fails at once, without loading (and evicting) again."""
    from gguf import GGUFReader

    models = link_models(tmp_path / "models", smollm2_gguf)
    bad = tmp_path / "shape.gguf"
    bad.write_bytes(smollm2_gguf.read_bytes())
    reader = GGUFReader(bad, "r+")
    dims = reader.tensors[0].field.parts[3]  # token_embd.weight's [576, 49152]
    dims[0], dims[1] = dims[1], dims[0]
    reader.data.flush()
    del reader
    os.replace(bad, models / "shape.gguf")
    srv = new_server(tmp_path, models_dir=str(models), watch_interval=0.2)
    try:
        client = make_client(srv)
        for _ in range(2):
            with pytest.raises(openai.InternalServerError) as info:
                client.completions.create(model="shape", prompt="Hi", max_tokens=2)
            assert info.value.code == "model_load_failed"
            assert "token_embd.weight' has wrong shape" in info.value.message, info.value.message
        assert "wrong shape" in srv.models()["shape"]["status"]["error"]
        ok = client.chat.completions.create(model=SMOL, messages=HELLO, max_tokens=3)
        assert ok.choices[0].message.content
    finally:
        srv.stop()


def test_worker_killed_mid_stream(
    tmp_path: Path, models_dir: Path, make_client: MakeClient
) -> None:
    srv = new_server(tmp_path, models_dir=str(models_dir))
    client = make_client(srv)
    try:
        client.completions.create(model=GEMMA, prompt="Hi", max_tokens=1)  # load it
        pid = srv.worker_of(GEMMA + ".gguf")
        assert pid is not None
        stream = client.completions.create(
            model=GEMMA, prompt="Count: 1, 2, 3,", max_tokens=400, stream=True, temperature=0
        )
        got = []
        with pytest.raises(openai.APIError) as info:
            for chunk in stream:
                got.append(chunk)
                if len(got) == 3:
                    os.kill(pid, signal.SIGKILL)
        assert "SIGKILL" in str(info.value.message)
        assert 3 <= len(got) < 400
        entry = srv.wait_status(GEMMA, "error", "unloaded", timeout=10)
        assert "SIGKILL" in entry["status"].get("error", "SIGKILL")
        # the other model was never disturbed, and the killed one loads again on demand
        assert client.chat.completions.create(model=SMOL, messages=HELLO, max_tokens=3)
        again = client.completions.create(model=GEMMA, prompt="Hi", max_tokens=2)
        assert again.choices[0].text is not None
        assert srv.worker_of(GEMMA + ".gguf") not in (None, pid)
    finally:
        children = srv.stop()
    time.sleep(0.5)
    assert not [p for p in children if alive(p)], "worker processes left behind"


def test_a_pinned_models_worker_that_dies_is_replaced_without_a_request(
    tmp_path: Path, smollm2_gguf: Path, make_client: MakeClient
) -> None:
    """Pinned: meant to stay loaded. Its worker killed after serving a while, the server
    loads it again by itself: the next request finds it loaded, not paying the load."""
    pinned = {"id": "smol-pinned", "path": str(smollm2_gguf), "pin": True}
    srv = new_server(  # the pinned model alone
        tmp_path,
        models_dir=str(tmp_path / "models"),
        provision_default_models=False,
        models=[pinned],
    )
    client = make_client(srv)
    try:
        entry = srv.wait_status("smol-pinned", "loaded")  # pinned: loaded at start
        pid = srv.worker_of(smollm2_gguf.name)
        assert pid is not None
        time.sleep(max(0.0, entry["loaded_at"] + 10.5 - time.time()))  # served 10 s: restarts
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while srv.worker_of(smollm2_gguf.name) in (None, pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        entry = srv.wait_status("smol-pinned", "loaded")
        assert "SIGKILL" not in str(entry["status"])
        assert srv.worker_of(smollm2_gguf.name) not in (None, pid)
        chat = client.chat.completions.create(model="smol-pinned", messages=HELLO, max_tokens=3)
        assert chat.choices[0].message.content
        assert srv.worker_of(smollm2_gguf.name) not in (None, pid)
    finally:
        children = srv.stop()
    time.sleep(0.5)
    assert not [p for p in children if alive(p)], "worker processes left behind"


def test_disconnect_stops_generation(tmp_path: Path, models_dir: Path) -> None:
    srv = new_server(tmp_path, models_dir=str(models_dir))
    try:
        body = {
            "model": GEMMA,
            "prompt": "Once upon a time",
            "max_tokens": 2000,
            "stream": True,
            "temperature": 0.9,
        }
        with httpx.stream("POST", srv.url + "/v1/completions", json=body, timeout=60) as r:
            for i, _ in enumerate(r.iter_lines()):
                if i > 6:
                    break
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            entry = srv.models()[GEMMA]
            if entry["active_requests"] == 0 and entry["runtime"]["slots_busy"] == 0:
                break
            time.sleep(0.2)
        assert entry["active_requests"] == 0
        assert entry["runtime"]["slots_busy"] == 0
    finally:
        srv.stop()
