"""The dashboard in a real browser: Playwright driving Debian's `chromium` (`make test`
installs it when missing; Playwright's own browser download cannot work on these machines)
against one real server on the bundled models."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, Route, expect, sync_playwright

from servers import GEMMA, SMOL, Server, link_models

pytestmark = pytest.mark.real

CHROMIUM = "/usr/bin/chromium"
PINNED = "smol-pinned"


@pytest.fixture(scope="module")
def dash(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path) -> Iterator[Server]:
    """A server whose models directory starts with SmolLM2 alone (tests add to it), a pinned
    copy of it from the configuration, and a route."""
    root = tmp_path_factory.mktemp("dash")
    models = link_models(root / "models", smollm2_gguf)
    config = {
        "models_dir": str(models),
        "watch_interval": 0.3,
        "models": [{"id": PINNED, "path": str(smollm2_gguf), "pin": True}],
        "routes": [{"name": "auto", "strategy": "quality-first", "targets": [SMOL, PINNED]}],
    }
    srv = Server(root, config).start()
    yield srv
    srv.stop()


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert os.path.exists(CHROMIUM), "chromium missing: `make test` installs it (apt)"
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield b
        b.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 760})
    pg = context.new_page()
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    yield pg
    context.close()
    assert not errors, errors  # no uncaught script error on any page


def test_the_page_shows_the_bundled_model_live(page: Page, dash: Server) -> None:
    page.goto(dash.url)
    row = page.locator(f"tr[data-model='{SMOL}']")
    expect(row).to_be_visible()
    expect(row.locator("[data-role=status]")).to_have_text("unloaded")
    expect(row).to_contain_text("llama.cpp · gguf · Q4_1")
    expect(page.locator("#live")).to_have_text("live")
    expect(page.locator("#memory-text")).to_contain_text("GiB")  # the budget


def test_load_then_unload_without_a_reload(page: Page, dash: Server) -> None:
    page.goto(dash.url)
    row = page.locator(f"tr[data-model='{SMOL}']")
    status = row.locator("[data-role=status]")
    expect(status).to_have_text("unloaded")
    row.get_by_role("button", name="Load", exact=True).click()
    expect(status).to_have_text("loaded", timeout=60_000)
    expect(row).to_contain_text("MiB")  # memory measured
    expect(row.get_by_role("button", name="Load", exact=True)).to_be_disabled()
    row.get_by_role("button", name="Unload").click()
    expect(status).to_have_text("unloaded", timeout=30_000)
    assert dash.models()[SMOL]["status"]["value"] == "unloaded"


def test_the_playground_streams_an_answer(page: Page, dash: Server) -> None:
    page.goto(dash.url + "/#playground")
    expect(page.locator(f"#pg-model option[value='{SMOL}']")).to_have_count(1)
    page.select_option("#pg-model", SMOL)
    page.fill("#pg-temperature", "0")
    page.fill("#pg-max-tokens", "30")
    page.fill("#pg-input", "What is the capital of France?")
    page.get_by_role("button", name="Send").click()
    answer = page.locator(".msg.assistant .text")
    expect(answer).to_contain_text("Paris", timeout=60_000)
    expect(page.locator("[data-role=served-by]")).to_have_text(f"served by {SMOL}")
    expect(page.locator("#pg-stats")).to_contain_text("tok/s")
    page.get_by_role("button", name="Metrics").click()  # from the server's counters
    expect(page.locator("#v-ttft")).to_contain_text("ms", timeout=10_000)
    page.get_by_role("button", name="Playground").click()
    # the conversation goes on with its history
    page.fill("#pg-input", "And of Italy?")
    page.get_by_role("button", name="Send").click()
    expect(page.locator(".msg.assistant .text").nth(1)).to_contain_text("Rome", timeout=60_000)


def test_a_model_added_to_the_directory_appears(page: Page, dash: Server, gemma_gguf: Path) -> None:
    page.goto(dash.url)
    expect(page.locator(f"tr[data-model='{SMOL}']")).to_be_visible()
    expect(page.locator(f"tr[data-model='{GEMMA}']")).to_have_count(0)
    models = Path(_models_dir(dash))
    link_models(models, gemma_gguf)
    row = page.locator(f"tr[data-model='{GEMMA}']")
    expect(row).to_be_visible(timeout=15_000)
    expect(row).to_contain_text("Q4_K_M")


def test_a_401_asks_for_a_key_then_every_call_sends_it(page: Page, dash: Server) -> None:
    """Stands in for the API-key gateway: /models answers 401 without the right key."""
    seen: list[str | None] = []

    def gate(route: Route) -> None:
        auth = route.request.headers.get("authorization")
        seen.append(auth)
        if auth == "Bearer sk-test":
            route.continue_()
            return
        error = {"message": "a key is needed", "type": "invalid_request_error", "param": None,
                 "code": "invalid_api_key"}  # fmt: skip
        route.fulfill(
            status=401, content_type="application/json", body=json.dumps({"error": error})
        )

    page.route("**/models", gate)
    page.goto(dash.url)
    dialog = page.locator("#key-dialog")
    expect(dialog).to_be_visible()
    expect(dialog).to_contain_text("a key is needed")
    page.fill("#key-input", "sk-test")
    page.get_by_role("button", name="Use key").click()
    expect(page.locator(f"tr[data-model='{SMOL}']")).to_be_visible()
    assert seen[0] is None and seen[-1] == "Bearer sk-test"
    assert page.evaluate("localStorage.getItem('llm-router-key')") == "sk-test"


def _models_dir(srv: Server) -> str:
    import yaml

    return str(yaml.safe_load(srv.config_path.read_text())["models_dir"])


def test_with_api_keys_on_the_page_asks_for_one(
    page: Page, tmp_path: Path, smollm2_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real gateway: without a key the page shows no model, with the master key it does."""
    monkeypatch.setenv("LLM_ROUTER_MASTER_KEY", "sk-dashboard-master")
    models = link_models(tmp_path / "models", smollm2_gguf)
    srv = Server(tmp_path, {"models_dir": str(models), "data_dir": str(tmp_path / "data")})
    srv.start()
    try:
        page.goto(srv.url)
        expect(page.locator("#key-dialog")).to_be_visible()
        expect(page.locator(f"tr[data-model='{SMOL}']")).to_have_count(0)
        page.fill("#key-input", "sk-wrong")
        page.get_by_role("button", name="Use key").click()
        expect(page.locator("#key-dialog")).to_be_visible()  # refused again
        page.fill("#key-input", "sk-dashboard-master")
        page.get_by_role("button", name="Use key").click()
        row = page.locator(f"tr[data-model='{SMOL}']")
        expect(row).to_be_visible()
        expect(page.locator("#live")).to_have_text("live")
        row.get_by_role("button", name="Load", exact=True).click()  # an admin action
        expect(row.locator("[data-role=status]")).to_have_text("loaded", timeout=60_000)
    finally:
        srv.stop()


