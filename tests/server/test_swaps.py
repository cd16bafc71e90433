"""Model swaps on real GGUF files through the real server: the memory-budget case of
llama.cpp PR #25326 scaled down, and a swap storm. No request may fail other than with a
documented 429/503 carrying Retry-After; none may hang; no worker outlives the server."""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest

from servers import GEMMA, SMOL, link_models, new_server

pytestmark = pytest.mark.timeout(300)
MiB = 2**20


def _models(tmp_path: Path, smollm2_gguf: Path, gemma_gguf: Path) -> Path:
    folder = link_models(tmp_path / "models", smollm2_gguf, gemma_gguf)
    os.link(folder / smollm2_gguf.name, folder / "smol-copy.gguf")
    return folder


def _ask(url: str, model: str) -> httpx.Response:
    body = {"model": model, "prompt": "The capital of France is", "max_tokens": 4,
            "temperature": 0}  # fmt: skip
    return httpx.post(url + "/v1/completions", json=body, timeout=120)


def _loaded(url: str) -> set[str]:
    data = httpx.get(url + "/models", timeout=10).json()["data"]
    return {m["id"] for m in data if m["status"]["value"] == "loaded"}


def test_memory_budget_big_or_two_small(
    tmp_path: Path, smollm2_gguf: Path, gemma_gguf: Path
) -> None:
    """The budget holds the big model alone or the two small ones, never big + small."""
    models = _models(tmp_path, smollm2_gguf, gemma_gguf)
    srv = new_server(tmp_path, models_dir=str(models), models_max=0, spare_workers=False,
                     model_defaults={"parallel": 1, "context_size": 512})  # fmt: skip
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
    srv = new_server(tmp_path, models_dir=str(models), models_max=0, spare_workers=False,
                     memory_budget=budget, model_defaults={"parallel": 1, "context_size": 512})  # fmt: skip
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


def test_swap_storm(tmp_path: Path, smollm2_gguf: Path, gemma_gguf: Path) -> None:
    """Six clients hit three models with models_max=2 and a small queue for 20 s."""
    models = _models(tmp_path, smollm2_gguf, gemma_gguf)
    srv = new_server(tmp_path, models_dir=str(models), models_max=2, queue_per_model=3,
                     queue_total=5, queue_timeout=20,
                     model_defaults={"parallel": 2, "context_size": 512})  # fmt: skip
    outcomes: list[tuple[int, str | None]] = []
    names = [SMOL, GEMMA, "smol-copy"]
    stop_at = time.monotonic() + 20

    def client(i: int) -> None:
        n = i
        with httpx.Client(timeout=60) as http:
            while time.monotonic() < stop_at:
                body = {"model": names[n % 3], "prompt": "Hi", "max_tokens": 3}
                r = http.post(srv.url + "/v1/completions", json=body)
                outcomes.append((r.status_code, r.headers.get("retry-after")))
                n += 1

    try:
        with ThreadPoolExecutor(6) as pool:
            list(pool.map(client, range(6)))
        statuses = {s for s, _ in outcomes}
        assert 200 in statuses
        assert statuses <= {200, 429, 503}, outcomes
        assert all(ra is not None for s, ra in outcomes if s in (429, 503))
        assert len(_loaded(srv.url)) <= 2
    finally:
        children = srv.stop()
    time.sleep(0.5)
    assert [pid for pid in children if _alive(pid)] == []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True
