"""Traces through a real OpenTelemetry collector: Arize Phoenix (from PyPI; `make test` puts it
in `.venv/phoenix`, a venv of its own), a trace backend that receives OTLP over HTTP and gRPC
and answers what it stored on a REST API. A real server, configured by the standard OTEL_*
variables only, serves a request driven by the openai client with the client's traceparent;
its spans are then read back from the collector, in the client's trace, linked parent to
child, with their GenAI attributes, in the project its resource names."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from servers import SMOL, MakeClient, Server, free_port, stop_process

ROOT = Path(__file__).resolve().parent.parent


def _phoenix_binary() -> str:
    found = os.environ.get("LLMR_PHOENIX") or str(ROOT / ".venv" / "phoenix" / "bin" / "phoenix")
    assert Path(found).exists(), "Phoenix missing: run `make test` (it installs .venv/phoenix)"
    return found


class Phoenix:
    """`phoenix serve` on 127.0.0.1 (HTTP and gRPC on free ports) with its database in a
    temporary directory; stopped by its PID."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="llmr-phoenix-"))
        self.port, self.grpc_port = free_port(), free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = self.dir / "phoenix.log"
        env = {
            **os.environ,
            "PHOENIX_WORKING_DIR": str(self.dir),
            "PHOENIX_HOST": "127.0.0.1",
            "PHOENIX_PORT": str(self.port),
            "PHOENIX_GRPC_PORT": str(self.grpc_port),
            "PHOENIX_TELEMETRY_ENABLED": "false",
            "PHOENIX_DISABLE_AGENT_ASSISTANT": "true",
            "PHOENIX_AGENTS_DISABLE_BASH": "true",
            "PHOENIX_AGENTS_DISABLE_WEB_ACCESS": "true",
            "PHOENIX_AGENTS_DISABLE_GITHUB": "true",
        }
        for name in list(env):
            if name.startswith("OTEL_"):  # Phoenix traces itself when these are set
                del env[name]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [_phoenix_binary(), "serve"],
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=self.dir,
            )
        self._wait_ready(120)

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"phoenix exited early:\n{self.log.read_text()[-3000:]}")
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"phoenix did not start in {timeout}s:\n{self.log.read_text()[-3000:]}")

    def spans(self, project: str, trace_id: str, at_least: int) -> list[dict[str, Any]]:
        """The spans of `trace_id` in `project`, once at least `at_least` have been stored
        (the collector writes what it receives in the background)."""
        found: list[dict[str, Any]] = []
        for _ in range(100):
            response = httpx.get(
                f"{self.url}/v1/projects/{project}/spans", params={"limit": 1000}, timeout=10
            )
            if response.status_code == 200:
                data = response.json()["data"]
                found = [s for s in data if s["context"]["trace_id"] == trace_id]
                if len(found) >= at_least:
                    return found
            time.sleep(0.1)
        return found

    def stop(self) -> None:
        stop_process(self.proc, 20)
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="module")
def phoenix() -> Iterator[Phoenix]:
    collector = Phoenix()
    yield collector
    collector.stop()


EXPECTED = {
    "POST /v1/chat/completions",
    "llm_router.route",
    "llm_router.attempt",
    "llm_router.model_load",
    "llm_router.prefill",
    "llm_router.decode",
}


@pytest.mark.parametrize("protocol", ["http/protobuf", "grpc"])
def test_a_real_collector_stores_the_spans_of_a_request(
    protocol: str,
    phoenix: Phoenix,
    tmp_path: Path,
    models_dir: Path,
    make_client: MakeClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    project = f"router-{uuid.uuid4().hex[:12]}"
    port = phoenix.port if protocol == "http/protobuf" else phoenix.grpc_port
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", f"http://127.0.0.1:{port}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
    monkeypatch.setenv("OTEL_SERVICE_NAME", "router-under-test")
    # Phoenix files spans by this resource attribute: the project proves the resource arrived
    monkeypatch.setenv("OTEL_RESOURCE_ATTRIBUTES", f"openinference.project.name={project}")
    trace_id = uuid.uuid4().hex
    srv = Server(tmp_path, {"models_dir": str(models_dir), "watch_interval": 0}).start()
    try:
        client = make_client(srv)
        done = client.chat.completions.create(
            model=SMOL,
            messages=[{"role": "user", "content": "Hi"}],
            max_tokens=4,
            extra_headers={"traceparent": f"00-{trace_id}-b7ad6b7169203331-01"},
        )
        assert done.choices[0].message.content is not None and done.usage is not None
    finally:
        srv.stop()  # the server exports what is left as it stops
    spans = phoenix.spans(project, trace_id, at_least=len(EXPECTED))
    by_name = {s["name"]: s for s in spans}
    assert EXPECTED <= by_name.keys(), sorted(by_name)
    server = by_name["POST /v1/chat/completions"]
    assert server["parent_id"] == "b7ad6b7169203331"  # the client's span: its trace continued
    route, attempt = by_name["llm_router.route"], by_name["llm_router.attempt"]
    assert route["parent_id"] == server["context"]["span_id"]
    assert attempt["parent_id"] == route["context"]["span_id"]
    attrs = server["attributes"]
    assert attrs["gen_ai.request.model"] == attrs["gen_ai.response.model"] == SMOL
    assert attrs["gen_ai.usage.output_tokens"] == done.usage.completion_tokens
    assert attrs["gen_ai.usage.input_tokens"] == done.usage.prompt_tokens
