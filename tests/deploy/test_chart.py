"""The Helm chart installs what the manual (docs/manual/deployment.md) describes and agrees
with the service: rendered by the real ``helm template``, then read as the Kubernetes
objects it would create."""

from __future__ import annotations

import math
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from consumer.config import TIERS, Settings
from tests.deploy import chart_schema
from tests.deploy import validators as v

pytestmark = pytest.mark.deploy

FULL = Path(__file__).with_name("values-full.yaml")
NON_ROOT_UID = 10001
CONSUMER = "explainstream-consumer"
ENV_NAMES = frozenset(name.upper() for name in Settings.model_fields)


@cache
def _render(values_file: Path | None = None) -> tuple[dict[str, Any], ...]:
    result = v.helm_template(values_file=values_file)
    assert result.returncode == 0, result.output
    return tuple(v.documents(result.stdout))


def _one(kind: str, name: str, values_file: Path | None = None) -> dict[str, Any]:
    found = [o for o in _render(values_file) if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def _values() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((v.CHART / "values.yaml").read_text())
    return loaded


def _configmap(values_file: Path | None = None) -> dict[str, str]:
    data: dict[str, str] = _one("ConfigMap", "explainstream-config", values_file)["data"]
    return data


def _pod(name: str) -> dict[str, Any]:
    pod: dict[str, Any] = _one("Deployment", name)["spec"]["template"]["spec"]
    return pod


def _consumer_container() -> dict[str, Any]:
    return next(c for c in _pod(CONSUMER)["containers"] if c["name"] == "consumer")


def test_the_chart_installs_the_resources_the_readme_lists() -> None:
    kinds = sorted(f"{o['kind']}/{o['metadata']['name']}" for o in _render())
    assert kinds == [
        "ConfigMap/explainstream-config",
        "Deployment/explainstream-consumer",
        "Deployment/explainstream-gateway",
        "NetworkPolicy/explainstream-consumer",
        "NetworkPolicy/explainstream-gateway",
        "PodDisruptionBudget/explainstream-consumer",
        "PodDisruptionBudget/explainstream-gateway",
        "ScaledObject/explainstream-consumer",
        "Service/explainstream-consumer",
        "Service/explainstream-gateway",
        "ServiceAccount/explainstream",
    ]
    manual = (v.ROOT / "docs" / "manual" / "deployment.md").read_text()
    for kind in kinds:
        assert f"`{kind.split('/')[0]}`" in manual, f"the manual's Helm section omits {kind}"


def test_values_cover_every_setting_exactly_once() -> None:
    values = _values()
    config = set(values["config"])
    secret = set(values["secrets"]["keys"])
    pod = set(chart_schema.POD_SETTINGS)
    assert not config & secret, "a setting is both in config and in the Secret"
    missing = ENV_NAMES - config - secret - pod
    assert not missing, (
        f"add to the chart's values.yaml config (then `make chart-schema`): {missing}"
    )
    assert config | secret | pod == ENV_NAMES, f"not settings: {(config | secret) - ENV_NAMES}"


def test_values_schema_is_generated_from_the_settings() -> None:
    committed = (v.CHART / "values.schema.json").read_text()
    assert committed == chart_schema.render(), "values.schema.json is stale: `make chart-schema`"


@pytest.mark.parametrize("values_file", [None, FULL], ids=["defaults", "every-option"])
def test_configmap_is_a_valid_configuration(values_file: Path | None) -> None:
    secret = {"KAFKA_SASL_USERNAME": "user", "KAFKA_SASL_PASSWORD": "secret"}
    settings = Settings.from_env({**_configmap(values_file), **secret})
    assert settings.engine.value == "llama"
    assert settings.n_gpu_layers != 0, "the consumer requests a GPU: offload layers to it"


def test_secret_references_are_settings_and_optional() -> None:
    for name in (CONSUMER, "explainstream-gateway"):
        container = _pod(name)["containers"][0]
        refs = {
            e["name"]: e["valueFrom"]["secretKeyRef"]
            for e in container["env"]
            if "secretKeyRef" in e.get("valueFrom", {})
        }
        # The gateway has no admin routes: it does not get ADMIN_TOKEN.
        unused = {"ADMIN_TOKEN"} if name == "explainstream-gateway" else set()
        assert set(refs) == set(chart_schema.SECRET_SETTINGS) - unused
        for key, ref in refs.items():
            assert ref == {"name": "explainstream-secrets", "key": key, "optional": True}
        assert container["envFrom"] == [{"configMapRef": {"name": "explainstream-config"}}]


def test_workloads_meet_the_restricted_pod_security_standard() -> None:
    for name in (CONSUMER, "explainstream-gateway"):
        pod = _pod(name)
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == NON_ROOT_UID
        assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["runAsNonRoot"] is True and sc["runAsUser"] == NON_ROOT_UID
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
            volumes = {vol["name"]: vol for vol in pod["volumes"]}
            assert "emptyDir" in volumes[mounts["/tmp"]], "read-only root needs an emptyDir /tmp"


def test_consumer_probes_ports_gpu_and_scrape_annotations() -> None:
    container = _consumer_container()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    cm = _configmap()
    assert ports == {"http": int(cm["HTTP_PORT"]), "metrics": int(cm["METRICS_PORT"])}
    assert container["startupProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["livenessProbe"]["httpGet"] == {"path": "/health", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/ready", "port": "http"}
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, "model load is slow"
    assert container["resources"]["requests"]["nvidia.com/gpu"] == 1
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    annotations = _one("Deployment", CONSUMER)["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == cm["METRICS_PORT"]


def test_grace_period_exceeds_the_drain_deadline() -> None:
    drain_s = float(_configmap()["DRAIN_TIMEOUT_S"])
    assert _pod(CONSUMER)["terminationGracePeriodSeconds"] > drain_s


def _kafka_triggers(values_file: Path | None = None) -> dict[str, dict[str, Any]]:
    so = _one("ScaledObject", CONSUMER, values_file)
    return {t["name"]: t for t in so["spec"]["triggers"] if t["type"] == "kafka"}


def test_keda_has_one_kafka_trigger_per_tier_on_the_consumers_group() -> None:
    cm = _configmap()
    so = _one("ScaledObject", CONSUMER)
    assert so["spec"]["scaleTargetRef"]["name"] == CONSUMER
    triggers = _kafka_triggers()
    assert list(triggers) == list(TIERS)
    tiers = _values()["keda"]["kafka"]["tiers"]
    for tier, trigger in triggers.items():
        meta = trigger["metadata"]
        assert meta["topic"] == f"{cm['KAFKA_TOPIC_PREFIX']}.requests.{tier}"
        assert meta["consumerGroup"] == cm["KAFKA_GROUP_ID"]
        assert meta["bootstrapServers"] == cm["KAFKA_BOOTSTRAP_SERVERS"]
        assert meta["lagThreshold"] == str(tiers[tier]["lagThreshold"])
        assert meta["activationLagThreshold"] == str(tiers[tier]["activationLagThreshold"])
        assert meta["allowIdleConsumers"] == "false", "each tier's ask is capped by partitions"
        assert meta["offsetResetPolicy"] == "earliest", "the consumer starts from earliest"
    thresholds = [int(triggers[t]["metadata"]["lagThreshold"]) for t in TIERS]
    assert thresholds == sorted(thresholds)
    # A pod keeping up holds its slots uncommitted: no tier may ask for more pods for that.
    assert thresholds[0] >= int(cm["MAX_CONCURRENT_REQUESTS"])


def test_keda_replicas_are_bounded_by_partitions_and_scale_down_slowly() -> None:
    spec = _one("ScaledObject", CONSUMER)["spec"]
    partitions = int(_configmap()["KAFKA_PARTITIONS"])
    assert 1 <= spec["minReplicaCount"] < spec["maxReplicaCount"] <= partitions * len(TIERS)
    assert spec["cooldownPeriod"] >= 60
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleUp"]["stabilizationWindowSeconds"] == 0
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 300
    assert "replicas" not in _one("Deployment", CONSUMER)["spec"], "KEDA owns the count"


def test_scaling_modifiers_sum_the_tiers_asks() -> None:
    spec = _one("ScaledObject", CONSUMER, FULL)["spec"]
    modifiers = spec["advanced"]["scalingModifiers"]
    triggers = {t["name"]: t for t in spec["triggers"]}
    # Every name in the formula is a trigger; evaluate it on example metric values.
    lag = {"urgent": 12, "high": 30, "normal": 0, "low": 900}
    env = {name: float(lag.get(name, 0)) for name in triggers}
    env["lag_seconds"], env["gpu_utilization"] = 10.0, 1.2
    composite = eval(modifiers["formula"], {"max": max}, env)  # expr-lang syntax is Python's here
    asks = sum(lag[t] / int(triggers[t]["metadata"]["lagThreshold"]) for t in TIERS)
    assert composite == pytest.approx(max(asks, 10 / 30, 1.2 / 1.0))
    # 12/20 + 30/20 + 900/500 = 3.9: four replicas, where the largest single trigger asks 2.
    assert math.ceil(composite / float(modifiers["target"])) == 4


def test_prometheus_triggers_query_the_services_metrics() -> None:
    triggers = {t["name"]: t for t in _one("ScaledObject", CONSUMER, FULL)["spec"]["triggers"]}
    assert "explainstream_consumer_lag_seconds" in triggers["lag_seconds"]["metadata"]["query"]
    gpu = triggers["gpu_utilization"]["metadata"]["query"]
    assert "explainstream_gpu_utilization_ratio" in gpu


def test_trigger_authentication_reads_keys_the_secret_provides() -> None:
    auth = _one("TriggerAuthentication", "explainstream-kafka", FULL)
    for ref in auth["spec"]["secretTargetRef"]:
        if ref["name"] == "explainstream-secrets":
            assert ref["key"] in _values()["secrets"]["keys"]
    for trigger in _kafka_triggers(FULL).values():
        assert trigger["authenticationRef"] == {"name": "explainstream-kafka"}


def test_network_policies_allow_only_kafka_registry_dns_and_scrapes() -> None:
    policy = _one("NetworkPolicy", CONSUMER)
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    egress_ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert egress_ports == {53, 9092}, "no registry rule without SCHEMA_REGISTRY_URL"
    # MSK's SASL/SCRAM port and Apicurio's 8080, read from the addresses in values-full.
    with_registry = _one("NetworkPolicy", CONSUMER, FULL)
    assert {p["port"] for r in with_registry["spec"]["egress"] for p in r["ports"]} == {
        53,
        8080,
        9096,
    }
    ingress = {p["port"]: r["from"] for r in policy["spec"]["ingress"] for p in r["ports"]}
    assert set(ingress) == {8000, 9090}
    assert all("namespaceSelector" in peer for peer in ingress[9090])
    assert ingress[8000] == [{"podSelector": {}}]


def test_prometheus_rule_carries_the_repositorys_rules() -> None:
    rule = _one("PrometheusRule", "explainstream", FULL)
    rules = yaml.safe_load((v.ROOT / "deploy" / "prometheus" / "rules.yml").read_text())
    assert rule["spec"] == rules
    assert (v.CHART / "files" / "rules.yml").read_text() == (
        v.ROOT / "deploy" / "prometheus" / "rules.yml"
    ).read_text(), "copy deploy/prometheus/rules.yml into the chart's files/"
    monitor = _one("ServiceMonitor", CONSUMER, FULL)
    assert monitor["spec"]["endpoints"][0]["port"] == "metrics"
