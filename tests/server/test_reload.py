"""Reloading the configuration while serving (`POST /admin/reload`; server/reload.py), in
process on the fake engine: what a reload applies, what it unloads, what waits for a restart,
and that an invalid file changes nothing. SIGHUP and `--workers` are tested on real servers
(test_reload_e2e.py)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from fastapi import FastAPI

from inproc import InProcessPool, fake_models
from llm_router.lifecycle.manager import ModelManager
from llm_router.reload import LIVE, ConfigSource, plan
from llm_router.server.app import create_app
from openai_schema import validate


class Reloadable:
    """An app served from a YAML file the test rewrites (`write`), and its client."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self.path = folder / "config.yaml"
        self.models = {m.id: m for m in fake_models(folder, chat={}, other={}, third={})}
        self.client: httpx.AsyncClient
        self.app: FastAPI

    def write(
        self,
        models: dict[str, dict[str, Any]],
        *,
        more: tuple[dict[str, Any], ...] = (),
        **settings: Any,
    ) -> None:
        """The config: the fake models named in `models` (with extra fields each), the raw
        `models:` entries `more`, and `settings`, on top of what every test here needs."""
        entries = [
            {**self.models[name].model_dump(mode="json", exclude_unset=True), **extra}
            for name, extra in models.items()
        ] + list(more)
        base = {
            "models_dir": str(self.folder / "empty"),
            "watch_interval": 0,
            "provision_default_models": False,
            "spare_workers": False,
            "cache": {"enabled": False},
        }
        self.path.write_text(yaml.safe_dump({**base, "models": entries, **settings}))

    async def reload(self, status: int = 200) -> dict[str, Any]:
        r = await self.client.post("/admin/reload")
        assert r.status_code == status, r.text
        body: dict[str, Any] = r.json()
        return body

    async def chat(self, model: str, **extra: Any) -> httpx.Response:
        body = {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 3}
        body.update(extra)
        return await self.client.post("/v1/chat/completions", json=body)

    async def names(self) -> set[str]:
        r = await self.client.get("/v1/models")
        return {m["id"] for m in r.json()["data"]}

    async def status(self, model: str) -> str:
        r = await self.client.get("/models")
        by_id = {m["id"]: m for m in r.json()["data"]}
        value: str = by_id[model]["status"]["value"]
        return value

    async def wait_status(self, model: str, value: str) -> None:
        for _ in range(200):
            if await self.status(model) == value:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"{model} never became {value}: {await self.status(model)}")


