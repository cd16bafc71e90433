"""The whole API fuzzed by schemathesis against its own document (/openapi.json), on a real
server with the bundled models: every check (server errors, status codes, content types,
headers, response schemas, schema-valid data accepted, invalid data refused), a bounded
number of examples per operation (the README shows a longer run). Configuration:
schemathesis.toml at the repository root."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from llm_router import defaults
from servers import new_server

pytestmark = [pytest.mark.timeout(900), pytest.mark.real]
ROOT = Path(__file__).resolve().parents[2]


def test_schemathesis_finds_nothing(tmp_path: Path) -> None:
    models = tmp_path / "models"
    defaults.provision(models)
    # Answers capped at 16 tokens: the fuzzer asks for thousands, which would only be slow.
    srv = new_server(tmp_path, models_dir=str(models), max_tokens_limit=16, watch_interval=0)
    try:
        run = subprocess.run(
            [
                sys.executable,
                "-m",
                "schemathesis.cli",
                "run",
                srv.url + "/openapi.json",
                "--checks",
                "all",
                "--max-examples",
                "15",
                "--seed",
                "1",
                "--no-color",
                "--request-timeout",
                "60",
                "--exclude-path",
                "/models/events",
                "--generation-database",
                "none",
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=800,
        )
    finally:
        srv.stop()
    tail = run.stdout[-6000:]
    assert run.returncode == 0, tail
    assert "Server error" not in tail
