"""The request log and request ids, in-process on the fake engine: one line per request with
what served it, the client's x-request-id kept (or one made), no prompt or key unless asked."""

from __future__ import annotations

import io
import json
import logging
import re
import unicodedata
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from inproc import app_client
from llm_router.logs import JsonFormatter, JsonLines, TextFormatter, one_line, sole_json_handler
from llm_router.server import request_log
from servers import SMOL, MakeClient, Server

CHAT = {
    "model": "chat",
    "messages": [{"role": "user", "content": "a secret prompt"}],
    "max_tokens": 4,
    "temperature": 0,
}


def _lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    """The request log's records as the JSON formatter writes them."""
    formatter = JsonFormatter()
    return [
        json.loads(formatter.format(r)) for r in caplog.records if r.name == "llm_router.requests"
    ]


async def test_one_json_line_per_request_with_what_served_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="llm_router.requests")
    async with app_client(tmp_path) as client:
        first = await client.post("/v1/chat/completions", json=CHAT)
        second = await client.post(
            "/v1/chat/completions", json=CHAT, headers={"x-request-id": "client-id-1"}
        )
        await client.get("/health")
    one, two, health = _lines(caplog)
    assert one["request_id"] == first.headers["x-request-id"] and len(one["request_id"]) == 32
    assert two["request_id"] == second.headers["x-request-id"] == "client-id-1"
    assert one["method"] == "POST" and one["path"] == "/v1/chat/completions"
    assert one["status"] == 200 and one["model"] == "chat" and one["target"] == "chat"
    assert one["route"] == "direct" and one["cache"] == "miss" and two["cache"] == "hit"
    assert one["completion_tokens"] == 4 and one["prompt_tokens"] > 0
    assert one["ttft_ms"] >= 0 and one["duration_ms"] >= one["ttft_ms"]
    assert one["level"] == "info" and one["logger"] == "llm_router.requests"
    assert "POST /v1/chat/completions 200" in one["message"]
    assert health["path"] == "/health" and health["status"] == 200 and "model" not in health
    assert "trace_id" not in one  # tracing off


async def test_a_strange_request_id_is_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="llm_router.requests")
    async with app_client(tmp_path) as client:
        response = await client.get("/health", headers={"x-request-id": "bad id\twith space"})
    assert response.headers["x-request-id"] != "bad id\twith space"
    assert _lines(caplog)[0]["request_id"] == response.headers["x-request-id"]


