"""The benchmarks' pure arithmetic: gaps, RSS flatness, profile categories, report verdicts."""

from __future__ import annotations

import math

from consumer.dev.bench.kit import clean, latencies_ms, latency_summary
from consumer.dev.bench.memory import rss_flatness
from consumer.dev.bench.prof import category
from consumer.dev.bench.report import headline
from consumer.dev.bench.scale import gaps


def test_gaps_count_the_edges_and_each_partition_apart():
    # Partition 0 answers every 100 ms; partition 1 once, 300 ms into a 1 s window.
    points = [(t, 0) for t in range(1000, 2001, 100)] + [(1300, 1)]
    g = gaps(points, 1000, 2000)
    assert g["group_gap_s"] == 0.1
    assert g["partition_gap_s"] == 0.7  # 1300 -> end of window for partition 1


def test_gaps_of_a_silent_window_is_the_whole_window():
    assert gaps([(500, 0), (2500, 0)], 1000, 2000) == {"group_gap_s": 1.0, "partition_gap_s": 0}


def test_rss_flatness_ignores_warm_up_and_reports_spread_and_drift():
    samples = [
        {"t_s": 0.0, "rss_mb": 20.0, "results": 0},
        {"t_s": 1.0, "rss_mb": 50.0, "results": 10},
        {"t_s": 2.0, "rss_mb": 55.0, "results": 20},
        {"t_s": 3.0, "rss_mb": 52.0, "results": 30},
    ]
    f = rss_flatness(samples, warmup_results=10)
    assert f["rss_mb_min"] == 50.0 and f["rss_mb_max"] == 55.0
    assert math.isclose(f["spread"], 0.1)
    assert math.isclose(f["drift"], 0.04)
    assert rss_flatness(samples, warmup_results=99) == {"samples_after_warmup": 0}


def test_latencies_pair_results_with_their_own_requests_only():
    class A:
        def __init__(self, key: bytes, ts: int) -> None:
            self.key, self.timestamp_ms = key, ts

    arrivals = [A(b"a", 110), A(b"b", 250), A(b"other", 999)]
    assert latencies_ms(arrivals, {b"a": 100, b"b": 200}) == [10.0, 50.0]  # type: ignore[arg-type]
    s = latency_summary([10.0, 50.0])
    assert s["count"] == 2 and s["p50_ms"] == 30.0 and s["max_ms"] == 50.0


def test_clean_makes_nan_null_everywhere():
    assert clean({"a": [1.0, math.nan], "b": {"c": math.nan}}) == {
        "a": [1.0, None],
        "b": {"c": None},
    }


def test_profile_categories_by_path_fragment():
    assert category("/x/site-packages/aiokafka/consumer/fetcher.py:f").startswith("aiokafka")
    assert category("/w/schemas/_guard.py:datum").startswith("schemas")
    assert category("/w/consumer/runtime/runner.py:run").startswith("consumer.runtime")
    assert category("~:<method 'poll' of 'select.epoll' objects>").startswith("socket IO")
    assert category("/somewhere/else.py:f") == "other Python"


def test_headline_verdicts_say_met_or_by_how_much():
    rows = headline(
        {
            "pipeline": {
                "service_over_raw_results_per_s": 0.25,
                "added_p99_ms": 3.0,
                "rate_fraction": 0.5,
                "paced": {"service": {"p99_ms": 20.0}},
            },
            "memory": {"requests": 10, "flatness": {"spread": 0.05}},
        }
    )
    verdicts = {goal: verdict for _, goal, _, verdict in rows}
    assert verdicts["service >= 0.5x raw aiokafka loop (results/s)"] == "missed: 50% of the goal"
    assert verdicts["added p99 <= 5 ms at 50% of saturation"] == "met"
    assert verdicts["RSS flat within 10% after warm-up (10 backlog)"] == "met"
