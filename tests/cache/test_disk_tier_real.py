"""The on-disk tier's byte cap through a real server on the bundled SmolLM2, driven by the
openai client: past `disk_bytes` the least recently used answers go, the file's entries stay
under the cap, and after a restart a kept answer is a hit while an evicted one is computed
again."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import openai

from servers import SMOL, MakeClient, Server, link_models

CAP = 900  # bytes: three or four answers of 8 tokens (about 240 bytes each; asserted below)
QUESTIONS = [f"Name a {thing}." for thing in ("color", "fruit", "city", "river", "tree", "bird")]


def _ask(client: openai.OpenAI, question: str) -> tuple[str, str]:
    raw = client.chat.completions.with_raw_response.create(
        model=SMOL,
        messages=[{"role": "user", "content": question}],
        temperature=0,
        max_tokens=8,
    )
    return raw.headers["x-llm-router-cache"], raw.parse().choices[0].message.content or ""


def _entries(path: Path) -> list[int]:
    """The size of each entry in the file (another connection: what is on disk)."""
    with sqlite3.connect(path) as db:
        sizes = [int(n) for (n,) in db.execute("SELECT size FROM entries")]
    db.close()
    return sizes


def test_past_the_cap_the_least_recently_used_answer_goes_and_a_kept_one_survives_a_restart(
    tmp_path: Path, smollm2_gguf: Path, make_client: MakeClient
) -> None:
    db = tmp_path / "cache.db"
    config = {
        "models_dir": str(link_models(tmp_path / "models", smollm2_gguf)),
        "watch_interval": 0,
        "cache": {"enabled": True, "memory_bytes": 0, "disk_path": str(db), "disk_bytes": CAP},
    }
    server = Server(tmp_path, config).start()
    try:
        client = make_client(server)
        kept, *others = QUESTIONS
        outcome, answer = _ask(client, kept)
        assert outcome == "miss"
        for question in others:  # each new answer, then the kept one again: always the newest
            assert _ask(client, question)[0] == "miss"
            assert _ask(client, kept) == ("hit", answer)
            sizes = _entries(db)
            assert sum(sizes) <= CAP
        assert all(CAP // 5 < size <= CAP // 3 for size in sizes), sizes  # 3 or 4 fit
        server.stop()
        server.start()
        client = make_client(server)
        assert _ask(client, kept) == ("hit", answer)
        assert _ask(client, others[-1])[0] == "hit"  # the newest of the others
        assert _ask(client, others[0])[0] == "miss"  # the least recently used: evicted
    finally:
        server.stop()
    assert sum(_entries(db)) <= CAP
