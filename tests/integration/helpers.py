"""Small helpers for integration tests on the real broker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition

from consumer.config import Settings
from consumer.engines.base import GenerationRequest, GenerationResult
from consumer.engines.fake import FakeEngine
from consumer.kafka.committed import guard_offset_fetches
from consumer.kafka.topics import ensure_service_topics
from schemas.codec import Codec
from schemas.errors import EngineError
from schemas.models import AnalysisContext, ExplanationRequest, ExplanationResult

CODEC = Codec()


def make_request(i: int = 0, **overrides: Any) -> ExplanationRequest:
    """A valid request whose context mentions ``i``."""
    values: dict[str, Any] = {
        "context": AnalysisContext(
            analysis_type="sentiment",
            symbol=f"SYM{i}",
            metrics={"sentiment_score": 0.5, "current_price": 100.0 + i},
        ),
        "max_tokens": 32,
        "source": "tests",
    }
    values.update(overrides)
    return ExplanationRequest(**values)


async def produce(
    bootstrap: str, topic: str, values: list[tuple[bytes | None, bytes | None]]
) -> None:
    """Send (key, value) pairs in order and wait for every ack."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True)
    await producer.start()
    try:
        futures = [await producer.send(topic, value, key=key) for key, value in values]
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def produce_requests(bootstrap: str, topic: str, requests: list[ExplanationRequest]) -> None:
    """Encode and send requests keyed by request_id."""
    await produce(
        bootstrap, topic, [(r.request_id.encode(), CODEC.encode_request(r)) for r in requests]
    )


async def collect(
    bootstrap: str,
    topic: str,
    count: int,
    *,
    timeout_s: float = 60.0,
    decode: Callable[[bytes], Any] | None = CODEC.decode_result,
    exact: bool = True,
) -> list[Any]:
    """Read ``topic`` from the start (read_committed), in arrival order, until ``count``
    records arrived, then on to the end offsets of that moment, so that a repeat already
    written is seen too. With ``exact`` (the default) anything but ``count`` records fails;
    ``exact=False`` returns what was there (at least ``count`` unless the time ran out)."""
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        isolation_level="read_committed",
    )
    await consumer.start()
    out: list[Any] = []
    deadline = time.monotonic() + timeout_s
    try:
        while len(out) < count and time.monotonic() < deadline:
            _take(await consumer.getmany(timeout_ms=200), out, decode)
        await _read_on_to_end(consumer, out, decode)
    finally:
        await consumer.stop()
    if exact:
        assert len(out) == count, f"{len(out)} records on {topic}, expected exactly {count}"
    return out


async def read_to_end(bootstrap: str, topic: str) -> list[Any]:
    """Every committed record on ``topic`` up to its end offsets now, undecoded."""
    return await collect(bootstrap, topic, 0, decode=None, exact=False)


def _take(
    batch: dict[Any, list[Any]], out: list[Any], decode: Callable[[bytes], Any] | None
) -> None:
    for records in batch.values():
        out.extend(decode(r.value) if decode else r for r in records)


async def _read_on_to_end(
    consumer: AIOKafkaConsumer, out: list[Any], decode: Callable[[bytes], Any] | None
) -> None:
    """Read until the position of every partition reaches its end offset (for a
    read_committed reader: the last stable offset) as it is now."""
    topic = next(iter(consumer.subscription()))
    parts = consumer.partitions_for_topic(topic) or set()
    if not parts:
        await consumer._client.force_metadata_update()
        parts = consumer.partitions_for_topic(topic) or set()
    ends = await consumer.end_offsets([TopicPartition(topic, p) for p in parts])
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if len(consumer.assignment()) == len(ends) and await _caught_up(consumer, ends):
            return
        _take(await consumer.getmany(timeout_ms=200), out, decode)
    raise AssertionError(f"could not read {topic} to its end offsets {ends}")


