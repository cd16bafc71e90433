"""The Ray deployment's pure parts, in milliseconds and without a cluster: the `ray:` settings
as Serve options, each side's derived settings, the messages between them, the directory."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llm_router.config import Settings
from llm_router.errors import ConfigError, ModelLoadFailed
from llm_router.ray_serve.deploy import model_options
from llm_router.ray_serve.directory import Directory, ReplicaView
from llm_router.ray_serve.wire import (
    INGRESS_MEMORY,
    error_message,
    event_message,
    ingress_settings,
    replica_settings,
    settings_from_wire,
    settings_to_wire,
)
from llm_router.types import Finished, TextDelta, TokenLogprob, Usage
from llm_router.worker.protocol import event_from_wire


def test_fixed_replicas_with_their_resources() -> None:
    settings = Settings(
        ray={
            "replicas": 3,
            "num_cpus": 2,
            "memory": "1GiB",
            "resources": {"gpu_box": 1},
            "max_replicas_per_node": 1,
            "max_ongoing_requests": 5,
        }
    )
    options = model_options(settings)
    assert options["num_replicas"] == 3 and "autoscaling_config" not in options
    assert options["ray_actor_options"] == {
        "num_cpus": 2,
        "memory": 2**30,
        "resources": {"gpu_box": 1},
    }
    assert options["max_replicas_per_node"] == 1
    assert options["max_ongoing_requests"] == 5


def test_autoscaling_on_ongoing_requests() -> None:
    settings = Settings(
        ray={"replicas": 2, "autoscaling": {"max_replicas": 6, "target_ongoing_requests": 3}}
    )
    options = model_options(settings)
    assert "num_replicas" not in options
    assert options["autoscaling_config"] == {
        "min_replicas": 1,
        "initial_replicas": 2,
        "max_replicas": 6,
        "target_ongoing_requests": 3,
        "upscale_delay_s": 10.0,
        "downscale_delay_s": 120.0,
    }


def test_bad_ray_settings_name_the_key(tmp_path: Path) -> None:
    from llm_router.config_load import load_config

    path = tmp_path / "c.yaml"
    path.write_text("ray: {memory: lots}\n")
    with pytest.raises(ConfigError, match="memory"):
        load_config(path, environ={})
    path.write_text("ray: {replicas: 0}\n")
    with pytest.raises(ConfigError, match="replicas"):
        load_config(path, environ={})


def test_a_replica_keeps_its_lru_and_threads_to_its_cpus() -> None:
    settings = Settings(
        models=[{"id": "m", "path": "m.gguf", "pin": True}],
        preload=["m"],
        ray={"models_per_replica": 3, "num_cpus": 1.5, "memory": "3GiB"},
    )
    replica = replica_settings(settings)
    assert replica.models_max == 3
    assert replica.model_defaults.threads == 1 and replica.thread_budget == 1
    assert replica.memory_budget == "3GiB"
    assert replica.preload == [] and not replica.models[0].pin  # Serve's LRU decides
    assert not replica.provision_default_models and replica.watch_interval == 0
    own = replica_settings(Settings(model_defaults={"threads": 4}, ray={"num_cpus": 1}))
    assert own.model_defaults.threads == 4  # configured threads win


def test_the_ingress_never_evicts_or_unloads() -> None:
    ingress = ingress_settings(Settings(models_max=2, keep_alive="1m"))
    assert ingress.models_max == 0 and ingress.memory_budget == INGRESS_MEMORY
    assert ingress.keep_alive == -1 and not ingress.spare_workers


def test_settings_travel_with_absolute_paths(tmp_path: Path) -> None:
    wire = settings_to_wire(Settings(models_dir=Path("models"), port=9000), tmp_path)
    back = settings_from_wire(wire)
    assert back.models_dir == tmp_path / "models" and back.port == 9000
    absolute = settings_to_wire(Settings(models_dir=tmp_path / "m"), Path("/elsewhere"))
    assert absolute["models_dir"] == str(tmp_path / "m")


def test_events_and_errors_cross_as_worker_messages() -> None:
    lp = (TokenLogprob(b"Hi", -0.5, ((b"Hi", -0.5), (b"Ho", -1.0))),)
    for event in (
        TextDelta("Hi", lp),
        Finished("length", Usage(3, 2, 1)),
        Finished("stop", Usage(3, 2), "Paris"),  # the stop string that ended it
    ):
        assert event_from_wire(event_message(event)) == event
    err = event_from_wire(error_message(ModelLoadFailed("bad file")))
    assert isinstance(err, ModelLoadFailed) and err.message == "bad file"


def _report(replica: str, node: str, *models: str) -> dict[str, object]:
    return {
        "replica": replica,
        "node_id": node,
        "node_ip": "127.0.0.1",
        "pid": 1,
        "models": [{"id": m, "status": "loaded", "pid": 2} for m in models],
    }


def test_directory_lists_fresh_reports_and_who_holds_what(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import llm_router.ray_serve.directory as directory

    now = [100.0]
    monkeypatch.setattr(directory.time, "monotonic", lambda: now[0])
    d = Directory()
    d.report(_report("r2", "n2", "gemma"))
    d.report(_report("r1", "n1", "smol", "gemma"))
    assert [r["replica"] for r in d.replicas()] == ["r1", "r2"]
    view = ReplicaView(None)
    view.replicas = d.replicas()
    assert [(h["replica"], h["node_id"]) for h in view.holding("gemma")] == [
        ("r1", "n1"),
        ("r2", "n2"),
    ]
    assert view.holding("smol")[0]["replica_pid"] == 1 and view.holding("nope") == []
    now[0] += directory.STALE / 2
    d.report(_report("r1", "n1", "smol"))
    now[0] += directory.STALE * 0.75  # r2 stopped reporting (killed): it drops out
    assert [r["replica"] for r in d.replicas()] == ["r1"]


def test_no_cluster_at_the_address_is_a_clear_error(tmp_path: Path) -> None:
    import subprocess
    import sys

    from servers import free_port

    config = tmp_path / "c.yaml"
    config.write_text(f"models_dir: {tmp_path}\nprovision_default_models: false\n")
    address = f"127.0.0.1:{free_port()}"  # nothing listens there
    for command in (
        ["ray", "deploy", str(config), "--address", address],
        ["serve", "--config", str(config), "--ray", address],
    ):
        out = subprocess.run(
            [sys.executable, "-m", "llm_router", *command],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"},
        )
        assert out.returncode == 2, out.stderr[-2000:]
        assert f"no Ray cluster answers at '{address}'" in out.stderr
