"""llama-server's and Ollama's flags and variables, read as they mean there (compat.py), and
where they stand against the config file, our own variables and the command line."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from llm_router.compat import foreign_env, llama_overrides
from llm_router.config_load import load_config
from llm_router.errors import ConfigError
from servers import free_port


def test_llama_servers_variables() -> None:
    env = {
        "LLAMA_ARG_CTX_SIZE": "8192",
        "LLAMA_ARG_N_PARALLEL": "2",
        "LLAMA_ARG_THREADS": "3",
        "LLAMA_ARG_BATCH": "256",
        "LLAMA_ARG_HOST": "127.0.0.2",
        "LLAMA_ARG_PORT": "9001",
        "LLAMA_ARG_MODELS_DIR": "/srv/models",
        "LLAMA_ARG_MODELS_MAX": "3",
        "LLAMA_ARG_MODELS_AUTOLOAD": "0",
    }
    s = load_config(environ=env)
    assert (s.host, s.port, str(s.models_dir), s.models_max, s.autoload) == (
        "127.0.0.2",
        9001,
        "/srv/models",
        3,
        False,
    )
    d = s.model_defaults
    # -c is the context of all slots together: each of the 2 slots gets half
    assert (d.context_size, d.parallel, d.threads, d.batch_size) == (4096, 2, 3, 256)


def test_ollamas_variables() -> None:
    env = {
        "OLLAMA_MODELS": "/var/ollama",
        "OLLAMA_KEEP_ALIVE": "10m",
        "OLLAMA_MAX_LOADED_MODELS": "2",
        "OLLAMA_NUM_PARALLEL": "6",
        "OLLAMA_HOST": "127.0.0.1:11434",
    }
    s = load_config(environ=env)
    assert (str(s.models_dir), s.keep_alive, s.models_max, s.port) == (
        "/var/ollama",
        "10m",
        2,
        11434,
    )
    assert s.model_defaults.parallel == 6 and s.host == "127.0.0.1"
    for value, host, port in [
        ("[::1]:8081", "::1", 8081),
        ("localhost", "localhost", None),
        ("http://127.0.0.1:7000", "127.0.0.1", 7000),
        ("https://0.0.0.0:7001/", "0.0.0.0", 7001),
    ]:
        found = foreign_env({"OLLAMA_HOST": value})
        assert (found["host"], found.get("port")) == (host, port and str(port))


def test_precedence_file_then_our_variables_then_flags(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text("models_max: 5\nport: 9100\nmodel_defaults: {threads: 1}\n")
    env = {
        "LLAMA_ARG_MODELS_MAX": "3",
        "LLAMA_ARG_PORT": "9001",
        "LLAMA_ARG_THREADS": "4",
        "LLAMA_ARG_N_PARALLEL": "2",
        "LLM_ROUTER_PORT": "9200",
    }
    s = load_config(cfg, {"models_max": 7}, environ=env)
    assert s.models_max == 7  # the command line over everything
    assert s.port == 9200  # LLM_ROUTER_* over the file and over LLAMA_ARG_*
    assert s.model_defaults.threads == 1  # the file over LLAMA_ARG_*
    assert s.model_defaults.parallel == 2  # what the file leaves out


@pytest.mark.parametrize(
    ("env", "flags", "file", "each", "slots"),
    [
        ({}, {"ctx_size": 4096, "parallel": 2}, "", 2048, 2),
        ({"LLAMA_ARG_N_PARALLEL": "2"}, {"ctx_size": 4096}, "", 2048, 2),
        ({"LLAMA_ARG_CTX_SIZE": "4096"}, {"parallel": 2}, "", 2048, 2),
        ({}, {"ctx_size": 4096}, "model_defaults: {parallel: 2}\n", 2048, 2),
        ({"LLAMA_ARG_CTX_SIZE": "4096"}, {}, "model_defaults: {context_size: 900}\n", 900, 4),
        ({}, {"ctx_size": 4096}, "model_defaults: {context_size: 900}\n", 1024, 4),
        ({"OLLAMA_NUM_PARALLEL": "8", "LLAMA_ARG_CTX_SIZE": "8192"}, {}, "", 1024, 8),
    ],
)
def test_ctx_size_is_shared_by_the_slots_from_whichever_source(
    tmp_path: Path, env: dict[str, str], flags: dict[str, int], file: str, each: int, slots: int
) -> None:
    """`-c` was divided by the command line's `-np` alone: with the slots from
    LLAMA_ARG_N_PARALLEL or the config, each got a quarter (found from outside). It is now
    divided once every source is read; a context given per slot by a later source wins over
    `-c` from an earlier one, and the other way round."""
    cfg = tmp_path / "c.yaml"
    cfg.write_text(file or "{}\n")
    s = load_config(cfg, llama_overrides(**flags), environ=env)
    assert (s.model_defaults.context_size, s.model_defaults.parallel or 4) == (each, slots)


def test_a_bad_variable_names_itself() -> None:
    with pytest.raises(ConfigError, match="LLAMA_ARG_CTX_SIZE"):
        load_config(environ={"LLAMA_ARG_CTX_SIZE": "lots"})
    with pytest.raises(ConfigError, match="models_max"):
        load_config(environ={"OLLAMA_MAX_LOADED_MODELS": "many"})


def test_one_model_flag_serves_that_file_alone(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "chat.gguf").write_bytes(b"GGUF")
    out = llama_overrides(model=str(tmp_path / "chat.gguf"), alias="chat", ctx_size=1000)
    assert out["models"] == [{"id": "chat", "path": str(tmp_path / "chat.gguf")}]
    assert out["provision_default_models"] is False
    assert Path(out["models_dir"]).is_dir() and not any(Path(out["models_dir"]).iterdir())
    # 4 slots by default, as llama-server: 250 tokens each
    assert load_config(overrides=out, environ={}).model_defaults.context_size == 250
    assert "models_dir" not in llama_overrides(model=str(tmp_path / "chat.gguf"), models_dir="/m")
    # A relative path is the working directory's, as llama-server reads it (it was looked up
    # in the empty models directory: `-m ./x.gguf` never worked).
    monkeypatch.chdir(tmp_path)
    out = llama_overrides(model="chat.gguf")
    assert out["models"] == [{"id": "chat", "path": str(tmp_path / "chat.gguf")}]
    # `-a a,b`: llama-server's comma-separated names (it was one model called "a,b")
    out = llama_overrides(model="chat.gguf", alias="smol, smollm2")
    assert out["models"] == [
        {"id": "smol", "path": str(tmp_path / "chat.gguf"), "aliases": ["smollm2"]}
    ]


def test_a_missing_model_file_is_an_error_and_ctx_0_is_the_models_own(tmp_path: Path) -> None:
    """llama-server exits on a missing -m; it started serving one broken model. `-c 0` (and
    LLAMA_ARG_CTX_SIZE=0) means the model's context there; it gave 16 tokens a slot."""
    with pytest.raises(ConfigError, match=r"'nope\.gguf' does not exist"):
        llama_overrides(model="nope.gguf")
    assert llama_overrides(ctx_size=0) == {}
    assert load_config(environ={"LLAMA_ARG_CTX_SIZE": "0"}).model_defaults.context_size is None