def test_unloading_a_pinned_model_asks_first(page: Page, dash: Server) -> None:
    dash.wait_status(PINNED, "loaded")  # pinned: loaded at start
    page.goto(dash.url)
    row = page.locator(f"tr[data-model='{PINNED}']")
    expect(row).to_contain_text("pinned")
    status = row.locator("[data-role=status]")
    expect(status).to_have_text("loaded")
    asked: list[str] = []

    page.once("dialog", lambda d: (asked.append(d.message), d.dismiss()))
    row.get_by_role("button", name="Unload").click()
    page.wait_for_timeout(500)  # nothing is sent when the user says no
    assert asked and "pinned" in asked[0]
    assert dash.models()[PINNED]["status"]["value"] == "loaded"
    page.once("dialog", lambda d: d.accept())
    row.get_by_role("button", name="Unload").click()
    expect(status).to_have_text("unloaded", timeout=30_000)


def test_routes_show_strategy_order_and_breakers(page: Page, dash: Server) -> None:
    page.goto(dash.url + "/#routes")
    row = page.locator("tr[data-route='auto']")
    expect(row).to_contain_text("quality-first")
    expect(row).to_contain_text(f"1. {SMOL}")
    expect(row).to_contain_text(f"{PINNED}: closed")
    expect(row).to_contain_text("none")  # no fallback yet
