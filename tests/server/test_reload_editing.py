"""Reloading the configuration as a user coming from llama-swap does (server/reload.py):
an editor that truncates the file before writing it, the dashboard that learns of added and
removed targets from `GET /models/events`, a request in flight to a model the reload removes,
and a route named like a model of models_dir. In process on the fake engine, except the
last (a real server with the bundled SmolLM2)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from llm_router.reload import Settling
from server.test_reload import Reloadable, served
from servers import SMOL, Server, link_models

ROUTE = {"name": "auto", "targets": ["chat"]}
REMOTE = {"id": "far", "provider": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"}


@pytest.fixture
def conf(tmp_path: Path) -> Reloadable:
    (tmp_path / "empty").mkdir()
    return Reloadable(tmp_path)


async def test_an_empty_config_file_is_refused_and_changes_nothing(conf: Reloadable) -> None:
    # An editor saving in place truncates the file first: a reload (SIGHUP, the watch, or a
    # POST at the wrong moment) then reads an empty file. Taking it as "all defaults" drops
    # every model entry, alias, remote target and route until the next write.
    conf.write({"chat": {"aliases": ["c"]}}, routes=[ROUTE])
    async with served(conf) as r:
        assert await r.names() == {"chat", "auto"}
        conf.path.write_text("")
        refused = await r.client.post("/admin/reload")
        assert refused.status_code == 400, refused.text
        assert refused.json()["error"]["code"] == "config_error"
        assert await r.names() == {"chat", "auto"}
        assert (await r.chat("c")).status_code == 200
        assert (await r.chat("auto")).status_code == 200


async def test_a_config_file_that_is_not_utf8_is_refused_and_changes_nothing(
    conf: Reloadable, caplog: pytest.LogCaptureFixture
) -> None:
    """A binary file written over the config (found from outside): the reload answered 500
    and a SIGHUP logged a traceback. It is a 400 config_error saying so, and one log line."""
    conf.write({"chat": {"aliases": ["c"]}})
    async with served(conf) as r:
        conf.path.write_bytes(b"\x93\xffbinary")
        error = (await r.reload(400))["error"]
        assert error["code"] == "config_error"
        assert "is not UTF-8 text" in error["message"]
        with caplog.at_level("WARNING", logger="llm_router.server.reload"):
            await r.app.state.reloader._unattended("SIGHUP")
        (record,) = [x for x in caplog.records if x.name == "llm_router.server.reload"]
        assert "is not UTF-8 text" in record.getMessage() and record.exc_info is None
        assert await r.names() == {"chat"}
        assert (await r.chat("c")).status_code == 200


async def test_watch_config_ignores_a_truncated_file_until_it_is_written(
    conf: Reloadable, monkeypatch: pytest.MonkeyPatch
) -> None:
    import llm_router.server.reload as reload_module

    monkeypatch.setattr(reload_module, "WATCH_EVERY", 0.02)
    conf.write({"chat": {"aliases": ["c"]}}, routes=[ROUTE], watch_config=True)
    async with served(conf) as r:
        conf.path.write_text("")  # the first half of `open(path, "w"); write(text)`
        await asyncio.sleep(0.3)  # several looks of the watch
        assert await r.names() == {"chat", "auto"}
        assert (await r.chat("auto")).status_code == 200


async def test_watch_config_waits_for_a_file_written_in_two_steps(
    conf: Reloadable, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """Rewritten in place in two writes, the first ending just before `routes:` (a valid
    configuration as it stands): the watch applied the first, and every route answered 404
    until the second (found from outside). A change is read once the file stayed the same
    for `SETTLE` seconds: here the first part stays for fewer looks than that."""
    import llm_router.server.reload as reload_module

    monkeypatch.setattr(reload_module, "WATCH_EVERY", 0.02)
    monkeypatch.setattr(reload_module, "SETTLE", 0.06)  # 3 looks
    conf.write({"chat": {}}, routes=[ROUTE], watch_config=True)
    settings = yaml.safe_load(conf.path.read_text())
    settings["models"][0]["aliases"] = ["c2"]
    routes = settings.pop("routes")
    prefix = yaml.safe_dump(settings, sort_keys=False)
    full = prefix + yaml.safe_dump({"routes": routes}, sort_keys=False)
    real_stamp = reload_module.stamp
    looks = 0

    def stamp(path: Path) -> tuple[int, int, int] | None:
        nonlocal looks
        looks += 1
        if looks == 3:  # the first part has been seen twice before: the writer goes on
            conf.path.write_text(full)
        return real_stamp(path)

    async with served(conf) as r:
        with caplog.at_level("INFO", logger="llm_router.server.reload"):
            conf.path.write_text(prefix)
            monkeypatch.setattr(reload_module, "stamp", stamp)
            for _ in range(500):
                if (await r.chat("c2")).status_code == 200:
                    break
                await asyncio.sleep(0.01)
            assert await r.names() == {"chat", "auto"}
            assert (await r.chat("auto")).status_code == 200
    reloads = [x.getMessage() for x in caplog.records if "configuration reloaded" in x.getMessage()]
    assert len(reloads) == 1 and "applied models;" in reloads[0], reloads


def test_a_changed_file_is_taken_once_it_stays_the_same_for_the_looks_asked() -> None:
    settling = Settling(2)
    one, two = (1, 10, 100), (1, 20, 200)
    assert [settling.settled(one) for _ in range(3)] == [False, False, True]
    assert [settling.settled(s) for s in (two, two, one, one, one)] == [False] * 4 + [True]
    assert not Settling(1).settled(None)  # a file gone is a change like another


def _events(queue: asyncio.Queue[dict[str, Any]]) -> list[tuple[str, str]]:
    seen = []
    while not queue.empty():
        message = queue.get_nowait()
        seen.append((message["event"], message["model"]))
    return seen


async def test_a_remote_target_added_or_removed_by_a_reload_is_announced(
    conf: Reloadable,
) -> None:
    # The dashboard reads GET /models once, then follows GET /models/events (the queue
    # below is the one that endpoint streams): a remote target a reload adds or removes
    # must be announced, or the page shows the old list until it is opened again.
    conf.write({"chat": {}})
    async with served(conf) as r:
        queue = r.app.state.manager.events.subscribe()
        text = yaml.safe_load(conf.path.read_text())
        text["models"].append(REMOTE)
        conf.path.write_text(yaml.safe_dump(text))
        await r.reload()
        assert "far" in {m["id"] for m in (await r.client.get("/models")).json()["data"]}
        assert ("added", "far") in _events(queue)

        text["models"].pop()
        conf.path.write_text(yaml.safe_dump(text))
        await r.reload()
        assert "far" not in {m["id"] for m in (await r.client.get("/models")).json()["data"]}
        assert ("removed", "far") in _events(queue)


@pytest.mark.real
def test_a_route_named_like_a_model_in_models_dir_is_refused(
    tmp_path: Path, smollm2_gguf: Path
) -> None:
    # A route named like a model *entry* is refused ("route name ... is already a model
    # name"); one named like a model found only in models_dir was accepted: /v1/models then
    # listed the id twice and the route hid the model (embeddings to it: "is a route").
    models = link_models(tmp_path / "models", smollm2_gguf)
    srv = Server(tmp_path, {"models_dir": str(models), "provision_default_models": False})
    srv.start()
    try:
        config = yaml.safe_load(srv.config_path.read_text())
        remote = {**REMOTE, "id": "box"}
        config.update(models=[remote], routes=[{"name": SMOL, "targets": ["box"]}])
        srv.config_path.write_text(yaml.safe_dump(config))
        headers = {"Content-Type": "application/json"}
        r = httpx.post(srv.url + "/admin/reload", headers=headers, timeout=30)
        ids = [m["id"] for m in httpx.get(srv.url + "/v1/models", timeout=30).json()["data"]]
        assert ids.count(SMOL) == 1, ids
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "config_error" and SMOL in r.text
    finally:
        srv.stop()


async def test_a_request_in_flight_to_a_model_a_reload_removes_still_gets_its_answer(
    conf: Reloadable,
) -> None:
    # The answer is made (the tokens are spent: by an upstream, for a remote target), then
    # its price was looked up by the name the reload removed: a 404 model_not_found in place
    # of the answer, or, streamed, every token and then an error in place of the last chunk.
    # Seen on a real server with a remote target removed while it streamed.
    slow = {"token_seconds": 0.05}
    conf.models["chat"].path.write_text(json.dumps({"reply": "a b c d e f g h", **slow}))
    conf.write({"chat": {}, "other": {}})
    async with served(conf) as r:
        assert (await r.chat("chat")).status_code == 200  # loaded
        running = asyncio.ensure_future(r.chat("chat", max_tokens=12))
        await asyncio.sleep(0.15)
        conf.write({"other": {}})
        assert (await r.reload())["unloaded"] == ["chat"]
        answer = await running
        assert answer.status_code == 200, answer.text
        assert answer.json()["choices"][0]["message"]["content"]
