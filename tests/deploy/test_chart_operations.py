"""The chart on real clusters (issue 22): scaling that stays sane when a trigger fails,
rollouts that fit the GPUs, network policy and gateway details, and the checks that refuse a
broken value naming it. Rendered by the real ``helm template``."""

from __future__ import annotations

import math
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy import validators as v
from tests.deploy.keda_scaler import fallback_replicas

pytestmark = pytest.mark.deploy

FULL = Path(__file__).with_name("values-full.yaml")
CONSUMER = "explainstream-consumer"
GATEWAY = "explainstream-gateway"


def _render(*values: str, values_file: Path | None = None) -> list[dict[str, Any]]:
    result = v.helm_template(*values, values_file=values_file)
    assert result.returncode == 0, result.output
    return list(v.documents(result.stdout))


def _one(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    found = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind}/{name}"
    return found[0]


def _refused(value: str, message: str) -> None:
    result = v.helm_template(value)
    assert result.returncode != 0, f"{value} rendered"
    assert message in result.output, result.output


# ------------------------------------------------------------------ item 3: KEDA under failure
def test_fallback_keeps_a_busy_pool_when_one_trigger_fails() -> None:
    spec = _one(_render(values_file=FULL), "ScaledObject", CONSUMER)["spec"]
    fallback = spec["fallback"]
    assert fallback == {"failureThreshold": 3, "replicas": 2, "behavior": "currentReplicasIfHigher"}
    # KEDA's fallback on numbers: 6 pods working a backlog, Prometheus goes away.
    assert fallback_replicas("static", current=6, fallback=2) == 2  # the old chart: down to 2
    assert fallback_replicas(fallback["behavior"], current=6, fallback=2) == 6
    assert fallback_replicas(fallback["behavior"], current=1, fallback=2) == 2
    off = _one(_render("keda.fallback=null"), "ScaledObject", CONSUMER)["spec"]
    assert "fallback" not in off


def test_a_gpu_utilisation_threshold_below_one_is_refused_naming_it(tmp_path: Path) -> None:
    # NVML busy time ~1.0 with one decode: N busy pods sum to ~N; below 1 that asks N+1.
    assert [math.ceil(n * 1.0 / 0.8) for n in (1, 2, 4, 8)] == [2, 3, 5, 10]
    assert [math.ceil(n * 1.0 / 1.0) for n in (1, 2, 4, 8)] == [1, 2, 4, 8]
    values = tmp_path / "gpu.yaml"  # --set would pass 0.8 as a string
    values.write_text("keda: {prometheus: {gpuUtilization: {enabled: true, threshold: 0.8}}}\n")
    result = v.helm_template(values_file=values)
    assert result.returncode != 0
    assert "keda.prometheus.gpuUtilization.threshold (0.8) is below 1" in result.output


def test_a_lag_threshold_below_what_one_pod_holds_is_refused_naming_it() -> None:
    _refused(
        "keda.kafka.tiers.urgent.lagThreshold=5",
        "keda.kafka.tiers.urgent.lagThreshold (5) is below config.MAX_CONCURRENT_REQUESTS (16)"
        ": a pod keeping up holds that many uncommitted, and KEDA would ask ceil(16 / 5) = 4",
    )


def test_queries_select_this_release_and_monitoring_scrapes_once() -> None:
    docs = _render(values_file=FULL)
    spec = _one(docs, "ScaledObject", CONSUMER)["spec"]
    scoped = (
        'job="explainstream",namespace="explainstream",app_kubernetes_io_instance="explainstream"'
    )
    queries = [t["metadata"]["query"] for t in spec["triggers"] if t["type"] == "prometheus"]
    assert len(queries) == 2 and all(f"{{{scoped}}}" in q for q in queries)
    monitor = _one(docs, "ServiceMonitor", CONSUMER)["spec"]
    assert monitor["podTargetLabels"] == ["app.kubernetes.io/instance"]
    # The ServiceMonitor on: no scrape annotations (they would scrape each pod twice).
    annotations = _one(docs, "Deployment", CONSUMER)["spec"]["template"]["metadata"]["annotations"]
    assert not any(k.startswith("prometheus.io/") for k in annotations)
    plain = _one(_render(), "Deployment", CONSUMER)["spec"]["template"]["metadata"]["annotations"]
    assert plain["prometheus.io/scrape"] == "true"
    # Every aggregation of the rules keeps the release apart.
    rules = _one(docs, "PrometheusRule", "explainstream")["spec"]["groups"]
    for group in rules:
        for rule in group["rules"]:
            for by in re.findall(r"by \(([^)]*)\)", rule["expr"]):
                assert "namespace, app_kubernetes_io_instance" in by, rule


