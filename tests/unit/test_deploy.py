"""Dockerfile and docker-compose.yml agree with the service: real settings, non-root
containers, the right ports and mounts. (The Helm chart is rendered and checked by the real
tools in tests/deploy.)"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from consumer.config import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

YAML_FILES = sorted([*(ROOT / "deploy").rglob("*.yml"), COMPOSE])
ENV_NAMES = frozenset(name.upper() for name in Settings.model_fields)
NON_ROOT_UID = 10001


def _docs(path: Path) -> list[dict[str, Any]]:
    with path.open() as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc is not None]


def _compose() -> dict[str, Any]:
    return _docs(COMPOSE)[0]


def _explainstream_services() -> dict[str, dict[str, Any]]:
    services = _compose()["services"]
    return {n: s for n, s in services.items() if s.get("image", "").startswith("explainstream")}


def _interpolate(value: object) -> str:
    """Compose's ``${VAR:-default}`` with an empty environment."""
    return re.sub(r"\$\{\w+(?::?-(.*?))?\}", lambda m: m.group(1) or "", str(value))


def _dockerfile_final_stage() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    instructions = []
    for line in text.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            word, _, rest = line.partition(" ")
            instructions.append((word.upper(), rest.strip()))
    last_from = max(i for i, (word, _) in enumerate(instructions) if word == "FROM")
    return instructions[last_from:]


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_deploy_file_is_valid_yaml(path):
    assert _docs(path), f"{path} holds no document"


def test_dockerfile_runs_explainstream_as_non_root_user():
    stage = _dockerfile_final_stage()
    users = [rest for word, rest in stage if word == "USER"]
    assert users, "final stage has no USER"
    uid = users[-1].split(":")[0]
    assert uid == str(NON_ROOT_UID)
    words = dict(stage)
    assert words["ENTRYPOINT"] == '["explainstream"]'
    assert words["CMD"] == '["consume"]'
    assert set(words["EXPOSE"].split()) == {"8000", "9090"}
    assert "/health" in words["HEALTHCHECK"]


def test_dockerfile_bakes_in_no_secrets():
    text = DOCKERFILE.read_text()
    for name in ("ADMIN_TOKEN", "KAFKA_SASL_PASSWORD", "KAFKA_SASL_USERNAME"):
        assert not re.search(rf"^\s*(ENV|ARG)\b.*\b{name}\b", text, re.M), name


def test_dockerfile_builds_llama_with_cmake_args_and_runs_on_python_slim():
    text = DOCKERFILE.read_text()
    assert re.search(r"^ARG CMAKE_ARGS=", text, re.M)
    # The Debian release is named: a bare 3.11-slim moved from bookworm to trixie under us.
    assert re.search(r"^ARG RUNTIME_IMAGE=python:3\.11\.\d+-slim-bookworm$", text, re.M)
    # The otel extra ships too: traces need only OTEL_EXPORTER_OTLP_ENDPOINT, and nothing of
    # OpenTelemetry is imported without it.
    assert "explainstream[consumer,otel]" in text


def test_compose_runs_explainstream_services_as_non_root():
    services = _explainstream_services()
    assert set(services) >= {"topics", "consumer", "gateway"}
    for name, svc in services.items():
        assert svc["user"].split(":")[0] == str(NON_ROOT_UID), name
        assert svc["read_only"] is True, name


def test_every_env_variable_in_compose_is_a_setting():
    names = {
        key: f"docker-compose.yml:{svc_name}"
        for svc_name, svc in _explainstream_services().items()
        for key in svc.get("environment", {})
    }
    unknown = {n: where for n, where in names.items() if n not in ENV_NAMES}
    assert not unknown, f"not a Settings field: {unknown}"


def test_compose_consumer_environment_is_a_valid_configuration():
    env = {k: _interpolate(v) for k, v in _compose()["services"]["consumer"]["environment"].items()}
    settings = Settings.from_env(env)
    assert settings.engine.value == "llama"
    assert (settings.http_port, settings.metrics_port) == (8000, 9090)


def test_compose_stop_grace_period_exceeds_drain_timeout():
    consumer = _compose()["services"]["consumer"]
    compose_drain = float(_interpolate(consumer["environment"]["DRAIN_TIMEOUT_S"]))
    assert int(consumer["stop_grace_period"].removesuffix("s")) > compose_drain


def test_compose_wires_kafka_topics_consumer_and_monitoring():
    services = _compose()["services"]
    kafka = services["kafka"]
    assert kafka["image"] == "apache/kafka:4.1.1"
    advertised = kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert "127.0.0.1:9092" in advertised
    internal = services["consumer"]["environment"]["KAFKA_BOOTSTRAP_SERVERS"]
    assert internal in advertised
    assert services["topics"]["command"] == ["topics", "create"]
    assert services["consumer"]["depends_on"]["topics"]["condition"] == (
        "service_completed_successfully"
    )
    mounts = [v.split(":")[0] for s in ("prometheus", "grafana") for v in services[s]["volumes"]]
    host_paths = [m for m in mounts if m.startswith("./")]
    for path in (
        "./deploy/prometheus/prometheus.yml",
        "./deploy/prometheus/rules.yml",
        "./deploy/grafana/provisioning",
    ):
        assert path in host_paths
    for path in host_paths:
        assert (ROOT / path).exists(), path
