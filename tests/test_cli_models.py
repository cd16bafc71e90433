"""`ps`, `show`, `rm`, `chat`, `bench` and `doctor` as a user types them: against a running
server (`--url`) and, where that makes sense, in the command's own process."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from servers import GEMMA, SMOL, Server, free_port, link_models

pytestmark = pytest.mark.real  # real models and processes


def _cli(
    *args: str, stdin: str | None = None, timeout: float = 180, **env_vars: str
) -> subprocess.CompletedProcess[str]:
    # The default port is one nobody listens on: "no server found" means in-process here,
    # whatever else runs on this machine (LLM_ROUTER_PORT= a server's: the one found).
    env = {**os.environ, "LLM_ROUTER_PORT": str(free_port()), **env_vars}
    return subprocess.run(
        [sys.executable, "-m", "llm_router", *args],
        capture_output=True, text=True, timeout=timeout, input=stdin, env=env,
    )  # fmt: skip


@contextlib.contextmanager
def _stand_in(answer: Callable[[str], tuple[int, object]]) -> Iterator[str]:
    """A server on a free loopback port that answers every GET with `answer(path)` (status,
    JSON), for the CLI's side of answers a real server gives only in passing; its address."""
    import http.server
    import threading

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            status, payload = answer(self.path)
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("content-type", "application/json")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def srv(
    tmp_path_factory: pytest.TempPathFactory, smollm2_gguf: Path, gemma_gguf: Path
) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("cli")
    models = link_models(root / "models", smollm2_gguf, gemma_gguf)
    config = {"models_dir": str(models), "watch_interval": 0.3,
              "models": [{"id": GEMMA, "aliases": ["gem"]}],
              "routes": [{"name": "smart", "targets": [SMOL], "fallbacks": [GEMMA]}]}  # fmt: skip
    server = Server(root, config).start()
    yield server
    server.stop()


def _models_dir(srv: Server) -> str:
    import yaml

    return str(yaml.safe_load(srv.config_path.read_text())["models_dir"])


def test_ps_lists_what_a_running_server_has_loaded(srv: Server) -> None:
    httpx.post(srv.url + "/models/load", json={"model": SMOL}).raise_for_status()
    srv.wait_status(SMOL, "loaded")
    out = _cli("ps", "--url", srv.url)
    assert out.returncode == 0, out.stderr
    row = next(line for line in out.stdout.splitlines() if SMOL in line)
    assert "loaded" in row and "MiB" in row and "0/4" in row
    assert " min" in row or " s " in row  # keep-alive left (5 min by default)
    assert GEMMA not in out.stdout  # not loaded
    assert srv.log().count("machine: ") == 1 and "physical" in srv.log()  # logged at start
    # host:port without a scheme is http://, as OLLAMA_HOST (it said no server answered)
    bare = _cli("ps", "--url", srv.url.removeprefix("http://"))
    assert bare.returncode == 0, bare.stderr
    assert "loaded" in next(line for line in bare.stdout.splitlines() if SMOL in line)


def test_ps_shows_a_failing_remote_target_and_its_breaker(tmp_path: Path) -> None:
    """`ps` listed local models only: a remote target that failed, or held requests, was seen
    in /metrics alone (found from outside)."""
    (tmp_path / "models").mkdir()
    config = {
        "models_dir": str(tmp_path / "models"),
        "provision_default_models": False,
        "breaker": {"failure_threshold": 2, "cooldown": 600},
        "models": [
            {
                "id": "far",
                "provider": "openai",
                "base_url": f"http://127.0.0.1:{free_port()}/v1",  # nothing listens there
                "health_check_interval": 0,
            }
        ],
    }
    server = Server(tmp_path, config).start()
    try:
        body = {"model": "far", "messages": [{"role": "user", "content": "hi"}]}
        for _ in range(2):
            failed = httpx.post(server.url + "/v1/chat/completions", json=body, timeout=30)
            assert failed.status_code >= 500, failed.text
        out = _cli("ps", "--url", server.url)
    finally:
        server.stop()
    assert out.returncode == 0, out.stderr
    row = next(line for line in out.stdout.splitlines() if "far" in line)
    assert "open" in row and "min left" in row and "100%" in row, out.stdout


