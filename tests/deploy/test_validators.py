"""The deployment files pass the real validators, and a deliberately broken value fails them
with a message that names what is wrong: helm lint/template (with the chart's values
schema and its own checks), kubeconform against the Kubernetes 1.30 schemas and KEDA's /
the Prometheus Operator's CRD schemas, hadolint, and the Compose specification's schema."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.deploy import validators as v

pytestmark = pytest.mark.deploy

FULL = Path(__file__).with_name("values-full.yaml")


def test_helm_lint_strict_passes_with_defaults_and_with_every_option() -> None:
    for result in (v.helm_lint(), v.helm_lint(values_file=FULL)):
        assert result.returncode == 0, result.output
        assert "0 chart(s) failed" in result.output


@pytest.mark.parametrize("values_file", [None, FULL], ids=["defaults", "every-option"])
def test_every_rendered_manifest_passes_kubeconform(values_file: Path | None) -> None:
    rendered = v.helm_template(values_file=values_file)
    assert rendered.returncode == 0, rendered.output
    kinds = {doc["kind"] for doc in v.documents(rendered.stdout)}
    result = v.kubeconform(rendered.stdout)
    assert result.returncode == 0, result.output
    assert f"Valid: {len(v.documents(rendered.stdout))}, Invalid: 0, Errors: 0, Skipped: 0" in (
        result.output
    )
    expected = {"Deployment", "Service", "ConfigMap", "NetworkPolicy", "ScaledObject"}
    if values_file is not None:
        expected |= {"ServiceMonitor", "PrometheusRule", "TriggerAuthentication"}
    assert expected <= kinds


def test_dockerfile_passes_hadolint() -> None:
    result = v.hadolint(v.ROOT / "Dockerfile")
    assert result.returncode == 0, result.output


def test_compose_file_follows_the_compose_specification() -> None:
    document = yaml.safe_load((v.ROOT / "docker-compose.yml").read_text())
    assert v.compose_errors(document) == []


# -- deliberately broken values -------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "message", "lint"),
    [
        (
            "config.MAX_CONCURRENT_REQUESTS=lots",
            "at '/config/MAX_CONCURRENT_REQUESTS': got string, want integer",
            True,
        ),
        ("config.HTTP_PORT=70000", "/config/HTTP_PORT", True),
        ("config.ENGINE=gpt", "/config/ENGINE", True),
        (
            "config.MAX_CONCURENT_REQUESTS=4",
            "additional properties 'MAX_CONCURENT_REQUESTS'",
            True,
        ),
        (
            "keda.kafka.tiers.urgent.lagThreshold=0",
            "/keda/kafka/tiers/urgent/lagThreshold",
            True,
        ),
        # The chart's own checks (`fail`); helm lint only logs those, so template is the gate.
        (
            "consumer.terminationGracePeriodSeconds=30",
            "consumer.terminationGracePeriodSeconds (30) must be above config.DRAIN_TIMEOUT_S",
            False,
        ),
        (
            "keda.maxReplicaCount=40",
            "keda.maxReplicaCount (40) is above config.KAFKA_PARTITIONS x 4 tiers (32)",
            False,
        ),
    ],
)
def test_a_broken_value_fails_helm_with_a_clear_message(
    value: str, message: str, lint: bool
) -> None:
    results = [v.helm_template(value)] + ([v.helm_lint(value)] if lint else [])
    for result in results:
        assert result.returncode != 0
        assert message in result.output, result.output


def test_a_misspelt_kubernetes_field_fails_kubeconform_naming_it() -> None:
    rendered = v.helm_template(
        "consumer.extraVolumes[0].name=models",
        "consumer.extraVolumes[0].persistentVolumeClaim.claimName=models",
        "consumer.extraVolumes[0].persistentVolumeClaim.readonly=true",  # the field is readOnly
    )
    assert rendered.returncode == 0, rendered.output
    result = v.kubeconform(rendered.stdout)
    assert result.returncode != 0
    assert "Deployment explainstream-consumer is invalid" in result.output
    assert "persistentVolumeClaim': additional properties 'readonly' not allowed" in (result.output)


def test_a_misspelt_keda_field_fails_against_kedas_own_crd_schema() -> None:
    rendered = v.helm_template("keda.behavior.scaleUp.stabilisationWindowSeconds=0")
    assert rendered.returncode == 0, rendered.output
    result = v.kubeconform(rendered.stdout)
    assert result.returncode != 0
    assert "ScaledObject explainstream-consumer is invalid" in result.output
    assert "'stabilisationWindowSeconds' not allowed" in result.output


def test_a_broken_dockerfile_fails_hadolint(tmp_path: Path) -> None:
    dockerfile = tmp_path / "Dockerfile"
    dockerfile.write_text("FROM python\nRUN cd /tmp && pip install explainstream\n")
    result = v.hadolint(dockerfile)
    assert result.returncode != 0
    assert "DL3006" in result.output  # untagged base image
    assert "DL3003" in result.output  # cd instead of WORKDIR


def test_a_broken_compose_file_fails_the_compose_schema() -> None:
    document = yaml.safe_load((v.ROOT / "docker-compose.yml").read_text())
    document["services"]["consumer"]["restart"] = ["always"]
    document["services"]["gateway"]["stop_grace_perod"] = "10s"
    errors = v.compose_errors(document)
    assert any(e.startswith("services/consumer/restart:") for e in errors), errors
    assert any("stop_grace_perod" in e for e in errors), errors
