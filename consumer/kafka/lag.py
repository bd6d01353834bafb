"""Consumer-group lag per tier and partition, like ``kafka-consumer-groups --describe``.

Lag of a partition = log-end offset - the group's effective position, where the effective
position is the committed offset clamped into ``[log-start, log-end]``. A partition with no
committed offset counts from the log start: the service reads with
``auto_offset_reset=earliest``, so everything still retained is work to do (the kafka tool
prints ``-`` there; a number is more useful for scaling). A committed offset below the log
start (records deleted by retention) is likewise counted from the log start.

The math is pure (:func:`partition_lag`, :func:`build_report`); :func:`fetch_lag` does the IO
with clients the caller already has, and never joins the group.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.errors import KafkaError

from consumer.kafka.committed import group_offsets
from schemas.errors import ConfigError, KafkaUnavailable

__all__ = [
    "LagReport",
    "PartitionLag",
    "build_report",
    "fetch_lag",
    "fetch_lag_for_settings",
    "format_table",
    "partition_lag",
    "register",
]

_UNKNOWN_TOPIC = 3


@dataclass(frozen=True)
class PartitionLag:
    """Lag of one partition. ``current_offset`` is the committed offset (None: none)."""

    tier: str
    topic: str
    partition: int
    current_offset: int | None
    log_start_offset: int
    log_end_offset: int
    lag: int


@dataclass(frozen=True)
class LagReport:
    """Lag of one group over the tier topics; ``missing_topics`` do not exist."""

    group_id: str
    partitions: tuple[PartitionLag, ...]
    missing_topics: tuple[str, ...] = ()

    def tier_totals(self) -> dict[str, int]:
        """Total lag per tier (tiers whose topic exists, in report order)."""
        totals: dict[str, int] = {}
        for row in self.partitions:
            totals[row.tier] = totals.get(row.tier, 0) + row.lag
        return totals

    @property
    def total(self) -> int:
        """Lag over every tier."""
        return sum(row.lag for row in self.partitions)

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (the ``lag --json`` output)."""
        return {
            "group_id": self.group_id,
            "total_lag": self.total,
            "tiers": self.tier_totals(),
            "partitions": [asdict(row) for row in self.partitions],
            "missing_topics": list(self.missing_topics),
        }


def partition_lag(log_end: int, committed: int | None, log_start: int = 0) -> int:
    """Records between the group's effective position and the log end (never negative)."""
    position = log_start if committed is None or committed < log_start else committed
    return max(log_end - min(position, log_end), 0)


def build_report(
    group_id: str,
    topics: Mapping[str, str],
    partitions: Mapping[str, list[int]],
    log_start: Mapping[tuple[str, int], int],
    log_end: Mapping[tuple[str, int], int],
    committed: Mapping[tuple[str, int], int | None],
) -> LagReport:
    """Assemble a report from raw offsets. ``topics`` maps tier -> topic; ``partitions`` maps
    topic -> partition ids (a topic absent from it is reported missing). Offsets are keyed
    by ``(topic, partition)``; a committed offset < 0 or absent means none."""
    rows: list[PartitionLag] = []
    missing: list[str] = []
    for tier, topic in topics.items():
        if topic not in partitions:
            missing.append(topic)
            continue
        for p in sorted(partitions[topic]):
            key = (topic, p)
            end = log_end.get(key, 0)
            start = log_start.get(key, 0)
            raw = committed.get(key)
            current = raw if raw is not None and raw >= 0 else None
            rows.append(
                PartitionLag(
                    tier, topic, p, current, start, end, partition_lag(end, current, start)
                )
            )
    return LagReport(group_id, tuple(rows), tuple(missing))


