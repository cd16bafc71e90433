"""/metrics follows Prometheus naming (counters `_total`, times `_seconds`, sizes `_bytes`),
keeps labels bounded, and counts what vLLM and llama-server users look for: time per output
token, queue wait, unloads by reason with their duration, requests in flight per target."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

from inproc import app_client, fake_models
from llm_router.metrics import unload_reason

LABELS = {"model", "endpoint", "outcome", "kind", "event", "route", "target", "error", "tier"}
LABELS |= {"result", "reason", "status", "state", "le"}


def _value(text: str, series: str) -> float:
    match = re.search(rf"^{re.escape(series)} (\S+)$", text, flags=re.MULTILINE)
    assert match, f"{series} is not in /metrics"
    return float(match.group(1))


async def test_names_and_labels_follow_prometheus_conventions(tmp_path: Path) -> None:
    async with app_client(tmp_path) as client:
        body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
        assert (await client.post("/v1/chat/completions", json=body)).status_code == 200
        text = (await client.get("/metrics")).text
    types = dict(re.findall(r"^# TYPE (llm_router_\w+) (\w+)$", text, flags=re.MULTILINE))
    assert len(types) > 30
    for name, kind in types.items():
        if kind == "counter":
            assert name.endswith("_total"), name
        else:  # `_total` is the counters' suffix alone
            assert not name.endswith("_total"), name
        if kind == "histogram":
            assert name.endswith("_seconds"), name  # every histogram here is a time
        if "memory" in name or "budget" in name:
            assert name.endswith("_bytes"), name
    for labels in re.findall(r"^llm_router_\w+\{([^}]*)\}", text, flags=re.MULTILINE):
        names = set(re.findall(r'(\w+)="', labels))
        assert names <= LABELS, names - LABELS  # no client-chosen label (user, key, prompt)


async def test_errors_are_counted_by_route_and_status_with_bounded_labels(tmp_path: Path) -> None:
    """A 400 (malformed JSON, a bad parameter) and a client's random paths reached no metric
    at all (found from outside): every error answer is counted by the route template it
    matched, or 'unmatched', and its status."""
    async with app_client(tmp_path) as client:
        bad = await client.post(
            "/v1/chat/completions",
            content=b"{not json",
            headers={"content-type": "application/json"},
        )
        assert bad.status_code == 400
        body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "temperature": 5}
        assert (await client.post("/v1/chat/completions", json=body)).status_code == 400
        for i in range(3):
            assert (await client.get(f"/v1/nope-{i}")).status_code == 404
        assert (await client.get("/health")).status_code == 200
        text = (await client.get("/metrics")).text
    series = 'llm_router_http_errors_total{route="/v1/chat/completions",status="400"}'
    assert _value(text, series) == 2
    assert _value(text, 'llm_router_http_errors_total{route="unmatched",status="404"}') == 3
    assert "nope" not in text and 'status="200"' not in text


async def test_decode_queue_and_unload_metrics_are_counted(tmp_path: Path) -> None:
    async with app_client(tmp_path) as client:
        body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}
        assert (await client.post("/v1/chat/completions", json=body)).status_code == 200
        assert (await client.post("/models/unload", json={"model": "chat"})).status_code < 300
        text = await _wait_for(
            client, 'llm_router_model_unloads_total{model="chat",reason="requested"}'
        )
    assert _value(text, 'llm_router_time_per_output_token_seconds_count{model="chat"}') == 1
    assert _value(text, 'llm_router_queue_wait_seconds_count{model="chat"}') == 1
    assert _value(text, 'llm_router_model_unloads_total{model="chat",reason="requested"}') == 1
    assert _value(text, 'llm_router_model_loads_total{model="chat",reason="request"}') == 1
    assert _value(text, 'llm_router_model_unload_seconds_count{model="chat"}') == 1
    assert _value(text, 'llm_router_target_in_flight_requests{model="chat"}') == 0


async def _wait_for(client: Any, series: str) -> str:
    """/metrics once `series` is in it (loads and unloads finish in the background)."""
    for _ in range(250):
        text = str((await client.get("/metrics")).text)
        if series in text:
            return text
        await asyncio.sleep(0.02)
    raise AssertionError(f"{series} is not in /metrics")


async def test_loads_are_counted_by_what_asked_for_them(tmp_path: Path) -> None:
    """At start for `preload`, by POST /models/load, by a request naming the model."""
    models = fake_models(tmp_path, chat={}, other={})
    async with app_client(tmp_path, models=models, preload=["other"]) as client:
        await _wait_for(client, 'llm_router_model_loads_total{model="other",reason="preload"} 1')
        assert (await client.post("/models/load", json={"model": "chat"})).status_code == 200
        await _wait_for(client, 'llm_router_model_loads_total{model="chat",reason="requested"} 1')
        assert (await client.post("/models/unload", json={"model": "chat"})).status_code < 300
        await _wait_for(client, 'llm_router_model_unloads_total{model="chat",reason="requested"} 1')
        body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        assert (await client.post("/v1/chat/completions", json=body)).status_code == 200
        text = (await client.get("/metrics")).text
    assert _value(text, 'llm_router_model_loads_total{model="chat",reason="request"}') == 1
    assert _value(text, 'llm_router_model_loads_total{model="chat",reason="requested"}') == 1


def test_unload_reasons_are_a_closed_set() -> None:
    assert unload_reason("evicted to make room for 'some-client-named-model'") == "evicted"
    assert unload_reason("evicted: over the memory budget (x)") == "evicted"
    assert unload_reason("idle (keep_alive)") == "idle"
    assert unload_reason("load cancelled") == "cancelled"
    assert unload_reason("requested") == "requested"
    assert unload_reason("file changed on disk: /some/path") == "other"
    assert unload_reason(None) == "other"


async def test_the_router_process_exports_its_own_memory_fds_and_cpu(tmp_path: Path) -> None:
    """An SRE watches the process's RSS and fds from Prometheus (a soak found no process_*
    series: the registry is the app's own, without the standard collectors)."""
    import sys

    import psutil

    async with app_client(tmp_path) as client:
        text = (await client.get("/metrics")).text
    rss = _value(text, "process_resident_memory_bytes")
    assert 0.5 < rss / psutil.Process().memory_info().rss < 2  # this process's, in bytes
    assert _value(text, "process_open_fds") >= 3
    assert _value(text, "process_cpu_seconds_total") > 0
    assert f'version="{".".join(map(str, sys.version_info[:3]))}"' in text  # python_info
