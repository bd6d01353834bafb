"""Scenarios 6, 7 and 8: the engine down then healthy, a 10x burst with deadlines, and
hostile input at scale."""

from __future__ import annotations

import asyncio
import math
import random
import time
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer

from consumer.engines.fake import FakeEngine
from consumer.runtime.service import ConsumerService
from producer_sdk._inflate import MAX_INFLATED_BATCH_BYTES
from schemas.codec import REQUEST_SUBJECT
from schemas.models import ExplanationRequest
from tests.hostile_wire import send_with_hostile_header, use_python_builder
from tests.integration.helpers import make_request
from tests.reliability.conftest import ScenarioFactory
from tests.reliability.history import CODEC, Input, Position
from tests.reliability.procs import ConsumerProcess

DELIVERIES = ["at-least-once", "exactly-once"]
WIRE = 10  # records of scenario 8 the Kafka client cannot parse


def _rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class RssSampler:
    """Peak resident memory of a process, sampled until stopped."""

    def __init__(self, proc: ConsumerProcess) -> None:
        self.proc = proc
        self.baseline = _rss_mb(proc.pid)
        self.peak = self.baseline
        self._task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        while self.proc.alive():
            self.peak = max(self.peak, _rss_mb(self.proc.pid))
            await asyncio.sleep(0.1)

    async def stop(self) -> float:
        """Stop sampling; returns the growth over the baseline in MB."""
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        return self.peak - self.baseline


# -- 6 ----------------------------------------------------------------------------------


@pytest.mark.parametrize("delivery", DELIVERIES)
async def test_engine_down_then_healthy(scenario: ScenarioFactory, delivery: str) -> None:
    # In-process: the fake engine's failure rate is switched while the service runs (a
    # process has no switch for it); Kafka, the group and the transactions are real.
    sc = await scenario(
        "6 engine failing, then healthy",
        delivery,
        fake_latency_ms=20,
        breaker_window=10,
        breaker_min_calls=4,
        breaker_open_s=1.0,
        breaker_probes=1,
        retry_attempts=2,
        retry_backoff_ms=10,
        consumer_id="in-process",
    )
    engine = FakeEngine(sc.settings)
    engine.failure_rate = 1.0
    await sc.load(300)
    opened: list[float] = []
    async with ConsumerService(sc.settings, engine=engine) as service:
        started = time.monotonic()
        deadline = started + 60
        while service.status()["breaker"] != "open":
            assert time.monotonic() < deadline, "the breaker never opened"
            await asyncio.sleep(0.02)
        opened.append(time.monotonic() - started)
        # Down for a while: several open -> half-open -> open cycles.
        paused_seen = False
        down_until = time.monotonic() + 4 * sc.settings.breaker_open_s
        while time.monotonic() < down_until:
            tiers = service.status()["tiers"]
            assert isinstance(tiers, dict)
            paused_seen |= bool(tiers["normal"]["paused"])
            await asyncio.sleep(0.05)
        failed_while_down = await sc.history.count_answered()
        engine.failure_rate = 0.0
        healed = time.monotonic()
        await sc.history.wait_answered(timeout_s=120)
        recovered = time.monotonic() - healed
        assert service.status()["breaker"] == "closed"
    verdict = await sc.finish(
        0,
        lambda v: (
            f"breaker open after {opened[0]:.1f} s, intake "
            f"{'paused' if paused_seen else 'never paused'}, {v.dead_lettered} dead letters; "
            f"{v.statuses['FAILED']} answered FAILED while down; the other "
            f"{v.statuses['OK']} OK {recovered:.0f} s after the engine healed"
        ),
        statuses=("OK", "FAILED"),
        failed_while_down=failed_while_down,
        recovered_s=round(recovered, 1),
    )
    assert paused_seen, "intake was never paused while the breaker was open"
    assert verdict.dead_lettered == 0, "engine failures flooded the DLQ"
    # Failures are bounded by what the breaker lets through before it opens and per probe.
    cycles = math.ceil((healed - started) / sc.settings.breaker_open_s) + 1
    limit = sc.settings.breaker_window + sc.settings.max_concurrent_requests + cycles
    assert verdict.statuses["FAILED"] <= limit
    assert verdict.statuses["OK"] == 300 - verdict.statuses["FAILED"]


# -- 7 ----------------------------------------------------------------------------------


