"""Metrics: names of the contract exist in a fresh registry and move when fed."""

from __future__ import annotations

from types import SimpleNamespace

import aiohttp
import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from consumer.kafka.lag import LagReport, PartitionLag
from consumer.ops.gpu import GpuProbe
from consumer.ops.metrics import LagSecondsEstimator, Metrics

CONTRACT_NAMES = [
    "llama_requests_total",
    "llama_processing_duration_seconds_bucket",
    "llama_tokens_generated_total",
    "llama_queue_depth",
    "llama_tokens_per_second",
    "explainstream_queue_wait_seconds_bucket",
    "explainstream_buffered_requests",
    "explainstream_in_flight_requests",
    "explainstream_slots_busy",
    "explainstream_slots_capacity",
    "explainstream_batch_size_bucket",
    "explainstream_results_total",
    "explainstream_circuit_breaker_state",
    "explainstream_circuit_breaker_in_state",
    "explainstream_rebalances_total",
    "explainstream_commit_latency_seconds_bucket",
    "explainstream_retries_total",
    "explainstream_ready",
    "explainstream_gpu_available",
]


def value(m: Metrics, name: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(name, labels)


class FakeNvml:
    """pynvml's API over one simulated GPU."""

    def nvmlInit(self):
        pass

    def nvmlShutdown(self):
        pass

    def nvmlDeviceGetCount(self):
        return 1

    def nvmlDeviceGetHandleByIndex(self, i):
        return i

    def nvmlDeviceGetMemoryInfo(self, h):
        return SimpleNamespace(used=3 * 2**30, total=80 * 2**30, free=77 * 2**30)

    def nvmlDeviceGetUtilizationRates(self, h):
        return SimpleNamespace(gpu=42, memory=10)

    def nvmlDeviceGetName(self, h):
        return b"Fake H100"


class BrokenNvml(FakeNvml):
    def nvmlInit(self):
        raise OSError("NVML Shared Library Not Found")


def test_fresh_registry_is_not_the_global_one():
    a, b = Metrics(), Metrics()
    assert a.registry is not b.registry
    from prometheus_client import REGISTRY

    assert a.registry is not REGISTRY


def test_contract_names_exist_from_the_start():
    m = Metrics(CollectorRegistry(), gpu=GpuProbe(BrokenNvml()))
    names = {s.name for f in m.registry.collect() for s in f.samples}
    missing = [n for n in CONTRACT_NAMES if n not in names]
    assert not missing
    assert value(m, "llama_requests_total", priority="low", status="REJECTED") == 0


def test_request_finished_moves_counters_and_histograms():
    m = Metrics(CollectorRegistry())
    m.request_finished("high", "OK", 0.4, 0.02, prompt_tokens=30, completion_tokens=12)
    m.request_finished("high", "FAILED", 1.5, 0.5, prompt_tokens=30, completion_tokens=0)
    assert value(m, "llama_requests_total", priority="high", status="OK") == 1
    assert value(m, "llama_requests_total", priority="high", status="FAILED") == 1
    assert value(m, "explainstream_results_total", status="OK") == 1
    assert value(m, "llama_tokens_generated_total", priority="high") == 12
    assert value(m, "explainstream_prompt_tokens_total", priority="high") == 60
    assert value(m, "llama_processing_duration_seconds_count", priority="high") == 2
    assert value(m, "llama_processing_duration_seconds_sum", priority="high") == pytest.approx(1.9)
    assert value(m, "explainstream_queue_wait_seconds_count", priority="high") == 2


def test_gauges_move():
    m = Metrics(CollectorRegistry())
    m.set_queue_depth("urgent", 3)
    m.set_queue_depth("low", 4)
    m.set_queue_depth("urgent", 1)
    assert value(m, "llama_queue_depth", priority="urgent") == 1
    assert value(m, "explainstream_buffered_requests") == 5
    m.set_in_flight("normal", 2)
    assert value(m, "explainstream_in_flight_requests", priority="normal") == 2
    m.set_slots(busy=3, total=8)
    assert value(m, "explainstream_slots_busy") == 3
    assert value(m, "explainstream_slots_capacity") == 8
    m.observe_batch_size(5)
    assert value(m, "explainstream_batch_size_count") == 1
    assert value(m, "explainstream_batch_size_bucket", le="4.0") == 0
    assert value(m, "explainstream_batch_size_bucket", le="8.0") == 1
    m.set_tokens_per_second(123.5)
    assert value(m, "llama_tokens_per_second") == 123.5
    m.set_ready(True)
    assert value(m, "explainstream_ready") == 1


def test_reliability_and_kafka_series():
    m = Metrics(CollectorRegistry())
    m.dlq_record("explain.requests.high", "decode")
    m.dlq_record("explain.requests.high", "decode")
    assert (
        value(
            m,
            "explainstream_dlq_records_total",
            source_topic="explain.requests.high",
            stage="decode",
        )
        == 2
    )
    m.retry("low")
    assert value(m, "explainstream_retries_total", priority="low") == 1
    m.rebalance("assigned")
    assert value(m, "explainstream_rebalances_total", kind="assigned") == 1
    m.observe_commit_latency(0.003)
    assert value(m, "explainstream_commit_latency_seconds_count") == 1
    m.set_lag("explain.requests.low", 2, "low", 17)
    assert (
        value(
            m,
            "explainstream_consumer_lag_records",
            topic="explain.requests.low",
            partition="2",
            priority="low",
        )
        == 17
    )
    m.set_tier_lag_seconds("low", 8.5)
    assert value(m, "explainstream_consumer_lag_seconds", priority="low") == 8.5
    m.set_model_info({"model_name": "smollm2", "quantization": "Q8_0", "gpu_layers": "0"})
    assert (
        value(
            m, "explainstream_model_info", model_name="smollm2", quantization="Q8_0", gpu_layers="0"
        )
        == 1
    )


def test_drop_lag_forgets_a_revoked_partition():
    m = Metrics(CollectorRegistry())
    m.set_lag("t", 0, "low", 3)
    m.set_lag("t", 1, "low", 4)
    m.drop_lag("t", 0)
    m.drop_lag("t", 0)
    assert (
        value(m, "explainstream_consumer_lag_records", topic="t", partition="0", priority="low")
        is None
    )
    assert (
        value(m, "explainstream_consumer_lag_records", topic="t", partition="1", priority="low")
        == 4
    )


def test_circuit_state_gauge_and_enum():
    m = Metrics(CollectorRegistry())
    assert value(m, "explainstream_circuit_breaker_state") == 0
    m.set_circuit_state("open")
    assert value(m, "explainstream_circuit_breaker_state") == 2
    assert value(m, "explainstream_circuit_breaker_in_state", state="open") == 1
    assert value(m, "explainstream_circuit_breaker_in_state", state="closed") == 0
    m.set_circuit_state("half_open")
    assert value(m, "explainstream_circuit_breaker_state") == 1
    with pytest.raises(ValueError):
        m.set_circuit_state("ajar")


def test_replace_lag_drops_stale_partitions_and_exports_seconds():
    m = Metrics(CollectorRegistry())
    m.set_lag("gone", 0, "low", 99)
    report = LagReport(
        "g",
        (
            PartitionLag("high", "p.requests.high", 0, 5, 0, 15, 10),
            PartitionLag("high", "p.requests.high", 1, None, 0, 4, 4),
        ),
    )
    est = LagSecondsEstimator(default_service_s=0.5)
    m.replace_lag(report, est)
    assert (
        value(m, "explainstream_consumer_lag_records", topic="gone", partition="0", priority="low")
        is None
    )
    assert (
        value(
            m,
            "explainstream_consumer_lag_records",
            topic="p.requests.high",
            partition="1",
            priority="high",
        )
        == 4
    )
    assert value(m, "explainstream_consumer_lag_seconds", priority="high") == 7.0


def test_lag_seconds_estimator_fallbacks():
    est = LagSecondsEstimator(window=2, default_service_s=2.0)
    assert est.estimate("low", 10) == 20.0
    est.observe("high", 1.0)
    assert est.estimate("low", 10) == 10.0  # borrows the all-tier mean
    est.observe("low", 0.2)
    est.observe("low", 0.4)
    est.observe("low", 0.6)  # window 2: 0.4, 0.6
    assert est.mean("low") == pytest.approx(0.5)
    assert est.estimate("low", 10, parallelism=5) == pytest.approx(1.0)
    assert est.estimate("low", -3) == 0


def test_without_nvidia_library_gpu_is_absent_not_crashing():
    m = Metrics(CollectorRegistry(), gpu=GpuProbe(BrokenNvml()))
    m.update_gpu()
    m.update_gpu()
    assert value(m, "explainstream_gpu_available") == 0
    assert value(m, "llama_gpu_memory_usage_bytes", gpu="0") is None


def test_default_probe_never_raises_on_this_machine():
    m = Metrics(CollectorRegistry())
    m.update_gpu()  # no NVIDIA driver here (or a real GPU): either way no exception
    assert value(m, "explainstream_gpu_available") in (0, 1)


def test_gpu_metrics_from_nvml():
    m = Metrics(CollectorRegistry(), gpu=GpuProbe(FakeNvml()))
    m.update_gpu()
    assert value(m, "explainstream_gpu_available") == 1
    assert value(m, "llama_gpu_memory_usage_bytes", gpu="0") == 3 * 2**30
    assert value(m, "explainstream_gpu_memory_total_bytes", gpu="0") == 80 * 2**30
    assert value(m, "explainstream_gpu_utilization_ratio", gpu="0") == pytest.approx(0.42)


async def test_serve_exposes_metrics_on_an_ephemeral_port():
    m = Metrics(CollectorRegistry(), gpu=GpuProbe(BrokenNvml()))
    m.request_finished("urgent", "OK", 0.1, 0.0, 1, 2)
    port = await m.serve("127.0.0.1", 0)
    try:
        assert port > 0
        async with (
            aiohttp.ClientSession() as http,
            http.get(f"http://127.0.0.1:{port}/metrics") as resp,
        ):
            assert resp.status == 200
            assert resp.headers["Content-Type"].startswith("text/plain")
            text = await resp.text()
        families = {f.name: f for f in text_string_to_metric_families(text)}
        assert "llama_requests" in families
        ok = [
            s
            for s in families["llama_requests"].samples
            if s.labels == {"priority": "urgent", "status": "OK"} and s.name.endswith("_total")
        ]
        assert ok[0].value == 1
    finally:
        await m.close()
    await m.close()
