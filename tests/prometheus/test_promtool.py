"""Rules and dashboard checked by Prometheus' own tool, and against the metrics we export.

`promtool check rules`, `promtool test rules` (a unit test for every alert) and
`promtool check config`; the dashboard's PromQL is parsed by promtool too (each expression
wrapped as a recording rule). Needs Debian's `prometheus` package (promtool).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry

from consumer.ops.metrics import Metrics
from tests.prometheus.promql import (
    PROM_CONFIG,
    RULES,
    RULES_TEST,
    alert_rules,
    bool_form,
    dashboard_exprs,
    dashboard_variable_queries,
    load_dashboard,
    metric_names,
    recording_rules,
)

pytestmark = pytest.mark.prometheus


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool not installed (Debian package `prometheus`)")
    return path


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, cwd=cwd)


def exported_names() -> set[str]:
    m = Metrics(CollectorRegistry())
    m.set_lag("t", 0, "low", 1)
    m.set_tier_lag_seconds("low", 1.0)
    m.dlq_record("t", "decode")
    m.set_model_info({"model_name": "x"})
    names = {s.name for fam in m.registry.collect() for s in fam.samples}
    # GPU series exist only with a GPU; their names are part of the contract all the same.
    return names | {
        "llama_gpu_memory_usage_bytes",
        "explainstream_gpu_memory_total_bytes",
        "explainstream_gpu_utilization_ratio",
    }


def test_rules_file_is_valid(promtool):
    proc = run(promtool, "check", "rules", str(RULES))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_example_prometheus_config_is_valid(promtool):
    proc = run(promtool, "check", "config", str(PROM_CONFIG))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_alert_unit_tests_pass(promtool):
    proc = run(promtool, "test", "rules", RULES_TEST.name, cwd=RULES_TEST.parent)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_alert_has_a_firing_and_a_quiet_unit_test():
    spec = yaml.safe_load(RULES_TEST.read_text())
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in spec["tests"]:
        for check in case.get("alert_rule_test", []):
            (fires if check.get("exp_alerts") else quiet).add(check["alertname"])
    alerts = {name for name, _ in alert_rules()}
    assert alerts - fires == set(), "alerts without a firing test"
    assert alerts - quiet == set(), "alerts without a not-firing test"
    assert {
        "ExplainstreamLagGrowing",
        "ExplainstreamLagSecondsAboveSLO",
        "ExplainstreamDLQRate",
        "ExplainstreamCircuitOpen",
        "ExplainstreamGPUMemoryHigh",
        "ExplainstreamConsumerAbsent",
    } <= alerts


def test_dashboard_and_bool_form_alert_exprs_parse(promtool, tmp_path):
    exprs = [e for _, e in dashboard_exprs()] + [bool_form(e) for _, e in alert_rules()]
    doc = {
        "groups": [
            {
                "name": "parse-only",
                "rules": [{"record": f"check:expr_{i}:x", "expr": e} for i, e in enumerate(exprs)],
            }
        ]
    }
    path = tmp_path / "exprs.yml"
    path.write_text(yaml.safe_dump(doc))
    proc = run(promtool, "check", "rules", str(path))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_every_name_in_dashboard_and_rules_is_exported_or_recorded():
    known = exported_names() | {name for name, _ in recording_rules()}
    used: dict[str, set[str]] = {}
    for where, expr in dashboard_exprs():
        used[where] = metric_names(expr)
    for _, metric, _ in dashboard_variable_queries():
        used[f"variable {metric}"] = {metric}
    for name, expr in recording_rules() + alert_rules():
        used[name] = metric_names(expr)
    unknown = {where: names - known for where, names in used.items() if names - known}
    assert unknown == {}


def test_dashboard_is_provisionable_and_covers_the_operations_view():
    dash = load_dashboard()
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["DS_PROMETHEUS"]["type"] == "datasource"
    assert variables["DS_PROMETHEUS"]["query"] == "prometheus"
    ids = [p["id"] for p in dash["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dash["panels"]:
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${DS_PROMETHEUS}", panel["title"]
        assert panel["targets"], panel["title"]
    text = " ".join(t["expr"] for p in dash["panels"] for t in p.get("targets", []))
    for needle in (
        "explainstream_consumer_lag_records",
        "explainstream_consumer_lag_seconds",
        "status:llama_requests:rate1m",
        "histogram_quantile(0.99, le:llama_processing_duration_seconds_bucket",
        "llama_queue_depth",
        "explainstream_batch_size",
        "llama_tokens_per_second",
        "llama_gpu_memory_usage_bytes",
        "explainstream_dlq_records",
        "explainstream_circuit_breaker_state",
        "explainstream_time_to_first_token_seconds_bucket",
        "explainstream_time_per_output_token_seconds_bucket",
        "explainstream_build_info",
    ):
        assert needle in text, needle


def test_bool_form_keeps_every_series_of_an_alert():
    assert bool_form("a > 5") == "a > bool 5"
    assert bool_form('absent(up{job="x"} == 1)') == '(up{job="x"} == bool 1)'
    assert bool_form('a{l!="v",m=~"<"} >= bool 2') == 'a{l!="v",m=~"<"} >= bool 2'
    assert bool_form("x / y > 0.95 and z != 0") == "x / y > bool 0.95 and z != bool 0"
