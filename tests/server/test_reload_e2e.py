"""Reloading a real server's configuration (server/reload.py): SIGHUP and `POST /admin/reload`
on `llm-router serve --config FILE` with the bundled SmolLM2, driven by the openai client.
(What a reload applies, in detail and on the fake engine: test_reload.py; under `--workers`:
test_workers.py.)"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from servers import SMOL, MakeClient, Server, link_models

HELLO = [{"role": "user", "content": "Say hello."}]


def _rewrite(srv: Server, **changes: Any) -> None:
    config = yaml.safe_load(srv.config_path.read_text())
    srv.config_path.write_text(yaml.safe_dump({**config, **changes}))


def _n_ctx(srv: Server, model: str) -> int:
    r = httpx.get(srv.url + "/props", params={"model": model}, timeout=30)
    assert r.status_code == 200, r.text
    return int(r.json()["default_generation_settings"]["n_ctx"])


def _until(check: Any, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not in time"
        time.sleep(0.1)


def test_sighup_and_admin_reload_apply_a_new_configuration(
    tmp_path: Path, smollm2_gguf: Path, make_client: MakeClient
) -> None:
    models = link_models(tmp_path / "models", smollm2_gguf)
    srv = Server(
        tmp_path,
        {"models_dir": str(models), "models": [{"id": SMOL, "context_size": 1024}]},
    ).start()
    try:
        client = make_client(srv)
        first = client.chat.completions.create(model=SMOL, messages=HELLO, max_tokens=8)
        assert first.choices[0].message.content
        assert _n_ctx(srv, SMOL) == 1024

        # SIGHUP: an alias, another context size (the model loads again with it) and a route
        _rewrite(
            srv,
            models=[{"id": SMOL, "context_size": 2048, "aliases": ["smol"]}],
            routes=[{"name": "assistant", "targets": [SMOL]}],
        )
        assert srv.proc is not None
        srv.proc.send_signal(signal.SIGHUP)
        _until(lambda: "assistant" in {m.id for m in client.models.list()})
        srv.wait_status(SMOL, "unloaded")
        for name in ("smol", "assistant"):
            chat = client.chat.completions.create(model=name, messages=HELLO, max_tokens=8)
            assert chat.choices[0].message.content, name
        assert _n_ctx(srv, SMOL) == 2048
        assert "configuration reloaded (SIGHUP)" in srv.log()

        # POST /admin/reload: the route goes; a bad file changes nothing and says why
        _rewrite(srv, routes=[], models_max="many")
        r = httpx.post(srv.url + "/admin/reload", timeout=30)
        assert r.status_code == 400 and "models_max" in r.json()["error"]["message"]
        assert "assistant" in {m.id for m in client.models.list()}
        _rewrite(srv, models_max=2, port=srv.port + 1)
        r = httpx.post(srv.url + "/admin/reload", timeout=30)
        assert r.status_code == 200, r.text
        assert r.json()["applied"] == ["models_max", "routes"]
        assert r.json()["restart_required"] == ["port"]
        assert r.json()["unloaded"] == []
        with pytest.raises(openai.NotFoundError):
            client.chat.completions.create(model="assistant", messages=HELLO, max_tokens=8)
        chat = client.chat.completions.create(model="smol", messages=HELLO, max_tokens=8)
        assert chat.choices[0].message.content
        assert srv.proc.poll() is None
    finally:
        srv.stop()


def test_a_sighup_while_the_server_starts_is_held_and_applied_once_it_has(
    tmp_path: Path, smollm2_gguf: Path, make_client: MakeClient
) -> None:
    """A SIGHUP during start-up (seconds, with provisioning) ended the process silently, its
    port already taking requests (found from outside). It is held: once started, the server
    reloads the file, which changed meanwhile."""
    import os
    import threading

    models = link_models(tmp_path / "models", smollm2_gguf)
    srv = Server(tmp_path, {"models_dir": str(models)})

    def edit_and_hang_up() -> None:
        import socket

        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the port opens before the server has started
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", srv.port)) == 0:
                    break
            time.sleep(0.01)
        assert srv.proc is not None
        _rewrite(srv, routes=[{"name": "assistant", "targets": [SMOL]}])
        time.sleep(0.05)
        os.kill(srv.proc.pid, signal.SIGHUP)

    hangup = threading.Thread(target=edit_and_hang_up)
    hangup.start()
    try:
        srv.start()
        hangup.join()
        client = make_client(srv)
        _until(lambda: "assistant" in {m.id for m in client.models.list()}, timeout=30)
        chat = client.chat.completions.create(model="assistant", messages=HELLO, max_tokens=8)
        assert chat.choices[0].message.content
        assert srv.proc is not None and srv.proc.poll() is None
    finally:
        hangup.join()
        srv.stop()


def test_watch_config_reloads_an_edited_file(
    tmp_path: Path, smollm2_gguf: Path, make_client: MakeClient
) -> None:
    models = link_models(tmp_path / "models", smollm2_gguf)
    srv = Server(tmp_path, {"models_dir": str(models), "watch_config": True}).start()
    try:
        client = make_client(srv)
        assert "gpt-4o-mini" not in {m.id for m in client.models.list()}
        _rewrite(
            srv,
            models=[{"id": SMOL, "aliases": ["gpt-4o-mini"]}],
            routes=[{"name": "assistant", "targets": ["gpt-4o-mini"]}],
        )
        _until(lambda: "assistant" in {m.id for m in client.models.list()}, timeout=15)
        chat = client.chat.completions.create(model="gpt-4o-mini", messages=HELLO, max_tokens=8)
        assert chat.model == SMOL and chat.choices[0].message.content
        assert "configuration reloaded (config file changed)" in srv.log()
    finally:
        srv.stop()


def test_a_stream_that_outlives_unload_grace_is_told_why_it_ended(
    tmp_path: Path, smollm2_gguf: Path, make_client: MakeClient
) -> None:
    """A reload that changes a busy model's options waits `unload_grace` for its requests,
    then stops the worker: a stream still running ends with an error event saying so (not a
    bare "worker exited"), and its log line and metrics name the error, though its status
    was 200."""
    models = link_models(tmp_path / "models", smollm2_gguf)
    srv = Server(
        tmp_path,
        {
            "models_dir": str(models),
            "models": [{"id": SMOL, "context_size": 1024}],
            "unload_grace": 0.5,
            "log_format": "json",
        },
    ).start()
    try:
        client = make_client(srv)
        stream = client.chat.completions.create(
            model=SMOL,
            messages=HELLO,
            max_tokens=1000,
            stream=True,
            extra_body={"ignore_eos": True},
        )
        text = []
        with pytest.raises(openai.APIError) as failed:
            for chunk in stream:
                if chunk.choices and chunk.choices[0].delta.content:
                    text.append(chunk.choices[0].delta.content)
                if len(text) == 3:  # streaming: now change its options
                    _rewrite(srv, models=[{"id": SMOL, "context_size": 2048}])
                    r = httpx.post(srv.url + "/admin/reload", timeout=30)
                    assert r.json()["unloaded"] == [SMOL], r.text
        message = str(failed.value)
        assert failed.value.code == "model_unloaded", message  # not a worker that died
        assert "unloaded (configuration changed)" in message, message
        assert "unload_grace (0.5 s)" in message, message
        assert len(text) < 900  # cut short, not run to its end

        def logged() -> list[dict[str, Any]]:
            lines = [json.loads(s) for s in srv.log_path.read_text().splitlines() if s[:1] == "{"]
            return [x for x in lines if x.get("path") == "/v1/chat/completions"]

        _until(logged, timeout=10)  # written once the response has ended
        assert logged()[-1]["status"] == 200 and logged()[-1]["error"] == "ModelUnloaded", logged()
        metrics = httpx.get(srv.url + "/metrics", timeout=30).text
        labels = f'endpoint="chat",model="{SMOL}",outcome="ModelUnloaded"'
        counted = [x for x in metrics.splitlines() if x.startswith("llm_router_requests_total")]
        assert f"llm_router_requests_total{{{labels}}} 1.0" in counted, counted

        chat = client.chat.completions.create(model=SMOL, messages=HELLO, max_tokens=8)
        assert chat.choices[0].message.content  # loaded again, with the new options
        assert _n_ctx(srv, SMOL) == 2048
    finally:
        srv.stop()
