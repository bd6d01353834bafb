"""Time to first token and time per output token: the step-clock arithmetic, the fake
engine's figures, and the histograms they land in."""

from __future__ import annotations

import time

import pytest
from prometheus_client import CollectorRegistry

from consumer.config import Settings
from consumer.engines.base import GenerationRequest, token_timing
from consumer.engines.fake import FakeEngine
from consumer.ops.metrics import Metrics


def test_token_timing_is_first_token_minus_arrival_and_the_mean_gap_after_it() -> None:
    assert token_timing(10.0, 10.5, 12.5, 5) == (0.5, 0.5)
    assert token_timing(10.0, 10.25, 10.25, 1) == (0.25, None)  # one token: no gap to average
    assert token_timing(10.0, None, None, 0) == (None, None)  # nothing generated
    assert token_timing(10.0, 9.0, 9.0, 1) == (0.0, None)  # clocks never run backwards here


async def test_fake_engine_reports_both_on_its_own_clock() -> None:
    engine = FakeEngine(Settings(engine="fake", fake_latency_ms=40, fake_tokens_per_s=200))
    await engine.start()
    request = GenerationRequest(
        request_id="r", context={"analysis_type": "sentiment", "metrics": {"x": 1.0}},
        max_tokens=12, ignore_eos=True,
    )  # fmt: skip
    before = time.monotonic()
    result = await engine.generate(request)
    elapsed = time.monotonic() - before
    assert result.completion_tokens == 12
    assert result.first_token_s is not None and result.time_per_output_token_s is not None
    # The simulated prefill (40 ms) and one token (5 ms) come before the first token.
    assert result.first_token_s >= 0.045 - 0.002
    assert result.time_per_output_token_s > 0
    # First token plus the gaps is the generation, which fits inside the call.
    assert result.first_token_s + 11 * result.time_per_output_token_s <= elapsed


def test_histograms_per_tier_start_at_zero_and_skip_what_was_not_measured() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)

    def count(name: str, tier: str) -> float | None:
        return registry.get_sample_value(f"explainstream_{name}_seconds_count", {"priority": tier})

    for tier in ("urgent", "high", "normal", "low"):
        assert count("time_to_first_token", tier) == 0
        assert count("time_per_output_token", tier) == 0
    metrics.observe_tokens_timing("urgent", 0.2, 0.01)
    metrics.observe_tokens_timing("urgent", 0.3, None)
    metrics.observe_tokens_timing("low", None, None)
    metrics.observe_tokens_timing("low", float("nan"), -1.0)
    assert count("time_to_first_token", "urgent") == 2
    assert count("time_per_output_token", "urgent") == 1
    assert count("time_to_first_token", "low") == 0
    assert count("time_per_output_token", "low") == 0
    ttft_sum = registry.get_sample_value(
        "explainstream_time_to_first_token_seconds_sum", {"priority": "urgent"}
    )
    assert ttft_sum == pytest.approx(0.5)
    bucket = registry.get_sample_value(
        "explainstream_time_to_first_token_seconds_bucket", {"priority": "urgent", "le": "0.25"}
    )
    assert bucket == 1
