"""Smoke tests of the Kafka benchmarks at tiny sizes on the real broker.

They check that each benchmark runs end to end and reports the keys the report builder reads,
with sane values; they never assert a time or a ratio (benchmarks print figures).
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.kafka

#: Tiny sizes per benchmark; the report test reuses the same runs.
ARGS: dict[str, list[str]] = {
    "pipeline": ["--requests", "200", "--rounds", "1", "--paced-s", "1"],
    "priority": [
        *("--engines", "fake", "--rounds", "1", "--urgent", "5", "--urgent-rate", "20"),
        *("--backlog", "300"),
    ],
    "memory": ["--requests", "600", "--interval-s", "0.1"],
    "scale": [
        *("--backlog", "300", "--window-s", "1", "--settle-s", "0.2"),
        *("--session-timeout-ms", "6000"),
    ],
}

_RUNS: dict[str, dict[str, Any]] = {}


def _bench(name: str, args: list[str], bootstrap: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, "-m", "consumer.cli", "bench", name, *args, "--json", "--no-progress"],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
        env={**os.environ, "KAFKA_BOOTSTRAP_SERVERS": bootstrap, "N_THREADS": "2"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


async def run_bench(name: str, bootstrap: str) -> dict[str, Any]:
    """The tiny run of ``name`` (once per test session)."""
    if name not in _RUNS:
        _RUNS[name] = await asyncio.to_thread(_bench, name, ARGS[name], bootstrap)
    return _RUNS[name]


def _finite(x: Any) -> bool:
    return isinstance(x, int | float) and math.isfinite(x)


async def test_bench_pipeline_compares_the_service_with_a_raw_loop(kafka_bootstrap: str):
    report = await run_bench("pipeline", kafka_bootstrap)
    for side in ("raw", "service"):
        assert report["saturation"][side]["results"] == 200
        assert report["saturation"][side]["results_per_s"] > 0
        paced = report["paced"][side]
        assert paced["results"] > 0
        assert 0 <= paced["p50_ms"] <= paced["p99_ms"]
    assert report["saturation"]["service"]["statuses"] == {"OK": 200}
    assert _finite(report["service_over_raw_results_per_s"])
    assert _finite(report["added_p99_ms"])
    shares = report["profile"]["share_by_package"]
    assert abs(sum(shares.values()) - 1.0) < 0.02
    assert any(k.startswith("consumer.runtime") for k in shares)
    assert report["machine"]["cpus"] >= 1


async def test_bench_priority_measures_urgent_latency_idle_and_loaded(kafka_bootstrap: str):
    report = await run_bench("priority", kafka_bootstrap)
    fake = report["engines"]["fake"]
    assert fake["idle"]["count"] == 5
    assert fake["loaded"]["count"] == 5
    assert all(x >= 0 for x in fake["idle_ms"] + fake["loaded_ms"])
    assert _finite(fake["p95_loaded_over_idle"])
    assert fake["low_done_during_loaded"][0] <= 300


async def test_bench_memory_samples_the_consumer_rss(kafka_bootstrap: str):
    report = await run_bench("memory", kafka_bootstrap)
    samples = report["samples"]
    assert len(samples) >= 2
    assert all(s["rss_mb"] > 0 for s in samples)
    assert max(s["rss_mb"] for s in samples) > 20  # a loaded consumer, not just the interpreter
    assert samples[-1]["results"] <= 600
    assert [s["t_s"] for s in samples] == sorted(s["t_s"] for s in samples)
    flat = report["flatness"]
    assert flat["rss_mb_min"] <= flat["rss_mb_max"]


async def test_bench_scale_runs_three_members_in_both_membership_modes(kafka_bootstrap: str):
    report = await run_bench("scale", kafka_bootstrap)
    assert set(report["modes"]) == {"dynamic", "static"}
    for mode in report["modes"].values():
        assert set(mode["results_per_s"]) == {"1", "2", "3"}
        assert all(v > 0 for v in mode["results_per_s"].values())
        kinds = [(e["kind"], e["member"], e["members_after"]) for e in mode["events"]]
        assert kinds == [
            ("join", 2, 2),
            ("join", 3, 3),
            ("restart", 3, 3),
            ("leave", 3, 2),
            ("leave", 2, 1),
        ]
        assert all(0 <= e["group_gap_s"] <= e["partition_gap_s"] for e in mode["events"])


@pytest.mark.llama
async def test_bench_priority_and_e2e_run_the_llama_engine(kafka_bootstrap: str):
    args = ["--engines", "llama", "--rounds", "1", "--urgent", "2", "--urgent-rate", "2"]
    args += ["--backlog", "6", "--slots", "2", "--max-tokens", "8"]
    prio = await asyncio.to_thread(_bench, "priority", args, kafka_bootstrap)
    llama = prio["engines"]["llama"]
    assert llama["idle"]["count"] == 2 and llama["loaded"]["count"] == 2
    args = ["--requests", "2", "--max-tokens", "8", "--rounds", "1", "--concurrency", "2"]
    e2e = await asyncio.to_thread(_bench, "e2e", args, kafka_bootstrap)
    for engine in ("llama", "sequential"):
        assert e2e["engines"][engine]["statuses"] == {"OK": 2}
        # 2 requests x 8 tokens, twice for an answer GROUNDING=repair wrote again.
        assert 0 < e2e["engines"][engine]["completion_tokens"] <= 2 * 16
    assert _finite(e2e["llama_over_sequential_explanations_per_min"])


async def test_bench_report_writes_plots_and_report_from_the_json(
    kafka_bootstrap: str, tmp_path: Path
):
    for name in ARGS:
        report = await run_bench(name, kafka_bootstrap)
        (tmp_path / f"{name}.json").write_text(json.dumps(report))
    proc = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-m", "consumer.cli", "bench", "report", "--dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    _check_report(tmp_path)


def _check_report(tmp_path: Path) -> None:
    pngs = {p.name for p in tmp_path.glob("*.png")}
    assert {"priority_cdf.png", "memory_rss.png", "scale.png", "pipeline.png"} <= pngs
    assert all((tmp_path / p).read_bytes()[:4] == b"\x89PNG" for p in pngs)
    text = (tmp_path / "REPORT.md").read_text()
    assert "2 CPUs" in text or f"{os.cpu_count()} CPUs" in text
    assert "| pipeline | service >= 0.5x raw aiokafka loop" in text
    assert "not run (no JSON file)" in text  # e2e was not run here, and the report says so
    for name in pngs:
        assert f"]({name})" in text
