"""`llm-router serve --workers N` (server/run.py): several router processes on one port for a
gateway of remote targets, with Redis; refused, saying why, for anything else."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil
import pytest
import yaml

from servers import alive, free_port, link_models

STUB = Path(__file__).resolve().parent.parent / "stub_upstream.py"
HELLO = [{"role": "user", "content": "Hello"}]


def _serve(config: dict[str, Any], workdir: Path, *args: str) -> subprocess.Popen[bytes]:
    """`llm-router serve` with `config`; its output (and its children's) in workdir/serve.log."""
    path = workdir / "config.yaml"
    path.write_text(yaml.safe_dump({"host": "127.0.0.1", "log_level": "warning", **config}))
    with (workdir / "serve.log").open("wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "llm_router", "serve", "--config", str(path), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )


def _refusal(config: dict[str, Any], workdir: Path) -> str:
    proc = _serve(config, workdir, "--workers", "2")
    try:
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    output = (workdir / "serve.log").read_text()
    assert proc.returncode == 2, output
    return " ".join(output.split())  # the console wraps long lines


def _gateway_config(tmp_path: Path, upstream: str, **extra: Any) -> dict[str, Any]:
    (tmp_path / "empty").mkdir(exist_ok=True)
    return {
        "port": free_port(),
        "models_dir": str(tmp_path / "empty"),
        "provision_default_models": False,
        "watch_interval": 0,
        "spare_workers": False,
        "models": [
            {
                "id": "stub",
                "provider": "openai",
                "base_url": upstream + "/v1",
                "health_check_interval": 0,
            }
        ],
        **extra,
    }


@pytest.mark.real
def test_workers_refused_with_local_models(tmp_path: Path, smollm2_gguf: Path) -> None:
    models = link_models(tmp_path / "models", smollm2_gguf)
    config = {"models_dir": str(models), "redis_url": "redis://127.0.0.1:1/0"}
    message = _refusal(config, tmp_path)
    assert "--workers 2: this configuration serves local models" in message
    assert smollm2_gguf.stem in message
    assert "remote target" in message


@pytest.mark.real
def test_workers_refused_when_bundled_models_would_be_provisioned(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    config = {"models_dir": str(tmp_path / "empty"), "redis_url": "redis://127.0.0.1:1/0"}
    message = _refusal(config, tmp_path)
    assert "the bundled models (provision_default_models is on)" in message


@pytest.mark.real
def test_workers_refused_without_redis(tmp_path: Path) -> None:
    message = _refusal(_gateway_config(tmp_path, "http://127.0.0.1:9"), tmp_path)
    assert "--workers 2: redis_url is not set" in message
    assert "N times the configured limits" in message


class _Stub:
    def __init__(self) -> None:
        self.url = f"http://127.0.0.1:{free_port()}"
        port = self.url.rsplit(":", 1)[1]
        self.proc = subprocess.Popen(
            [sys.executable, str(STUB), port],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        _wait(lambda: httpx.get(self.url + "/stats", timeout=1).status_code == 200)

    def requests(self) -> int:
        return int(httpx.get(self.url + "/stats", timeout=5).json()["requests"])

    def stop(self) -> None:
        self.proc.kill()
        self.proc.wait(5)


@pytest.fixture
def stub() -> Iterator[_Stub]:
    s = _Stub()
    yield s
    s.stop()


def _wait(ready: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if ready():
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "not ready in time"
        time.sleep(0.1)


def _routers(parent: int) -> set[int]:
    """The router processes (not multiprocessing's resource tracker, also a child)."""
    children = psutil.Process(parent).children()
    return {c.pid for c in children if "spawn_main" in " ".join(c.cmdline())}


def _pids(url: str, count: int) -> list[int]:
    """The processes that answer `count` /health requests, each on a connection of its own
    (the kernel picks a process per connection), several at once."""

    def one(_: int) -> int:
        r = httpx.get(url + "/health", timeout=30, headers={"connection": "close"})
        assert r.status_code == 200
        return int(r.json()["pid"])

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(count)))


@pytest.mark.real
def test_two_router_processes_serve_one_port(tmp_path: Path, redis_url: str, stub: _Stub) -> None:
    config = _gateway_config(tmp_path, stub.url, redis_url=redis_url)
    url = f"http://127.0.0.1:{config['port']}"
    proc = _serve(config, tmp_path, "--workers", "2")
    try:
        _wait(lambda: proc.poll() is None and httpx.get(url + "/health").status_code == 200)
        children = _routers(proc.pid)
        _wait(lambda: set(_pids(url, 8)) == children)  # both started (imports take a while)
        pids = set(_pids(url, 40))
        assert pids == children and len(pids) == 2 and proc.pid not in pids

        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        with client, ThreadPoolExecutor(8) as pool:
            replies = list(
                pool.map(
                    lambda _: client.chat.completions.create(model="stub", messages=HELLO),
                    range(16),
                )
            )
        assert {r.choices[0].message.content for r in replies} == {"stub says hello"}
        assert stub.requests() == 16

        # A process that dies is replaced; connections meanwhile wait on its socket, which
        # the parent holds, so no request fails.
        victim = pids.pop()
        os.kill(victim, signal.SIGKILL)
        seen: set[int] = set()
        deadline = time.monotonic() + 60
        while not seen - {victim, *pids}:
            seen.update(_pids(url, 8))
            assert time.monotonic() < deadline, f"no new process; answered by {seen}"
        assert victim not in _routers(proc.pid)

        # SIGTERM: every process drains; a stream in flight runs to its end.
        httpx.post(stub.url + "/control", json={"delay": 0.5, "reply": "one two three four"})
        routers = _routers(proc.pid)
        children = psutil.Process(proc.pid).children()
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        with client, ThreadPoolExecutor(1) as pool:
            stream = client.chat.completions.create(model="stub", messages=HELLO, stream=True)
            first = next(iter(stream))
            proc.send_signal(signal.SIGTERM)
            rest = pool.submit(lambda: list(stream)).result(60)
        text = "".join(c.choices[0].delta.content or "" for c in [first, *rest] if c.choices)
        assert text == "one two three four"
        assert [c.choices[0].finish_reason for c in rest if c.choices][-1] == "stop"
        assert proc.wait(60) == -signal.SIGTERM  # ended by it, as one process is (143)
        assert not any(alive(pid) for pid in routers)  # the parent waited for them
        _, left = psutil.wait_procs(children, timeout=10)  # the resource tracker, on its own
        assert not left
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def _models_seen(url: str, count: int) -> set[frozenset[str]]:
    """The model lists `count` requests got, each on a connection of its own (so from both
    processes, as the kernel spreads them)."""

    def one(_: int) -> frozenset[str]:
        r = httpx.get(url + "/v1/models", timeout=30, headers={"connection": "close"})
        return frozenset(m["id"] for m in r.json()["data"])

    with ThreadPoolExecutor(8) as pool:
        return set(pool.map(one, range(count)))


@contextlib.contextmanager
def _two_routers(config: dict[str, Any], workdir: Path) -> Iterator[tuple[Any, str]]:
    """`serve --workers 2` with `config`, both processes answering; stopped by SIGTERM."""
    url = f"http://127.0.0.1:{config['port']}"
    proc = _serve(config, workdir, "--workers", "2")
    try:
        _wait(lambda: proc.poll() is None and httpx.get(url + "/health").status_code == 200)
        _wait(lambda: set(_pids(url, 8)) == _routers(proc.pid))
        yield proc, url
        assert proc.poll() is None and len(_routers(proc.pid)) == 2
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == -signal.SIGTERM  # ended by it, as one process is (143)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def _add_stub_two(workdir: Path, config: dict[str, Any]) -> dict[str, Any]:
    """Rewrite the config file with a second remote target; what it held before."""
    path = workdir / "config.yaml"
    written: dict[str, Any] = yaml.safe_load(path.read_text())
    second = {**config["models"][0], "id": "stub-two", "model": "stub"}
    path.write_text(yaml.safe_dump({**written, "models": [*config["models"], second]}))
    return written


@pytest.mark.real
def test_every_router_process_reloads(tmp_path: Path, redis_url: str, stub: _Stub) -> None:
    """A SIGHUP to the parent reaches every router process, and so does a reload over HTTP,
    which only one of them answers."""
    config = _gateway_config(tmp_path, stub.url, redis_url=redis_url)
    with _two_routers(config, tmp_path) as (proc, url):
        written = _add_stub_two(tmp_path, config)
        proc.send_signal(signal.SIGHUP)
        _wait(lambda: _models_seen(url, 16) == {frozenset({"stub", "stub-two"})})

        (tmp_path / "config.yaml").write_text(yaml.safe_dump(written))
        r = httpx.post(url + "/admin/reload", timeout=30)
        assert r.status_code == 200 and r.json()["applied"] == ["models"], r.text
        _wait(lambda: _models_seen(url, 16) == {frozenset({"stub"})})


@pytest.mark.real
def test_watch_config_reloads_every_router_process(
    tmp_path: Path, redis_url: str, stub: _Stub
) -> None:
    """Under `--workers`, the parent watches the file and signals every process."""
    config = _gateway_config(tmp_path, stub.url, redis_url=redis_url, watch_config=True)
    with _two_routers(config, tmp_path) as (_, url):
        _add_stub_two(tmp_path, config)
        _wait(lambda: _models_seen(url, 16) == {frozenset({"stub", "stub-two"})}, timeout=15)


@pytest.mark.real
def test_ctrl_c_stops_every_router_process_without_a_traceback(
    tmp_path: Path, redis_url: str, stub: _Stub
) -> None:
    """A Ctrl-C made each router process print a KeyboardInterrupt traceback (58 lines that
    are no JSON in a JSON log), and the command ended 0 (found from outside)."""
    config = _gateway_config(tmp_path, stub.url, redis_url=redis_url, log_format="json")
    url = f"http://127.0.0.1:{config['port']}"
    proc = _serve(config, tmp_path, "--workers", "2")
    try:
        _wait(lambda: proc.poll() is None and httpx.get(url + "/health").status_code == 200)
        _wait(lambda: set(_pids(url, 8)) == _routers(proc.pid))
        proc.send_signal(signal.SIGINT)
        assert proc.wait(60) == -signal.SIGINT
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)
    output = (tmp_path / "serve.log").read_text()
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output


@pytest.mark.real
def test_a_second_serve_with_workers_on_a_used_port_is_refused(
    tmp_path: Path, redis_url: str, stub: _Stub
) -> None:
    """A second `serve --workers 2` on the port of a running one started without a word and
    took part of its connections (SO_REUSEPORT lets any process of the user join); a plain
    `serve` there said `cannot listen ... Address already in use` and ended 2, as it now does."""
    config = _gateway_config(tmp_path, stub.url, redis_url=redis_url)
    (tmp_path / "second").mkdir()
    with _two_routers(config, tmp_path) as (proc, url):
        message = _refusal(config, tmp_path / "second")
        assert (
            message == f"error: cannot listen on 127.0.0.1:{config['port']}: Address already in use"
        )
        assert set(_pids(url, 16)) == _routers(proc.pid)  # the first one serves on, alone


@pytest.mark.real
def test_every_new_connection_during_a_drain_gets_503(
    tmp_path: Path, redis_url: str, stub: _Stub
) -> None:
    """While one process drains a stream, the other has nothing in flight: it stopped at once,
    but the parent held its socket open, so the kernel went on queueing part of the new
    connections there, unanswered until the parent exited and then reset (found from
    outside). Every process now answers 503 until the last one has drained."""
    config = _gateway_config(tmp_path, stub.url, redis_url=redis_url)
    url = f"http://127.0.0.1:{config['port']}"
    proc = _serve(config, tmp_path, "--workers", "2")
    try:
        _wait(lambda: proc.poll() is None and httpx.get(url + "/health").status_code == 200)
        _wait(lambda: set(_pids(url, 8)) == _routers(proc.pid))
        reply = " ".join(["word"] * 25)  # 5 s, a word each 0.2 s
        httpx.post(stub.url + "/control", json={"delay": 0.2, "reply": reply})
        client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0)
        answers: list[tuple[int, str | None, str]] = []
        with client, ThreadPoolExecutor(1) as pool:
            stream = client.chat.completions.create(model="stub", messages=HELLO, stream=True)
            first = next(iter(stream))
            routers = _routers(proc.pid)
            proc.send_signal(signal.SIGTERM)
            rest = pool.submit(lambda: list(stream))
            _wait(lambda: _draining(url, 8) == routers)  # both got the parent's SIGTERM
            while not rest.done():  # each on a connection of its own: the kernel picks
                r = httpx.get(url + "/v1/models", timeout=60, headers={"connection": "close"})
                answers.append((r.status_code, r.headers.get("retry-after"), r.text))
            chunks = [first, *rest.result()]
        assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == reply
        assert answers and all(status == 503 for status, _, _ in answers), answers[-1]
        assert {(after, '"server_draining"' in text) for _, after, text in answers} == {("1", True)}
        assert proc.wait(60) == -signal.SIGTERM
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(5)


def _draining(url: str, count: int) -> set[int]:
    """The processes that answer `count` /health requests (each on a connection of its own)
    that they are draining."""

    def one(_: int) -> int | None:
        r = httpx.get(url + "/health", timeout=30, headers={"connection": "close"})
        return int(r.json()["pid"]) if r.json()["status"] == "draining" else None

    with ThreadPoolExecutor(8) as pool:
        return {pid for pid in pool.map(one, range(count)) if pid is not None}
