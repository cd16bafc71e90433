"""Model swaps on real GGUF files through the real server, from a cold start: the storm that
deadlocked the first scheduler (six clients looping over three models with `models_max` 2),
the same under a memory budget, and the memory-budget cases of llama.cpp PR #25326 scaled
down. No request may fail other than with a documented 429/503 carrying Retry-After; none may
hang; never more models resident than allowed; no worker outlives the server."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

import httpx
import openai
import pytest

from servers import GEMMA, SMOL, Server, alive, link_models, new_server

pytestmark = [pytest.mark.timeout(300), pytest.mark.real]
MiB = 2**20
RESIDENT = ("loading", "loaded", "unloading")


def _models(tmp_path: Path, smollm2_gguf: Path, gemma_gguf: Path) -> Path:
    folder = link_models(tmp_path / "models", smollm2_gguf, gemma_gguf)
    os.link(folder / smollm2_gguf.name, folder / "smol-copy.gguf")
    return folder


def _copies(tmp_path: Path, smollm2_gguf: Path) -> Path:
    """alpha, beta and gamma: three copies of SmolLM2 (hard links), as the issue's user had."""
    folder = tmp_path / "copies"
    folder.mkdir()
    for name in ("alpha", "beta", "gamma"):
        os.link(smollm2_gguf, folder / f"{name}.gguf")
    return folder


def _ask(url: str, model: str) -> httpx.Response:
    body = {"model": model, "prompt": "The capital of France is", "max_tokens": 4, "temperature": 0}
    return httpx.post(url + "/v1/completions", json=body, timeout=120)


def _loaded(url: str) -> set[str]:
    data = httpx.get(url + "/models", timeout=10).json()["data"]
    return {m["id"] for m in data if m["status"]["value"] == "loaded"}


class _Background:
    """Runs `_run` on a thread for the duration of a `with` block; `_stop` says it ended."""

    _stop: threading.Event
    _join_seconds = 10.0

    def __enter__(self) -> Self:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(self._join_seconds)

    def _run(self) -> None:
        raise NotImplementedError