def test_ps_without_a_server_says_so() -> None:
    out = _cli("ps")
    assert out.returncode == 1 and "no server answers" in out.stderr
    bad = _cli("ps", "--url", f"http://127.0.0.1:{free_port()}")
    assert bad.returncode == 2 and "no llm-router server answers" in bad.stderr


def test_ps_of_a_draining_server_says_it_is_shutting_down() -> None:
    """A server draining after SIGTERM answers /health 503 `draining`: the CLI said "no
    llm-router server answers" (found from outside). A stand-in answers as the drain does
    (tests/server/test_drain.py has the server's own answer)."""
    with _stand_in(lambda _: (503, {"status": "draining", "in_flight": 2})) as url:
        out = _cli("ps", "--url", url)
    assert out.returncode == 2
    said = " ".join(out.stderr.replace("│", " ").split())  # the error box wraps its lines
    assert "is shutting down and takes no new requests" in said, out.stderr


def test_show_metadata_parameters_config_and_template(srv: Server) -> None:
    out = _cli("show", SMOL, "--models-dir", _models_dir(srv))
    assert out.returncode == 0, out.stderr
    for text in ("llama", "Q4_1", "8192", "135M", "You are a helpful assistant.",
                 "physical cores", "context_size", "<|im_start|>"):  # fmt: skip
        assert text in out.stdout, text
    live = _cli("show", GEMMA, "--url", srv.url, "--models-dir", _models_dir(srv))
    assert "status" in live.stdout
    # the server's configuration (its alias) beside this one's (none): it printed this
    # one's alone, as if it were the server's (found from outside)
    row = next(line for line in live.stdout.splitlines() if "aliases on" in line)
    assert row.split()[-2:] == ["gem", "│"] or row.rstrip().endswith("gem"), row
    assert "of this configuration (defaults)" in " ".join(live.stdout.split())
    template = _cli("show", SMOL, "--template", "--models-dir", _models_dir(srv))
    assert template.returncode == 0 and template.stdout.startswith("{% for message in messages")
    base = _cli("show", GEMMA, "--template", "--models-dir", _models_dir(srv))
    assert base.stdout.strip() == "(no chat template)"  # a base model
    missing = _cli("show", "nope", "--models-dir", _models_dir(srv))
    assert missing.returncode == 1 and SMOL in missing.stderr  # names what there is


def test_show_after_a_failed_load_says_why(smollm2_gguf: Path, tmp_path: Path) -> None:
    """`show` printed `status error` and not the load's error (found from outside). A
    stand-in answers as a server whose load of the model failed."""
    models = link_models(tmp_path / "models", smollm2_gguf)
    reason = "model 'x' could not load: the checkpoint lacks 2 weights the model needs"
    listing = {"data": [{"id": SMOL, "status": {"value": "error", "error": reason}}]}
    with _stand_in(lambda path: (200, listing if path == "/models" else {"status": "ok"})) as url:
        out = _cli("show", SMOL, "--url", url, "--models-dir", str(models))
    assert out.returncode == 0, out.stderr
    said = " ".join(out.stdout.replace("│", " ").split())
    assert "status error" in said and "lacks 2 weights the model needs" in said, out.stdout


def test_show_with_url_shows_the_servers_model_from_anywhere(srv: Server, tmp_path: Path) -> None:
    """`show MODEL --url URL` from a directory other than the server's models directory: what
    the server says of it, found by id or alias (it failed: "not in models (models: none)")."""
    elsewhere = str(tmp_path / "empty")
    out = _cli("show", "gem", "--url", srv.url, "--models-dir", elsewhere)
    assert out.returncode == 0, out.stderr
    for text in (GEMMA, "gguf", "gemma3", "Q4_K_M", "32768", "status"):
        assert text in out.stdout, text
    missing = _cli("show", "nope", "--url", srv.url, "--models-dir", elsewhere)
    assert missing.returncode == 1 and "neither on" in missing.stderr


