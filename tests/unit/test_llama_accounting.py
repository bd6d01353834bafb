"""Compute accounting: counters, the result schema's v2 field, metrics and cost."""

from __future__ import annotations

import io
from datetime import UTC, datetime

import fastavro
import pytest
from prometheus_client import CollectorRegistry

from consumer.engines.llama.counters import Counters
from consumer.ops.metrics import Metrics
from schemas.codec import RESULT_SUBJECT, load_schema
from schemas.compat import check_full_compatibility
from schemas.models import ExplanationResult


def test_step_time_outside_decode_is_split_by_batch_size() -> None:
    c = Counters()
    common = {"n_tokens": 1, "produced": 1, "sample_s": 0.0, "logprob_s": 0.0}
    c.add_step(n_gen=1, n_seqs=1, step_s=0.010, decode_s=0.009, overhead_cpu_s=0.001, **common)
    c.add_step(n_gen=1, n_seqs=1, step_s=0.012, decode_s=0.009, overhead_cpu_s=0.003, **common)
    c.add_step(n_gen=8, n_seqs=8, step_s=0.030, decode_s=0.026, overhead_cpu_s=0.004, **common)
    o = c.overhead_us()
    assert o["step_overhead_us_1seq"] == pytest.approx(2000.0)
    assert o["step_overhead_us_multi"] == pytest.approx(4000.0)
    assert o["step_overhead_multi_mean_seqs"] == 8
    assert c.busy_s == pytest.approx(0.052)
    assert c.python_s == pytest.approx(0.008)  # wall time outside decode
    assert c.as_dict()["steps"] == 3


def _record(**extra: object) -> dict[str, object]:
    base: dict[str, object] = {
        "request_id": "r1",
        "status": "OK",
        "explanation": "text",
        "error": None,
        "tier": "normal",
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "queue_time_ms": 1.0,
        "processing_time_ms": 2.0,
        "completed_at": datetime(2026, 1, 1, tzinfo=UTC),
        "confidence_score": 0.5,
        "model_info": {
            "model_name": "m",
            "quantization": "Q4_1",
            "gpu_layers": 0,
            "context_size": 8192,
            "model_sha256": "",
        },
        "prompt_profile": "default",
        "consumer_id": "c",
        "replay_of": None,
        "request_offset": {"topic": "t", "partition": 0, "offset": 1},
        "attempts": 1,
    }
    base.update(extra)
    return base


def _roundtrip(record: dict[str, object], writer: dict, reader: dict) -> dict:
    buf = io.BytesIO()
    fastavro.schemaless_writer(buf, fastavro.parse_schema(writer), record)
    buf.seek(0)
    return fastavro.schemaless_reader(
        buf, fastavro.parse_schema(writer), fastavro.parse_schema(reader)
    )


def test_result_v2_adds_compute_ms_with_full_compatibility() -> None:
    v1 = load_schema(RESULT_SUBJECT, 1)
    v2 = load_schema(RESULT_SUBJECT, 2)
    assert check_full_compatibility(v1, v2) == []
    # New readers see old records with compute_ms null; old readers skip the new field.
    old = _roundtrip(_record(), v1, v2)
    assert old["compute_ms"] is None
    new = _roundtrip(_record(compute_ms=12.5), v2, v1)
    assert "compute_ms" not in new and new["request_id"] == "r1"
    assert _roundtrip(_record(compute_ms=12.5), v2, v2)["compute_ms"] == 12.5


def test_the_pydantic_mirror_carries_compute_ms() -> None:
    record = _record(compute_ms=3.25)
    assert ExplanationResult(**record).compute_ms == 3.25  # type: ignore[arg-type]
    assert ExplanationResult(**_record()).compute_ms is None  # type: ignore[arg-type]


def test_compute_seconds_and_cost_per_request_are_exported() -> None:
    reg = CollectorRegistry()
    metrics = Metrics(reg)
    metrics.observe_compute("urgent", 1.8, cost_per_gpu_hour=2.0)
    metrics.observe_compute("urgent", 0.0, cost_per_gpu_hour=2.0)
    metrics.observe_compute("low", 3.6)  # no price: seconds only

    def value(name: str, tier: str) -> float | None:
        return reg.get_sample_value(name, {"priority": tier})

    assert value("explainstream_compute_seconds_total", "urgent") == pytest.approx(1.8)
    assert value("explainstream_compute_seconds_total", "low") == pytest.approx(3.6)
    assert value("explainstream_compute_seconds_total", "high") == 0.0
    assert value("explainstream_compute_cost_total", "urgent") == pytest.approx(0.001)
    assert value("explainstream_compute_cost_total", "low") == 0.0
    assert value("explainstream_request_cost_count", "urgent") == 2
    assert value("explainstream_request_cost_sum", "urgent") == pytest.approx(0.001)
    assert Metrics.request_cost(3600.0, 1.5) == pytest.approx(1.5)
    assert Metrics.request_cost(1.0, None) is None
