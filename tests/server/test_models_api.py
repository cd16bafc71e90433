"""llama.cpp-router compatible model management over HTTP."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from servers import GEMMA, SMOL, MakeClient, link_models, new_server


def test_load_unload_round_trip_with_events(tmp_path: Path, models_dir: Path) -> None:
    srv = new_server(tmp_path, models_dir=str(models_dir))
    events: list[dict[str, Any]] = []

    def listen() -> None:
        with httpx.stream("GET", srv.url + "/models/events", timeout=30) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
                    if events[-1]["event"] == "unloaded":
                        return

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    try:
        time.sleep(0.5)
        assert srv.models()[GEMMA]["status"]["value"] == "unloaded"
        r = httpx.post(srv.url + "/models/load", json={"model": GEMMA})
        assert r.status_code == 200 and r.json()["success"] is True
        entry = srv.wait_status(GEMMA, "loaded", timeout=30)
        assert entry["memory_bytes"] > 50 * 2**20
        assert entry["load_seconds"] > 0
        assert "pid" not in entry and "/" not in entry["path"]  # no internals for clients
        assert entry["runtime"]["parallel"] >= 1
        r = httpx.post(srv.url + "/models/unload", json={"model": GEMMA})
        assert r.json()["success"] is True
        entry = srv.wait_status(GEMMA, "unloaded", timeout=30)
        assert entry["memory_bytes"] is None
        listener.join(10)
        kinds = [e["event"] for e in events if e["model"] == GEMMA]
        assert kinds == ["loading", "loaded", "unloading", "unloaded"]
        missing = httpx.post(srv.url + "/models/load", json={"model": "nope"})
        assert missing.status_code == 404
    finally:
        srv.stop()


def test_autoload_and_status_fields(client: openai.OpenAI, server: Any) -> None:
    client.chat.completions.create(
        model=SMOL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
    )
    entry = server.models()[SMOL]
    assert entry["status"]["value"] == "loaded"
    assert entry["last_used"] is not None
    assert entry["quantization"] == "Q4_1" and entry["context_length"] == 8192
    assert entry["model_architecture"] == "llama"


def test_file_added_and_removed_at_run_time(
    tmp_path: Path, smollm2_gguf: Path, make_client: MakeClient
) -> None:
    """Files come and go without a restart, and `GET /models/events` tells each change in an
    order a client can follow: a loaded model's file removed said `removed` before its
    `unloading` and `unloaded` (the client ended holding a model the listing no longer had);
    a broken file fixed in place, or broken while unloaded, said nothing at all."""
    models = link_models(tmp_path / "models", smollm2_gguf)
    srv = new_server(tmp_path, models_dir=str(models), watch_interval=0.2)
    client = make_client(srv)
    events: list[dict[str, Any]] = []
    stop = threading.Event()

    def listen() -> None:
        with httpx.stream("GET", srv.url + "/models/events", timeout=60) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(json.loads(line[6:]))
                if stop.is_set():
                    return

    def of(model: str) -> list[tuple[str, str]]:
        return [(e["event"], e.get("reason") or e.get("error", "")) for e in events
                if e["model"] == model]  # fmt: skip

    listener = threading.Thread(target=listen, daemon=True)
    listener.start()
    try:
        assert {m.id for m in client.models.list()} == {SMOL}
        data = smollm2_gguf.read_bytes()
        (models / ".broken.tmp").write_bytes(data[: len(data) // 2])
        (models / ".broken.tmp").rename(models / "broken.gguf")
        until(lambda: ("added", "") in of("broken"))
        assert srv.models()["broken"]["status"]["value"] == "error"
        (models / ".broken.tmp").write_bytes(data)
        (models / ".broken.tmp").rename(models / "broken.gguf")  # fixed
        until(lambda: any(e == "unloaded" for e, _ in of("broken")))
        assert of("broken")[-1] == ("unloaded", "its files can be served again")
        assert srv.models()["broken"]["status"]["value"] == "unloaded"
        (models / "broken.gguf").write_bytes(data[:1000])  # broken again, while unloaded
        until(lambda: of("broken")[-1][0] == "error")
        assert "header ends early" in of("broken")[-1][1]

        link_models(models / "sub", smollm2_gguf)
        (models / "sub" / smollm2_gguf.name).rename(models / "copy-of-smol.gguf")
        until(lambda: "copy-of-smol" in {m.id for m in client.models.list()})
        out = client.completions.create(model="copy-of-smol", prompt="Hi", max_tokens=2)
        assert out.model == "copy-of-smol"
        (models / "copy-of-smol.gguf").unlink()
        until(lambda: "copy-of-smol" not in {m.id for m in client.models.list()})
        until(lambda: of("copy-of-smol")[-1][0] == "removed")
        told = [e for e, _ in of("copy-of-smol")]
        assert told[-3:] == ["unloading", "unloaded", "removed"], told
    finally:
        stop.set()
        srv.stop()


def test_aliases_and_no_autoload(tmp_path: Path, models_dir: Path, make_client: MakeClient) -> None:
    config = {
        "models_dir": str(models_dir),
        "autoload": False,
        "models": [{"id": SMOL, "aliases": ["smol"]}],
    }
    srv = new_server(tmp_path, **config)
    client = make_client(srv)
    try:
        try:
            client.completions.create(model="smol", prompt="Hi", max_tokens=2)
            raise AssertionError("an unloaded model must not autoload")
        except openai.BadRequestError as exc:
            assert exc.code == "model_not_loaded"
        httpx.post(srv.url + "/models/load", json={"model": "smol"})
        srv.wait_status(SMOL, "loaded")
        out = client.completions.create(model="smol", prompt="Hi", max_tokens=2)
        assert out.model == SMOL
        assert srv.models()[SMOL]["aliases"] == ["smol"]
    finally:
        srv.stop()


def test_openai_model_names_map_to_a_local_model(
    tmp_path: Path, models_dir: Path, make_client: MakeClient
) -> None:
    """The README's recipe for apps that hard-code OpenAI's names: aliases on a local model."""
    srv = new_server(
        tmp_path,
        models_dir=str(models_dir),
        models=[{"id": SMOL, "aliases": ["gpt-4o-mini", "gpt-4o"]}],
    )
    client = make_client(srv)
    try:
        done = client.chat.completions.create(
            model="gpt-4o-mini",
            messages=[
                {"role": "system", "content": "You are a helpful assistant."},
                {"role": "user", "content": "What is the capital of France?"},
            ],
            temperature=0,
            max_tokens=12,
        )
        assert done.model == SMOL and "Paris" in (done.choices[0].message.content or "")
        stream = client.chat.completions.create(
            model="gpt-4o", messages=[{"role": "user", "content": "Hi"}], max_tokens=4, stream=True
        )
        assert {chunk.model for chunk in stream} == {SMOL}
        with pytest.raises(openai.NotFoundError):  # only the names given, nothing guessed
            client.chat.completions.create(
                model="gpt-4.1", messages=[{"role": "user", "content": "Hi"}], max_tokens=2
            )
    finally:
        srv.stop()


def test_prometheus_metrics(client: openai.OpenAI, server: Any) -> None:
    client.completions.create(model=SMOL, prompt="Hi", max_tokens=3)
    text = httpx.get(server.url + "/metrics").text
    assert (
        f'llm_router_requests_total{{endpoint="completion",model="{SMOL}",outcome="length"}}'
        in text
    )
    assert f'llm_router_model_status{{model="{SMOL}",status="loaded"}} 1.0' in text
    assert f'llm_router_model_events_total{{event="loaded",model="{SMOL}"}}' in text
    for counter in ("decode_steps", "prompt_prefix_copies", "slot_moves"):
        assert f'llm_router_engine_{counter}_total{{model="{SMOL}"}}' in text
    assert "llm_router_time_to_first_token_seconds_bucket" in text
    assert f'llm_router_model_memory_bytes{{model="{SMOL}"}}' in text


def until(condition: Callable[[], bool], seconds: float = 10.0) -> None:
    """Poll `condition` (the models directory is watched every `watch_interval`)."""
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.1)
