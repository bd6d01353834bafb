"""``explainstream replay``: republish the requests of a time window, e.g. after a model upgrade.

For each partition of the chosen tier topics, the window [since, until) is located with
offsets_for_times; the end is also bounded by the end offset captured at start, so a replay
into a tier it also reads from cannot chase its own output. Every decodable request in the
window is republished with a new request_id and ``replay_of`` = the original id, into the
low tier by default (live traffic keeps priority), optionally with ``reply_to`` set to a
dedicated results topic. Undecodable records are counted and skipped.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import re
import sys
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime

from aiokafka import AIOKafkaConsumer, TopicPartition

from producer_sdk._kafka import guarded, make_consumer, partitions_of, start_or_close
from producer_sdk._requests import TIERS, topic_prefix_from_env, validate_tier
from producer_sdk.connection import KafkaConnection
from producer_sdk.producer import ExplanationProducer
from schemas.codec import Codec
from schemas.errors import DecodeError, KafkaUnavailable, ValidationError
from schemas.models import ExplanationRequest, utcnow
from schemas.registry import codec_from_env, resolve_waiting

__all__ = ["ReplayReport", "plan_window", "register", "replay", "replayed_request"]

log = logging.getLogger(__name__)

_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


@dataclass
class ReplayReport:
    """What a replay read and republished."""

    dry_run: bool
    scanned: int = 0
    replayed: int = 0
    undecodable: int = 0
    per_tier: dict[str, int] = field(default_factory=dict)
    #: (original request_id, new request_id) when ``collect_ids`` was set.
    pairs: list[tuple[str, str]] = field(default_factory=list)


def plan_window(
    starts: dict[TopicPartition, int | None],
    untils: dict[TopicPartition, int | None],
    ends: dict[TopicPartition, int],
) -> dict[TopicPartition, tuple[int, int]]:
    """Offsets [start, stop) to read per partition (empty partitions left out).

    ``starts``/``untils``: first offset at or after since/until (None: none such);
    ``ends``: end offsets captured at start.
    """
    plan = {}
    for tp, end in ends.items():
        start = starts.get(tp)
        if start is None:
            continue
        until = untils.get(tp)
        stop = end if until is None else min(until, end)
        if start < stop:
            plan[tp] = (start, stop)
    return plan


def replayed_request(
    original: ExplanationRequest, *, reply_to: str | None, now: datetime | None = None
) -> ExplanationRequest:
    """The copy to republish: new id, now as created_at, same deadline budget, replay_of set."""
    now = now or utcnow()
    deadline = None
    if original.deadline is not None:
        budget = original.deadline - original.created_at
        deadline = now + budget if budget.total_seconds() > 0 else None
    return original.model_copy(
        update={
            "request_id": str(uuid.uuid4()),
            "created_at": now,
            "deadline": deadline,
            "reply_to": reply_to,
            "replay_of": original.request_id,
        }
    )


async def replay(
    connection: KafkaConnection,
    topic_prefix: str,
    *,
    since: datetime,
    until: datetime,
    tiers: Sequence[str] = TIERS,
    into: str = "low",
    results_topic: str | None = None,
    dry_run: bool = False,
    codec: Codec | None = None,
    collect_ids: bool = False,
    progress: Callable[[ReplayReport], None] | None = None,
    batch_size: int = 500,
    idle_timeout_s: float = 30.0,
) -> ReplayReport:
    """Republish the requests of [since, until) from ``tiers`` into ``into``; see module doc."""
    since, until = _utc(since), _utc(until)
    if since >= until:
        raise ValidationError(
            f"--since {since.isoformat()} is not before --until {until.isoformat()}"
        )
    tiers = [validate_tier(t) for t in tiers]
    into = validate_tier(into)
    if results_topic is not None and not _TOPIC.match(results_topic):
        raise ValidationError(f"--results-topic {results_topic!r} is not a valid topic name")
    codec = codec or Codec()
    report = ReplayReport(dry_run=dry_run)
    consumer = make_consumer(connection, group_id=None, auto_offset_reset="earliest")
    await start_or_close(connection, "starting replay reader", consumer)
    producer = None
    try:
        plan = await _plan(connection, consumer, topic_prefix, tiers, since, until)
        if not plan:
            return report
        if not dry_run:
            producer = ExplanationProducer(connection, topic_prefix=topic_prefix, codec=codec)
            await producer.start()
        consumer.assign(list(plan))
        for tp, (start, _) in plan.items():
            consumer.seek(tp, start)
        tier_of = {f"{topic_prefix}.requests.{t}": t for t in tiers}
        window = (_ms(since), _ms(until))
        remaining = set(plan)
        last_progress = last_read = time.monotonic()
        while remaining:
            batches = await guarded(
                connection, "reading requests", consumer.getmany(timeout_ms=500)
            )
            if batches:
                last_read = time.monotonic()
            elif time.monotonic() - last_read > idle_timeout_s:
                raise KafkaUnavailable(f"replay read nothing for {idle_timeout_s:g}s; giving up")
            pending: list[ExplanationRequest] = []
            for tp, records in batches.items():
                stop = plan[tp][1]
                for record in records:
                    if record.offset >= stop:
                        break
                    if not window[0] <= record.timestamp < window[1]:
                        continue
                    report.scanned += 1
                    try:
                        # Waits out a registry outage rather than miscounting as undecodable.
                        await resolve_waiting(codec, record.value, give_up_s=idle_timeout_s)
                        original = codec.decode_request(record.value)
                    except DecodeError as exc:
                        if exc.retriable:
                            raise
                        report.undecodable += 1
                        log.warning(
                            "skipping %s[%d]@%d: %s", tp.topic, tp.partition, record.offset, exc
                        )
                        continue
                    tier = tier_of[tp.topic]
                    report.per_tier[tier] = report.per_tier.get(tier, 0) + 1
                    copy = replayed_request(original, reply_to=results_topic)
                    pending.append(copy)
                    if collect_ids:
                        report.pairs.append((original.request_id, copy.request_id))
            if producer is not None:
                for start in range(0, len(pending), batch_size):
                    await producer.send_requests(pending[start : start + batch_size], priority=into)
            report.replayed += len(pending)
            for tp in list(remaining):
                position = await guarded(connection, "positioning", consumer.position(tp))
                if position >= plan[tp][1]:
                    remaining.discard(tp)
                    consumer.pause(tp)
            if progress is not None and (time.monotonic() - last_progress >= 1.0 or not remaining):
                progress(report)
                last_progress = time.monotonic()
        return report
    finally:
        if producer is not None:
            await producer.close()
        await consumer.stop()


async def _plan(
    conn: KafkaConnection,
    consumer: AIOKafkaConsumer,
    prefix: str,
    tiers: Sequence[str],
    since: datetime,
    until: datetime,
) -> dict[TopicPartition, tuple[int, int]]:
    tps: list[TopicPartition] = []
    for tier in tiers:
        topic = f"{prefix}.requests.{tier}"
        tps.extend(TopicPartition(topic, p) for p in await partitions_of(conn, consumer, topic))
    ends = await guarded(conn, "reading end offsets", consumer.end_offsets(tps))
    at_since = await guarded(
        conn, "finding offsets", consumer.offsets_for_times(dict.fromkeys(tps, _ms(since)))
    )
    at_until = await guarded(
        conn, "finding offsets", consumer.offsets_for_times(dict.fromkeys(tps, _ms(until)))
    )
    return plan_window(
        {tp: (o.offset if o else None) for tp, o in at_since.items()},
        {tp: (o.offset if o else None) for tp, o in at_until.items()},
        ends,
    )


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def _ms(value: datetime) -> int:
    return int(value.timestamp() * 1000)


def parse_instant(text: str, option: str) -> datetime:
    """An ISO-8601 instant (naive means UTC); ValidationError naming ``option``."""
    try:
        return _utc(datetime.fromisoformat(text.strip()))
    except ValueError:
        raise ValidationError(f"{option} {text!r} is not an ISO-8601 instant") from None


def _cmd(args: argparse.Namespace) -> int:
    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    since = parse_instant(args.since, "--since")
    until = parse_instant(args.until, "--until")
    tiers = [t.strip() for t in args.tiers.split(",") if t.strip()]
    verb = "would replay" if args.dry_run else "replayed"

    def show(report: ReplayReport) -> None:
        tiers_text = ", ".join(f"{t} {n}" for t, n in sorted(report.per_tier.items())) or "none"
        print(
            f"replay: scanned {report.scanned}, {verb} {report.replayed} ({tiers_text}), "
            f"undecodable {report.undecodable}",
            file=sys.stderr,
        )

    report = asyncio.run(
        replay(
            KafkaConnection.from_env(),
            topic_prefix_from_env(),
            since=since,
            until=until,
            tiers=tiers,
            into=args.into,
            results_topic=args.results_topic,
            dry_run=args.dry_run,
            codec=codec_from_env(),
            progress=show,
        )
    )
    show(report)
    print(report.replayed)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg,unused-ignore]
    """Add ``replay``."""
    p = subparsers.add_parser("replay", help="republish the requests of a time window")
    p.add_argument("--since", required=True, help="ISO-8601 start (inclusive; naive = UTC)")
    p.add_argument("--until", required=True, help="ISO-8601 end (exclusive; naive = UTC)")
    p.add_argument("--tiers", default=",".join(TIERS), help="tiers to read (default: all)")
    p.add_argument("--into", choices=TIERS, default="low", help="tier to republish into")
    p.add_argument("--results-topic", default=None, help="reply_to of the replayed requests")
    p.add_argument("--dry-run", action="store_true", help="only count")
    p.set_defaults(func=_cmd)
