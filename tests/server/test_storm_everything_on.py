"""Everything on at once, from a cold start: API keys with limits and a model allow-list, the
response cache (memory, disk and semantic), JSON request logs and tracing to an OTLP
collector, while four clients send a seeded random mix for 20 s: answers, streams cut after
their first chunk, embeddings, a model the key may not use, a model that does not exist, a
malformed body, and a key over its requests per minute.

Afterwards everything that counts requests has counted each one once: the usage table and
the per-key metric match what each key sent, the log has one line per request id the clients
were given, and the collector one server span per request id. Deterministic answers to the same
question are the same answer. No request got a 5xx, and every refusal is OpenAI's error
envelope (a 429 with Retry-After and the x-ratelimit-* headers). The seed is printed with a
failure; STORM_SEED=... makes each client draw the same requests again (their interleaving is
the machine's)."""

from __future__ import annotations

import asyncio
import collections
import json
import os
import random
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from llm_router import defaults
from otlp_receiver import Received
from servers import SMOL, Server, link_models

pytestmark = [pytest.mark.timeout(300), pytest.mark.real]

EMB = defaults.MINILM_ID
MASTER = "sk-storm-master-0123456789"
QUESTIONS = ["Name one color.", "What is 2 + 2?", "Say hello."]
SECONDS = 20
CLIENTS = 4
OPS = ("chat", "chat0", "stream_cut", "embed", "unknown_model", "malformed")
# What each key may be answered, per operation: `smol` may use SmolLM2 alone (its allow-list
# hides the embedding model: 404), `tight` has 6 requests a minute (then 429s)
SERVED = {"chat": 200, "chat0": 200, "stream_cut": 200, "embed": 200}
REFUSED = {"unknown_model": 404, "malformed": 400}


def _allowed(key: str, op: str) -> set[int]:
    status = {**SERVED, **REFUSED}[op]
    if key == "smol" and op == "embed":
        status = 404
    return {status, 429} if key == "tight" else {status}


