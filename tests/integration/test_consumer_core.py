"""Consumer core on the real broker: priority, backpressure, DLQ, offsets, breaker, rebalance."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable

import aiohttp
import pytest
from aiokafka import AIOKafkaConsumer

from consumer.config import Settings
from consumer.kafka.topics import ensure_topics, settings_connection
from consumer.runtime.service import ConsumerService
from schemas.models import ResultStatus
from tests.integration.helpers import (
    CODEC,
    FlakyEngine,
    collect,
    committed,
    end_offsets,
    make_request,
    produce,
    produce_requests,
    results_by_id,
    service_topics,
    wait_committed,
    wait_until,
)

pytestmark = pytest.mark.kafka


async def test_urgent_backlog_overtakes_low_backlog(make_settings: Callable[..., Settings]) -> None:
    settings = await service_topics(
        make_settings(fake_latency_ms=20, max_concurrent_requests=4, max_queue_size=40)
    )
    boot = settings.kafka_bootstrap_servers
    low = [make_request(i) for i in range(300)]
    urgent = [make_request(1000 + i) for i in range(30)]
    await produce_requests(boot, settings.request_topics()["low"], low)
    await produce_requests(boot, settings.request_topics()["urgent"], urgent)
    async with ConsumerService(settings):
        results = await collect(boot, settings.results_topic, 330, timeout_s=120)
    order = [r.request_id for r in results]
    assert len(order) == 330 and len(set(order)) == 330
    urgent_ids = {r.request_id for r in urgent}
    last_urgent = max(i for i, rid in enumerate(order) if rid in urgent_ids)
    lows_before = sum(1 for rid in order[:last_urgent] if rid not in urgent_ids)
    assert lows_before < 100, f"{lows_before} low requests finished before the last urgent one"
    assert all(r.status is ResultStatus.OK for r in results)


async def test_low_requests_are_not_starved_by_a_steady_urgent_stream(
    make_settings: Callable[..., Settings],
) -> None:
    settings = await service_topics(
        make_settings(fake_latency_ms=40, max_concurrent_requests=2, max_queue_size=40, aging_s=0.3)
    )
    boot = settings.kafka_bootstrap_servers
    low = [make_request(i) for i in range(10)]
    await produce_requests(boot, settings.request_topics()["low"], low)
    low_ids = {r.request_id for r in low}
    stop = asyncio.Event()

    sent = [0]

    async def urgent_stream() -> None:
        while not stop.is_set():  # ~2x the service's capacity of 50 requests/s
            await produce_requests(
                boot, settings.request_topics()["urgent"], [make_request(i) for i in range(10)]
            )
            sent[0] += 10
            await asyncio.sleep(0.1)

    async with ConsumerService(settings):
        stream = asyncio.create_task(urgent_stream())
        seen: set[str] = set()
        consumer = AIOKafkaConsumer(
            settings.results_topic, bootstrap_servers=boot, auto_offset_reset="earliest"
        )
        await consumer.start()
        deadline = time.monotonic() + 60
        try:
            while not low_ids <= seen and time.monotonic() < deadline:
                for records in (await consumer.getmany(timeout_ms=200)).values():
                    seen.update(CODEC.decode_result(r.value).request_id for r in records)
        finally:
            await consumer.stop()
        # Urgent requests sent but not yet answered when the last low one was: the lows got
        # through while urgent work was still waiting, not after the urgent stream dried up.
        urgent_waiting = sent[0] - len(seen - low_ids)
        stop.set()
        await stream
    assert low_ids <= seen, f"{len(low_ids - seen)} low requests starved"
    assert urgent_waiting > 0, "the urgent stream never built a backlog"


async def test_poison_records_go_to_dlq_and_every_valid_request_gets_one_result(
    make_settings: Callable[..., Settings],
) -> None:
    settings = await service_topics(make_settings(kafka_partitions=3, max_concurrent_requests=8))
    boot = settings.kafka_bootstrap_servers
    rng = random.Random(7)
    valid = [make_request(i) for i in range(980)]
    poison: list[tuple[bytes | None, bytes | None]] = [
        (b"p0", b"not avro at all"),
        (b"p1", b""),
        (b"p2", b"\x00\x00\x00\x00\x63garbage"),  # unknown schema id 99
        (b"p3", b"\x01\x00\x00\x00\x01abc"),  # wrong magic byte
        (b"p4", None),  # tombstone
        (b"p5", CODEC.encode_request(valid[0])[:-3]),  # truncated
        (b"p6", CODEC.encode_request(valid[0]) + b"\x00"),  # trailing byte
    ]
    while len(poison) < 20:
        blob = bytearray(CODEC.encode_request(make_request(len(poison))))
        blob[5:] = bytes(rng.randrange(256) for _ in range(len(blob) - 5))
        poison.append((f"p{len(poison)}".encode(), bytes(blob)))
    records: list[tuple[bytes | None, bytes | None]] = [
        (r.request_id.encode(), CODEC.encode_request(r)) for r in valid
    ]
    for i, p in enumerate(poison):
        records.insert(25 + i * 49, p)
    topic = settings.request_topics()["normal"]
    await produce(boot, topic, records)
    async with ConsumerService(settings):
        results = await collect(boot, settings.results_topic, 980, timeout_s=120)
        dlq = await collect(boot, settings.dlq_topic, 20, timeout_s=30, decode=None)
        await wait_committed(settings, "normal")
    by_id = results_by_id(results)
    assert set(by_id) == {r.request_id for r in valid}
    assert all(len(v) == 1 for v in by_id.values())
    # Some random mutations may still decode into valid requests: they are answered, not DLQ'd.
    assert len(dlq) == 20
    originals = {k: v for k, v in poison}
    for record in dlq:
        headers = dict(record.headers)
        assert record.value == originals[record.key]
        assert headers["dlq.original.topic"] == topic.encode()
        assert int(headers["dlq.original.offset"]) >= 0
        for name in (
            "dlq.error.class",
            "dlq.error.message",
            "dlq.original.partition",
            "dlq.original.timestamp",
            "dlq.consumer.group",
            "dlq.failed.at",
            "dlq.stage",
            "dlq.attempts",
        ):
            assert name in headers, name
    assert await committed(boot, settings.kafka_group_id, topic) == await end_offsets(boot, topic)


async def test_expired_and_rejected_requests_get_results(
    make_settings: Callable[..., Settings],
) -> None:
    from datetime import UTC, datetime, timedelta

    settings = await service_topics(make_settings())
    boot = settings.kafka_bootstrap_servers
    expired = make_request(1, deadline=datetime.now(UTC) - timedelta(seconds=1))
    unknown_profile = make_request(2, prompt_profile="no-such-profile")
    too_long = make_request(3, max_tokens=settings.max_tokens_limit + 1)
    ok = make_request(4)
    await produce_requests(
        boot, settings.request_topics()["high"], [expired, unknown_profile, too_long, ok]
    )
    async with ConsumerService(settings):
        results = {r.request_id: r for r in await collect(boot, settings.results_topic, 4)}
    assert results[expired.request_id].status is ResultStatus.EXPIRED
    assert results[unknown_profile.request_id].status is ResultStatus.REJECTED
    assert "prompt_profile" in (results[unknown_profile.request_id].error or "")
    assert results[too_long.request_id].status is ResultStatus.REJECTED
    assert results[ok.request_id].status is ResultStatus.OK


async def test_reply_to_routes_the_result(make_settings: Callable[..., Settings]) -> None:
    settings = await service_topics(make_settings())
    boot = settings.kafka_bootstrap_servers
    reply = f"{settings.kafka_topic_prefix}.replies"
    await ensure_topics(settings_connection(settings), [reply], partitions=1)
    request = make_request(1, reply_to=reply)
    await produce_requests(boot, settings.request_topics()["normal"], [request])
    async with ConsumerService(settings):
        results = await collect(boot, reply, 1)
    assert results[0].request_id == request.request_id


async def test_open_breaker_pauses_intake_then_recovers(
    make_settings: Callable[..., Settings],
) -> None:
    settings = await service_topics(
        make_settings(
            breaker_min_calls=3,
            breaker_window=5,
            breaker_open_s=2.0,
            breaker_probes=1,
            retry_attempts=50,
            retry_backoff_ms=1,
            max_queue_size=8,
            max_concurrent_requests=2,
        )
    )
    boot = settings.kafka_bootstrap_servers
    engine = FlakyEngine(settings)
    requests = [make_request(i) for i in range(40)]
    await produce_requests(boot, settings.request_topics()["normal"], requests)
    async with ConsumerService(settings, engine=engine) as svc:
        await wait_until(lambda: svc.breaker.state(time.monotonic()).value == "open")
        assert svc.readiness()[0] is False
        assert svc.readiness()[1]["breaker_state"] == "open"
        ready_url = f"http://127.0.0.1:{svc.http_port}/ready"
        async with aiohttp.ClientSession() as http, http.get(ready_url) as resp:
            assert resp.status == 503
            assert (await resp.json())["breaker_state"] == "open"
        normal = {tp for tp in svc.assigned() if tp.topic == settings.request_topics()["normal"]}
        assert svc.intake is not None
        await wait_until(lambda: normal <= svc.intake.consumer.paused())  # type: ignore[union-attr]
        # Intake is paused: at most the bounded buffer was taken (plus retries waiting to go
        # back to the head of their tier, at most one per slot), nothing answered as FAILED.
        bound = svc.scheduler.capacity_per_tier + settings.max_concurrent_requests
        assert svc.scheduler.depth(2) <= bound
        assert svc._counts["FAILED"] == 0
        engine.healthy = True
        results = await collect(boot, settings.results_topic, 40, timeout_s=60)
        assert svc.breaker.state(time.monotonic()).value == "closed"
        assert svc.readiness()[0] is True
        async with aiohttp.ClientSession() as http, http.get(ready_url) as resp:
            assert resp.status == 200
    by_id = results_by_id(results)
    assert len(by_id) == 40 and all(len(v) == 1 for v in by_id.values())
    assert all(r.status is ResultStatus.OK for r in results)


async def test_failed_after_retry_budget(make_settings: Callable[..., Settings]) -> None:
    settings = await service_topics(
        make_settings(
            retry_attempts=2, retry_backoff_ms=1, breaker_min_calls=1000, breaker_window=1000
        )
    )
    boot = settings.kafka_bootstrap_servers
    engine = FlakyEngine(settings)
    request = make_request(1)
    await produce_requests(boot, settings.request_topics()["normal"], [request])
    async with ConsumerService(settings, engine=engine):
        results = await collect(boot, settings.results_topic, 1)
    assert results[0].status is ResultStatus.FAILED
    assert results[0].attempts == 2
    assert "GPU fell off the bus" in (results[0].error or "")


async def test_rebalance_hands_over_without_loss_or_duplicates(
    make_settings: Callable[..., Settings],
) -> None:
    settings = await service_topics(
        make_settings(kafka_partitions=4, fake_latency_ms=50, max_concurrent_requests=4)
    )
    boot = settings.kafka_bootstrap_servers
    requests = [make_request(i) for i in range(800)]  # ~10 s of work for one consumer
    await produce_requests(boot, settings.request_topics()["normal"], requests)
    async with ConsumerService(settings) as first:
        await collect(boot, settings.results_topic, 20, timeout_s=60, exact=False)
        second_settings = settings.model_copy(update={"consumer_id": "second"})
        async with ConsumerService(second_settings) as second:
            results = await collect(boot, settings.results_topic, 800, timeout_s=120)
            await wait_committed(settings, "normal")
            assert second.assigned() and first.assigned()  # both got partitions
    by_id = results_by_id(results)
    assert set(by_id) == {r.request_id for r in requests}
    assert all(len(v) == 1 for v in by_id.values())
    assert {r.consumer_id for r in results} >= {"second"}


def _consume_process(settings: Settings) -> subprocess.Popen[bytes]:
    env = dict(os.environ)
    env.update(
        {
            "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
            "KAFKA_TOPIC_PREFIX": settings.kafka_topic_prefix,
            "KAFKA_GROUP_ID": settings.kafka_group_id,
            "KAFKA_PARTITIONS": str(settings.kafka_partitions),
            "ENGINE": "fake",
            "FAKE_LATENCY_MS": str(settings.fake_latency_ms),
            "MAX_CONCURRENT_REQUESTS": str(settings.max_concurrent_requests),
            "DELIVERY": settings.delivery.value,
            "HTTP_PORT": "0",
            "METRICS_PORT": "0",
            "PROMETHEUS_ENABLED": "false",
            "COMMIT_INTERVAL_MS": "100",
            # A killed member is noticed after the session timeout: keep it short.
            "KAFKA_SESSION_TIMEOUT_MS": "6000",
            "CONSUMER_ID": "subprocess",
        }
    )
    return subprocess.Popen(
        [sys.executable, "-m", "consumer.cli", "consume"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


async def _drain_rest(settings: Settings, total: int) -> list:
    boot = settings.kafka_bootstrap_servers
    async with ConsumerService(settings.model_copy(update={"consumer_id": "successor"})):
        return await collect(boot, settings.results_topic, total, timeout_s=120)


@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
async def test_sigterm_drains_publishes_and_commits(
    make_settings: Callable[..., Settings], delivery: str
) -> None:
    settings = await service_topics(
        make_settings(fake_latency_ms=20, max_concurrent_requests=4, delivery=delivery)
    )
    boot = settings.kafka_bootstrap_servers
    requests = [make_request(i) for i in range(200)]
    await produce_requests(boot, settings.request_topics()["normal"], requests)
    proc = _consume_process(settings)
    try:
        await collect(boot, settings.results_topic, 30, timeout_s=60, exact=False)
        proc.send_signal(signal.SIGTERM)
        code = await asyncio.to_thread(proc.wait, 60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, proc.stderr.read().decode() if proc.stderr else ""
    results = await _drain_rest(settings, 200)
    by_id = results_by_id(results)
    assert set(by_id) == {r.request_id for r in requests}
    assert all(len(v) == 1 for v in by_id.values()), "a request was answered twice"
    assert {r.consumer_id for r in results} == {"subprocess", "successor"}


async def test_exactly_once_survives_a_crash(make_settings: Callable[..., Settings]) -> None:
    settings = await service_topics(
        make_settings(fake_latency_ms=10, max_concurrent_requests=4, delivery="exactly-once")
    )
    boot = settings.kafka_bootstrap_servers
    requests = [make_request(i) for i in range(300)]
    await produce_requests(boot, settings.request_topics()["normal"], requests)
    proc = _consume_process(settings)
    try:
        await collect(boot, settings.results_topic, 40, timeout_s=60, exact=False)
        proc.kill()  # no drain, open transaction left behind
        await asyncio.to_thread(proc.wait, 30)
    finally:
        if proc.poll() is None:
            proc.kill()
    results = await _drain_rest(settings, 300)
    by_id = results_by_id(results)
    assert set(by_id) == {r.request_id for r in requests}
    assert all(len(v) == 1 for v in by_id.values()), "a duplicate result became visible"


async def test_at_least_once_survives_a_crash_repeating_only_uncommitted_work(
    make_settings: Callable[..., Settings],
) -> None:
    settings = await service_topics(make_settings(fake_latency_ms=10, max_concurrent_requests=4))
    boot = settings.kafka_bootstrap_servers
    topic = settings.request_topics()["normal"]
    requests = [make_request(i) for i in range(300)]
    await produce_requests(boot, topic, requests)
    proc = _consume_process(settings)
    try:
        await collect(boot, settings.results_topic, 60, timeout_s=60, exact=False)
        proc.kill()  # no drain, no final commit
        await asyncio.to_thread(proc.wait, 30)
    finally:
        if proc.poll() is None:
            proc.kill()
    # What the crashed consumer had committed: those requests must not be answered again.
    done_before = await committed(boot, settings.kafka_group_id, topic)
    position = await _request_positions(boot, topic)
    below = {rid for rid, (p, off) in position.items() if off < (done_before.get(p) or 0)}
    assert below, "the crashed consumer committed nothing; the test proves nothing"
    ids = {r.request_id for r in requests}
    async with ConsumerService(settings.model_copy(update={"consumer_id": "successor"})):
        await wait_committed(settings, "normal", timeout_s=120)
    published = sum((await end_offsets(boot, settings.results_topic)).values())
    results = await collect(boot, settings.results_topic, published)
    assert len(results) == published
    by_id = results_by_id(results)
    assert set(by_id) == ids, "a request was lost"
    repeated = {rid for rid, rs in by_id.items() if len(rs) > 1}
    assert not repeated & below, "a committed request was answered again"
    successor = {r.request_id for r in results if r.consumer_id == "successor"}
    assert not successor & below


async def _request_positions(bootstrap: str, topic: str) -> dict[str, tuple[int, int]]:
    """request_id -> (partition, offset) of every request record in ``topic``."""
    ends = await end_offsets(bootstrap, topic)
    records = await collect(bootstrap, topic, sum(ends.values()), decode=None)
    return {CODEC.decode_request(r.value).request_id: (r.partition, r.offset) for r in records}
