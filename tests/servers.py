"""Starting real `llm-router serve` processes for tests, on 127.0.0.1 and a free port.

Each server is a child process we started; it is stopped by its PID (SIGTERM, then SIGKILL)
and its worker processes die with it (they exit when the router's socket closes)."""

from __future__ import annotations

import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import openai
import psutil
import yaml

__all__ = [
    "GEMMA",
    "SMOL",
    "MakeClient",
    "Server",
    "alive",
    "free_port",
    "link_models",
    "new_server",
    "within_one_minute_window",
]

SMOL = "SmolLM2-135M-Instruct.Q4_1"
GEMMA = "gemma-3-270m-q4_k_m"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def link_models(target: Path, *sources: Path) -> Path:
    """Place models into `target` by hard link (copy across file systems); never writes the
    sources, which may be files inside site-packages."""
    target.mkdir(parents=True, exist_ok=True)
    for src in sources:
        dst = target / src.name
        if not dst.exists():
            try:
                os.link(src, dst)
            except OSError:
                dst.write_bytes(src.read_bytes())
    return target


class Server:
    def __init__(self, workdir: Path, config: dict[str, Any]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config_path = workdir / f"config-{self.port}.yaml"
        # The response cache is off unless a test turns it on: most tests measure the models
        # (batching, prompt caches, crashes, loads), and a cached answer would skip them.
        # drain_grace: stop() (SIGTERM, a drain: server/run.py) waits at most this long for
        # requests still in flight, as long as uvicorn's own shutdown waited before.
        defaults = {"cache": {"enabled": False}, "drain_grace": 5}
        self.config_path.write_text(
            yaml.safe_dump({"host": "127.0.0.1", "port": self.port, **defaults, **config})
        )
        self.log_path = workdir / f"server-{self.port}.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(
        self, timeout: float = 60.0, *, own_group: bool = False, address_space: int | None = None
    ) -> Server:
        """`own_group`: the server leads a process group of its own (its workers join it),
        which a test may signal whole, as systemd or `kill -TERM -PGID` would.
        `address_space`: the bytes of memory the server and its workers may map each
        (RLIMIT_AS), so that a test of a huge allocation fails in the worker instead of
        bringing the kernel's OOM killer onto a shared machine."""
        if self.proc is not None and self.proc.poll() is None:
            return self  # running: a second process would orphan this one (and fail to bind)
        env = {**os.environ, "PYTHONUNBUFFERED": "1"}
        limit = None
        if address_space is not None:
            limit = partial(resource.setrlimit, resource.RLIMIT_AS, (address_space,) * 2)
        with self.log_path.open("wb") as log:  # the child keeps its own copy of the fd
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "llm_router", "serve", "--config", str(self.config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                start_new_session=own_group,
                preexec_fn=limit,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited early:\n{self.log()}")
            try:
                if httpx.get(self.url + "/health", timeout=1).status_code == 200:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"server did not start in {timeout}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-5000:]

    def models(self) -> dict[str, dict[str, Any]]:
        data = httpx.get(self.url + "/models", timeout=10).json()["data"]
        return {m["id"]: m for m in data}

    def wait_status(self, model: str, *values: str, timeout: float = 60.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        entry: dict[str, Any] = {}
        while time.monotonic() < deadline:
            entry = self.models().get(model, {})
            if entry.get("status", {}).get("value") in values:
                return entry
            time.sleep(0.1)
        raise AssertionError(f"{model} never reached {values}; last: {entry}")

    def descendants(self) -> list[int]:
        if self.proc is None:
            return []
        try:
            return [p.pid for p in psutil.Process(self.proc.pid).children(recursive=True)]
        except psutil.NoSuchProcess:
            return []

    def worker_of(self, model_file: str) -> int | None:
        """The pid of the worker that has `model_file` (a file name) mapped: the one serving it
        (`GET /models` does not tell pids to clients)."""
        for pid in self.descendants():
            try:
                maps = psutil.Process(pid).memory_maps()
            except psutil.Error:
                continue
            if any(Path(m.path).name == model_file for m in maps):
                return pid
        return None

    def stop(self) -> list[int]:
        """Stop the server; returns the pids of its children that were alive before."""
        if self.proc is None or self.proc.poll() is not None:
            return []
        children = self.descendants()
        stop_process(self.proc, 15)
        return children


def stop_process(proc: subprocess.Popen[bytes], timeout: float, sig: int = signal.SIGTERM) -> None:
    """Send `sig` to a process this test started, wait up to `timeout` s, then kill it."""
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


MakeClient = Callable[[Server], openai.OpenAI]


def new_server(workdir: Path, **config: Any) -> Server:
    return Server(workdir, config).start()


def chat_both_ways(
    client: openai.OpenAI, model: str, messages: Any, max_tokens: int
) -> tuple[str, tuple[int, int]]:
    """One greedy chat, plain and streamed (with usage); asserts both give the same text and
    usage, and returns them: the answer and (prompt_tokens, completion_tokens)."""
    chat = client.chat.completions.create(
        model=model, messages=messages, temperature=0, max_tokens=max_tokens
    )
    assert chat.model == model and chat.choices[0].finish_reason == "stop"
    assert chat.usage is not None
    answer = chat.choices[0].message.content or ""
    usage = (chat.usage.prompt_tokens, chat.usage.completion_tokens)
    stream = client.chat.completions.create(
        model=model,
        messages=messages,
        temperature=0,
        max_tokens=max_tokens,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == answer, model
    last = chunks[-1].usage
    assert last is not None and (last.prompt_tokens, last.completion_tokens) == usage
    return answer, usage


def alive(pid: int) -> bool:
    """Whether process `pid` still exists."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


STUB_UPSTREAM = Path(__file__).resolve().parent / "stub_upstream.py"


class Stub:
    """tests/stub_upstream.py in its own process (fault injection: POST /control)."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = subprocess.Popen(
            [sys.executable, str(STUB_UPSTREAM), str(self.port)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 20
        while True:
            try:
                httpx.get(self.url + "/stats", timeout=1)
                return
            except httpx.HTTPError:
                assert time.monotonic() < deadline, "stub did not start"
                time.sleep(0.05)

    def set(self, **state: Any) -> None:
        httpx.post(self.url + "/control", json=state, timeout=5)

    def stats(self) -> dict[str, Any]:
        data: dict[str, Any] = httpx.get(self.url + "/stats", timeout=5).json()
        return data

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:  # uvicorn waits for open connections; don't
            self.proc.kill()
            self.proc.wait(5)


def within_one_minute_window(needed: float) -> None:
    """Wait, if need be, until `needed` seconds are left in the current minute: the limits'
    sliding windows are aligned on minutes, and one that slides in the middle of a test
    weighs what came before by the time gone, so exact header values would shift by one (and
    a limit of 1 request lets a second through just after the turn of a minute)."""
    left = 60 - time.time() % 60
    if left < needed:
        time.sleep(left + 0.05)