KEY = "sk-llama-server-style-key-0123456789"


def test_llama_servers_api_key_variable_is_the_master_key() -> None:
    from llm_router.gateway.service import Gateway

    gateway = Gateway(load_config(environ={}), environ={"LLAMA_API_KEY": KEY})
    assert gateway.active and gateway.authenticate(KEY).name == "master"
    ours = Gateway(
        load_config(environ={}), environ={"LLAMA_API_KEY": KEY, "LLM_ROUTER_MASTER_KEY": KEY + "x"}
    )
    assert ours.authenticate(KEY + "x").name == "master"  # ours first


@pytest.mark.real
def test_serve_with_llama_server_flags(smollm2_gguf: Path) -> None:
    """`llm-router serve -m FILE -a NAME -c 4096 -np 2 -t 2 --api-key KEY --port N`, as a
    llama-server user types it: that one model, under that name, 2 slots of 2048, and that
    key required (`--api-key` did not exist and LLAMA_API_KEY was ignored: the server ran
    open; found from outside)."""
    args = ["-m", smollm2_gguf.name, "-a", "chat", "-c", "4096", "-np", "2", "-t", "2"]
    args += ["--api-key", KEY]
    # the file named relative to the working directory
    with _serve_as_llama_server(args, cwd=smollm2_gguf.parent) as url:
        client = openai.OpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
        try:
            assert httpx.get(url + "/v1/models").status_code == 401
            assert [m.id for m in client.models.list()] == ["chat"]
            done = client.chat.completions.create(
                model="chat", messages=[{"role": "user", "content": "Hi"}], max_tokens=4
            )
            assert done.model == "chat" and done.choices[0].message.content
            unnamed = httpx.post(  # as llama-server's clients send it: no model
                url + "/v1/chat/completions",
                json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
                headers={"authorization": f"Bearer {KEY}"},
                timeout=60,
            )
            assert unnamed.status_code == 200 and unnamed.json()["model"] == "chat", unnamed.text
        finally:
            client.close()
        listing = httpx.get(url + "/models", headers={"authorization": f"Bearer {KEY}"})
        runtime = listing.json()["data"][0]["runtime"]
        assert (runtime["context_size"], runtime["parallel"], runtime["threads"]) == (2048, 2, 2)


@pytest.mark.real
def test_the_bundled_model_under_openai_names_answers_the_readmes_question(
    smollm2_gguf: Path, tmp_path: Path
) -> None:
    """`serve -m SmolLM2-...gguf -a gpt-4o-mini,gpt-4o`, llama-server's way of giving a model
    OpenAI's names: the bundled model's preset system prompt was keyed by the id its file
    name gives, so under `gpt-4o-mini` SmolLM2's template put in its own long default one,
    and the README's question got "L'Étoile, la Marseillaise, la femme au roi, ..." (found
    from outside)."""
    args = ["-m", str(smollm2_gguf), "-a", "gpt-4o-mini,gpt-4o", "-c", "2048", "-np", "1"]
    with (
        _serve_as_llama_server(args, cwd=tmp_path) as url,
        openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0) as client,
    ):
        answer = client.chat.completions.create(
            model="gpt-4o",
            messages=[{"role": "user", "content": "What is the capital of France?"}],
            temperature=0,
            max_tokens=16,
        )
    assert "Paris" in (answer.choices[0].message.content or ""), answer


@contextlib.contextmanager
def _serve_as_llama_server(args: list[str], cwd: Path) -> Iterator[str]:
    """`llm-router serve ARGS` as a llama-server user starts it (no `LLAMA_*`, `OLLAMA_*` or
    master key from the tests' environment), on a free port of 127.0.0.1; yields its URL
    once it is healthy and stops it (SIGTERM) afterwards."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LLAMA_", "OLLAMA_"))}
    env.pop("LLM_ROUTER_MASTER_KEY", None)
    cmd = [sys.executable, "-m", "llm_router", "serve", *args]
    cmd += ["--port", str(port), "--host", "127.0.0.1"]
    proc = subprocess.Popen(
        cmd, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(300):
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)