@asynccontextmanager
async def served(r: Reloadable) -> AsyncIterator[Reloadable]:
    source = ConfigSource(r.path)
    settings = source.load()
    r.app = create_app(settings, ModelManager(settings, pool=InProcessPool()), source=source)
    async with r.app.router.lifespan_context(r.app):
        transport = httpx.ASGITransport(app=r.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            r.client = client
            yield r


@pytest.fixture
def conf(tmp_path: Path) -> Reloadable:
    (tmp_path / "empty").mkdir()
    return Reloadable(tmp_path)


async def test_a_reload_adds_models_aliases_and_routes_and_drops_what_went(
    conf: Reloadable,
) -> None:
    conf.write({"chat": {}, "third": {}})
    async with served(conf) as r:
        assert await r.names() == {"chat", "third"}
        assert (await r.chat("third")).status_code == 200
        conf.write(
            {"chat": {"aliases": ["c"]}, "other": {}},
            routes=[{"name": "auto", "targets": ["other", "chat"], "strategy": "quality-first"}],
        )
        body = await r.reload()
        assert body["applied"] == ["models", "routes"]
        assert body["unloaded"] == ["third"]  # gone from the config, it was loaded
        assert body["restart_required"] == []
        assert body["warnings"] == []
        assert await r.names() == {"chat", "other", "auto"}  # ids and routes (not aliases)
        for name in ("c", "other", "auto"):
            response = await r.chat(name)
            assert response.status_code == 200, response.text
            validate("CreateChatCompletionResponse", response.json())
        assert (await r.chat("auto")).headers["x-llm-router-route"].startswith("route=auto")
        gone = await r.chat("third")
        assert gone.status_code == 404 and gone.json()["error"]["code"] == "model_not_found"


async def test_a_reload_answer_names_a_route_entry_that_names_nothing(conf: Reloadable) -> None:
    """A typo in a route's fallbacks was a log line only: the reload answered 200 `applied`
    and the operator learnt of it at the outage (found from outside)."""
    conf.write({"chat": {}})
    async with served(conf) as r:
        conf.write(
            {"chat": {}}, routes=[{"name": "auto", "targets": ["chat"], "fallbacks": ["caht"]}]
        )
        body = await r.reload()
        assert body["applied"] == ["routes"]
        assert body["warnings"] == [
            "route auto: fallbacks entry 'caht' names no model or target (a typo?); it is "
            "skipped until one exists"
        ]
        assert (await r.chat("auto")).status_code == 200


async def test_a_reload_answer_names_an_entry_that_names_no_model(conf: Reloadable) -> None:
    """A `models:` entry whose id has a typo was dropped without a word (found from outside:
    its alias a 404, its pin nothing); the reload answered `warnings: []`."""
    conf.write({"chat": {}})
    async with served(conf) as r:
        conf.write({"chat": {}}, more=({"id": "chta", "aliases": ["c"]},))
        body = await r.reload()
        assert body["warnings"] == [
            "models: entry 'chta' names no model in the models directory (a typo?); its "
            "settings apply once a model of that id appears",
        ]
        assert (await r.chat("chat")).status_code == 200


async def test_a_keep_alive_longer_than_keep_alive_max_is_said(conf: Reloadable) -> None:
    """keep_alive_max caps a request's own keep_alive only: under `keep_alive: 2m` and
    `keep_alive_max: 30s`, a request asking for 10m got 30 s, one asking nothing 2 min, and
    nothing said so (found from outside)."""
    conf.write({"chat": {}})
    async with served(conf) as r:
        conf.write(
            {"chat": {}, "other": {"keep_alive": -1}, "third": {"keep_alive": "10s"}},
            keep_alive="2m",
            keep_alive_max="30s",
        )
        tail = (
            "is longer than keep_alive_max (30s), which caps a request's own keep_alive only: "
            "a request asking for more than keep_alive_max gets less than one asking nothing; "
            "raise keep_alive_max or lower keep_alive"
        )
        assert (await r.reload())["warnings"] == [
            f"keep_alive (2m) {tail}",
            f"model other: keep_alive (-1) {tail}",
        ]
        conf.write({"chat": {}}, keep_alive="2m", keep_alive_max=-1)
        assert (await r.reload())["warnings"] == []


async def test_changed_engine_options_reload_the_model_with_them(conf: Reloadable) -> None:
    conf.write({"chat": {"context_size": 512}, "other": {}})
    async with served(conf) as r:
        assert (await r.chat("chat")).status_code == 200
        assert (await r.chat("other")).status_code == 200
        manager = r.app.state.manager
        assert manager.resolve("chat").worker.info["context_size"] == 512

        # aliases, prices and quality are not engine options: nothing is unloaded
        conf.write({"chat": {"context_size": 512, "aliases": ["c"], "quality": 0.9}, "other": {}})
        assert (await r.reload())["unloaded"] == []
        assert await r.status("chat") == "loaded" and await r.status("other") == "loaded"

        conf.write({"chat": {"context_size": 1024, "aliases": ["c"]}, "other": {}})
        body = await r.reload()
        assert body["applied"] == ["models"] and body["unloaded"] == ["chat"]
        await r.wait_status("chat", "unloaded")
        assert await r.status("other") == "loaded"
        assert (await r.chat("c")).status_code == 200  # loads it again, with the new options
        assert manager.resolve("chat").worker.info["context_size"] == 1024

        # model_defaults reach every model that does not set the option itself
        conf.write(
            {"chat": {"context_size": 1024}, "other": {}}, model_defaults={"context_size": 256}
        )
        body = await r.reload()
        assert body["applied"] == ["model_defaults", "models"] and body["unloaded"] == ["other"]


async def test_an_invalid_configuration_changes_nothing(conf: Reloadable) -> None:
    conf.write({"chat": {}})
    async with served(conf) as r:
        conf.write({"chat": {}, "other": {}}, models_max=-1)
        r400 = await r.client.post("/admin/reload")
        assert r400.status_code == 400
        validate("ErrorResponse", r400.json())
        error = r400.json()["error"]
        assert error["code"] == "config_error" and "models_max" in error["message"]

        conf.path.write_text("models: [unclosed")
        assert "not valid YAML" in (await r.reload(400))["error"]["message"]

        conf.write({"chat": {}}, routes=[{"name": "x", "targets": ["chat"], "strategy": "no:pe"}])
        assert "strategy 'no:pe'" in (await r.reload(400))["error"]["message"]
        assert await r.names() == {"chat"}  # the routes were not half applied either
        assert (await r.chat("chat")).status_code == 200
        # what Prometheus says of its own config: a rejected reload shows until one applies
        assert await metric(r, "llm_router_config_reloads_total", 'result="rejected"') == 3
        assert await metric(r, "llm_router_config_last_reload_successful") == 0
        conf.write({"chat": {}})
        await r.reload()
        assert await metric(r, "llm_router_config_reloads_total", 'result="applied"') == 1
        assert await metric(r, "llm_router_config_last_reload_successful") == 1


async def metric(r: Reloadable, name: str, labels: str = "") -> float:
    text = (await r.client.get("/metrics")).text
    sample = f"{name}{{{labels}}} " if labels else f"{name} "
    values = [float(x.split()[-1]) for x in text.splitlines() if x.startswith(sample)]
    assert len(values) == 1, (sample, text[:2000])
    return values[0]


async def test_fields_read_at_start_are_reported_and_not_applied(conf: Reloadable) -> None:
    conf.write({"chat": {}})
    async with served(conf) as r:
        port = r.app.state.settings.port
        conf.write({"chat": {}}, port=port + 1, log_format="json", max_n=2, queue_total=7)
        body = await r.reload()
        assert body["applied"] == ["max_n", "queue_total"]
        assert body["restart_required"] == ["log_format", "port"]
        settings = r.app.state.settings
        assert (settings.port, settings.log_format) == (port, "text")
        assert (settings.max_n, settings.queue_total) == (2, 7)
        assert r.app.state.manager.settings is settings
        # still pending at the next reload, even if nothing else changed
        again = await r.reload()
        assert again["applied"] == [] and again["restart_required"] == ["log_format", "port"]
        many = {"model": "chat", "messages": [{"role": "user", "content": "Hi"}], "n": 3}
        assert (await r.client.post("/v1/chat/completions", json=many)).status_code == 400


async def test_a_lower_models_max_evicts_the_least_recently_used_idle_models(
    conf: Reloadable,
) -> None:
    conf.write({"chat": {}, "other": {}, "third": {}}, models_max=3)
    async with served(conf) as r:
        for name in ("other", "chat", "third"):
            assert (await r.chat(name)).status_code == 200
        conf.write({"chat": {}, "other": {}, "third": {}}, models_max=1)
        body = await r.reload()
        assert body["applied"] == ["models_max"] and body["unloaded"] == ["chat", "other"]
        await r.wait_status("other", "unloaded")
        await r.wait_status("chat", "unloaded")
        assert await r.status("third") == "loaded"


async def test_the_answer_lists_the_models_the_reload_unloads_and_only_them(
    conf: Reloadable,
) -> None:
    """`unloaded` listed a removed entry whose model was never loaded, and missed the model a
    new pin evicted to make room (found from outside: `[]` while it was going). drain_after 0:
    a model that has just loaded may give its room at once (else it is evicted later)."""
    conf.write({"chat": {}, "other": {}, "third": {}}, models_max=1, drain_after=0)
    async with served(conf) as r:
        assert (await r.chat("chat")).status_code == 200
        conf.write({"chat": {}, "other": {}}, models_max=1, drain_after=0)
        body = await r.reload()
        assert body["applied"] == ["models"] and body["unloaded"] == []  # third: not loaded
        assert await r.status("chat") == "loaded"
        conf.write({"chat": {}, "other": {"pin": True}}, models_max=1, drain_after=0)
        assert (await r.reload())["unloaded"] == ["chat"]  # evicted for the pinned one
        await r.wait_status("other", "loaded")
        assert await r.status("chat") == "unloaded"


async def test_new_pins_and_preloads_load_and_keep_alive_applies_from_now(
    conf: Reloadable,
) -> None:
    conf.write({"chat": {}, "other": {}, "third": {}})
    async with served(conf) as r:
        assert (await r.chat("third")).status_code == 200
        conf.write({"chat": {"pin": True}, "other": {}, "third": {}}, preload=["other"])
        await r.reload()
        await r.wait_status("chat", "loaded")
        await r.wait_status("other", "loaded")
        conf.write({"chat": {}, "other": {}, "third": {"keep_alive": 0.05}}, preload=["other"])
        await r.reload()
        await r.wait_status("third", "unloaded")  # idle, and its new keep-alive is over
        assert await r.status("other") == "loaded"  # preloaded before: not loaded again


async def test_a_preload_by_alias_loads_on_a_reload_and_again_after_a_change(
    conf: Reloadable,
) -> None:
    """`preload: [gemma]` (an alias) was answered `applied: ["preload"]` and loaded nothing
    (found from outside: by id it loaded); a model preloaded by alias and reloaded for new
    options stayed unloaded too. A preload naming nothing is said in the answer."""
    conf.write({"chat": {"aliases": ["c"]}, "other": {}})
    async with served(conf) as r:
        conf.write({"chat": {"aliases": ["c"]}, "other": {}}, preload=["c"])
        body = await r.reload()
        assert body["applied"] == ["preload"] and body["warnings"] == []
        await r.wait_status("chat", "loaded")
        conf.write({"chat": {"aliases": ["c"], "context_size": 256}, "other": {}}, preload=["c"])
        assert (await r.reload())["unloaded"] == ["chat"]
        state = r.app.state.manager.resolve("chat")
        for _ in range(200):  # preloaded: loads again with the new options, unasked
            if state.worker is not None and state.worker.info["context_size"] == 256:
                break
            await asyncio.sleep(0.02)
        await r.wait_status("chat", "loaded")
        assert state.worker.info["context_size"] == 256
        conf.write(
            {"chat": {"aliases": ["c"], "context_size": 256}, "other": {}}, preload=["ohter"]
        )
        assert (await r.reload())["warnings"] == [
            "preload names 'ohter', which is no model here (a typo?); it is not preloaded"
        ]


async def test_remote_targets_keep_their_breaker_unless_their_address_changes(
    conf: Reloadable,
) -> None:
    remote = {"provider": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"}
    conf.write({"chat": {}})
    text = yaml.safe_load(conf.path.read_text())
    text["models"].append({"id": "far", **remote})
    conf.path.write_text(yaml.safe_dump(text))
    async with served(conf) as r:
        dispatcher = r.app.state.dispatcher
        first = dispatcher.target("far")
        assert "far" in await r.names()

        text["models"][-1]["cost"] = {"input": 1.0, "output": 2.0}
        conf.path.write_text(yaml.safe_dump(text))
        await r.reload()
        assert dispatcher.target("far") is first and first.config.cost.output == 2.0

        text["models"][-1]["base_url"] = "http://127.0.0.1:10/v1"
        conf.path.write_text(yaml.safe_dump(text))
        await r.reload()
        second = dispatcher.target("far")
        assert second is not first and second.upstream.base_url.startswith("http://127.0.0.1:10")

        text["models"].pop()
        conf.path.write_text(yaml.safe_dump(text))
        await r.reload()
        assert await r.names() == {"chat"}
        assert (await r.chat("far")).status_code == 404


async def test_reloads_are_audited_with_who_and_what(
    conf: Reloadable, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLM_ROUTER_MASTER_KEY", "sk-master-for-tests")
    conf.write({"chat": {}}, data_dir=str(conf.folder / "data"))
    async with served(conf) as r:
        master = {"authorization": "Bearer sk-master-for-tests"}
        assert (await r.client.post("/admin/reload")).status_code == 401
        conf.write({"chat": {}, "other": {}}, data_dir=str(conf.folder / "data"), port=1)
        r200 = await r.client.post("/admin/reload", headers=master)
        assert r200.status_code == 200, r200.text
        audit = await r.client.get("/admin/audit", headers=master)
        (event,) = [e for e in audit.json()["data"] if e["action"] == "config.reloaded"]
        assert (event["actor"], event["subject"]) == ("master", str(conf.path))
        assert event["detail"] == {
            "applied": ["models"],
            "unloaded": [],
            "restart_required": ["port"],
        }


async def test_a_server_made_in_code_says_it_has_nothing_to_reload(tmp_path: Path) -> None:
    from llm_router.config import Settings

    settings = Settings(models_dir=tmp_path, provision_default_models=False, watch_interval=0)
    app = create_app(settings, ModelManager(settings, pool=InProcessPool()))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
            r = await client.post("/admin/reload")
    assert r.status_code == 400 and "no configuration to read again" in r.text


def test_a_plan_takes_only_the_live_fields_and_compares_the_rest_to_the_first_reading(
    tmp_path: Path,
) -> None:
    from llm_router.config import Settings

    first = Settings(port=0, watch_interval=2.0, models_dir=tmp_path)
    running = first.model_copy(update={"port": 43210, "watch_interval": 0.0})  # as --workers
    new = Settings(port=0, watch_interval=2.0, models_dir=tmp_path, models_max=2, host="0.0.0.0")
    change = plan(running, first, new)
    assert change.applied == ("models_max",) and change.restart_required == ("host",)
    assert (change.settings.port, change.settings.models_max) == (43210, 2)
    assert change.settings.host == "127.0.0.1"
    assert LIVE <= set(Settings.model_fields)


async def test_a_reloaded_model_configuration_never_serves_a_cached_answer_of_the_old(
    conf: Reloadable,
) -> None:
    cache = {"enabled": True}
    conf.write({"chat": {}}, cache=cache)
    async with served(conf) as r:

        async def cached() -> str:
            response = await r.chat("chat", temperature=0)
            assert response.status_code == 200
            return response.headers["x-llm-router-cache"]

        assert [await cached(), await cached()] == ["miss", "hit"]
        conf.write({"chat": {"system_prompt": "Be brief."}}, cache=cache)
        await r.reload()
        assert [await cached(), await cached()] == ["miss", "hit"]
        conf.write(
            {"chat": {"system_prompt": "Be brief."}},
            cache=cache,
            model_defaults={"context_size": 4096},
        )
        await r.reload()
        assert [await cached(), await cached()] == ["miss", "hit"]


async def test_watch_config_reloads_when_the_file_changes(
    conf: Reloadable, monkeypatch: pytest.MonkeyPatch
) -> None:
    import llm_router.server.reload as reload_module

    monkeypatch.setattr(reload_module, "WATCH_EVERY", 0.02)

    async def until(names: set[str]) -> None:
        for _ in range(250):
            if await r.names() == names:
                return
            await asyncio.sleep(0.02)
        raise AssertionError(f"{await r.names()} never became {names}")

    conf.write({"chat": {}}, watch_config=True)
    async with served(conf) as r:
        conf.write({"chat": {}, "other": {}}, watch_config=True)
        await until({"chat", "other"})
        conf.path.write_text("models: [")  # half written, as an editor might leave it
        await asyncio.sleep(0.2)
        assert await r.names() == {"chat", "other"}  # refused: nothing changed
        conf.write({"other": {}}, watch_config=True)
        await until({"other"})
        assert (await r.chat("other")).status_code == 200
        conf.path.unlink()  # gone: nothing to read, nothing changes
        await asyncio.sleep(0.2)
        assert await r.names() == {"other"}


async def test_a_web_page_cannot_reload_with_a_bodyless_post(conf: Reloadable) -> None:
    """A POST without a body is a "simple" request a browser sends from any site without asking
    the server first: `POST /admin/reload` with a foreign Origin reloaded the configuration
    (found from outside). From a page a POST must say JSON; curl's plain POST still reloads."""
    conf.write({"chat": {}})
    async with served(conf) as r:
        conf.write({"chat": {}, "other": {}})
        page = {"origin": "https://evil.example"}
        for extra in ({}, {"content-length": "0"}, {"content-type": "text/plain"}):
            refused = await r.client.post("/admin/reload", headers={**page, **extra})
            assert refused.status_code == 415, refused.text
            assert refused.json()["error"]["code"] == "unsupported_media_type"
        assert await r.names() == {"chat"}  # nothing was read again
        dashboard = {"origin": "http://127.0.0.1", "content-type": "application/json"}
        assert (await r.client.post("/admin/reload", headers=dashboard)).status_code == 200
        assert await r.names() == {"chat", "other"}
        conf.write({"chat": {}})
        await r.reload()  # curl -X POST, no Origin: as the README's SIGHUP alternative
        assert await r.names() == {"chat"}
