"""`llm-router serve --ray` on a real two-node Ray cluster on loopback (tests/ray_cluster.py),
with the bundled models, driven by the official openai client: the same API as a single
machine, model replicas on both nodes, multiplexing that keeps a model where it is loaded,
and a replica killed with SIGKILL under load. Module-scoped: one cluster, one deployment."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from ray_cluster import RayCluster, wait_until
from servers import GEMMA, SMOL, free_port, stop_process

pytestmark = [pytest.mark.ray, pytest.mark.real, pytest.mark.timeout(240)]

HELLO = [{"role": "user", "content": "What is the capital of France?"}]
SERVE = (sys.executable, "-m", "llm_router", "serve")


class RayServer:
    """`llm-router serve --ray ADDRESS` in the foreground, its log in a file."""

    def __init__(self, workdir: Path, cluster: RayCluster, models_dir: Path) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.config = workdir / "ray.yaml"
        config = {
            "host": "127.0.0.1",
            "port": self.port,
            "models_dir": str(models_dir),
            "cache": {"enabled": False},
            "model_defaults": {"parallel": 2, "context_size": 1024},
            "ray": {
                "replicas": 2,
                "max_replicas_per_node": 1,  # one on each node
                "num_cpus": 1,  # and one llama.cpp thread each: 2 replicas on 2 cores
                "models_per_replica": 1,  # a model routed to the wrong replica would swap
                "max_ongoing_requests": 2,
                "retry_window": 60,
            },
        }
        self.config.write_text(yaml.safe_dump(config))
        self.log_path = workdir / "serve-ray.log"
        env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONUNBUFFERED": "1"}
        with self.log_path.open("wb") as log:
            self.proc = subprocess.Popen(
                [*SERVE, "--config", str(self.config), "--ray", cluster.address],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
            )

    def wait_ready(self, timeout: float = 150) -> None:
        def up() -> bool:
            assert self.proc.poll() is None, self.log()
            try:
                return httpx.get(self.url + "/health", timeout=2).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(up, timeout, f"serve --ray did not answer:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")[-4000:]

    def replicas(self, model: str) -> list[dict[str, Any]]:
        data = httpx.get(self.url + "/models", timeout=10).json()["data"]
        entry = {m["id"]: m for m in data}[model]
        return list((entry.get("runtime") or {}).get("replicas") or [])

    def stop(self) -> int:
        stop_process(self.proc, 60)
        return self.proc.returncode


@pytest.fixture(scope="module")
def cluster() -> Iterator[RayCluster]:
    ray = RayCluster(head_cpus=2, node_cpus=2)
    try:
        yield ray.start()
    finally:
        ray.stop()


@pytest.fixture(scope="module")
def ray_server(
    tmp_path_factory: pytest.TempPathFactory, cluster: RayCluster, models_dir: Path
) -> Iterator[RayServer]:
    srv = RayServer(tmp_path_factory.mktemp("ray"), cluster, models_dir)
    try:
        srv.wait_ready()
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="module")
def ray_client(ray_server: RayServer) -> Iterator[openai.OpenAI]:
    client = openai.OpenAI(
        base_url=ray_server.url + "/v1", api_key="unused", max_retries=0, timeout=120
    )
    yield client
    client.close()


def test_openai_api_as_on_one_machine(ray_server: RayServer, ray_client: openai.OpenAI) -> None:
    raw = ray_client.chat.completions.with_raw_response.create(
        model=SMOL, messages=HELLO, max_tokens=12, temperature=0
    )
    assert raw.headers["x-llm-router-model"] == SMOL
    answer = raw.parse()
    assert "Paris" in (answer.choices[0].message.content or "")
    assert answer.model == SMOL and answer.usage is not None and answer.usage.completion_tokens
    chunks = list(
        ray_client.chat.completions.create(
            model=SMOL,
            messages=HELLO,
            max_tokens=12,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == answer.choices[0].message.content  # greedy: streamed as answered
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens
    with pytest.raises(openai.NotFoundError) as missing:
        ray_client.chat.completions.create(model="no-such-model", messages=HELLO)
    assert missing.value.body["code"] == "model_not_found"  # type: ignore[index]
    with pytest.raises(openai.BadRequestError) as bad:
        ray_client.chat.completions.create(model=SMOL, messages=HELLO, temperature=7)
    assert bad.value.body["param"] == "temperature"  # type: ignore[index]
    listed = {m.id for m in ray_client.models.list()}
    assert {SMOL, GEMMA} <= listed
    # llama-server's own endpoints run on the model replica too
    tokens = httpx.post(
        ray_server.url + "/tokenize", json={"model": SMOL, "content": "Hello world"}, timeout=60
    ).json()["tokens"]
    assert tokens and all(isinstance(t, int) for t in tokens)
    text = httpx.post(
        ray_server.url + "/detokenize", json={"model": SMOL, "tokens": tokens}, timeout=60
    ).json()["content"]
    assert text.strip() == "Hello world"


def test_multiplexing_keeps_each_model_on_its_replica(
    ray_server: RayServer, ray_client: openai.OpenAI
) -> None:
    for model in (SMOL, GEMMA):
        ray_client.completions.create(model=model, prompt="Hi", max_tokens=2)

    def reported() -> bool:
        held = ray_server.replicas(SMOL) + ray_server.replicas(GEMMA)
        return len(held) == 2 and all(r["status"] == "loaded" and r["pid"] for r in held)

    wait_until(reported, 15, "both models reported loaded")
    before = {m: ray_server.replicas(m) for m in (SMOL, GEMMA)}
    assert len(before[SMOL]) == len(before[GEMMA]) == 1
    # one model per replica: each on a replica of its own, on different nodes
    assert before[SMOL][0]["replica"] != before[GEMMA][0]["replica"]
    assert before[SMOL][0]["node_id"] != before[GEMMA][0]["node_id"]
    for _ in range(4):  # alternating: a request sent to the other replica would swap models
        for model in (SMOL, GEMMA):
            ray_client.completions.create(model=model, prompt="Hello", max_tokens=2)
    time.sleep(1.5)  # a report or two later
    for model in (SMOL, GEMMA):
        (now,) = ray_server.replicas(model)
        assert (now["replica"], now["pid"]) == (
            before[model][0]["replica"],
            before[model][0]["pid"],
        )
        assert now["status"] == "loaded" and now["memory_bytes"] > 0


def _stream(client: openai.OpenAI, results: list[dict[str, Any]], i: int) -> None:
    got: list[str] = []
    try:
        for chunk in client.completions.create(
            model=GEMMA, prompt=f"List {i}: one, two,", max_tokens=24, stream=True
        ):
            got.append(chunk.choices[0].text if chunk.choices else "")
        results[i] = {"chunks": len(got), "error": None}
    except openai.APIError as exc:
        results[i] = {"chunks": len(got), "error": exc}


def _load(client: openai.OpenAI, count: int, on_first: Any = None) -> list[dict[str, Any]]:
    results: list[dict[str, Any]] = [{} for _ in range(count)]
    threads = [threading.Thread(target=_stream, args=(client, results, i)) for i in range(count)]
    for t in threads:
        t.start()
    if on_first is not None:
        on_first(results)
    for t in threads:
        t.join(180)
    return results


def test_requests_spread_over_two_replicas(
    ray_server: RayServer, ray_client: openai.OpenAI
) -> None:
    results = _load(ray_client, 6)
    assert all(r["error"] is None and r["chunks"] > 0 for r in results), results
    # listed as soon as its load is asked for: the second replica's may still wait for its
    # SmolLM2 to finish and go (models_max 1), so wait for both loaded
    wait_until(
        lambda: [r["status"] for r in ray_server.replicas(GEMMA)] == ["loaded", "loaded"],
        30,
        "gemma loaded on both replicas",
    )
    replicas = ray_server.replicas(GEMMA)
    assert len({r["node_id"] for r in replicas}) == 2  # one replica on each node
    assert all(r["pid"] for r in replicas)
    # one model per replica: Gemma's second replica let SmolLM2 go (its LRU)
    wait_until(lambda: ray_server.replicas(SMOL) == [], 15, "SmolLM2 evicted")


def test_replica_killed_under_load_loses_no_unstarted_request(
    ray_server: RayServer, ray_client: openai.OpenAI
) -> None:
    replicas = ray_server.replicas(GEMMA)
    assert len(replicas) == 2
    victim = replicas[0]

    def kill_when_streaming(results: list[dict[str, Any]]) -> None:
        time.sleep(0.5)  # 8 requests, 4 running on 2 replicas (prefill or decode), 4 waiting
        os.kill(victim["replica_pid"], signal.SIGKILL)

    results = _load(ray_client, 8, kill_when_streaming)
    failed = [r for r in results if r["error"] is not None]
    # Only streams that had already sent tokens may end with an error; the rest were served.
    assert all(r["chunks"] > 0 for r in failed), results
    assert len(failed) <= 2, results  # at most what the killed replica was running
    assert sum(r["error"] is None for r in results) >= 6

    # Ray restarts the replica: requests reach two replicas again, one of them new (more
    # at once than the survivor takes, so that some go to the new one, which loads Gemma).
    def restarted() -> bool:
        _load(ray_client, 6)
        now = {r["replica"] for r in ray_server.replicas(GEMMA)}
        return len(now) == 2 and victim["replica"] not in now

    wait_until(restarted, 90, "the killed replica was not replaced")


def test_serve_ray_deletes_its_app_and_ray_deploy_redeploys(
    ray_server: RayServer, cluster: RayCluster
) -> None:
    assert ray_server.stop() == 0
    with pytest.raises(httpx.HTTPStatusError):  # Serve's proxy is up; the app is gone
        httpx.get(ray_server.url + "/health", timeout=5).raise_for_status()
    env = {**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}
    command = [sys.executable, "-m", "llm_router", "ray"]
    args = [str(ray_server.config), "--address", cluster.address]
    deployed = subprocess.run(
        [*command, "deploy", *args], env=env, capture_output=True, text=True, timeout=150
    )
    assert deployed.returncode == 0, deployed.stderr[-3000:]
    assert f"{ray_server.url}/v1" in deployed.stdout
    with openai.OpenAI(base_url=ray_server.url + "/v1", api_key="unused", timeout=120) as client:
        answer = client.completions.create(model=SMOL, prompt="Hi", max_tokens=2)
    assert answer.choices[0].text is not None
    deleted = subprocess.run(
        [*command, "delete", *args], env=env, capture_output=True, text=True, timeout=60
    )
    assert deleted.returncode == 0, deleted.stderr[-3000:]