def test_the_kubernetes_scrape_example_selects_the_charts_consumer_pods() -> None:
    text = (v.ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text()
    block = [ln[len("  # ") :] for ln in text.splitlines() if ln.startswith("  #   ")]
    job = yaml.safe_load("\n".join(ln[2:] for ln in block))
    keep = job["relabel_configs"][0]
    pod = _one(_render(), "Deployment", CONSUMER)["spec"]["template"]
    labels = pod["metadata"]["labels"]
    names = [s.removeprefix("__meta_kubernetes_pod_label_") for s in keep["source_labels"]]
    joined = ";".join(labels[n.replace("app_kubernetes_io_", "app.kubernetes.io/")] for n in names)
    assert re.fullmatch(keep["regex"], joined)
    ports = {p["name"] for c in pod["spec"]["containers"] for p in c["ports"]}
    assert "metrics" in ports
    targets = {r.get("target_label") for r in job["relabel_configs"]}
    assert {"namespace", "app_kubernetes_io_instance"} <= targets


# ------------------------------------------------------------------ item 4: rollouts and drains
def test_rollouts_need_no_spare_gpu_and_outlast_the_startup_budget() -> None:
    spec = _one(_render(), "Deployment", CONSUMER)["spec"]
    assert spec["strategy"]["rollingUpdate"] == {"maxSurge": 0, "maxUnavailable": 1}
    startup = spec["template"]["spec"]["containers"][0]["startupProbe"]
    budget = startup["periodSeconds"] * startup["failureThreshold"]
    assert spec["progressDeadlineSeconds"] > budget
    _refused(
        "consumer.progressDeadlineSeconds=600",
        "consumer.progressDeadlineSeconds (600) must be above the startup budget",
    )
    _refused(
        "consumer.strategy.maxSurge=0,consumer.strategy.maxUnavailable=0",
        "consumer.strategy: maxSurge and maxUnavailable are both 0",
    )


def test_the_grace_period_leaves_room_after_the_drain() -> None:
    _refused(
        "consumer.terminationGracePeriodSeconds=35",
        "consumer.terminationGracePeriodSeconds (35) must be above config.DRAIN_TIMEOUT_S (30)"
        " by at least 10 s",
    )
    assert _one(_render("consumer.terminationGracePeriodSeconds=40"), "Deployment", CONSUMER)


# ------------------------------------------------------------------ item 5: network, gateway
def test_dns_egress_is_a_value() -> None:
    default = _one(_render(), "NetworkPolicy", CONSUMER)["spec"]["egress"]
    dns = [r for r in default if any(p["port"] == 53 for p in r["ports"])]
    assert dns[0]["to"][0]["podSelector"] == {"matchLabels": {"k8s-app": "kube-dns"}}
    local = _one(_render(values_file=FULL), "NetworkPolicy", CONSUMER)["spec"]["egress"]
    dns = [r for r in local if any(p["port"] == 53 for p in r["ports"])]
    assert dns[0]["to"] == [{"ipBlock": {"cidr": "169.254.20.10/32"}}]


@pytest.mark.parametrize(
    ("values", "ports"),
    [
        (["config.KAFKA_BOOTSTRAP_SERVERS=b-1:9098\\,b-2:9098"], {9098, 53}),
        (
            ["config.KAFKA_BOOTSTRAP_SERVERS=kafka:9092", "networkPolicy.kafka.ports={9093}"],
            {9092, 9093, 53},
        ),
        (["config.SCHEMA_REGISTRY_URL=https://registry.example.com"], {9092, 443, 53}),
        (["config.SCHEMA_REGISTRY_URL=http://apicurio:8080/apis/ccompat/v7"], {9092, 8080, 53}),
    ],
)
def test_egress_ports_come_from_the_addresses(values: list[str], ports: set[int]) -> None:
    egress = _one(_render(*values), "NetworkPolicy", CONSUMER)["spec"]["egress"]
    assert {p["port"] for r in egress for p in r["ports"]} == ports


def test_the_gateway_gets_neither_the_model_volume_nor_the_admin_token() -> None:
    docs = _render(values_file=FULL)
    gateway = _one(docs, "Deployment", GATEWAY)["spec"]["template"]["spec"]
    consumer = _one(docs, "Deployment", CONSUMER)["spec"]["template"]["spec"]
    assert {vol["name"] for vol in gateway["volumes"]} == {"tmp", "kafka-ca"}
    assert {vol["name"] for vol in consumer["volumes"]} == {"tmp", "kafka-ca", "models"}
    container = gateway["containers"][0]
    env = {e["name"] for e in container["env"]}
    assert "ADMIN_TOKEN" not in env and "KAFKA_SASL_PASSWORD" in env
    assert "ADMIN_TOKEN" in {e["name"] for e in consumer["containers"][0]["env"]}
    for probe in ("livenessProbe", "readinessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}


def test_a_claim_in_the_shared_volumes_is_refused_naming_it() -> None:
    _refused(
        "extraVolumes[0].name=models,extraVolumes[0].persistentVolumeClaim.claimName=m",
        "extraVolumes: models is a PersistentVolumeClaim; put it in consumer.extraVolumes",
    )
