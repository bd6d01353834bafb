"""Compute accounting through the service: results carry compute_ms; /status and metrics sum it."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry

from consumer.config import Settings
from consumer.kafka.topics import ensure_service_topics
from consumer.ops.metrics import Metrics
from consumer.runtime.service import ConsumerService
from consumer.runtime.status import compute_view
from tests.integration.helpers import collect, make_request, produce_requests

pytestmark = pytest.mark.kafka


def test_compute_view_prices_the_mean_request() -> None:
    view = compute_view({"urgent": [7.2, 2.0], "low": [0.0, 0.0]}, cost_per_gpu_hour=3.6)
    assert view["urgent"]["seconds"] == 7.2
    assert view["urgent"]["requests"] == 2.0
    assert view["urgent"]["cost_per_request"] == pytest.approx(0.0036)
    assert view["low"]["cost_per_request"] is None
    assert compute_view({"urgent": [1.0, 1.0]}, None)["urgent"]["cost_per_request"] is None


async def test_results_status_and_metrics_carry_compute(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(fake_latency_ms=40.0, cost_per_gpu_hour=2.0)
    await ensure_service_topics(settings)
    boot = settings.kafka_bootstrap_servers
    requests = [make_request(i) for i in range(6)]
    await produce_requests(boot, settings.request_topics()["high"], requests)
    registry = CollectorRegistry()
    async with ConsumerService(settings, metrics=Metrics(registry=registry)) as svc:
        results = await collect(boot, settings.results_topic, len(requests))
        status = svc.status()
    assert all(r.compute_ms is not None and r.compute_ms >= 40.0 for r in results)
    total_s = sum(r.compute_ms or 0.0 for r in results) / 1000.0
    high = status["compute"]["high"]  # type: ignore[index]
    assert high["requests"] == len(requests)
    assert high["seconds"] == pytest.approx(total_s, rel=1e-3)
    assert high["cost_per_request"] == pytest.approx(total_s / len(requests) / 3600 * 2.0)
    charged = registry.get_sample_value("explainstream_compute_seconds_total", {"priority": "high"})
    assert charged == pytest.approx(total_s, rel=1e-3)