def test_show_of_a_route_or_a_remote_target_shows_its_configuration(
    srv: Server, tmp_path: Path
) -> None:
    """`show ROUTE` and `show REMOTE` said "not in the models directory": a route and a remote
    target are the configuration's, so that is what is shown, with the server's live view of
    them when one is given (the route's order of targets now, the breakers)."""
    import yaml

    cfg = yaml.safe_load(srv.config_path.read_text())
    cfg["models"].append(
        {"id": "cloud", "aliases": ["gpt"], "provider": "openai", "model": "gpt-4o-mini",
         "base_url": "http://127.0.0.1:9/v1", "api_key_env": "CLOUD_KEY",
         "cost": {"input": 0.15, "output": 0.6}}
    )  # fmt: skip
    config = tmp_path / "config.yaml"
    config.write_text(yaml.safe_dump(cfg))
    route = _cli("show", "smart", "--config", str(config), "--url", srv.url)
    assert route.returncode == 0, route.stderr
    rows = _rows(route.stdout)
    assert rows["strategy"] == "balanced" and rows["fallbacks"] == GEMMA, rows
    assert rows[f"order now on {srv.url}"] == f"{SMOL}, {GEMMA}", rows  # the server's plan
    assert f"{SMOL}: closed" in rows["breakers"], rows
    remote = _cli("show", "gpt", "--config", str(config))  # an alias, no server asked
    assert remote.returncode == 0, remote.stderr
    rows = _rows(remote.stdout)
    assert rows["id"] == "cloud" and rows["upstream model"] == "gpt-4o-mini", rows
    assert rows["base url"] == "http://127.0.0.1:9/v1" and rows["api key from"] == "CLOUD_KEY"
    assert rows["cost per 1M tokens"] == "in 0.15, out 0.6", rows
    bare = srv.url.removeprefix("http://")  # as OLLAMA_HOST: http:// meant (it crashed)
    route = _cli("show", "smart", "--config", str(config), "--url", bare)
    assert route.returncode == 0 and "Traceback" not in route.stderr, route.stderr
    assert _rows(route.stdout)[f"order now on {srv.url}"] == f"{SMOL}, {GEMMA}"
    assert _cli("show", "gem", "--url", bare).returncode == 0  # the server's model
    not_there = _cli("show", "cloud", "--config", str(config), "--url", srv.url)
    assert not_there.returncode == 0, not_there.stderr
    assert _rows(not_there.stdout)[f"on {srv.url}"] == "not a target there"


def test_show_of_an_alias_the_server_has(srv: Server, tmp_path: Path) -> None:
    """Found from outside: with a server started with `--config` giving aliases, `show
    ALIAS` said "model 'smollm2' is not in models", though `run` and `chat` took it: `show`
    looked the name up in its own configuration (the defaults) alone. It means what it means
    to the server, found on the configured port as `run` finds it."""
    port = str(srv.port)
    alias = _cli("show", "gem", "--models-dir", _models_dir(srv), LLM_ROUTER_PORT=port)
    assert alias.returncode == 0, alias.stderr
    rows = _rows(alias.stdout)
    assert rows["id"] == GEMMA and rows["quantization"] == "Q4_K_M", rows  # from its file
    assert rows[f"aliases on {srv.url}"] == "gem", rows
    elsewhere = str(tmp_path / "empty")  # the server's model, its files not here
    served = _cli("show", "gem", "--models-dir", elsewhere, LLM_ROUTER_PORT=port)
    assert served.returncode == 0, served.stderr
    assert _rows(served.stdout)["id"] == GEMMA and "Q4_K_M" in served.stdout


def test_show_of_a_route_the_server_has(srv: Server) -> None:
    """`show ROUTE --url URL` said "model 'auto' is neither on URL nor in models" (found from
    outside), though `run` and `chat` took the route: only a model's id or alias was asked of
    the server. A route shows its strategy, targets and the server's live order."""
    for found_by in ({"LLM_ROUTER_PORT": str(srv.port)}, {}):
        args = ["show", "smart"] + ([] if found_by else ["--url", srv.url.removeprefix("http://")])
        route = _cli(*args, **found_by)
        assert route.returncode == 0, route.stderr
        rows = _rows(route.stdout)
        assert route.stdout.lstrip().startswith("Route"), route.stdout
        assert rows["strategy"] == "balanced" and rows["targets"] == SMOL, rows
        assert rows["fallbacks"] == GEMMA, rows
        assert rows[f"order now on {srv.url}"] == f"{SMOL}, {GEMMA}", rows
        assert f"{SMOL}: closed" in rows["breakers"], rows
    template = _cli("show", "smart", "--template", "--url", srv.url)
    assert template.returncode == 1 and "is a route on" in template.stderr, template.stderr


