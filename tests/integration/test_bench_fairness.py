"""Smoke test of ``bench fairness`` at a tiny size on the real broker: it runs end to end and
reports every configuration's figures; it never asserts a time or a ratio."""

from __future__ import annotations

import asyncio
import math

import pytest

from consumer.dev.bench.fairness import CONFIGS, markdown, run_fairness_bench

pytestmark = pytest.mark.kafka


async def test_bench_fairness_reports_the_quiet_source_alone_and_beside_the_flood(
    kafka_bootstrap: str,
) -> None:
    configs = ["arrival order", "fair share + reject over half the buffer"]
    report = await asyncio.to_thread(
        run_fairness_bench,
        kafka_bootstrap,
        engines=["fake"],
        configs=configs,
        args={
            "flood_factor": 10.0,
            "lead_s": 0.5,
            "partitions": 2,
            "queue": 16,
            "fake_latency_ms": 20.0,
        },
        overrides={"fake": {"quiet_rate": 5.0, "seconds": 1.0}},
        progress=False,
    )
    runs = report["engines"]["fake"]["runs"]
    assert list(runs) == configs
    for name, run in runs.items():
        assert run["alone"]["count"] == 5 and run["flood"]["count"] == 5
        assert all(x >= 0 for x in run["alone_ms"] + run["flood_ms"])
        assert math.isfinite(run["p95_flood_over_alone"])
        assert run["noisy_sent"] == 75
        assert 0 <= run["noisy_rejected"] <= run["noisy_answered_when_quiet_done"] <= 75
        assert run["settings"] == CONFIGS[name][0]
    assert runs["arrival order"]["noisy_rejected"] == 0  # nothing refuses in arrival order
    assert "| fake (20 ms)" in markdown(report)
