"""The dashboard in a real browser: Playwright driving Debian's `chromium` (`make test`
installs it when missing; Playwright's own browser download cannot work on these machines)
against one real server on the bundled models."""

from __future__ import annotations

import itertools
import json
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, Request, Route, expect, sync_playwright

from servers import GEMMA, SMOL, Server, link_models

pytestmark = pytest.mark.real

CHROMIUM = "/usr/bin/chromium"
PINNED = "smol-pinned"


@pytest.fixture(scope="module")
def dash(tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path) -> Iterator[Server]:
    """A server whose models directory starts with SmolLM2 alone (tests add to it), a pinned
    copy of it from the configuration (answers of 12 tokens at most unless a request says
    otherwise), and a route."""
    root = tmp_path_factory.mktemp("dash")
    models = link_models(root / "models", smollm2_gguf)
    config = {
        "models_dir": str(models),
        "watch_interval": 0.3,
        "models": [
            {"id": PINNED, "path": str(smollm2_gguf), "pin": True, "sampling": {"max_tokens": 12}}
        ],
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
    expect(page.locator(f"#pg-model option[value='{SMOL}']")).to_have_count(1)
    # the model lists hold options in groups only: an empty group was a text node "null"
    stray = page.eval_on_selector_all(
        "select",
        "all => all.flatMap(s => [...s.childNodes].filter(n => n.nodeType === 3))"
        ".map(n => n.textContent)",
    )
    assert stray == [], stray


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


def test_the_rows_outlive_the_redraws_of_live_metrics(page: Page, dash: Server) -> None:
    """The table is redrawn at every metrics sample (2 s) and model event: a button held
    across a redraw is still the one pressed (rows were replaced, and a click across one
    was lost), and a selected name stays selected."""
    samples: list[float] = []
    page.on("response", lambda r: samples.append(1) if r.url.endswith("/metrics") else None)
    page.goto(dash.url)
    row = page.locator(f"tr[data-model='{SMOL}']")
    expect(row.locator("[data-role=status]")).to_have_text("unloaded")
    button = row.get_by_role("button", name="Load", exact=True).element_handle()
    name = row.locator("td.id").element_handle()
    name.evaluate("td => getSelection().selectAllChildren(td)")
    seen = len(samples)
    deadline = time.monotonic() + 20
    while len(samples) < seen + 2 and time.monotonic() < deadline:
        page.wait_for_timeout(250)
    assert len(samples) >= seen + 2  # two redraws since
    assert button.evaluate("b => b.isConnected") and name.evaluate("td => td.isConnected")
    assert SMOL in page.evaluate("getSelection().toString()")


def _ask(page: Page, dash: Server, question: str, model: str = SMOL, **fields: str) -> None:
    """Open the playground on `model`, fill its settings (`temperature`, `max_tokens`: ""
    empties the field) and send `question`."""
    page.goto(dash.url + "/#playground")
    expect(page.locator(f"#pg-model option[value='{model}']")).to_have_count(1)
    page.select_option("#pg-model", model)
    for name, value in fields.items():
        page.fill(f"#pg-{name.replace('_', '-')}", value)
    page.fill("#pg-input", question)
    page.get_by_role("button", name="Send").click()


def test_the_playground_streams_an_answer(page: Page, dash: Server) -> None:
    _ask(page, dash, "What is the capital of France?", temperature="0", max_tokens="30")
    answer = page.locator(".msg.assistant .text")
    expect(answer).to_contain_text("Paris", timeout=60_000)
    expect(page.locator("[data-role=served-by]")).to_have_text(  # once the stream ends
        f"served by {SMOL}", timeout=60_000
    )
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


def _refuse(route: Route, status: int, message: str, type_: str, code: str) -> None:
    """Answer `route` as the server refuses: OpenAI's error envelope."""
    error = {"message": message, "type": type_, "param": None, "code": code}
    route.fulfill(status=status, content_type="application/json", body=json.dumps({"error": error}))


def test_a_401_asks_for_a_key_then_every_call_sends_it(page: Page, dash: Server) -> None:
    """Stands in for the API-key gateway: /models answers 401 without the right key."""
    seen: list[str | None] = []

    def gate(route: Route) -> None:
        auth = route.request.headers.get("authorization")
        seen.append(auth)
        if auth == "Bearer sk-test":
            route.continue_()
            return
        _refuse(route, 401, "a key is needed", "invalid_request_error", "invalid_api_key")

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


def test_a_refused_turn_leaves_the_playground_history(page: Page, dash: Server) -> None:
    """A question the server refused is not sent again as history with the next one (the
    next request carried both, one unanswered user turn after another)."""
    sent: list[list[dict[str, str]]] = []

    def refuse_first(route: Route) -> None:
        sent.append(json.loads(route.request.post_data or "{}")["messages"])
        if len(sent) > 1:
            route.continue_()
            return
        _refuse(route, 503, "try later", "server_error", "server_busy")

    page.route("**/v1/chat/completions", refuse_first)
    _ask(page, dash, "First question", max_tokens="4")
    expect(page.locator("#pg-messages")).to_contain_text("error: try later")
    page.fill("#pg-input", "Second question")
    page.get_by_role("button", name="Send").click()
    expect(page.locator("[data-role=served-by]")).to_be_visible(timeout=60_000)
    assert [m["content"] for m in sent[1] if m["role"] == "user"] == ["Second question"]


def test_untouched_settings_leave_the_model_its_defaults(page: Page, dash: Server) -> None:
    """The temperature and max-tokens fields start empty ("model default") and an empty one
    is left out of the request, so the model's configured `sampling` applies: here an answer
    of 12 tokens at most. They were prefilled with 0.7 and 256 and sent, overriding it (found
    from outside: a model's `max_tokens: 40` ignored in the playground); an emptied field was
    sent as 0 before that."""
    bodies: list[dict[str, object]] = []

    def watch(route: Route) -> None:
        bodies.append(json.loads(route.request.post_data or "{}"))
        route.continue_()

    page.route("**/v1/chat/completions", watch)
    _ask(page, dash, "Say hello.", model=PINNED)
    for field in ("#pg-temperature", "#pg-max-tokens"):
        expect(page.locator(field)).to_have_value("")
        expect(page.locator(field)).to_have_attribute("placeholder", "model default")
    stats = page.locator("#pg-stats")
    expect(stats).to_contain_text("tok/s", timeout=60_000)
    assert "temperature" not in bodies[0] and "max_tokens" not in bodies[0]
    assert 1 <= _tokens(stats.inner_text()) <= 12
    page.fill("#pg-temperature", "0.3")
    page.fill("#pg-max-tokens", "3")
    page.fill("#pg-input", "Now tell me a long story about a dragon.")
    page.get_by_role("button", name="Send").click()  # the line reads "waiting..." at once
    expect(stats).to_contain_text(" 3 tokens", timeout=60_000)  # the request's own value wins
    assert len(bodies) == 2 and (bodies[1]["temperature"], bodies[1]["max_tokens"]) == (0.3, 3)


def _tokens(stats: str) -> int:
    """The answer's length in the playground's statistics line ("... · 7 tokens · ...")."""
    match = re.search(r"(\d+) tokens", stats)
    assert match, stats
    return int(match.group(1))


def _models_dir(srv: Server) -> str:
    import yaml

    return str(yaml.safe_load(srv.config_path.read_text())["models_dir"])


def test_with_api_keys_on_the_page_asks_for_one(
    page: Page, tmp_path: Path, smollm2_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The real gateway: without a key the page shows no model, with the master key it does;
    once the key is forgotten, what it read is gone (its rows stayed on the page)."""
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
        page.get_by_role("button", name="API key").click()
        page.get_by_role("button", name="Forget key").click()
        expect(page.locator("#key-dialog")).to_be_visible()  # asked again
        expect(page.locator(f"tr[data-model='{SMOL}']")).to_have_count(0)
        expect(page.locator(f"#pg-model option[value='{SMOL}']")).to_have_count(0)
    finally:
        srv.stop()


def test_a_key_without_admin_is_told_why_load_unload_and_metrics_are_refused(
    page: Page, tmp_path: Path, smollm2_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A key with `inference` and `read` only: Load and Unload answer 403, and the page says so
    (the server's message, naming the scope) instead of throwing (the `page` fixture fails on
    any uncaught error); the Metrics tab says what /metrics needs and asks less and less often."""
    master = "sk-dashboard-master"
    monkeypatch.setenv("LLM_ROUTER_MASTER_KEY", master)
    models = link_models(tmp_path / "models", smollm2_gguf)
    srv = Server(tmp_path, {"models_dir": str(models), "data_dir": str(tmp_path / "data")})
    srv.start()
    admin = {"authorization": f"Bearer {master}"}

    def status() -> str:
        data = httpx.get(srv.url + "/models", headers=admin, timeout=10).json()["data"]
        return str(next(m for m in data if m["id"] == SMOL)["status"]["value"])

    try:
        made = httpx.post(
            srv.url + "/admin/keys",
            json={"name": "app", "scopes": ["inference", "read"]},
            headers=admin,
            timeout=10,
        )
        assert made.status_code == 201, made.text
        secret = made.json()["key"]
        asked: list[float] = []  # when the page asked for /metrics with this key

        def seen(request: Request) -> None:
            if request.url.endswith("/metrics") and secret in (
                request.headers.get("authorization") or ""
            ):
                asked.append(time.monotonic())

        page.on("request", seen)
        page.goto(srv.url)
        page.fill("#key-input", secret)
        page.get_by_role("button", name="Use key").click()
        row = page.locator(f"tr[data-model='{SMOL}']")
        state = row.locator("[data-role=status]")
        expect(state).to_have_text("unloaded")
        notice = page.locator("#notice")
        row.get_by_role("button", name="Load", exact=True).click()
        expect(notice).to_contain_text("lacks the 'admin' scope")
        assert status() == "unloaded"

        load = httpx.post(srv.url + "/models/load", json={"model": SMOL}, headers=admin)
        assert load.status_code == 200, load.text
        expect(state).to_have_text("loaded", timeout=60_000)  # the key may watch it
        page.wait_for_timeout(1000)  # the listing read again after the event...
        expect(notice).to_contain_text("lacks the 'admin' scope")  # ...keeps the refusal
        row.get_by_role("button", name="Unload").click()
        expect(notice).to_contain_text("The API key 'app' lacks the 'admin' scope")
        assert status() == "loaded"

        page.get_by_role("button", name="Metrics").click()
        told = page.locator("#metrics-notice")
        expect(told).to_be_visible()
        expect(told).to_contain_text("lacks the 'admin' scope")
        expect(told).to_contain_text("gateway.metrics_public")
        deadline = time.monotonic() + 30
        while len(asked) < 3 and time.monotonic() < deadline:
            page.wait_for_timeout(250)
        gaps = [b - a for a, b in itertools.pairwise(asked)]
        assert len(gaps) >= 2 and gaps[0] >= 3 and gaps[1] >= 1.5 * gaps[0], gaps  # backs off
        expect(page.locator("#v-rps")).to_have_text("-")

        # A request changes no status (no event): "last used" is read again all the same,
        # for a key that cannot read /metrics too (it stayed at the old time; found from
        # outside).
        page.get_by_role("button", name="Models").click()
        used = row.locator("td").nth(6)
        expect(used).not_to_have_text(re.compile(r"^[0-7] s ago$"))  # loaded a while ago
        body = {"model": SMOL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
        answered = httpx.post(
            srv.url + "/v1/chat/completions", json=body, headers=admin, timeout=60
        )
        assert answered.status_code == 200, answered.text
        expect(used).to_have_text(re.compile(r"^[0-7] s ago$"), timeout=15_000)

        # The master key may load and unload: the old key's refusal is not shown under it
        page.get_by_role("button", name="API key").click()
        page.fill("#key-input", master)
        page.get_by_role("button", name="Use key").click()
        expect(notice).not_to_contain_text("lacks the 'admin' scope")
    finally:
        srv.stop()


@pytest.mark.parametrize(
    ("path", "operation"),
    [
        ("/docs", ".opblock-summary-path[data-path='/v1/chat/completions']"),
        ("/redoc", "[data-section-id='tag/openai/operation/v1_chat_completions']"),
    ],
)
def test_the_api_docs_render_with_nothing_from_elsewhere(
    page: Page, dash: Server, path: str, operation: str
) -> None:
    """Swagger UI and ReDoc, scripts and styles included, come from the server itself: the
    machines may have no internet (FastAPI's own pages load them from a CDN). ReDoc's badge
    asks cdn.redoc.ly for its logo; the page's Content-Security-Policy refuses it in the
    browser, so that request never leaves."""
    urls: list[str] = []
    refused: set[str] = set()
    page.on("request", lambda request: urls.append(request.url))
    page.on("requestfailed", lambda r: refused.add(r.url) if r.failure == "csp" else None)
    page.goto(dash.url + path)
    expect(page.locator(operation).first).to_be_visible(timeout=30_000)
    if path == "/docs":  # a key for "Try it out" once keys exist (the document's bearer scheme)
        expect(page.locator("button.authorize")).to_be_visible()
    page.wait_for_load_state("networkidle")  # ReDoc's badge asks for its logo once rendered
    here = (f"{dash.url}/", f"blob:{dash.url}/", "data:")  # blob: ReDoc's search worker
    assert any(url.startswith(f"{dash.url}/docs/assets/") for url in urls), urls
    assert [url for url in urls if not url.startswith(here) and url not in refused] == []


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


def test_a_remote_embedding_target_is_offered_for_embeddings_not_chat(
    page: Page, tmp_path: Path
) -> None:
    """The embeddings box listed local embedding models only, and the chat's list every
    remote target (found from outside)."""
    (tmp_path / "empty").mkdir()
    far = {"provider": "openai", "base_url": "http://127.0.0.1:19999/v1"}  # never asked
    models = [{"id": "far-chat", **far}, {"id": "far-vectors", "task": "embed", **far}]
    config = {"models_dir": str(tmp_path / "empty"), "provision_default_models": False}
    srv = Server(
        tmp_path, {**config, "models": [{**m, "health_check_interval": 0} for m in models]}
    )
    srv.start()
    try:
        page.goto(srv.url + "/#playground")
        expect(page.locator("#emb-model option[value='far-vectors']")).to_have_count(1)
        expect(page.locator("#emb-model option[value='far-chat']")).to_have_count(0)
        expect(page.locator("#pg-model option[value='far-chat']")).to_have_count(1)
        expect(page.locator("#pg-model option[value='far-vectors']")).to_have_count(0)
    finally:
        srv.stop()


def test_routes_show_strategy_order_and_breakers(page: Page, dash: Server) -> None:
    page.goto(dash.url + "/#routes")
    row = page.locator("tr[data-route='auto']")
    expect(row).to_contain_text("quality-first")
    expect(row).to_contain_text(f"1. {SMOL}")
    expect(row).to_contain_text(f"{PINNED}: closed")
    expect(row).to_contain_text("none")  # no fallback yet


def test_many_tabs_share_one_events_stream(browser: Browser, dash: Server) -> None:
    """Each tab held an endless /models/events connection, and a browser holds 6 to a host:
    the 6th tab showed no models, the 7th did not load, and a chat in the first waited for
    ever (found from outside). One tab follows the stream for all; every tab stays live,
    sees a load as it happens, and chats."""
    context = browser.new_context(viewport={"width": 1280, "height": 760})
    errors: list[str] = []
    try:
        pages = []
        for _ in range(8):
            pg = context.new_page()
            pg.on("pageerror", lambda exc: errors.append(str(exc)))
            pg.goto(dash.url, timeout=20_000)
            pages.append(pg)
        for pg in pages:
            expect(pg.locator(f"tr[data-model='{SMOL}']")).to_be_visible()
            expect(pg.locator("#live")).to_have_text("live")
        httpx.post(dash.url + "/models/load", json={"model": SMOL}).raise_for_status()
        for pg in pages:  # the event reached every tab
            status = pg.locator(f"tr[data-model='{SMOL}'] [data-role=status]")
            expect(status).to_have_text("loaded", timeout=60_000)
        last = pages[-1]
        last.get_by_role("button", name="Playground").click()
        last.select_option("#pg-model", SMOL)
        # bounded: a sampled answer (the model's default temperature) ran past the wait
        last.fill("#pg-max-tokens", "16")
        last.fill("#pg-input", "What is the capital of France?")
        last.get_by_role("button", name="Send").click()
        expect(last.locator("[data-role=served-by]")).to_have_text(
            f"served by {SMOL}", timeout=60_000
        )
        pages[0].close()  # the tab that followed the stream, maybe: another takes over
        httpx.post(dash.url + "/models/unload", json={"model": SMOL}).raise_for_status()
        for pg in pages[1:]:
            status = pg.locator(f"tr[data-model='{SMOL}'] [data-role=status]")
            expect(status).to_have_text("unloaded", timeout=30_000)
    finally:
        context.close()
    assert not errors, errors


def test_on_a_phone_the_page_fits_the_screen(browser: Browser, dash: Server) -> None:
    """At 375 px the layout was 1200 px wide: the header and tabs stopped at the screen's
    edge, Load and Unload were a sideways scroll away, the chat column was ~80 px."""
    context = browser.new_context(viewport={"width": 375, "height": 740})
    try:
        pg = context.new_page()
        pg.goto(dash.url)
        expect(pg.locator(f"tr[data-model='{SMOL}']")).to_be_visible()
        assert pg.evaluate("document.documentElement.scrollWidth") <= 375 + 1
        pg.get_by_role("button", name="Playground").click()
        box = pg.locator(".chat").bounding_box()
        assert box is not None and box["width"] >= 300
    finally:
        context.close()


def test_rows_are_dimmed_while_the_page_cannot_follow_the_server(page: Page, dash: Server) -> None:
    """Down or restarted, the server's old statuses were shown as if live (a restart that
    unloaded a model still showed it loaded); only the small pill said otherwise."""
    page.route("**/models/events", lambda route: route.abort())
    page.goto(dash.url)
    expect(page.locator(f"tr[data-model='{SMOL}']")).to_be_visible()  # the listing still loads
    expect(page.locator("#live")).to_have_text("reconnecting")
    expect(page.locator("body")).to_have_class("stale")


def test_a_question_stopped_before_its_answer_is_shown_as_left_out(
    page: Page, dash: Server
) -> None:
    """Stop before the first token took the question out of the history but left it on screen
    as if asked: the next turn went without it, and nothing said so."""
    held: list[Route] = []
    page.route("**/v1/chat/completions", lambda route: held.append(route))  # never answered
    _ask(page, dash, "What is the capital of France?")
    expect(page.get_by_role("button", name="Stop")).to_be_enabled()
    page.get_by_role("button", name="Stop").click()
    expect(page.locator(".msg.user").last).to_have_class("msg user left-out")
    expect(page.locator(".msg.assistant .text").last).to_contain_text(
        "left out of the conversation"
    )
    assert page.evaluate("state.chat.length") == 0