async def fetch_lag(
    admin: AIOKafkaAdminClient,
    consumer: AIOKafkaConsumer,
    group_id: str,
    topics: Mapping[str, str],
) -> LagReport:
    """Read partitions, log start/end offsets and the group's committed offsets.

    ``admin`` and ``consumer`` must be started; ``consumer`` is only used for offset lookups
    (``beginning_offsets``/``end_offsets`` do not join a group), so the service may pass its
    own group consumer. Raises KafkaUnavailable on broker errors.
    """
    try:
        # describe_topics alone would auto-create missing topics on brokers that allow it.
        existing = set(await admin.list_topics())
        wanted = [t for t in topics.values() if t in existing]
        described = await admin.describe_topics(wanted) if wanted else []
        partitions: dict[str, list[int]] = {}
        for t in described:
            if t.get("error_code", 0) == _UNKNOWN_TOPIC or not t.get("partitions"):
                continue
            if t.get("error_code", 0):
                raise KafkaUnavailable(
                    f"metadata error {t['error_code']} for topic {t['topic']}", retriable=True
                )
            partitions[t["topic"]] = [p["partition"] for p in t["partitions"]]
        tps = [TopicPartition(t, p) for t, ps in partitions.items() for p in ps]
        if tps:
            starts = await consumer.beginning_offsets(tps)
            ends = await consumer.end_offsets(tps)
            offsets = await group_offsets(admin, group_id, tps)
        else:
            starts, ends, offsets = {}, {}, {}
    except KafkaError as exc:
        raise KafkaUnavailable(f"cannot read lag: {exc}", retriable=True) from exc
    return build_report(
        group_id,
        topics,
        partitions,
        {(tp.topic, tp.partition): off for tp, off in starts.items()},
        {(tp.topic, tp.partition): off for tp, off in ends.items()},
        {(tp.topic, tp.partition): off for tp, off in offsets.items()},
    )


def _client_kwargs(settings: Any) -> dict[str, Any]:
    kwargs: dict[str, Any] = settings.kafka_connection(
        client_id="explainstream-lag"
    ).aiokafka_kwargs()
    return kwargs


async def fetch_lag_for_settings(settings: Any, *, timeout_s: float = 30.0) -> LagReport:
    """Open short-lived clients from ``Settings``, read the group's lag, close them."""
    kwargs = _client_kwargs(settings)
    admin = AIOKafkaAdminClient(**kwargs, request_timeout_ms=int(timeout_s * 1000))
    consumer = AIOKafkaConsumer(
        **kwargs, group_id=None, enable_auto_commit=False, request_timeout_ms=40_000
    )
    try:
        async with asyncio.timeout(timeout_s):
            await admin.start()
            await consumer.start()
            return await fetch_lag(
                admin, consumer, settings.kafka_group_id, settings.request_topics()
            )
    except TimeoutError as exc:
        raise KafkaUnavailable(
            f"no answer from {settings.kafka_bootstrap_servers} within {timeout_s:g}s",
            retriable=True,
        ) from exc
    except KafkaError as exc:
        raise KafkaUnavailable(
            f"cannot reach {settings.kafka_bootstrap_servers}: {exc}",
            retriable=True,
        ) from exc
    finally:
        await consumer.stop()
        await admin.close()


def format_table(report: LagReport) -> str:
    """Human output: one row per partition, then per-tier totals."""
    header = ("TIER", "TOPIC", "PARTITION", "CURRENT-OFFSET", "LOG-END-OFFSET", "LAG")
    rows = [header] + [
        (
            r.tier,
            r.topic,
            str(r.partition),
            "-" if r.current_offset is None else str(r.current_offset),
            str(r.log_end_offset),
            str(r.lag),
        )
        for r in report.partitions
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [f"GROUP {report.group_id}", ""]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in rows
    ]
    lines += ["", "TIER    LAG"]
    totals = report.tier_totals()
    lines += [f"{tier:<7} {n}" for tier, n in totals.items()]
    lines.append(f"{'total':<7} {report.total}")
    lines += [f"missing topic: {t}" for t in report.missing_topics]
    return "\n".join(lines)


def _cmd(args: argparse.Namespace) -> int:
    from consumer.config import Settings

    # aiokafka logs each failed connection attempt; the CLI reports failure once, below.
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    try:
        settings = Settings.from_env()
        report = asyncio.run(fetch_lag_for_settings(settings, timeout_s=args.timeout))
    except ConfigError as exc:
        print(f"explainstream lag: {exc}", file=sys.stderr)
        return 1
    except KafkaUnavailable as exc:
        from producer_sdk._diagnose import diagnosed

        # aiokafka says only "Unable to bootstrap"; one more attempt finds out why.
        cause = asyncio.run(diagnosed(settings.kafka_connection(), exc))
        print(f"explainstream lag: {cause}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(report.to_json()))
    else:
        print(format_table(report))
    return 0


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``lag [--json]`` to the CLI."""
    p = subparsers.add_parser("lag", help="consumer-group lag per tier and partition")
    p.add_argument("--json", action="store_true", help="one JSON object instead of a table")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for Kafka")
    p.set_defaults(func=_cmd)
