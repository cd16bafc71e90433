"""Screenshots of the dashboard's main views for the README, from a running server:

    .venv/bin/python scripts/dashboard_screenshots.py http://127.0.0.1:8080 [MODEL]

Loads MODEL (default: the bundled SmolLM2), sends a few playground chats so the charts have
something to show, and writes docs/dashboard-{models,routes,metrics,playground}.png. Uses
Debian's chromium (`apt-get install chromium`), as the browser tests do."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import httpx
from playwright.sync_api import expect, sync_playwright

DOCS = Path(__file__).resolve().parent.parent / "docs"


def main(url: str, model: str = "SmolLM2-135M-Instruct.Q4_1") -> None:
    DOCS.mkdir(exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 640})
        page.goto(url)
        row = page.locator(f"tr[data-model='{model}']")
        if row.locator("[data-role=status]").inner_text() != "loaded":
            row.get_by_role("button", name="Load", exact=True).click()
        expect(row.locator("[data-role=status]")).to_have_text("loaded", timeout=60_000)
        page.click("nav button[data-tab=playground]")
        page.select_option("#pg-model", model)
        page.fill("#pg-temperature", "0")
        questions = ("What is the capital of France?", "Name three primary colours.")
        for question in questions:
            page.fill("#pg-input", question)
            page.get_by_role("button", name="Send").click()
            expect(page.get_by_role("button", name="Send")).to_be_enabled(timeout=60_000)
        page.fill("#emb-input", "a cat on a mat")
        if page.locator("#emb-model option").count():
            page.get_by_role("button", name="Embed").click()
            expect(page.locator("#emb-result")).to_contain_text("dimensions", timeout=60_000)
        page.screenshot(path=DOCS / "dashboard-playground.png")
        page.click("nav button[data-tab=metrics]")
        _load(url, model, seconds=40)  # traffic for the charts
        page.screenshot(path=DOCS / "dashboard-metrics.png")
        page.click("nav button[data-tab=routes]")
        page.screenshot(path=DOCS / "dashboard-routes.png")
        page.click("nav button[data-tab=models]")
        page.wait_for_timeout(2500)
        page.screenshot(path=DOCS / "dashboard-models.png")
        browser.close()


def _load(url: str, model: str, seconds: float) -> None:
    """Two clients chatting for `seconds`, with pauses, so the charts have a shape."""
    stop = time.monotonic() + seconds

    def chat(n: int) -> None:
        with httpx.Client(base_url=url, timeout=60) as http:
            i = 0
            while time.monotonic() < stop:
                i += 1
                body = {
                    "model": model,
                    "messages": [{"role": "user", "content": f"Count to {i % 7 + 3}."}],
                    "max_tokens": 16 + 8 * (i % 4),
                }
                http.post("/v1/chat/completions", json=body)
                time.sleep(0.5 * n + (i % 3))

    threads = [threading.Thread(target=chat, args=(n,)) for n in (1, 2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    time.sleep(2.5)


if __name__ == "__main__":
    main(*sys.argv[1:])