async def test_no_prompt_answer_or_key_in_the_log_by_default(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with app_client(tmp_path) as client:
        response = await client.post(
            "/v1/chat/completions", json=CHAT, headers={"authorization": "Bearer sk-very-secret"}
        )
    answer = response.json()["choices"][0]["message"]["content"]
    text = "\n".join(JsonFormatter().format(r) for r in caplog.records)
    assert "a secret prompt" not in text and answer not in text
    assert "sk-very-secret" not in text


async def test_a_key_sent_where_a_model_or_path_goes_is_not_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A key put in `model` or in the URL by mistake was written to the log line (and the
    spans): the log never holds a key (found from outside)."""
    caplog.set_level(logging.INFO, logger="llm_router.requests")
    secret = "sk-llmr-Zx81kq0Pp2mNs7aBc9dE"
    async with app_client(tmp_path) as client:
        wrong = await client.post("/v1/chat/completions", json={**CHAT, "model": secret})
        await client.get(f"/v1/{secret}")
    assert wrong.status_code == 404
    ours = [r for r in caplog.records if r.name.startswith("llm_router")]  # not the test's client
    text = "\n".join(JsonFormatter().format(r) for r in ours)
    assert secret not in text and "sk-llmr-..." in text


async def test_log_prompts_puts_the_prompt_and_answer_in_the_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="llm_router.requests")
    async with app_client(tmp_path, log_prompts=True) as client:
        whole = await client.post("/v1/chat/completions", json=CHAT)
        await client.post("/v1/chat/completions", json={**CHAT, "stream": True})
    one, streamed = _lines(caplog)
    assert one["prompt"] == CHAT["messages"]
    assert one["answer"] == whole.json()["choices"][0]["message"]["content"]
    assert streamed["answer"] == one["answer"]


async def test_log_requests_off_keeps_the_request_id(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="llm_router.requests")
    async with app_client(tmp_path, log_requests=False) as client:
        response = await client.get("/health")
    assert response.headers["x-request-id"]
    assert _lines(caplog) == []


def test_a_real_server_writes_json_lines_with_the_request_id(
    tmp_path: Path, models_dir: Path, make_client: MakeClient
) -> None:
    srv = Server(tmp_path, {"models_dir": str(models_dir), "log_format": "json"}).start()
    try:
        client = make_client(srv)
        done = client.chat.completions.with_raw_response.create(
            model=SMOL,
            messages=[{"role": "user", "content": "Say hi"}],
            max_tokens=4,
            extra_headers={"x-request-id": "trace-me-42", "authorization": "Bearer sk-secret-1"},
        )
        assert done.headers["x-request-id"] == "trace-me-42"
    finally:
        srv.stop()
    lines = [json.loads(line) for line in srv.log_path.read_text().splitlines() if line.strip()]
    [line] = [x for x in lines if x.get("request_id") == "trace-me-42"]
    assert line["logger"] == "llm_router.requests" and line["status"] == 200
    assert line["model"] == line["target"] == SMOL and line["completion_tokens"] > 0
    assert any(x.get("logger") == "llm_router.lifecycle.manager" for x in lines)  # loads too
    [loaded] = [x for x in lines if x.get("event") == "loaded" and x.get("model") == SMOL]
    assert loaded["duration_s"] > 0 and loaded["bytes"] > 0 and loaded["engine"] == "llama.cpp"
    assert "sk-secret-1" not in srv.log_path.read_text()
    assert "Say hi" not in srv.log_path.read_text()


def test_a_text_log_line_is_one_line_whatever_a_client_sends(
    tmp_path: Path, models_dir: Path, make_client: MakeClient
) -> None:
    """A path with %0D%0A (no key needed), a model name or a prompt with a newline, and the
    answer, wrote lines of the client's making into the text log (found from outside): their
    control characters are escapes now, on the request's own line."""
    config = {"models_dir": str(models_dir), "log_prompts": True}
    srv = Server(tmp_path, config).start()
    forged = "2026-12-06 03:29:00,000 CRITICAL llm_router.security: FORGED"
    try:
        client = make_client(srv)
        httpx.get(srv.url + "/x%0D%0A" + forged.replace(" ", "%20") + "-PATH", timeout=10)
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(
                model=f"zz\n{forged}-MODEL\x1b[31m", messages=[{"role": "user", "content": "x"}]
            )
        client.completions.create(model=SMOL, prompt=f"Hi\r\n{forged}-PROMPT", max_tokens=8)
    finally:
        srv.stop()
    lines = srv.log_path.read_text().splitlines()
    assert not [line for line in lines if line.startswith("2026-12-06 03:29")]
    requests = [line for line in lines if " INFO llm_router.requests: " in line]
    assert any(f"GET /x\\r\\n{forged}-PATH 404 " in line for line in requests)
    assert any(f"model=zz\\n{forged}-MODEL\\x1b[31m " in line for line in requests)
    assert any(f"prompt=Hi\\r\\n{forged}-PROMPT " in line for line in requests)
    assert not any("\x1b" in line for line in lines)


def test_control_characters_are_escaped_not_removed() -> None:
    assert one_line("plain, ünïcode") == "plain, ünïcode"
    assert one_line("a\tb\x00c\x7fd\x85e\u2028f\\n") == "a\\tb\\x00c\\x7fd\\x85e\\u2028f\\n"


def test_format_characters_cannot_reorder_a_text_line() -> None:
    """A right-to-left override (U+202E) or mark (U+200F) in a path or a model name was written
    raw: the line was shown reordered ("Trojan Source"; found from outside). Format characters
    (Unicode's Cf: bidirectional controls, zero-width ones, tags) are escapes now; letters
    written right to left are kept as they are."""
    sent = "GET /x\u202egnp.exe\u200f\u2066 model=\u200bsmol\U000e0041 ok \u0633\u0644\u0627\u0645"
    record = logging.LogRecord("llm_router.requests", logging.INFO, "", 0, sent, None, None)
    line = TextFormatter("%(levelname)s %(message)s").format(record)
    assert line == (
        "INFO GET /x\\u202egnp.exe\\u200f\\u2066 model=\\u200bsmol\\U000e0041 ok "
        "\u0633\u0644\u0627\u0645"
    )
    assert not [c for c in line if unicodedata.category(c) in ("Cf", "Cc")]


def test_the_json_handler_alone_writes_the_same_line_without_a_record(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The server's case (the JSON handler is the only one): the line written without a
    `LogRecord` is the one the formatter writes of the record, but for the time of day."""
    caplog.set_level(logging.INFO, logger="llm_router.requests")
    logger = logging.getLogger("llm_router.requests")
    monkeypatch.setattr(logger, "propagate", False)
    scope = {"method": "POST", "path": "/v1/chat/completions"}
    state = {"key_name": "team-a"}
    out: dict[str, str] = {}
    for name, handler in {
        "fast": JsonLines(io.StringIO()),
        "record": logging.StreamHandler(io.StringIO()),
    }.items():
        handler.setFormatter(JsonFormatter())
        monkeypatch.setattr(logger, "handlers", [handler])
        assert (sole_json_handler(logger) is handler) == (name == "fast")
        request_log.write_line(scope, state, 200, 0.0, "id-1", None)
        out[name] = handler.stream.getvalue()  # type: ignore[attr-defined]
    fast, record = (json.loads(line) for line in (out["fast"], out["record"]))
    assert out["fast"].endswith("}\n") and out["fast"].count("\n") == 1
    assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}", fast.pop("time"))
    record.pop("time")
    fast.pop("duration_ms"), record.pop("duration_ms")
    assert list(fast) == list(record) and fast == record
    assert fast["message"] == "POST /v1/chat/completions 200" and fast["key"] == "team-a"


def test_another_handler_or_a_filter_takes_the_usual_way() -> None:
    logger = logging.Logger("solo")
    handler = JsonLines(io.StringIO())
    handler.setFormatter(JsonFormatter())
    logger.addHandler(handler)
    assert sole_json_handler(logger) is handler
    handler.addFilter(lambda r: True)
    assert sole_json_handler(logger) is None
    handler.filters.clear()
    logger.addHandler(logging.StreamHandler(io.StringIO()))
    assert sole_json_handler(logger) is None


def test_the_text_line_names_each_field_once() -> None:
    """The human-readable line (log_format: text): a route's decision already reads
    "route=auto strategy=...", and is not written "route=route=auto"; other fields are
    name=value."""
    fields = {
        "method": "POST",
        "path": "/v1/chat/completions",
        "status": 200,
        "duration_ms": 3.5,
        "model": "auto",
        "route": "route=auto strategy=balanced",
        "request_id": "r1",
    }
    line = str(request_log._Line(fields))
    assert line == (
        "POST /v1/chat/completions 200 duration_ms=3.5 model=auto "
        "route=auto strategy=balanced request_id=r1"
    )
    assert str(request_log._Line({**fields, "route": "direct"})).count("route=direct") == 1


async def test_failures_and_streams_cut_short_say_so_in_their_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An embeddings 404 logged neither the model asked nor the error (chat's did), and a
    stream the client left after its 200 was a plain 200 line (the metrics said cancelled;
    both found from outside)."""
    import asyncio

    from inproc import fake_models

    caplog.set_level(logging.INFO, logger="llm_router.requests")
    models = fake_models(tmp_path, chat={"token_seconds": 0.05, "reply": "w " * 50})
    apps: list[Any] = []
    async with app_client(tmp_path, models=models, setup=apps.append) as client:
        r = await client.post("/v1/embeddings", json={"model": "nope", "input": "x"})
        assert r.status_code == 404
        body = json.dumps({**CHAT, "max_tokens": 40, "stream": True}).encode()
        got_body = asyncio.Event()
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            if not sent:
                sent.append({})
                return {"type": "http.request", "body": body, "more_body": False}
            await got_body.wait()  # the client leaves once the first event came
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)
            if message["type"] == "http.response.body" and message.get("body"):
                got_body.set()

        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "POST", "scheme": "http", "path": "/v1/chat/completions",
            "raw_path": b"/v1/chat/completions", "query_string": b"", "root_path": "",
            "headers": [(b"host", b"127.0.0.1"), (b"content-type", b"application/json")],
            "client": ("127.0.0.1", 5555), "server": ("127.0.0.1", 8000), "state": {},
        }  # fmt: skip
        await asyncio.wait_for(apps[0](scope, receive, send), 30)
        assert sent[1]["status"] == 200
    missing, cut = _lines(caplog)
    assert missing["model"] == "nope" and missing["error"] == "ModelNotFound"
    assert cut["status"] == 200 and cut["error"] == "cancelled"
    assert cut["completion_tokens"] < 40
