"""Configuration: the example file, precedence of the sources, and errors that name the key."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from llm_router.config import EngineOptions, ModelConfig, SamplingDefaults, Settings
from llm_router.config_load import load_config
from llm_router.errors import ConfigError

EXAMPLE = Path(__file__).resolve().parents[1] / "config.example.yaml"


def _write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(_write(tmp_path, text), environ={})
    return info.value.message


# -- the example file -------------------------------------------------------------------------


def test_example_config_loads_as_the_defaults_plus_its_entries() -> None:
    settings = load_config(EXAMPLE, environ={})

    assert settings.model_copy(update={"models": [], "routes": []}) == Settings()
    assert settings.models_dir == Path("models")
    assert settings.preload == []
    model, remote = settings.models
    assert remote.provider == "openai" and remote.api_key_env == "BOX_A_KEY"
    assert remote.cost.output == 0.6
    [route] = settings.routes
    assert route.name == "auto" and route.targets == [model.id, remote.id]
    assert model.id == "SmolLM2-135M-Instruct.Q4_1"
    assert model.aliases == ["smollm2", "default"]
    assert model.context_size == 2048
    assert model.engine_options().context_size == 2048


@pytest.mark.parametrize("model", [Settings, ModelConfig, EngineOptions], ids=lambda m: m.__name__)
def test_example_config_documents_every_option(model: type[Settings | EngineOptions]) -> None:
    keys = set(re.findall(r"^\s*(?:- )?(\w+):", EXAMPLE.read_text(), flags=re.MULTILINE))
    undocumented = set(model.model_fields) - keys
    assert not undocumented, f"add {sorted(undocumented)} to config.example.yaml"


# -- precedence -------------------------------------------------------------------------------


def test_precedence_defaults_file_env_cli(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        "host: 0.0.0.0\nport: 9000\nmodel_defaults:\n  threads: 2\n  context_size: 1024\n",
    )
    env = {"LLM_ROUTER_PORT": "9100", "LLM_ROUTER_MODEL_DEFAULTS__THREADS": "4"}

    settings = load_config(path, {"port": 9200}, environ=env)

    assert settings.port == 9200  # CLI beats environment and file
    assert settings.model_defaults.threads == 4  # environment beats file, nested key
    assert settings.model_defaults.context_size == 1024  # file value kept beside the env one
    assert settings.host == "0.0.0.0"  # file beats default
    assert settings.models_max == 4  # default


def test_environment_beats_file_without_cli(tmp_path: Path) -> None:
    path = _write(tmp_path, "port: 9000\n")
    assert load_config(path, environ={"LLM_ROUTER_PORT": "9100"}).port == 9100
    assert load_config(path, environ={}).port == 9000


def test_cli_flags_left_unset_do_not_override(tmp_path: Path) -> None:
    path = _write(tmp_path, "port: 9000\nhost: 0.0.0.0\n")
    settings = load_config(path, {"port": None, "host": None, "models_max": 2}, environ={})
    assert (settings.port, settings.host, settings.models_max) == (9000, "0.0.0.0", 2)


def test_no_file_gives_defaults() -> None:
    assert load_config(None, environ={}) == Settings()


def test_empty_file_gives_defaults(tmp_path: Path) -> None:
    assert load_config(_write(tmp_path, "# nothing set\n"), environ={}) == Settings()


def test_unrelated_environment_is_ignored() -> None:
    env = {"PORT": "1", "LLM_ROUTER": "x", "HOME": "/root"}
    assert load_config(None, environ=env) == Settings()


# -- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ('port: "abc"\n', "port"),
        ("port: 70000\n", "port"),
        ("models: [{id: x, context_size: 3}]\n", "models.0.context_size"),
        ('models: [{id: x, keep_alive: "soon"}]\n', "models.0.keep_alive"),
        ('keep_alive: "5 minutes"\n', "keep_alive"),
        ('memory_budget: "lots"\n', "memory_budget"),
        ('memory_budget: "150%"\n', "memory_budget"),
        ("log_level: verbose\n", "log_level"),
        ("model_defaults: {parallel: 0}\n", "model_defaults.parallel"),
        # accepted, then every request to them was a 503 "could not be reached"
        ('models: [{id: r, provider: openai, base_url: "127.0.0.1:9/v1"}]\n', "models.0.base_url"),
        ('models: [{id: r, provider: openai, base_url: "htp:/bad url"}]\n', "models.0.base_url"),
        ('models: [{id: r, provider: openai, base_url: "http://"}]\n', "models.0.base_url"),
    ],
)
def test_bad_value_names_its_key(tmp_path: Path, text: str, key: str) -> None:
    message = _error(tmp_path, text)
    assert re.search(rf"(^|\W){re.escape(key)}:", message), message


def test_a_task_is_said_of_remote_targets_only(tmp_path: Path) -> None:
    message = _error(tmp_path, "models: [{id: x, task: embed}]\n")
    assert "model 'x': task is for remote targets" in message, message


def test_bad_value_error_names_the_file(tmp_path: Path) -> None:
    assert "config.yaml" in _error(tmp_path, "port: -1\n")


def test_bad_environment_value_names_its_key() -> None:
    with pytest.raises(ConfigError, match=r"\bport\b"):
        load_config(None, environ={"LLM_ROUTER_PORT": "abc"})


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("prot: 1\n", "prot"),
        ("model_defaults: {thread: 2}\n", "model_defaults.thread"),
        ("models: [{id: x, alias: [y]}]\n", "models.0.alias"),
    ],
)
def test_unknown_key_is_an_error_naming_it(tmp_path: Path, text: str, key: str) -> None:
    assert key in _error(tmp_path, text)


def test_model_without_id_is_an_error(tmp_path: Path) -> None:
    assert "models.0.id" in _error(tmp_path, "models: [{context_size: 2048}]\n")


def test_tool_calls_can_be_switched_off_for_a_local_model(tmp_path: Path) -> None:
    settings = load_config(_write(tmp_path, "models: [{id: smol, tools: false}]\n"), environ={})
    assert settings.models[0].tools is False


def test_sampling_defaults_fill_only_what_the_request_leaves_out() -> None:
    sampling = SamplingDefaults(temperature=0.2, max_tokens=64, stop=["END"])
    assert sampling.fill({}) == {"temperature": 0.2, "max_tokens": 64, "stop": ["END"]}
    assert sampling.fill({"temperature": 1.0, "stop": None}) == {"max_tokens": 64, "stop": ["END"]}
    assert sampling.fill({"max_completion_tokens": 8}) == {"temperature": 0.2, "stop": ["END"]}
    assert SamplingDefaults().fill({}) == {}


def test_yaml_syntax_error_says_where_on_one_line(tmp_path: Path) -> None:
    message = _error(tmp_path, "port: 8080\nroutes:\n  - name: a\n   targets: [b]\n")
    assert message.startswith(f"{tmp_path / 'config.yaml'}:4:4: not valid YAML: ")
    assert "from line 3" in message and "\n" not in message and "unicode string" not in message


def test_a_file_that_is_not_utf8_is_a_config_error(tmp_path: Path) -> None:
    """It was a UnicodeDecodeError: `serve` ended with a traceback (found from outside)."""
    path = tmp_path / "config.yaml"
    path.write_bytes(b"\x93\xffbinary")
    with pytest.raises(ConfigError, match=r"config\.yaml is not UTF-8 text \(byte 0x93 at"):
        load_config(path, environ={})


def test_json_syntax_error_says_where(tmp_path: Path) -> None:
    path = tmp_path / "config.json"
    path.write_text('{"port": 8080,}')
    with pytest.raises(ConfigError, match=r"config\.json:1:15: not valid JSON: Expecting"):
        load_config(path, environ={})


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    assert "mapping" in _error(tmp_path, "- port: 8080\n")


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope\.yaml"):
        load_config(tmp_path / "nope.yaml", environ={})


@pytest.mark.parametrize(
    "models",
    [
        "[{id: a}, {id: a}]",
        "[{id: a, aliases: [b]}, {id: b}]",
        "[{id: a, aliases: [c]}, {id: b, aliases: [c]}]",
        "[{id: a, aliases: [a]}]",
    ],
)
def test_duplicate_model_names_are_an_error(tmp_path: Path, models: str) -> None:
    assert "models" in _error(tmp_path, f"models: {models}\n")


# -- JSON -------------------------------------------------------------------------------------


def test_json_config_file(tmp_path: Path) -> None:
    data = {
        "port": 9001,
        "keep_alive": -1,
        "model_defaults": {"threads": 3},
        "models": [{"id": "m", "path": "m.gguf", "aliases": ["mm"], "pin": True}],
    }
    path = _write(tmp_path, json.dumps(data), "config.json")

    settings = load_config(path, environ={})

    assert settings.port == 9001
    assert settings.keep_alive == -1
    assert settings.model_defaults.threads == 3
    [model] = settings.models
    assert (model.id, model.path, model.aliases, model.pin) == ("m", Path("m.gguf"), ["mm"], True)


def test_json_syntax_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"config\.json"):
        load_config(_write(tmp_path, '{"port": 9001,}', "config.json"), environ={})


_ROUTE_MODELS = "models:\n  - {id: a, path: a.gguf}\n  - {id: b, path: b.gguf}\nroutes:\n"


@pytest.mark.parametrize(
    ("routes", "says"),
    [
        ("  - {name: r, targets: [a, b], split: {a: -1, b: 1}}", "the weight of 'a' is negative"),
        ("  - {name: r, targets: [a, b], split: {a: 0, b: 0}}", "one weight must be positive"),
        ("  - {name: r, targets: [a], split: {zz: 1}}", "'zz' is not one of the route's targets"),
        ("  - {name: r, targets: [a]}\n  - {name: r, targets: [b]}", "'r' is used twice"),
        ("  - {name: r, targets: [a]}\n  - {name: s, targets: [r]}", "names the route 'r'"),
        ("  - {name: r, targets: [a], fallbacks: [r]}", "routes do not nest"),
        ("  - {name: a, targets: [b]}", "'a' is already a model name"),
    ],
)
def test_a_route_that_could_never_work_as_written_is_an_error(
    tmp_path: Path, routes: str, says: str
) -> None:
    """Checked when the configuration loads (at start and at a reload), not found at the first
    request, nor skipped without a word (a route named as a target was never tried)."""
    assert says in _error(tmp_path, _ROUTE_MODELS + routes)


def test_a_bad_value_from_a_variable_names_the_variable() -> None:
    with pytest.raises(ConfigError) as info:
        load_config(environ={"LLM_ROUTER_MODEL_DEFAULTS__THREADS": "x"})
    assert "model_defaults.threads (from LLM_ROUTER_MODEL_DEFAULTS__THREADS):" in info.value.message
    with pytest.raises(ConfigError) as info:  # a CLI flag is not a variable
        load_config(overrides={"port": "x"}, environ={"LLM_ROUTER_PORT": "x"})
    assert info.value.message.startswith("invalid configuration: port: ")


def test_variables_that_name_no_setting_are_warned_of(caplog: pytest.LogCaptureFixture) -> None:
    env = {"LLM_ROUTER_MODEL_MAX": "3", "LLM_ROUTER_MASTER_KEY": "k", "LLM_ROUTER_PORT": "9"}
    with caplog.at_level("WARNING", logger="llm_router.config"):
        assert load_config(environ=env).port == 9
    assert [r.getMessage() for r in caplog.records] == [
        "ignoring environment variables that name no setting: LLM_ROUTER_MODEL_MAX"
    ]