@dataclass
class Watch(_Background):
    """Polls GET /models while a test runs: the most models resident at once, and the most
    memory measured against the budget."""

    url: str
    max_resident: int = 0
    over_budget: list[tuple[int, int]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def _run(self) -> None:
        with httpx.Client(timeout=10) as http:
            while not self._stop.wait(0.1):
                body = http.get(self.url + "/models").json()
                resident = [m for m in body["data"] if m["status"]["value"] in RESIDENT]
                self.max_resident = max(self.max_resident, len(resident))
                if body["memory_over_budget"]:
                    self.over_budget.append(
                        (body["memory_used_bytes"], body["memory_budget_bytes"])
                    )


@dataclass
class Storm:
    statuses: list[int] = field(default_factory=list)
    refused_without_retry_after: list[int] = field(default_factory=list)
    refused_without_envelope: list[int] = field(default_factory=list)
    codes: set[str] = field(default_factory=set)
    slowest: float = 0.0


async def _storm(
    url: str, models: list[str], clients: int, seconds: float, answered: int = 30
) -> Storm:
    """`clients` asyncio clients, each looping over `models` in turn (starting at a different
    one) for `seconds`, and on until `answered` requests were answered, for at most
    `STORM_CAP` seconds more: an 8-token greedy completion, the next as soon as the last one
    ended. (Bounded by a count, not by time alone: on a loaded machine 25 s held 28 answers,
    and the test read slowness as a failure.)"""
    result = Storm()
    start = time.monotonic()
    stop_at, cap = start + seconds, start + seconds + STORM_CAP

    def going() -> bool:
        now = time.monotonic()
        return now < stop_at or (now < cap and result.statuses.count(200) < answered)

    async def client(i: int, api: openai.AsyncOpenAI) -> None:
        n = i
        while going():
            started = time.monotonic()
            try:
                await api.completions.create(
                    model=models[n % len(models)], prompt="Hello", max_tokens=8, temperature=0
                )
                result.statuses.append(200)
            except openai.APIStatusError as exc:
                result.statuses.append(exc.status_code)
                if exc.response.headers.get("retry-after") is None:
                    result.refused_without_retry_after.append(exc.status_code)
                if not isinstance(exc.code, str):  # OpenAI's error envelope carries a code
                    result.refused_without_envelope.append(exc.status_code)
                else:
                    result.codes.add(exc.code)
                await asyncio.sleep(0.2)
            result.slowest = max(result.slowest, time.monotonic() - started)
            n += 1

    async with openai.AsyncOpenAI(
        base_url=url + "/v1", api_key="unused", max_retries=0, timeout=90
    ) as api:
        await asyncio.gather(*(client(i, api) for i in range(clients)))
    return result


STORM_CAP = 120.0  # seconds a storm may go on past its time for its answers: a hang's bound


def _check_storm(
    srv: Server, storm: Storm, watch: Watch, models_max: int, answered: int = 30
) -> None:
    assert storm.statuses.count(200) >= answered, storm.statuses
    assert set(storm.statuses) <= {200, 429, 503}, storm.statuses
    assert storm.refused_without_retry_after == []
    assert storm.refused_without_envelope == []
    assert storm.slowest < 60, f"a request took {storm.slowest:.1f} s"
    assert watch.max_resident <= models_max
    served = {m for m, e in srv.models().items() if e.get("load_seconds")}
    assert served == {"alpha", "beta", "gamma"}, "every model was loaded at some point"


def test_storm_from_a_cold_start(tmp_path: Path, smollm2_gguf: Path) -> None:
    """The reported deadlock: six clients loop over three models from a cold start with
    `models_max` 2, for 25 s."""
    srv = new_server(tmp_path, models_dir=str(_copies(tmp_path, smollm2_gguf)), models_max=2)
    try:
        with Watch(srv.url) as watch:
            storm = asyncio.run(_storm(srv.url, ["alpha", "beta", "gamma"], 6, 25))
        _check_storm(srv, storm, watch, 2)
    finally:
        children = srv.stop()
    _assert_gone(children)


def test_storm_with_kills_unloads_and_loads(tmp_path: Path, smollm2_gguf: Path) -> None:
    """The cold-start storm with the outside world in it, seeded (the seed is printed with a
    failure; STORM_SEED=... replays it): at random times a worker is killed (as the OOM
    killer would), a model unloaded or loaded over HTTP, under a random keep-alive, unload
    grace and spare-worker setting. Every request ends with an answer or a refusal in OpenAI's
    envelope with Retry-After (a killed worker's requests too: 503), never more models are
    resident than allowed, every model answers afterwards, and no worker process runs that no
    model holds."""
    seed = int(os.environ.get("STORM_SEED") or random.randrange(1 << 32))
    print(f"STORM_SEED={seed}")
    rng = random.Random(seed)
    models = ["alpha", "beta", "gamma"]
    spare = rng.random() < 0.7
    srv = new_server(
        tmp_path,
        models_dir=str(_copies(tmp_path, smollm2_gguf)),
        models_max=2,
        keep_alive=rng.choice(["5m", "2s"]),
        unload_grace=rng.choice([1.0, 5.0]),
        spare_workers=spare,
    )
    plan = sorted(
        (rng.uniform(1, 22), rng.choice(["kill", "unload", "load"]), rng.choice(models))
        for _ in range(rng.randint(3, 8))
    )
    try:
        with Watch(srv.url) as watch, _Chaos(srv, plan) as chaos:
            storm = asyncio.run(_storm(srv.url, models, 6, 25, answered=10))
        print("chaos:", chaos.done)
        _check_storm(srv, storm, watch, 2, answered=10)
        for model in models:
            r = _ask(srv.url, model)
            assert r.status_code == 200, r.text
        deadline = time.monotonic() + 30  # unloads still in their grace end
        while time.monotonic() < deadline:
            held = {m for m, e in srv.models().items() if e["status"]["value"] in RESIDENT}
            workers = srv.descendants()
            if len(workers) <= len(held) + spare:
                break
            time.sleep(0.5)
        assert len(workers) <= len(held) + spare, (workers, held)
    finally:
        children = srv.stop()
    _assert_gone(children)


class _Chaos(_Background):
    """Carries out `plan` ((seconds from the start, action, model), in order) on a thread
    while the storm runs: SIGKILL to the model's worker (if it has one; only this server's
    children), or POST /models/unload or /models/load."""

    _join_seconds = 30.0  # an unload answers once its grace is over

    def __init__(self, srv: Server, plan: list[tuple[float, str, str]]) -> None:
        self.srv, self.plan = srv, plan
        self.done: list[tuple[float, str, str, object]] = []
        self._stop = threading.Event()

    def _run(self) -> None:
        start = time.monotonic()
        for at, action, model in self.plan:
            if self._stop.wait(max(0.0, start + at - time.monotonic())):
                return
            outcome: object
            if action == "kill":
                outcome = pid = self.srv.worker_of(f"{model}.gguf")
                if pid is not None:
                    with contextlib.suppress(ProcessLookupError):  # it exited meanwhile
                        os.kill(pid, signal.SIGKILL)
            else:
                r = httpx.post(f"{self.srv.url}/models/{action}", json={"model": model}, timeout=30)
                outcome = r.status_code
            self.done.append((round(at, 1), action, model, outcome))


def test_storm_under_a_memory_budget(tmp_path: Path, smollm2_gguf: Path) -> None:
    """The same storm with a budget that fits one and a half models (and no count limit): the
    budget decides, and holds once loads are measured."""
    models = _copies(tmp_path, smollm2_gguf)
    srv = new_server(tmp_path, models_dir=str(models), spare_workers=False)
    try:  # one load, measured, tells the size of a model here
        assert _ask(srv.url, "alpha").status_code == 200
        one = srv.models()["alpha"]["memory_bytes"]
    finally:
        srv.stop()
    budget = int(one * 1.5)
    srv = new_server(
        tmp_path, models_dir=str(models), models_max=0, memory_budget=budget, spare_workers=False
    )
    try:
        with Watch(srv.url) as watch:
            storm = asyncio.run(_storm(srv.url, ["alpha", "beta", "gamma"], 6, 25))
        _check_storm(srv, storm, watch, 1)
        assert watch.over_budget == []
    finally:
        children = srv.stop()
    _assert_gone(children)


def test_alternating_under_a_budget_for_one(tmp_path: Path, smollm2_gguf: Path) -> None:
    """The issue's second finding: with a budget that fits one model, a request for alpha then
    one for beta left both loaded (the first load's plan was a guess, and nothing evicted after
    the measurement). Every request is served, and after each at most one is resident."""
    models = _copies(tmp_path, smollm2_gguf)
    srv = new_server(tmp_path, models_dir=str(models), spare_workers=False)
    try:
        assert _ask(srv.url, "alpha").status_code == 200
        one = srv.models()["alpha"]["memory_bytes"]
    finally:
        srv.stop()
    srv = new_server(tmp_path, models_dir=str(models), models_max=3, memory_budget=int(one * 1.6))
    try:
        for model in ["alpha", "beta"] * 3:
            r = _ask(srv.url, model)
            assert r.status_code == 200, r.text
            resident = {m for m, e in srv.models().items() if e["status"]["value"] in RESIDENT}
            assert resident == {model}
    finally:
        srv.stop()


def test_memory_budget_big_or_two_small(
    tmp_path: Path, smollm2_gguf: Path, gemma_gguf: Path
) -> None:
    """The budget holds the big model alone or the two small ones, never big + small."""
    models = _models(tmp_path, smollm2_gguf, gemma_gguf)
    srv = new_server(
        tmp_path,
        models_dir=str(models),
        models_max=0,
        spare_workers=False,
        model_defaults={"parallel": 1, "context_size": 512},
    )
    try:
        sizes = {}
        for model in (GEMMA, SMOL):  # measure each alone (no budget pressure yet)
            assert _ask(srv.url, model).status_code == 200
            sizes[model] = srv.models()[model]["memory_bytes"]
            httpx.post(srv.url + "/models/unload", json={"model": model})
            srv.wait_status(model, "unloaded")
        big, small = sizes[GEMMA], sizes[SMOL]
        assert big > small * 1.2, sizes
        budget = max(big, 2 * small) + 16 * MiB
        assert budget < big + small, "the files are too alike for this test"
    finally:
        srv.stop()
    srv = new_server(
        tmp_path,
        models_dir=str(models),
        models_max=0,
        spare_workers=False,
        memory_budget=budget,
        model_defaults={"parallel": 1, "context_size": 512},
    )
    try:
        for model in (GEMMA, SMOL, "smol-copy", GEMMA, SMOL, "smol-copy", GEMMA):
            r = _ask(srv.url, model)
            assert r.status_code == 200, r.text
            loaded = _loaded(srv.url)
            assert model in loaded
            assert loaded in ({GEMMA}, {SMOL}, {"smol-copy"}, {SMOL, "smol-copy"}), loaded
            used = sum(srv.models()[m]["memory_bytes"] or 0 for m in loaded)
            assert used <= budget
    finally:
        srv.stop()


def _assert_gone(children: list[int]) -> None:
    time.sleep(0.5)
    assert [pid for pid in children if alive(pid)] == []