async def _caught_up(consumer: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
    for tp, end in ends.items():
        if await consumer.position(tp) < end:
            return False
    return True


async def end_offsets(bootstrap: str, topic: str) -> dict[int, int]:
    """partition -> end offset."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap)
    await consumer.start()
    try:
        parts = consumer.partitions_for_topic(topic) or set()
        if not parts:
            await consumer._client.force_metadata_update()
            parts = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        ends = await consumer.end_offsets(tps)
        return {tp.partition: off for tp, off in ends.items()}
    finally:
        await consumer.stop()


async def committed(bootstrap: str, group: str, topic: str) -> dict[int, int | None]:
    """partition -> committed offset of ``group``."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    guard_offset_fetches(consumer)  # a coordinator loading must not read as "none"
    try:
        await consumer._client.force_metadata_update()
        parts = consumer.partitions_for_topic(topic) or set()
        return {p: await consumer.committed(TopicPartition(topic, p)) for p in sorted(parts)}
    finally:
        await consumer.stop()


async def commit_offsets(bootstrap: str, group: str, offsets: dict[TopicPartition, int]) -> None:
    """Commit ``offsets`` for ``group`` as a member-less client (the group must be empty)."""
    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit(offsets)
    finally:
        await consumer.stop()


async def answer_around(
    settings: Settings, reply_to: str, metrics: Any = None
) -> tuple[ExplanationResult, list[ExplanationResult], int]:
    """Run the service over one request replying to ``reply_to`` followed by five normal
    ones; return (its answer on the default results topic, the five answers, results read).
    Returns only once the normal tier's offsets are all committed (the partition moved on).
    """
    from consumer.runtime.service import ConsumerService

    boot = settings.kafka_bootstrap_servers
    odd = make_request(1, reply_to=reply_to)
    after = [make_request(2 + i) for i in range(5)]
    await produce_requests(boot, settings.request_topics()["normal"], [odd, *after])
    async with ConsumerService(settings, metrics=metrics):
        results = await collect(boot, settings.results_topic, 6, timeout_s=60)
        await wait_committed(settings, "normal", timeout_s=30)
    by_id = {r.request_id: r for r in results}
    assert set(by_id) == {r.request_id for r in [odd, *after]}, "an answer is missing"
    return by_id[odd.request_id], [by_id[r.request_id] for r in after], len(results)


def results_by_id(results: list[ExplanationResult]) -> dict[str, list[ExplanationResult]]:
    """request_id -> results seen for it."""
    out: dict[str, list[ExplanationResult]] = {}
    for r in results:
        out.setdefault(r.request_id, []).append(r)
    return out


async def wait_until(predicate: Callable[[], bool], timeout_s: float = 20.0) -> None:
    """Poll ``predicate`` (a state owned by another task) until true, or fail after timeout."""
    deadline = time.monotonic() + timeout_s
    while True:
        if predicate():
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s}s")
        await asyncio.sleep(0.02)


async def service_topics(settings: Settings) -> Settings:
    """``settings`` after creating all of the service's topics."""
    await ensure_service_topics(settings)
    return settings


async def wait_committed(settings: Settings, tier: str, timeout_s: float = 30.0) -> None:
    """Wait until the group's committed offsets reach the end offsets of a tier topic."""
    topic = settings.request_topics()[tier]
    boot = settings.kafka_bootstrap_servers
    deadline = time.monotonic() + timeout_s
    ends: dict[int, int] = {}
    got: dict[int, int | None] = {}
    while time.monotonic() < deadline:
        ends = await end_offsets(boot, topic)
        got = await committed(boot, settings.kafka_group_id, topic)
        if all(got.get(p) == e for p, e in ends.items()):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"committed {got} never reached end offsets {ends}")


class FlakyEngine(FakeEngine):
    """Fails every attempt while ``healthy`` is False."""

    def __init__(self, settings: Settings) -> None:
        super().__init__(settings)
        self.healthy = False

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        if not self.healthy:
            await asyncio.sleep(0.01)
            raise EngineError("GPU fell off the bus", retriable=True)
        return await super().generate(request)
