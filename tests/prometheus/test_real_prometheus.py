"""A real Prometheus scrapes a real consumer on real Kafka; every dashboard and rule query
returns data.

The consumer runs exactly as operators run it (``explainstream consume``, fake engine,
fixed free ports on loopback) with a simulated NVML module first on its PYTHONPATH, so the
GPU series come through the real pynvml code path on a machine without a GPU. Prometheus
(Debian's binary) scrapes ``/metrics`` every second and evaluates ``rules.yml`` every second.

Every PromQL expression of the dashboard (Grafana variables substituted: ``$__rate_interval``
= 1m, tier = all) and every recording rule must return at least one series. Alert
expressions are normally empty, so each is evaluated in its *bool form* (see
``promql.bool_form``: every comparison gets ``bool``, ``absent(x)`` becomes ``x``): it returns
a 0/1 series for everything the alert watches, and is empty only when a name is wrong. The
original alert expression is evaluated too, and must be a valid query.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from consumer.dev.ports import free_port
from tests.integration.helpers import make_request, produce, produce_requests
from tests.prometheus.promql import (
    RULES,
    alert_rules,
    bool_form,
    dashboard_exprs,
    dashboard_variable_queries,
    recording_rules,
)

pytestmark = [pytest.mark.prometheus, pytest.mark.kafka]

ROOT = Path(__file__).resolve().parents[2]
TIERS = ("urgent", "high", "normal", "low")
PER_TIER = 8
POISON = 2

FAKE_PYNVML = '''"""Simulated NVML: one 80 GB GPU with 3 GB in use (tests only)."""


class _Memory:
    total = 80 * 2**30
    used = 3 * 2**30
    free = total - used


class _Util:
    gpu = 37
    memory = 5


def nvmlInit():
    pass


def nvmlShutdown():
    pass


def nvmlDeviceGetCount():
    return 1


def nvmlDeviceGetHandleByIndex(index):
    return index


def nvmlDeviceGetMemoryInfo(handle):
    return _Memory()


def nvmlDeviceGetUtilizationRates(handle):
    return _Util()


def nvmlDeviceGetName(handle):
    return b"Simulated GPU"
'''


def tail(log: Path) -> str:
    return log.read_text(errors="replace")[-4000:]


def spawn(args: list[str], log: Path, **kwargs: Any) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        return subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, **kwargs)


def stop_process(proc: subprocess.Popen[bytes], grace_s: float = 30.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


async def wait_http(url: str, timeout_s: float, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + timeout_s
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"{proc.args!r} exited {proc.returncode}:\n{tail(log)}")
            try:
                async with http.get(url, timeout=aiohttp.ClientTimeout(total=2)) as resp:
                    if resp.status == 200:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.3)
    pytest.fail(f"{url} not ready within {timeout_s}s:\n{tail(log)}")


@dataclass
class Consumer:
    prefix: str
    http_port: int
    metrics_port: int


@pytest.fixture
async def consumer(
    kafka_bootstrap: str, topic_prefix: str, tmp_path: Path
) -> AsyncIterator[Consumer]:
    fake_nvml = tmp_path / "nvml"
    fake_nvml.mkdir()
    (fake_nvml / "pynvml.py").write_text(FAKE_PYNVML)
    c = Consumer(topic_prefix, free_port(), free_port())
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(
            [str(fake_nvml), str(ROOT), os.environ.get("PYTHONPATH", "")]
        ),
        "KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap,
        "KAFKA_TOPIC_PREFIX": topic_prefix,
        "KAFKA_GROUP_ID": f"{topic_prefix}-group",
        "KAFKA_PARTITIONS": "2",
        "ENGINE": "fake",
        "FAKE_LATENCY_MS": "30",
        "FAKE_FAILURE_RATE": "0.1",
        "RETRY_BACKOFF_MS": "10",
        "MAX_CONCURRENT_REQUESTS": "4",
        "HTTP_HOST": "127.0.0.1",
        "HTTP_PORT": str(c.http_port),
        "METRICS_PORT": str(c.metrics_port),
        "PROMETHEUS_ENABLED": "true",
        "COMMIT_INTERVAL_MS": "100",
    }
    log = tmp_path / "consumer.log"
    proc = spawn([sys.executable, "-m", "consumer.cli", "consume"], log, env=env, cwd=ROOT)
    try:
        await wait_http(f"http://127.0.0.1:{c.http_port}/ready", 120, proc, log)
        yield c
    finally:
        await asyncio.to_thread(stop_process, proc)


@pytest.fixture
async def prometheus(consumer: Consumer, tmp_path: Path) -> AsyncIterator[str]:
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus not installed (Debian package `prometheus`)")
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        group["interval"] = "1s"
    (tmp_path / "rules.yml").write_text(yaml.safe_dump(rules, sort_keys=False))
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "900ms"},
        "rule_files": [str(tmp_path / "rules.yml")],
        "scrape_configs": [
            {
                "job_name": "explainstream",
                "static_configs": [{"targets": [f"127.0.0.1:{consumer.metrics_port}"]}],
            }
        ],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(config))
    port = free_port()
    log = tmp_path / "prometheus.log"
    args = [
        binary,
        f"--config.file={tmp_path / 'prometheus.yml'}",
        f"--storage.tsdb.path={tmp_path / 'tsdb'}",
        f"--web.listen-address=127.0.0.1:{port}",
        "--storage.tsdb.retention.time=1h",
    ]
    proc = spawn(args, log)
    try:
        await wait_http(f"http://127.0.0.1:{port}/-/ready", 60, proc, log)
        yield f"http://127.0.0.1:{port}"
    finally:
        await asyncio.to_thread(stop_process, proc, 15)


async def query(http: aiohttp.ClientSession, base: str, expr: str) -> dict[str, Any]:
    async with http.get(f"{base}/api/v1/query", params={"query": expr}) as resp:
        doc: dict[str, Any] = await resp.json()
    if doc.get("status") != "success":
        raise AssertionError(f"query failed: {expr!r}: {doc.get('error')}")
    return dict(doc["data"])


def series_count(data: dict[str, Any]) -> int:
    if data["resultType"] in ("vector", "matrix"):
        return len(data["result"])
    return 1  # scalar / string


async def scalar(http: aiohttp.ClientSession, base: str, expr: str) -> float:
    data = await query(http, base, expr)
    return float(data["result"][0]["value"][1]) if data["result"] else float("nan")


def all_queries() -> list[tuple[str, str]]:
    out = [(f"dashboard: {where}", expr) for where, expr in dashboard_exprs()]
    out += [
        (f"dashboard variable {name}", f"count by ({label}) ({metric})")
        for name, metric, label in dashboard_variable_queries()
    ]
    out += [(f"recording rule {name}", name) for name, _ in recording_rules()]
    out += [(f"recording rule {name} (expr)", expr) for name, expr in recording_rules()]
    out += [(f"alert {name} (bool form)", bool_form(expr)) for name, expr in alert_rules()]
    return out


async def metrics_text(port: int) -> dict[str, float]:
    async with aiohttp.ClientSession() as http, http.get(f"http://127.0.0.1:{port}/metrics") as r:
        text = await r.text()
    values: dict[str, float] = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            key = s.name + json.dumps(s.labels, sort_keys=True)
            values[key] = s.value
    return values


def total(values: dict[str, float], name: str, **labels: str) -> float:
    out = 0.0
    for key, v in values.items():
        metric, _, raw = key.partition("{")
        got = json.loads("{" + raw)
        if metric == name and all(got.get(k) == want for k, want in labels.items()):
            out += v
    return out


async def test_every_dashboard_and_rule_query_returns_series(
    kafka_bootstrap: str, consumer: Consumer, prometheus: str
) -> None:
    prefix = consumer.prefix
    for i, tier in enumerate(TIERS):
        requests = [make_request(i * 100 + n) for n in range(PER_TIER)]
        await produce_requests(kafka_bootstrap, f"{prefix}.requests.{tier}", requests)
    poison: list[tuple[bytes | None, bytes | None]] = [
        (f"bad{n}".encode(), b"\x00\x00\x00\x00\x01not avro") for n in range(POISON)
    ]
    await produce(kafka_bootstrap, f"{prefix}.requests.high", poison)

    queries = all_queries()
    empty: list[str] = []
    async with aiohttp.ClientSession() as http:
        deadline = time.monotonic() + 120
        while True:
            # Wait until the run's work is visible, then until every query has data.
            done = await scalar(http, prometheus, "sum(explainstream_results_total)")
            dlq = await scalar(http, prometheus, "sum(explainstream_dlq_records_total)")
            empty = []
            for label, expr in queries:
                if series_count(await query(http, prometheus, expr)) == 0:
                    empty.append(f"{label}: {expr}")
            if not empty and done >= PER_TIER * len(TIERS) and dlq >= POISON:
                break
            if time.monotonic() > deadline:
                break
            await asyncio.sleep(1.0)
        assert empty == [], "queries without data:\n" + "\n".join(empty)
        assert done == PER_TIER * len(TIERS)
        assert dlq == POISON

        for _, expr in alert_rules():
            await query(http, prometheus, expr)  # valid as written (normally empty)

        async with http.get(f"{prometheus}/api/v1/rules") as resp:
            groups = (await resp.json())["data"]["groups"]
        unhealthy = [
            (r["name"], r.get("lastError"))
            for g in groups
            for r in g["rules"]
            if r["health"] != "ok"
        ]
        assert unhealthy == []
        assert len([r for g in groups for r in g["rules"]]) == len(recording_rules()) + len(
            alert_rules()
        )

        assert await scalar(http, prometheus, "sum(explainstream_gpu_available)") == 1
        assert await scalar(http, prometheus, "sum(llama_gpu_memory_usage_bytes)") == 3 * 2**30
        assert await scalar(http, prometheus, 'max(up{job="explainstream"})') == 1


async def test_status_numbers_match_the_metrics(kafka_bootstrap: str, consumer: Consumer) -> None:
    prefix = consumer.prefix
    await produce_requests(
        kafka_bootstrap, f"{prefix}.requests.normal", [make_request(n) for n in range(6)]
    )
    await produce(kafka_bootstrap, f"{prefix}.requests.low", [(b"k", b"garbage")])
    mismatches: list[str] = []
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            async with http.get(f"http://127.0.0.1:{consumer.http_port}/status") as resp:
                status = await resp.json()
            m = await metrics_text(consumer.metrics_port)
            mismatches = []
            if sum(status["results"].values()) < 6 or status["dlq"] < 1:
                mismatches.append("not done yet")  # 0 == 0 would prove nothing
            for result, n in status["results"].items():
                if total(m, "explainstream_results_total", status=result) != n:
                    mismatches.append(f"results {result}")
            if total(m, "explainstream_dlq_records_total") != status["dlq"]:
                mismatches.append("dlq")
            if total(m, "explainstream_slots_capacity") != status["slots"]["total"]:
                mismatches.append("slots")
            for tier, t in status["tiers"].items():
                if total(m, "explainstream_consumer_lag_records", priority=tier) != t["lag"]:
                    mismatches.append(f"lag {tier}")
                if total(m, "llama_queue_depth", priority=tier) != t["buffered"]:
                    mismatches.append(f"buffered {tier}")
                if total(m, "explainstream_in_flight_requests", priority=tier) != t["in_flight"]:
                    mismatches.append(f"in_flight {tier}")
            breaker = {"closed": 0, "half_open": 1, "open": 2}[status["breaker"]]
            if total(m, "explainstream_circuit_breaker_state") != breaker:
                mismatches.append("breaker")
            if not mismatches:
                break
            await asyncio.sleep(0.5)
    assert mismatches == []
    assert status["dlq"] == 1
