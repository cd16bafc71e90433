"""docs/grafana-dashboard.json only uses metrics the server exports, with labels it sets."""

from __future__ import annotations

import json
import re
from pathlib import Path

from inproc import app_client

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
    used = {m for e in exprs for m in re.findall(r"\bllm_router_\w+", e)}
    assert len(used) >= 20
    missing = sorted(used - exported.keys())
    assert not missing, f"the dashboard uses metrics /metrics does not export: {missing}"
    # label names a panel selects or groups by exist on the series it reads
    for expr in exprs:
        for name, selector in re.findall(r"\b(llm_router_\w+)\{([^}]*)\}", expr):
            for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", selector):
                assert label in exported[name] or not exported[name], (name, label)