def test_show_of_a_remote_target_the_server_has(tmp_path: Path) -> None:
    """`show REMOTE` without --config and --url (a server on the configured port) said the
    name was not in the models directory: it shows what the server says of the target (not
    its base URL, which the server tells no client: the server's configuration has it)."""
    (tmp_path / "models").mkdir()
    remote = {
        "id": "far",
        "aliases": ["f"],
        "provider": "openai",
        "model": "up-9",
        "base_url": f"http://127.0.0.1:{free_port()}/v1",
        "health_check_interval": 0,
    }
    config = {"models_dir": str(tmp_path / "models"), "provision_default_models": False,
              "models": [remote], "routes": [{"name": "r", "targets": ["far"]}]}  # fmt: skip
    server = Server(tmp_path, config).start()
    try:
        out = _cli("show", "f", "--models-dir", str(tmp_path / "models"),
                   LLM_ROUTER_PORT=str(server.port))  # fmt: skip
    finally:
        server.stop()
    assert out.returncode == 0, out.stderr
    rows = _rows(out.stdout)
    assert out.stdout.lstrip().startswith("Remote target"), out.stdout
    assert rows["id"] == "far" and rows["upstream model"] == "up-9", rows
    assert rows["provider"] == "openai" and rows[f"status on {server.url}"] == "loaded", rows
    assert "--config" in rows["base url"] and "127.0.0.1" not in rows["base url"], rows


def test_keys_create_checks_its_models_against_the_running_server(
    srv: Server, tmp_path: Path
) -> None:
    """`keys create app --models smollm2,auto`, as the README writes it (no --config),
    warned that the server's alias and route were "no model, alias, route or remote target":
    it checked the names against its own configuration (the defaults) alone."""
    data = {"LLM_ROUTER_DATA_DIR": str(tmp_path / "data")}  # not the server's: auth stays off
    argv = ["keys", "create", "app", "--scopes", "inference", "--models", "gem,smart"]
    made = _cli(*argv, LLM_ROUTER_PORT=str(srv.port), **data)
    assert made.returncode == 0 and made.stdout.strip().startswith("sk-llmr-"), made.stderr
    assert "warning" not in made.stderr, made.stderr
    typo = _cli(
        "keys", "create", "b", "--models", "gem,smrt", LLM_ROUTER_PORT=str(srv.port), **data
    )
    said = " ".join(typo.stderr.split())
    assert (
        typo.returncode == 0
        and f"'smrt' is no model, alias, route or remote target of {srv.url}" in said
    ), said
    alone = _cli("keys", "create", "c", "--models", "gem", **data)  # no server answers
    said = " ".join(alone.stderr.split())
    assert alone.returncode == 0 and "warning: 'gem' is no model" in said, said
    assert "no server answers" in said and "give --config the server's configuration" in said


def _rows(table: str) -> dict[str, str]:
    """The rows of `show`'s tables, name -> value."""
    cells = [[c.strip() for c in line.split("│")[1:-1]] for line in table.splitlines()]
    return {c[0]: c[1] for c in cells if len(c) == 2}