@pytest.mark.parametrize("delivery", DELIVERIES)
async def test_burst_of_ten_times_capacity_with_deadlines(
    scenario: ScenarioFactory, delivery: str
) -> None:
    # Capacity: 4 slots x 50 ms = 80 requests/s. The burst: 800 in about a second.
    sc = await scenario("7 10x burst with deadlines", delivery, fake_latency_ms=50)
    proc = sc.consumer("burst")
    await proc.wait_ready()
    rss = RssSampler(proc)
    now = datetime.now(UTC)
    burst = [make_request(i, deadline=now + timedelta(seconds=3)) for i in range(800)]
    urgent = [make_request(5000 + i) for i in range(20)]
    urgent_topic = sc.settings.request_topics()["urgent"]
    sending = asyncio.create_task(sc.history.produce_requests(sc.topic, burst))
    for i in range(0, 20, 4):
        await sc.history.produce_requests(urgent_topic, urgent[i : i + 4])
        await asyncio.sleep(0.1)
    await sending
    await sc.history.wait_answered(timeout_s=180)
    grown = await rss.stop()
    results = {r.request_id: r for r in await sc.history.outputs()}
    urgent_s = sorted(
        (results[r.request_id].completed_at - r.created_at).total_seconds() for r in urgent
    )
    p95 = urgent_s[math.ceil(0.95 * len(urgent_s)) - 1]
    expired = [results[r.request_id] for r in burst if results[r.request_id].status == "EXPIRED"]
    statuses = {s: sum(1 for r in results.values() if r.status == s) for s in ("OK", "EXPIRED")}
    await sc.finish(
        0,
        f"{statuses['EXPIRED']} EXPIRED without inference, {statuses['OK']} OK; urgent p95 "
        f"{p95:.2f} s; memory +{grown:.0f} MB",
        statuses=("OK", "EXPIRED"),
        urgent_p95_s=round(p95, 2),
        rss_growth_mb=round(grown, 1),
    )
    assert all(results[r.request_id].status == "OK" for r in urgent)
    assert len(expired) > 100, "the burst did not outrun the deadlines: nothing was tested"
    assert all(r.completion_tokens == 0 for r in expired), "an expired request was generated"
    assert p95 < 3.0, f"urgent p95 {p95:.2f} s behind a 10x burst"
    assert grown < 150, f"consumer memory grew {grown:.0f} MB during the burst"


# -- 8 ----------------------------------------------------------------------------------


def _raw_request(**patch: object) -> bytes:
    """A request encoded straight from a dict: Avro-valid, bypassing the SDK's checks."""
    record = make_request(0).model_dump()
    context = dict(record["context"])
    context.update(patch.pop("context", {}))  # type: ignore[call-overload]
    record.update(patch, context=context)
    return CODEC._encode(REQUEST_SUBJECT, record)


