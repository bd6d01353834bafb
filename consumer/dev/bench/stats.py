"""The engine benchmark's inputs and arithmetic: sample contexts, per-run figures, tables."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

__all__ = ["BENCH_CONTEXTS", "EngineRun", "format_table", "percentile", "ratios", "summarize"]

BENCH_CONTEXTS: tuple[tuple[str, dict[str, Any]], ...] = (
    (
        "default",
        {
            "analysis_type": "sentiment",
            "symbol": "AAPL",
            "metrics": {"sentiment_score": 0.72, "current_price": 189.5, "iv_rank": 41.0},
            "attributes": {"source": "news"},
        },
    ),
    (
        "options",
        {
            "analysis_type": "volatility",
            "symbol": "TSLA",
            "metrics": {"iv_rank": 88.0, "implied_volatility": 0.71, "put_call_ratio": 1.4},
            "attributes": {"expiry": "2026-12-18"},
        },
    ),
    (
        "default",
        {
            "analysis_type": "momentum",
            "symbol": "MSFT",
            "metrics": {"rsi_14": 71.3, "current_price": 421.2, "return_20d": 0.084},
            "attributes": {"timeframe": "daily"},
        },
    ),
    (
        "options",
        {
            "analysis_type": "skew",
            "symbol": "SPY",
            "metrics": {"skew_25d": -0.062, "iv_rank": 23.0, "open_interest": 1250000.0},
            "attributes": {"tenor": "30d"},
        },
    ),
    (
        "default",
        {
            "analysis_type": "earnings",
            "symbol": "NVDA",
            "metrics": {"eps_surprise": 0.12, "revenue_growth": 0.94, "current_price": 131.4},
            "attributes": {"quarter": "Q3"},
        },
    ),
    (
        "default",
        {
            "analysis_type": "credit",
            "symbol": "F",
            "metrics": {"spread_bps": 215.0, "leverage": 3.1, "interest_coverage": 4.2},
            "attributes": {"rating": "BB+"},
        },
    ),
)


@dataclass(frozen=True, slots=True)
class EngineRun:
    """One engine at one concurrency level."""

    engine: str
    concurrency: int
    requests: int
    failed: int
    wall_s: float
    completion_tokens: int
    tokens_per_s: float
    explanations_per_min: float
    p50_latency_s: float
    p95_latency_s: float
    #: Engine-thread CPU µs per decode step outside ``llama_decode`` (Python, C sampling,
    #: log-probabilities), and sequences per step; None for engines without steps.
    step_overhead_us: float | None = None
    seqs_per_step: float | None = None


def percentile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100); NaN for no values."""
    if not values:
        return math.nan
    data = sorted(values)
    k = (len(data) - 1) * q / 100.0
    lo = math.floor(k)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


def summarize(
    engine: str,
    concurrency: int,
    latencies_s: Sequence[float],
    completion_tokens: int,
    wall_s: float,
    failed: int = 0,
    steps: tuple[int, float, int] | None = None,
) -> EngineRun:
    """Aggregate figures of one run; ``steps`` is (steps, overhead seconds, sequences)."""
    done = len(latencies_s)
    n_steps = steps[0] if steps else 0
    return EngineRun(
        engine=engine,
        concurrency=concurrency,
        requests=done + failed,
        failed=failed,
        wall_s=wall_s,
        completion_tokens=completion_tokens,
        tokens_per_s=completion_tokens / wall_s if wall_s > 0 else 0.0,
        explanations_per_min=60.0 * done / wall_s if wall_s > 0 else 0.0,
        p50_latency_s=percentile(latencies_s, 50),
        p95_latency_s=percentile(latencies_s, 95),
        step_overhead_us=1e6 * steps[1] / n_steps if steps and n_steps else None,
        seqs_per_step=steps[2] / n_steps if steps and n_steps else None,
    )


def ratios(
    runs: Sequence[EngineRun], numerator: str = "llama", denominator: str = "sequential"
) -> dict[int, float]:
    """Aggregate tokens/s of ``numerator`` divided by ``denominator``, per concurrency."""
    by = {(r.engine, r.concurrency): r for r in runs}
    out: dict[int, float] = {}
    for (engine, conc), run in by.items():
        base = by.get((denominator, conc))
        if engine == numerator and base is not None and base.tokens_per_s > 0:
            out[conc] = run.tokens_per_s / base.tokens_per_s
    return dict(sorted(out.items()))


def format_table(runs: Sequence[EngineRun], ratio: dict[int, float]) -> str:
    """Plain-text table of the runs, then the ratio per concurrency."""
    head = (
        f"{'engine':<12}{'conc':>6}{'reqs':>6}{'tokens/s':>11}{'expl/min':>10}"
        f"{'p50 s':>9}{'p95 s':>9}{'failed':>8}{'ovh us/step':>13}{'seqs/step':>11}"
    )
    lines = [head, "-" * len(head)]
    for r in runs:
        lines.append(
            f"{r.engine:<12}{r.concurrency:>6}{r.requests:>6}{r.tokens_per_s:>11.1f}"
            f"{r.explanations_per_min:>10.1f}{r.p50_latency_s:>9.2f}{r.p95_latency_s:>9.2f}"
            f"{r.failed:>8}"
            + (
                f"{r.step_overhead_us:>13.0f}{r.seqs_per_step or 0:>11.1f}"
                if r.step_overhead_us is not None
                else ""
            )
        )
    if ratio:
        lines.append("")
        lines.append("llama / sequential aggregate tokens/s:")
        lines.extend(f"  concurrency {c:>3}: {v:.2f}x" for c, v in ratio.items())
    if any(r.step_overhead_us is not None for r in runs):
        lines.append("")
        lines.append("ovh us/step: engine-thread CPU per decode step outside llama_decode")
    return "\n".join(lines)
