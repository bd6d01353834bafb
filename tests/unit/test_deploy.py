"""The deployment surface agrees with the service: Dockerfile, docker-compose.yml, deploy/k8s
and deploy/keda use real settings, the right probes, non-root containers and the topics and
consumer group the consumer actually uses."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from consumer.config import TIERS, Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
KEDA = ROOT / "deploy" / "keda"
COMPOSE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"

YAML_FILES = sorted([*K8S.glob("*.yaml"), *KEDA.glob("*.yaml"), COMPOSE])
ENV_NAMES = frozenset(name.upper() for name in Settings.model_fields)
NON_ROOT_UID = 10001
CONSUMER = "explainstream-consumer"


def _docs(path: Path) -> list[dict[str, Any]]:
    with path.open() as fh:
        return [doc for doc in yaml.safe_load_all(fh) if doc is not None]


def _k8s_objects(*folders: Path) -> list[dict[str, Any]]:
    return [doc for folder in folders for p in sorted(folder.glob("*.yaml")) for doc in _docs(p)]


def _one(kind: str, name: str, *folders: Path) -> dict[str, Any]:
    found = [
        o
        for o in _k8s_objects(*(folders or (K8S,)))
        if o["kind"] == kind and o["metadata"]["name"] == name
    ]
    assert len(found) == 1, f"expected one {kind}/{name}, found {len(found)}"
    return found[0]


def _configmap() -> dict[str, str]:
    return _one("ConfigMap", "explainstream-config")["data"]


def _deployments() -> list[dict[str, Any]]:
    return [o for o in _k8s_objects(K8S) if o["kind"] == "Deployment"]


def _consumer_container() -> dict[str, Any]:
    pod = _one("Deployment", CONSUMER)["spec"]["template"]["spec"]
    return next(c for c in pod["containers"] if c["name"] == "consumer")


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
    assert re.search(r"^ARG RUNTIME_IMAGE=python:3\.11-slim$", text, re.M)
    assert "explainstream[consumer]" in text


def test_k8s_workloads_run_as_non_root_with_read_only_root_and_no_capabilities():
    deployments = _deployments()
    assert {d["metadata"]["name"] for d in deployments} >= {CONSUMER, "explainstream-gateway"}
    for dep in deployments:
        pod = dep["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == NON_ROOT_UID
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["runAsNonRoot"] is True
            assert sc["runAsUser"] == NON_ROOT_UID
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            mounts = {m["mountPath"] for m in container.get("volumeMounts", [])}
            assert "/tmp" in mounts, "read-only root needs a writable /tmp"


def test_compose_runs_explainstream_services_as_non_root():
    services = _explainstream_services()
    assert set(services) >= {"topics", "consumer", "gateway"}
    for name, svc in services.items():
        assert svc["user"].split(":")[0] == str(NON_ROOT_UID), name
        assert svc["read_only"] is True, name


def _manifest_env_names() -> dict[str, str]:
    """Every env variable the manifests set -> where it is set."""
    names: dict[str, str] = {}
    for key in _configmap():
        names[key] = "configmap.yaml"
    for key in _one("Secret", "explainstream-secrets")["stringData"]:
        names[key] = "secret.example.yaml"
    for dep in _deployments():
        for container in dep["spec"]["template"]["spec"]["containers"]:
            for env in container.get("env", []):
                names[env["name"]] = f"{dep['metadata']['name']}/{container['name']}"
    for svc_name, svc in _explainstream_services().items():
        for key in svc.get("environment", {}):
            names[key] = f"docker-compose.yml:{svc_name}"
    return names


def test_every_env_variable_in_the_manifests_is_a_setting():
    unknown = {n: where for n, where in _manifest_env_names().items() if n not in ENV_NAMES}
    assert not unknown, f"not a Settings field: {unknown}"


def test_configmap_is_a_valid_configuration():
    settings = Settings.from_env(_configmap())
    assert settings.engine.value == "llama"
    assert settings.n_gpu_layers != 0, "the k8s consumer requests a GPU: offload layers to it"


def test_compose_consumer_environment_is_a_valid_configuration():
    env = {k: _interpolate(v) for k, v in _compose()["services"]["consumer"]["environment"].items()}
    settings = Settings.from_env(env)
    assert settings.engine.value == "llama"
    assert (settings.http_port, settings.metrics_port) == (8000, 9090)


def test_trigger_authentication_reads_keys_the_secret_has():
    secret_keys = set(_one("Secret", "explainstream-secrets")["stringData"])
    auth = _one("TriggerAuthentication", "explainstream-kafka-auth", KEDA)
    for ref in auth["spec"]["secretTargetRef"]:
        if ref["name"] == "explainstream-secrets":
            assert ref["key"] in secret_keys


def test_consumer_probes_hit_health_and_ready_on_the_http_port():
    container = _consumer_container()
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    cm = _configmap()
    assert ports["http"] == int(cm["HTTP_PORT"])
    assert ports["metrics"] == int(cm["METRICS_PORT"])
    assert container["livenessProbe"]["httpGet"]["path"] == "/health"
    assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
    startup = container["startupProbe"]
    assert startup["httpGet"]["path"] == "/health"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 300, "model load is slow"
    for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
        assert container[probe]["httpGet"]["port"] in ("http", ports["http"])


def test_consumer_requests_a_gpu_and_is_scraped_on_the_metrics_port():
    container = _consumer_container()
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    annotations = _one("Deployment", CONSUMER)["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == _configmap()["METRICS_PORT"]
    assert annotations["prometheus.io/path"] == "/metrics"


def test_termination_grace_period_exceeds_drain_timeout():
    drain_s = float(
        _configmap().get("DRAIN_TIMEOUT_S", Settings.model_fields["drain_timeout_s"].default)
    )
    pod = _one("Deployment", CONSUMER)["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] > drain_s
    consumer = _compose()["services"]["consumer"]
    compose_drain = float(_interpolate(consumer["environment"]["DRAIN_TIMEOUT_S"]))
    assert int(consumer["stop_grace_period"].removesuffix("s")) > compose_drain


def _kafka_triggers() -> list[dict[str, Any]]:
    so = _one("ScaledObject", CONSUMER, KEDA)
    return [t for t in so["spec"]["triggers"] if t["type"] == "kafka"]


def test_keda_scales_the_consumer_on_every_tier_topic_of_its_group():
    cm = _configmap()
    so = _one("ScaledObject", CONSUMER, KEDA)
    assert so["spec"]["scaleTargetRef"]["name"] == CONSUMER
    triggers = _kafka_triggers()
    expected = {f"{cm['KAFKA_TOPIC_PREFIX']}.requests.{tier}" for tier in TIERS}
    assert {t["metadata"]["topic"] for t in triggers} == expected
    assert len(triggers) == len(TIERS)
    for t in triggers:
        meta = t["metadata"]
        assert meta["consumerGroup"] == cm["KAFKA_GROUP_ID"]
        assert meta["bootstrapServers"] == cm["KAFKA_BOOTSTRAP_SERVERS"]
        assert meta["allowIdleConsumers"] == "false"
        assert meta["offsetResetPolicy"] == "earliest", "the consumer starts from earliest"


def test_keda_lag_thresholds_rise_from_urgent_to_low():
    by_tier = {t["metadata"]["topic"].rsplit(".", 1)[1]: t["metadata"] for t in _kafka_triggers()}
    thresholds = [int(by_tier[tier]["lagThreshold"]) for tier in TIERS]
    assert thresholds == sorted(thresholds)
    assert thresholds[0] < thresholds[1], "urgent must scale before the other tiers"


def test_keda_scales_up_fast_and_down_slowly():
    spec = _one("ScaledObject", CONSUMER, KEDA)["spec"]
    assert 1 <= spec["minReplicaCount"] < spec["maxReplicaCount"]
    behavior = spec["advanced"]["horizontalPodAutoscalerConfig"]["behavior"]
    assert behavior["scaleUp"]["stabilizationWindowSeconds"] == 0
    assert behavior["scaleDown"]["stabilizationWindowSeconds"] >= 300
    assert spec["maxReplicaCount"] <= int(_configmap()["KAFKA_PARTITIONS"]) * len(TIERS)


def test_consumer_network_policy_allows_only_kafka_dns_and_scrapes():
    policy = _one("NetworkPolicy", CONSUMER)
    assert set(policy["spec"]["policyTypes"]) == {"Ingress", "Egress"}
    egress_ports = {p["port"] for rule in policy["spec"]["egress"] for p in rule["ports"]}
    assert egress_ports <= {53, 9092, 9093}
    ingress = {p["port"]: rule["from"] for rule in policy["spec"]["ingress"] for p in rule["ports"]}
    assert set(ingress) == {8000, 9090}
    assert all("namespaceSelector" in peer for peer in ingress[9090])
    assert ingress[8000] == [{"podSelector": {}}]


def test_kustomizations_list_every_manifest_but_the_examples():
    kust = _docs(K8S / "kustomization.yaml")[0]
    listed = set(kust["resources"])
    on_disk = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert listed == {n for n in on_disk if ".example." not in n}
    keda = _docs(KEDA / "kustomization.yaml")[0]
    assert set(keda["resources"]) == {"../k8s", "scaledobject.yaml"}


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
