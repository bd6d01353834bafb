"""Lag math: end - committed, with the documented choices for missing/out-of-range offsets."""

from __future__ import annotations

import argparse

from consumer.kafka.lag import build_report, format_table, partition_lag, register
from schemas.models import ExplanationResult

TOPICS = {"urgent": "x.requests.urgent", "high": "x.requests.high", "low": "x.requests.low"}


def test_lag_is_end_minus_committed():
    assert partition_lag(log_end=120, committed=100) == 20
    assert partition_lag(log_end=100, committed=100) == 0


def test_no_committed_offset_counts_from_log_start():
    assert partition_lag(log_end=50, committed=None) == 50
    assert partition_lag(log_end=50, committed=None, log_start=30) == 20


def test_committed_below_log_start_counts_from_log_start():
    assert partition_lag(log_end=50, committed=10, log_start=30) == 20


def test_lag_is_never_negative():
    assert partition_lag(log_end=5, committed=9) == 0


def test_report_per_partition_tier_totals_and_missing_topics():
    report = build_report(
        "grp",
        TOPICS,
        partitions={"x.requests.urgent": [1, 0], "x.requests.high": [0]},
        log_start={("x.requests.urgent", 0): 0, ("x.requests.urgent", 1): 2},
        log_end={
            ("x.requests.urgent", 0): 10,
            ("x.requests.urgent", 1): 7,
            ("x.requests.high", 0): 3,
        },
        committed={("x.requests.urgent", 0): 4, ("x.requests.urgent", 1): -1},
    )
    rows = [
        (r.tier, r.partition, r.current_offset, r.log_end_offset, r.lag) for r in report.partitions
    ]
    assert rows == [
        ("urgent", 0, 4, 10, 6),
        ("urgent", 1, None, 7, 5),
        ("high", 0, None, 3, 3),
    ]
    assert report.tier_totals() == {"urgent": 11, "high": 3}
    assert report.total == 14
    assert report.missing_topics == ("x.requests.low",)
    doc = report.to_json()
    assert doc["tiers"] == {"urgent": 11, "high": 3}
    assert doc["partitions"][1]["current_offset"] is None


def test_table_has_the_kafka_tool_columns_and_totals():
    report = build_report(
        "grp",
        {"high": "x.requests.high"},
        partitions={"x.requests.high": [0]},
        log_start={},
        log_end={("x.requests.high", 0): 9},
        committed={("x.requests.high", 0): 2},
    )
    text = format_table(report)
    assert "TIER  TOPIC            PARTITION  CURRENT-OFFSET  LOG-END-OFFSET  LAG" in text
    assert "high  x.requests.high  0          2               9               7" in text
    assert "total   7" in text


def test_cli_registers_lag_with_json_flag():
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["lag", "--json"])
    assert args.json is True
    assert callable(args.func)


def test_a_tier_answering_only_failed_still_has_lag_seconds() -> None:
    """Lag seconds came from OK results only: a tier whose answers were all FAILED (or a
    fresh member with lag and no answer yet) read 0 s and the SLO alert stayed silent."""
    from consumer.config import Settings
    from consumer.kafka.intake import Work
    from consumer.runtime.service import ConsumerService
    from tests.integration.helpers import make_request
    from tests.unit.test_llama_accounting import _record

    svc = ConsumerService(Settings(engine="fake"))
    assert svc.lag_seconds("urgent", 10) > 0  # no answer yet: a prior, never 0
    failed = ExplanationResult(
        **{**_record(), "status": "FAILED", "tier": "urgent", "processing_time_ms": 4000.0}
    )
    work = Work(make_request(1), "tp", 0, "urgent", 0.0)
    svc.tracker.started("tp", 0)
    svc._finished(work, failed)
    assert svc.lag_seconds("urgent", 10) == 10 * 4.0 / max(1, svc.engine.slots)