def _make_key(config: Path, name: str, *flags: str) -> str:
    made = subprocess.run(
        [
            sys.executable,
            "-m",
            "llm_router",
            "keys",
            "create",
            name,
            *flags,
            "--config",
            str(config),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    return made.stdout.strip().splitlines()[-1]


class _Storm:
    """What the clients sent and were answered."""

    def __init__(self, url: str, keys: dict[str, str], seed: int) -> None:
        self.url = url
        self.keys = keys
        self.seed = seed
        self.sent: collections.Counter[str] = collections.Counter()
        self.ids: collections.Counter[str] = collections.Counter()
        self.answers: dict[str, set[str]] = collections.defaultdict(set)
        self.problems: list[str] = []

    async def run(self) -> None:
        clients = {
            name: openai.AsyncOpenAI(
                base_url=self.url + "/v1", api_key=key, max_retries=0, timeout=120
            )
            for name, key in self.keys.items()
        }
        async with httpx.AsyncClient(base_url=self.url, timeout=120) as raw:
            end = time.monotonic() + SECONDS
            await asyncio.gather(
                *(
                    self._client(clients, raw, end, random.Random(self.seed + i))
                    for i in range(CLIENTS)
                )
            )
        for c in clients.values():
            await c.close()

    async def _client(
        self,
        clients: dict[str, openai.AsyncOpenAI],
        raw: httpx.AsyncClient,
        end: float,
        rng: random.Random,
    ) -> None:
        while time.monotonic() < end:
            key, op, question = (
                rng.choice(sorted(self.keys)),
                rng.choice(OPS),
                rng.choice(QUESTIONS),
            )
            self.sent[key] += 1
            try:
                status, headers = await self._ask(clients[key], raw, key, op, question)
            except openai.APIStatusError as exc:
                status, headers = exc.status_code, exc.response.headers
                self._check_refusal(key, op, exc.response)
            self.ids[headers.get("x-request-id", "")] += 1
            if status not in _allowed(key, op):
                self.problems.append(f"{key} {op}: {status}")

    async def _ask(
        self,
        client: openai.AsyncOpenAI,
        raw: httpx.AsyncClient,
        key: str,
        op: str,
        question: str,
    ) -> tuple[int, Mapping[str, str]]:
        messages: Any = [{"role": "user", "content": question}]
        if op in ("chat", "chat0", "unknown_model"):
            answer = await client.chat.completions.with_raw_response.create(
                model="no-such-model" if op == "unknown_model" else SMOL,
                messages=messages,
                max_tokens=8,
                temperature=0 if op == "chat0" else 0.8,
            )
            text = answer.parse().choices[0].message.content
            if op == "chat0":
                self.answers[question].add(text or "")
            return answer.status_code, answer.headers
        if op == "stream_cut":
            async with client.chat.completions.with_streaming_response.create(
                model=SMOL, messages=messages, max_tokens=64, stream=True
            ) as stream:
                async for _ in stream.iter_lines():
                    break  # hang up after the first line
                return stream.status_code, stream.headers
        if op == "embed":
            vectors = await client.embeddings.with_raw_response.create(model=EMB, input=["a", "b"])
            assert len(vectors.parse().data) == 2
            return vectors.status_code, vectors.headers
        done = await raw.post(  # malformed: a body cut short
            "/v1/chat/completions",
            content=b'{"model": "' + SMOL.encode(),
            headers={
                "authorization": f"Bearer {self.keys[key]}",
                "content-type": "application/json",
            },
        )
        if done.status_code != 200:
            self._check_refusal(key, op, done)
        return done.status_code, done.headers

    def _check_refusal(self, key: str, op: str, response: Any) -> None:
        error = response.json().get("error", {})
        if not (isinstance(error.get("message"), str) and error.get("type")):
            self.problems.append(f"{key} {op}: no OpenAI envelope: {response.text[:200]}")
        if response.status_code == 429 and not (
            response.headers.get("retry-after")
            and response.headers.get("x-ratelimit-remaining-requests") is not None
        ):
            self.problems.append(f"{key} {op}: 429 without Retry-After and x-ratelimit-*")


def _per_key_usage(url: str) -> dict[str, int]:
    master = {"authorization": f"Bearer {MASTER}"}
    usage = httpx.get(url + "/admin/usage", params={"group_by": "key"}, headers=master, timeout=30)
    assert usage.status_code == 200, usage.text
    return {row["key"]: row["requests"] for row in usage.json()["data"]}


def _per_key_metric(url: str) -> dict[str, int]:
    master = {"authorization": f"Bearer {MASTER}"}
    text = httpx.get(url + "/metrics", headers=master, timeout=30).text
    counted: collections.Counter[str] = collections.Counter()
    for line in text.splitlines():
        if line.startswith("llm_router_key_requests_total{"):
            key = line.split('key="', 1)[1].split('"', 1)[0]
            counted[key] += int(float(line.rsplit(" ", 1)[1]))
    return dict(counted)


def test_everything_on_counts_every_request_once(
    tmp_path: Path,
    smollm2_gguf: Path,
    otlp: tuple[str, Received],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    seed = int(os.environ.get("STORM_SEED") or random.randrange(1 << 32))
    print(f"STORM_SEED={seed}")
    models = link_models(tmp_path / "models", smollm2_gguf)
    assert defaults.place_minilm(models) is not None
    endpoint, received = otlp
    monkeypatch.setenv("LLM_ROUTER_MASTER_KEY", MASTER)
    srv = Server(
        tmp_path,
        {
            "models_dir": str(models),
            "watch_interval": 0,
            "auth": "on",
            "data_dir": str(tmp_path / "data"),
            "log_format": "json",
            "log_requests": True,
            "otel_endpoint": endpoint,
            "cache": {
                "enabled": True,
                "disk_path": str(tmp_path / "cache.db"),
                "semantic": {"model": EMB},
            },
        },
    )
    keys = {
        "wide": _make_key(srv.config_path, "wide", "--rpm", "100000", "--tpm", "10000000"),
        "smol": _make_key(srv.config_path, "smol", "--models", SMOL),
        "tight": _make_key(srv.config_path, "tight", "--rpm", "6"),
    }
    srv.start()
    try:
        storm = _Storm(srv.url, keys, seed)
        asyncio.run(storm.run())
        sent = dict(storm.sent)
        # a stream the client cut may still be ending on the server: its row comes then
        deadline = time.monotonic() + 15
        while (_per_key_usage(srv.url) != sent or _per_key_metric(srv.url) != sent) and (
            time.monotonic() < deadline
        ):
            time.sleep(0.2)
        usage, metric = _per_key_usage(srv.url), _per_key_metric(srv.url)
    finally:
        srv.stop()  # the exporter process sends what is left as the server stops
    assert not storm.problems, storm.problems[:10]
    assert usage == sent, "the usage table counts each request of each key once"
    assert metric == sent, "llm_router_key_requests counts each request of each key once"
    assert "" not in storm.ids, "every answer carries its x-request-id"
    assert max(storm.ids.values()) == 1, "request ids are unique"
    lines = [json.loads(x) for x in srv.log_path.read_text().splitlines() if x.startswith("{")]
    logged = collections.Counter(
        x["request_id"] for x in lines if x.get("path", "").startswith("/v1/")
    )
    assert logged == storm.ids, "one log line per request, with the id its client was given"
    traced: collections.Counter[str] = collections.Counter()
    for span, _ in received.spans():
        if span.kind == span.SPAN_KIND_SERVER:
            attributes = {a.key: a.value.string_value for a in span.attributes}
            if attributes.get("url.path", "").startswith("/v1/"):
                traced[attributes.get("llm_router.request_id", "")] += 1
    assert traced == storm.ids, "one server span per request, with the id its client was given"
    for question, answers in storm.answers.items():
        assert len(answers) == 1, f"{question!r} at temperature 0 was answered {answers}"
    assert sum(storm.sent.values()) > 40, storm.sent  # the storm was one
