"""docs/grafana-dashboard.json only uses metrics the server exports, with labels it sets."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from inproc import app_client, fake_models
from llm_router.config import Cost

DASHBOARD = Path(__file__).resolve().parents[1] / "docs" / "grafana-dashboard.json"
_SUFFIXES = {"histogram": ("_bucket", "_sum", "_count"), "counter": ("",), "gauge": ("",)}


def _exported(text: str) -> dict[str, set[str]]:
    """Every series name /metrics can have, with the labels seen on it (histograms: `le`)."""
    names: dict[str, set[str]] = {}
    for kind_line in re.finditer(r"^# TYPE (\w+) (\w+)$", text, flags=re.MULTILINE):
        name, kind = kind_line.groups()
        for suffix in _SUFFIXES.get(kind, ("",)):
            names.setdefault(name + suffix, set())
    for sample in re.finditer(r"^(\w+)\{([^}]*)\}", text, flags=re.MULTILINE):
        labels = set(re.findall(r'(\w+)="', sample.group(2)))
        names.setdefault(sample.group(1), set()).update(labels)
    return names


async def test_every_metric_of_the_dashboard_is_exported(tmp_path: Path) -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs.append(dashboard["templating"]["list"][1]["query"]["query"])
    async with app_client(tmp_path) as client:
        body = {"model": "chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
        for _ in range(2):
            assert await client.post("/v1/chat/completions", json={**body, "temperature": 0})
        await client.post("/models/unload", json={"model": "chat"})
        text = (await client.get("/metrics")).text
    exported = _exported(text)
    used = {m for e in exprs for m in re.findall(r"\b(?:llm_router|process)_\w+", e)}
    assert len(used) >= 20
    missing = sorted(used - exported.keys())
    assert not missing, f"the dashboard uses metrics /metrics does not export: {missing}"
    # label names a panel selects or groups by exist on the series it reads
    for expr in exprs:
        for name, selector in re.findall(r"\b(llm_router_\w+)\{([^}]*)\}", expr):
            for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", selector):
                assert label in exported[name] or not exported[name], (name, label)


async def test_its_counters_read_zero_before_their_first_event(tmp_path: Path) -> None:
    """Spend and cache evictions appeared only after the first priced request or eviction,
    so their panels said "no data" where 0 was true (found from outside): their known
    series are there at 0 from the start."""
    [priced, free] = fake_models(tmp_path, priced={}, free={})
    models = [priced.model_copy(update={"cost": Cost(input=1.0, output=2.0)}), free]
    cache = {"disk_path": str(tmp_path / "cache.db")}
    async with app_client(tmp_path, models=models, cache=cache) as client:
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families((await client.get("/metrics")).text)
            for s in family.samples
        }
    assert samples[("llm_router_cost_total", (("model", "priced"),))] == 0
    assert ("llm_router_cost_total", (("model", "free"),)) not in samples  # no price: no spend
    evictions = {labels for name, labels in samples if name == "llm_router_cache_evictions_total"}
    assert evictions == {
        (("reason", reason), ("tier", tier))
        for tier, reasons in (
            ("memory", ("size", "too_large")),
            ("disk", ("size", "expired", "too_large")),
        )
        for reason in reasons
    }