def test_chat_against_a_server_keeps_the_history(srv: Server) -> None:
    out = _cli(
        "chat", SMOL, "--url", srv.url, "--temperature", "0", "--max-tokens", "30",
        stdin="What is the capital of France?\nAnd of Italy?\n/bye\nnever sent\n",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    first, second = out.stdout.strip().split("\n\n")[:2]
    assert "Paris" in first and "Rome" in second


def test_chat_in_process(srv: Server) -> None:
    out = _cli(
        "chat", SMOL, "--models-dir", _models_dir(srv), "--temperature", "0",
        "--max-tokens", "30", stdin="What is the capital of France?\n",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "Paris" in out.stdout


def test_chat_and_run_leave_the_models_sampling_defaults(
    tmp_path: Path, smollm2_gguf: Path
) -> None:
    """An option not given is not sent, so the model's `sampling` applies, as a Modelfile's in
    `ollama run`: `chat` sent max_tokens 512 and `run` 256 whatever the model's entry said
    (found from outside: `max_tokens: 40` on a model, about 480 tokens in `chat`)."""
    import yaml

    models = link_models(tmp_path / "models", smollm2_gguf)
    entry = {"id": SMOL, "sampling": {"temperature": 0, "max_tokens": 5}}
    config = {"models_dir": str(models), "models": [entry]}
    local = tmp_path / "local.yaml"
    local.write_text(yaml.safe_dump(config))
    question = "Tell me about the sea."
    asked = _cli("run", SMOL, question, "--config", str(local), "--max-tokens", "5",
                 "--temperature", "0")  # fmt: skip
    assert asked.returncode == 0, asked.stderr
    expected = asked.stdout.strip()
    assert expected and len(expected.split()) <= 5
    run = _cli("run", SMOL, question, "--config", str(local))
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == expected
    chat = _cli("chat", SMOL, "--config", str(local), stdin=question + "\n")
    assert chat.returncode == 0, chat.stderr
    assert chat.stdout.strip() == expected
    server = Server(tmp_path, config).start()
    try:
        chat = _cli("chat", SMOL, "--url", server.url, stdin=question + "\n")
        assert chat.returncode == 0, chat.stderr
        assert chat.stdout.strip() == expected
        assert "completion_tokens=5 " in server.log()
    finally:
        server.stop()


def test_chat_with_an_unknown_model_fails_before_the_first_message(
    srv: Server, tmp_path: Path
) -> None:
    """As `ollama run nope`: the error at once, the models there are, a non-zero exit."""
    for where in (["--url", srv.url], ["--models-dir", _models_dir(srv)]):
        out = _cli("chat", "nope", *where, stdin="hi\n")
        assert out.returncode == 1, (where, out.stderr)
        assert out.stderr.count("does not exist") == 1 and "Traceback" not in out.stderr
        assert SMOL in out.stderr and GEMMA in out.stderr  # the hint
        assert out.stdout == ""
    # an alias is a model's name too: no message, no error, exit 0
    assert _cli("chat", "gem", "--url", srv.url, stdin="").returncode == 0
    config = tmp_path / "alias.yaml"
    config.write_text(json.dumps({"models_dir": _models_dir(srv),
                                  "models": [{"id": SMOL, "aliases": ["smol"]}]}))  # fmt: skip
    local = _cli("chat", "smol", "--config", str(config), stdin="")
    assert local.returncode == 0, local.stderr


def test_bench_against_a_server_and_in_process(srv: Server) -> None:
    out = _cli("bench", SMOL, "--url", srv.url, "--streams", "2", "--max-tokens", "8", "--json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert [r["streams"] for r in rows] == [1, 2]
    assert [r["tokens"] for r in rows] == [8, 16]
    assert all(r["tokens_per_second"] > 0 and r["ttft_ms"] > 0 for r in rows)
    local = _cli("bench", SMOL, "--models-dir", _models_dir(srv), "--streams", "2",
                 "--max-tokens", "4")  # fmt: skip
    assert local.returncode == 0, local.stderr
    assert "in process" in local.stdout and "TTFT" in local.stdout


def _sample(metrics: str, name: str, **labels: str) -> float:
    """The sum of the samples called `name` whose labels include `labels`."""
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        s.value
        for family in text_string_to_metric_families(metrics)
        for s in family.samples
        if s.name == name and labels.items() <= s.labels.items()
    )


def test_bench_decodes_every_answer_past_the_response_cache(
    tmp_path: Path, smollm2_gguf: Path
) -> None:
    """The bench's requests are greedy with one prompt: the kind the response cache answers
    and concurrent identical requests share. Run after run, each must be decoded."""
    models = link_models(tmp_path / "models", smollm2_gguf)
    server = Server(tmp_path, {"models_dir": str(models), "cache": {"enabled": True}}).start()
    try:
        reported = 0
        for _ in range(2):
            out = _cli("bench", SMOL, "--url", server.url, "--streams", "2", "--max-tokens",
                       "16", "--json")  # fmt: skip
            assert out.returncode == 0, out.stderr
            rows = json.loads(out.stdout)
            assert [(r["streams"], r["tokens"]) for r in rows] == [(1, 16), (2, 32)]
            reported += 4 + 16 + 32  # the warm-up's 4 tokens, then 1 and 2 streams
        metrics = httpx.get(server.url + "/metrics", timeout=10).text
        assert _sample(metrics, "llm_router_cache_lookups_total", result="hit") == 0
        assert _sample(metrics, "llm_router_requests_total", outcome="cache_hit") == 0
        generated = _sample(metrics, "llm_router_tokens_total", model=SMOL, kind="completion")
        assert generated == reported  # the model decoded every token the bench counted
        assert "cache=hit" not in server.log()
        # the control: the cache is on, and answers the same request sent without the header
        body = {"model": SMOL, "messages": [{"role": "user", "content": "Hi"}],
                "temperature": 0, "max_tokens": 4}  # fmt: skip
        caches = [
            httpx.post(server.url + "/v1/chat/completions", json=body, timeout=60).headers.get(
                "x-llm-router-cache"
            )
            for _ in range(2)
        ]
        assert caches == ["miss", "hit"]
    finally:
        server.stop()


def test_rm_unloads_then_deletes(srv: Server, tmp_path: Path) -> None:
    models = Path(_models_dir(srv))
    extra = models / "extra.gguf"
    os.link(models / f"{GEMMA}.gguf", extra)
    srv.wait_status("extra", "unloaded", timeout=10)
    httpx.post(srv.url + "/models/load", json={"model": "extra"}).raise_for_status()
    srv.wait_status("extra", "loaded")
    out = _cli("rm", "extra", "--url", srv.url, "--models-dir", str(models))
    assert out.returncode == 0, out.stderr
    assert not extra.exists() and (models / f"{GEMMA}.gguf").exists()
    deadline = time.monotonic() + 10
    while "extra" in srv.models() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "extra" not in srv.models()
    assert _cli("rm", "extra", "--models-dir", str(models)).returncode == 1


def test_doctor_prints_the_machine_the_settings_and_problems(tmp_path: Path, srv: Server) -> None:
    out = _cli("doctor", "--models-dir", _models_dir(srv))
    assert out.returncode == 0, out.stderr
    for text in ("physical", "logical", "GiB", "llama.cpp", "installed", SMOL, "2048",
                 "No problems found"):  # fmt: skip
        assert text in out.stdout, text
    (tmp_path / "file").write_text("")
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "bad.gguf").write_bytes(b"GGUF" + b"\0" * 20)
    bad = _cli("doctor", "--models-dir", str(broken))
    assert bad.returncode == 1 and "bad" in bad.stdout
    unwritable = _cli("doctor", "--models-dir", str(tmp_path / "file" / "models"))
    assert unwritable.returncode == 1 and "is a file" in unwritable.stdout
    # A look only: a directory still to be made is not made (it was, by the check itself).
    later = _cli("doctor", "--models-dir", str(tmp_path / "not" / "yet"))
    assert "cannot be" not in later.stdout and not (tmp_path / "not").exists()
    # what `serve` refuses: a public address without a key (it said "No problems found")
    public = tmp_path / "public.yaml"
    public.write_text(f"host: 0.0.0.0\ndata_dir: {tmp_path / 'data'}\n")
    keyless = {
        k: v for k, v in os.environ.items() if k not in ("LLM_ROUTER_MASTER_KEY", "LLAMA_API_KEY")
    }
    refused = subprocess.run(
        [sys.executable, "-m", "llm_router", "doctor", "--config", str(public), "--models-dir",
         _models_dir(srv)],
        capture_output=True, text=True, timeout=180, env=keyless,
    )  # fmt: skip
    assert refused.returncode == 1 and "refusing to listen on 0.0.0.0" in refused.stdout


def test_a_refused_key_is_one_line_that_says_what_to_set(
    tmp_path: Path, smollm2_gguf: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`show` crashed (KeyError) on a server that refused its key; `chat` printed the same
    refusal for every line and exited 0; all three quoted the HTTP envelope ("an
    Authorization header"), which is no help at a shell."""
    models = link_models(tmp_path / "models", smollm2_gguf)
    monkeypatch.setenv("LLM_ROUTER_MASTER_KEY", "sk-master-cli-test-0123456789")
    keyed = Server(tmp_path, {"models_dir": str(models), "watch_interval": 0}).start()
    monkeypatch.delenv("LLM_ROUTER_MASTER_KEY")
    try:
        shown = _cli("show", SMOL, "--url", keyed.url, "--models-dir", str(models))
        assert shown.returncode == 0 and "Traceback" not in shown.stderr, shown.stderr
        assert "set LLM_ROUTER_API_KEY" in " ".join(shown.stdout.split())
        assert "Q4_1" in shown.stdout  # what the files say is still shown
        chatted = _cli("chat", SMOL, "--url", keyed.url, stdin="hi\nhello\n")
        assert chatted.returncode == 1 and chatted.stderr.count("error:") == 1
        assert "set LLM_ROUTER_API_KEY" in " ".join(chatted.stderr.split())
        listed = _cli("ps", "--url", keyed.url)
        assert listed.returncode == 1 and "LLM_ROUTER_API_KEY" in listed.stderr
    finally:
        keyed.stop()


def test_piped_chat_stops_at_the_first_failed_turn(srv: Server) -> None:
    """A script piping into chat saw an error per line and exit 0 (it could not tell)."""
    too_long = "word " * 20000
    out = _cli("chat", SMOL, "--url", srv.url, stdin=f"{too_long}\nWhat is 2+2?\n")
    assert out.returncode == 1, out.stderr
    assert out.stderr.count("error:") == 1 and "Traceback" not in out.stderr
    assert out.stdout.strip() == ""  # the second line was never sent


def test_chat_says_once_that_the_server_went_away(tmp_path: Path, smollm2_gguf: Path) -> None:
    """A server killed mid-chat made a ~230-line traceback."""
    models = link_models(tmp_path / "models", smollm2_gguf)
    gone = Server(tmp_path, {"models_dir": str(models), "watch_interval": 0}).start()
    env = {**os.environ, "LLM_ROUTER_PORT": str(free_port())}
    chat = subprocess.Popen(
        [sys.executable, "-m", "llm_router", "chat", SMOL, "--url", gone.url,
         "--max-tokens", "4", "--temperature", "0"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert chat.stdin is not None and chat.stdout is not None
        chat.stdin.write("Hi\n")
        chat.stdin.flush()
        assert chat.stdout.readline().strip()  # the first answer came
        gone.stop()
        chat.stdin.write("And again?\n")
        chat.stdin.close()
        assert chat.wait(60) == 1
        err = chat.stderr.read() if chat.stderr else ""
        assert "lost the server at" in err and "Traceback" not in err, err
    finally:
        chat.kill()
        chat.wait()
        for stream in (chat.stdin, chat.stdout, chat.stderr):
            if stream is not None:
                stream.close()
        gone.stop()


def _terminal_child() -> None:
    """In the child, before the chat starts: the pty becomes its controlling terminal, so
    that ^C typed there is a SIGINT to it (without, the ^C reached nobody, and the test passed
    only when the answer ended by itself within the wait); and SIGINT is the default again,
    as at a terminal (a test run started in the background inherits it ignored, and Python
    then raises no KeyboardInterrupt)."""
    import fcntl
    import termios

    signal.signal(signal.SIGINT, signal.SIG_DFL)
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)


def test_chat_stops_an_answer_on_ctrl_c_and_goes_on(srv: Server) -> None:
    """At a terminal, Ctrl-C mid-answer ended the whole chat (exit 0, history lost); as in
    `ollama run` it stops that answer and gives the prompt back."""
    import pty
    import select

    leader, follower = pty.openpty()
    env = {**os.environ, "LLM_ROUTER_PORT": str(free_port()), "NO_COLOR": "1"}
    chat = subprocess.Popen(
        [sys.executable, "-m", "llm_router", "chat", SMOL, "--url", srv.url,
         "--max-tokens", "4000", "--temperature", "0"],
        stdin=follower, stdout=follower, stderr=follower, env=env, start_new_session=True,
        preexec_fn=_terminal_child,
    )  # fmt: skip
    os.close(follower)
    seen = b""

    def read_until(text: bytes, timeout: float = 120) -> None:
        nonlocal seen
        deadline = time.monotonic() + timeout
        while text not in seen and time.monotonic() < deadline:
            if select.select([leader], [], [], 0.5)[0]:
                try:
                    seen += os.read(leader, 4096)
                except OSError:
                    break
        assert text in seen, seen[-500:]

    try:
        read_until(b">>> ")
        os.write(leader, b"Tell me a very long story about a dragon.\n")
        start = len(seen)
        deadline = time.monotonic() + 120
        while len(seen) < start + 80 and time.monotonic() < deadline:  # the answer streams
            if select.select([leader], [], [], 0.5)[0]:
                seen += os.read(leader, 4096)
        before, stopped_at = seen.count(b">>> "), len(seen)
        os.write(leader, b"\x03")  # Ctrl-C, through the terminal: SIGINT
        deadline = time.monotonic() + 60
        while seen.count(b">>> ") == before and time.monotonic() < deadline:
            if select.select([leader], [], [], 0.5)[0]:
                seen += os.read(leader, 4096)
        assert seen.count(b">>> ") > before, seen[-500:]  # the prompt is back
        # ... at once: not after the rest of the story (~2,000 tokens, to the context's end)
        assert len(seen) - stopped_at < 1500, seen[stopped_at:]
        os.write(leader, b"/bye\n")
        assert chat.wait(30) == 0
    finally:
        chat.kill()
        os.close(leader)


def test_rm_and_show_template_of_a_model_only_the_server_sees_say_what_to_give(
    srv: Server, tmp_path: Path
) -> None:
    """They looked in ./models and said the model was not there ("models directory models
    does not exist"), though the server named with --url has it."""
    elsewhere = str(tmp_path / "empty")
    for args in (["rm", "gem"], ["show", "gem", "--template"]):
        out = _cli(*args, "--url", srv.url, "--models-dir", elsewhere)
        assert out.returncode == 1 and "Traceback" not in out.stderr
        text = " ".join(out.stderr.split())
        assert f"is on {srv.url}" in text and "--models-dir" in text, text
    assert GEMMA in srv.models()  # nothing was deleted


def test_rm_of_a_copy_the_server_does_not_serve_deletes_and_unloads_nothing(
    srv: Server, tmp_path: Path
) -> None:
    """Found from outside: `rm MODEL --url` with another models directory holding a copy
    (`run` had provisioned one in ./models) deleted the copy and force-unloaded the
    server's model, saying "deleted"."""
    elsewhere = tmp_path / "copy"
    elsewhere.mkdir()
    shutil.copyfile(Path(_models_dir(srv)) / f"{SMOL}.gguf", elsewhere / f"{SMOL}.gguf")
    httpx.post(srv.url + "/models/load", json={"model": SMOL}, timeout=120).raise_for_status()
    out = _cli("rm", SMOL, "--url", srv.url, "--models-dir", str(elsewhere))
    assert out.returncode == 1, out.stdout
    assert "another file" in " ".join(out.stderr.split()) and "--models-dir" in out.stderr
    assert (elsewhere / f"{SMOL}.gguf").exists()
    assert srv.models()[SMOL]["status"]["value"] == "loaded"


def test_run_reads_the_prompt_from_the_input(srv: Server) -> None:
    """As `echo hi | ollama run MODEL`: it said "Missing argument 'prompt'"."""
    args = ["run", SMOL, "--models-dir", _models_dir(srv), "--temperature", "0",
            "--max-tokens", "12"]  # fmt: skip
    piped = _cli(*args, stdin="What is the capital of France?\n")
    assert piped.returncode == 0 and "Paris" in piped.stdout, piped.stderr
    empty = _cli(*args, stdin="")
    assert empty.returncode == 2 and "no prompt" in empty.stderr


def test_run_asks_a_running_server(srv: Server) -> None:
    """`run` loaded the model in its own process even with a server running (twice the
    memory, and two processes' threads on the same cores); as `ollama run`, it now asks the
    server. The route `smart` is the server's alone: in this process it would not exist."""
    chat = _cli("run", "smart", "What is the capital of France?", "--url", srv.url,
                "--temperature", "0", "--max-tokens", "12")  # fmt: skip
    assert chat.returncode == 0 and "Paris" in chat.stdout, chat.stderr
    raw = _cli("run", "gem", "The capital of France is", "--raw", "--url", srv.url,
               "--temperature", "0", "--max-tokens", "4")  # fmt: skip
    assert raw.returncode == 0 and raw.stdout.strip(), raw.stderr
    unknown = _cli("run", "nope", "hi", "--url", srv.url)
    assert (
        unknown.returncode == 1 and "nope" in unknown.stderr and "Traceback" not in (unknown.stderr)
    )


def test_chat_commands_and_messages_of_several_lines(srv: Server) -> None:
    """As `ollama run`: `/?` lists the commands, a mistyped `/command` is refused (it was sent
    to the model as a question), and a message between two \"\"\" keeps its lines."""
    out = _cli(
        "chat", SMOL, "--url", srv.url, "--temperature", "0", "--max-tokens", "20",
        stdin='/?\n/sett temperature 0\n"""What is the capital\nof France?"""\n',
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "Available commands" in out.stdout and "/clear" in out.stdout
    assert "Unknown command '/sett'" in out.stderr
    assert "Paris" in out.stdout