def _varint(n: int) -> bytes:
    value = (n << 1) ^ (n >> 63)
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _hostile(rng: random.Random) -> list[tuple[str, bytes]]:
    valid = CODEC.encode_request(make_request(0))
    header = valid[:5]
    items: list[tuple[str, bytes]] = []
    for _ in range(100):
        items.append(("random", rng.randbytes(rng.randint(0, 2000))))
    for _ in range(100):
        data = bytearray(valid)
        for _ in range(rng.randint(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        items.append(("mutated", bytes(data)))
    for n in (2**31, 2**40, 2**62):
        items.append(("avro bomb", header + _varint(n) + b"x" * 16))  # string length
        cut = rng.randrange(6, len(valid))
        items.append(("avro bomb", valid[:cut] + _varint(-n) + b"\x00" * 8))  # block count
    items.append(("oversized", header + rng.randbytes(700_000)))
    items.append(
        ("huge map", _raw_request(context={"metrics": {f"m{i}": 1.0 for i in range(5000)}}))
    )
    items.append(("NaN", _raw_request(context={"metrics": {"sentiment_score": math.nan}})))
    items.append(("negative max_tokens", _raw_request(max_tokens=-5)))
    items.append(("max_tokens above the cap", _raw_request(max_tokens=5000)))
    items.append(("absurd temperature", _raw_request(temperature=1e30)))
    big = {f"a{i}": "y" * 4000 for i in range(60)}  # 240 KB: above MAX_CONTEXT_BYTES
    items.append(("context above MAX_CONTEXT_BYTES", _raw_request(context={"attributes": big})))
    return items


async def _hostile_on_the_wire(
    sc: Any, monkeypatch: pytest.MonkeyPatch
) -> tuple[dict[Position, str], list[ExplanationRequest]]:
    """Records the Kafka client itself cannot parse, recorded in the history: header keys
    that are not UTF-8 (each its own batch), a gzip bomb, and one batch of ten valid
    requests with such a record at its middle. What follows an unparseable record in its
    batch cannot be read through the client either: those five are expected in the DLQ
    (as references), the four before it answered. Returns kind by position and the valid
    requests that must be answered."""
    use_python_builder(monkeypatch)
    conn = sc.history.conn.aiokafka_kwargs()
    kinds: dict[Position, str] = {}
    answered: list[ExplanationRequest] = []

    def record(meta: Any, kind: str, request: ExplanationRequest | None = None) -> None:
        rid = None if request is None else request.request_id
        item = Input(meta.topic, meta.partition, meta.offset, rid)
        sc.history.inputs[item.position] = item
        if request is None:
            kinds[item.position] = kind
        else:
            answered.append(request)

    singles = [
        (f"h{n}".encode(), CODEC.encode_request(make_request(900 + n)), True) for n in range(3)
    ]
    for meta in await send_with_hostile_header(conn, sc.topic, singles):
        record(meta, "header key not UTF-8")
    batch = [make_request(910 + n) for n in range(10)]
    metas = await send_with_hostile_header(
        conn,
        sc.topic,
        [(r.request_id.encode(), CODEC.encode_request(r), n == 4) for n, r in enumerate(batch)],
        one_batch=True,
    )
    for n, (meta, r) in enumerate(zip(metas, batch, strict=True)):
        if n < 4:
            record(meta, "", r)
        else:
            record(meta, "header key not UTF-8" if n == 4 else "after it in its batch")
    producer = AIOKafkaProducer(**conn, acks="all", compression_type="gzip", max_request_size=2**27)
    await producer.start()
    try:
        bomb = b"\x00" * (MAX_INFLATED_BATCH_BYTES + 6 * 2**20)
        meta = await (await producer.send(sc.topic, bomb, key=b"bomb", partition=0))
        del bomb
    finally:
        await producer.stop()
    record(meta, "gzip bomb")
    return kinds, answered


@pytest.mark.parametrize("delivery", DELIVERIES)
async def test_hostile_input_at_scale(
    scenario: ScenarioFactory, delivery: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    rng = random.Random(8)
    hostile = _hostile(rng)
    sc = await scenario(
        f"8 hostile input ({len(hostile)} records, + {WIRE} the client cannot parse) "
        "amid 150 valid",
        delivery,
    )
    valid = [make_request(i) for i in range(150)]
    mixed: list[tuple[str | None, bytes, bytes]] = []
    for kind, data in hostile:
        mixed.append((None, kind.encode(), data))
    for r in valid:
        mixed.append((r.request_id, r.request_id.encode(), CODEC.encode_request(r)))
    rng.shuffle(mixed)
    proc = sc.consumer("hostile")
    await proc.wait_ready()
    rss = RssSampler(proc)
    inputs = await sc.history.produce(sc.topic, mixed)
    kind_at = {
        i.position: m[1].decode() for i, m in zip(inputs, mixed, strict=True) if m[0] is None
    }
    wire, in_batch = await _hostile_on_the_wire(sc, monkeypatch)
    assert len(wire) == WIRE
    kind_at.update(wire)
    valid += in_batch
    await sc.history.wait_answered(timeout_s=180, extra=1)
    # Every hostile record has its one output too (DLQ or a result naming its offset).
    for _ in range(240):
        verdict = await sc.history.check()
        if not verdict.missing:
            break
        await asyncio.sleep(0.5)
    grown = await rss.stop()
    assert proc.alive(), proc.log()[-3000:]
    results = await sc.history.outputs()
    by_pos = {
        (r.request_offset.topic, r.request_offset.partition, r.request_offset.offset): r
        for r in results
    }
    dead = set(await sc.history.dead_letters())
    outcome: dict[str, Counter[str]] = {}
    for pos, kind in kind_at.items():
        r = by_pos.get(pos)
        seen = "DLQ" if pos in dead else "none" if r is None else r.status.value
        outcome.setdefault(kind, Counter())[seen] += 1
    answered = Counter(by_pos[p].status.value for p in kind_at if p in by_pos)
    ok_ids = {r.request_id for r in results if r.status == "OK"}
    valid_ok = sum(1 for r in valid if r.request_id in ok_ids)
    wire_dlq = sum(1 for p in wire if p in dead)
    verdict = await sc.finish(
        0,
        f"{verdict.dead_lettered} dead-lettered ({wire_dlq} of them unparseable by the "
        "client, as references), "
        + ", ".join(f"{n} {status}" for status, n in sorted(answered.items()))
        + f" (hostile but decodable); {valid_ok} of {len(valid)} valid OK; "
        f"memory +{grown:.0f} MB",
        rss_growth_mb=round(grown, 1),
        outcome_by_kind={k: dict(v) for k, v in outcome.items()},
    )
    assert valid_ok == len(valid)
    dlq_only = (
        "random",
        "huge map",
        "NaN",
        "negative max_tokens",
        "absurd temperature",
        "avro bomb",
        "oversized",
        "header key not UTF-8",
        "after it in its batch",
        "gzip bomb",
    )
    for kind in dlq_only:
        assert set(outcome[kind]) == {"DLQ"}, (kind, outcome[kind])
    for kind in ("max_tokens above the cap", "context above MAX_CONTEXT_BYTES"):
        assert set(outcome[kind]) == {"REJECTED"}, (kind, outcome[kind])
    # A hostile record that decodes to a valid request is a request like any other.
    assert set(outcome["mutated"]) <= {"DLQ", "OK", "REJECTED"}, outcome["mutated"]
    assert grown < 150, f"consumer memory grew {grown:.0f} MB"
