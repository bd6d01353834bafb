"""Dead letters: headers of the contract, bounded concurrent sends, retried until they land."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from aiokafka import TopicPartition

from consumer.kafka.deadletters import DeadLetters, dlq_headers
from consumer.kafka.sinks import PublishError
from tests.integration.helpers import wait_until

TP = TopicPartition("explain.requests.low", 2)


class _Sink:
    def __init__(self, failures: int = 0) -> None:
        self.gate = asyncio.Event()
        self.failures = failures
        self.put_calls = 0
        self.landed: list[int] = []

    async def put(self, tp: Any, offset: int, topic: str, *_: Any) -> None:
        self.put_calls += 1
        if self.failures:
            self.failures -= 1
            raise PublishError("DLQ topic unavailable")
        await self.gate.wait()
        self.landed.append(offset)


def _record(offset: int) -> SimpleNamespace:
    return SimpleNamespace(offset=offset, key=b"k", value=b"bad", headers=[], timestamp=7)


def _letters(sink: _Sink, done: list[int], limit: int) -> DeadLetters:
    return DeadLetters(
        sink,  # type: ignore[arg-type]
        topic="explain.dlq",
        group="g",
        spawn=lambda tp, coro: asyncio.create_task(coro),
        on_done=lambda tp, offset, topic, stage: done.append(offset),
        limit=limit,
    )


async def test_at_most_limit_sends_run_and_the_intake_waits_for_a_slot() -> None:
    sink, done = _Sink(), []
    letters = _letters(sink, done, limit=3)
    for offset in range(3):
        assert not letters.full()
        await asyncio.wait_for(
            letters.submit(TP, _record(offset), ValueError("x"), stage="decode"), 1
        )
    assert letters.full()  # the intake holds the partition instead of waiting
    fourth = asyncio.create_task(letters.submit(TP, _record(3), ValueError("x"), stage="decode"))
    for _ in range(10):
        await asyncio.sleep(0)  # let it run as far as it can
    assert not fourth.done()  # the fourth send waits: no unbounded pile of tasks
    sink.gate.set()
    await asyncio.wait_for(fourth, 1)
    await wait_until(lambda: len(done) == 4)
    assert sorted(sink.landed) == [0, 1, 2, 3] and sorted(done) == [0, 1, 2, 3]


async def test_a_failing_dlq_is_retried_until_the_record_lands() -> None:
    sink, done = _Sink(failures=2), []
    sink.gate.set()
    letters = _letters(sink, done, limit=1)
    await letters.submit(TP, _record(9), ValueError("x"), stage="decode")
    await wait_until(lambda: bool(done))
    assert sink.put_calls == 3 and done == [9] and letters.sent == 1


def test_headers_carry_the_contract() -> None:
    headers = dict(
        dlq_headers(
            [("trace", b"1")],
            topic="t",
            partition=2,
            offset=5,
            timestamp=7,
            group="g",
            error=ValueError("bad bytes"),
            stage="decode",
        )
    )
    assert headers["trace"] == b"1"
    assert headers["dlq.error.class"] == b"ValueError"
    assert headers["dlq.error.message"] == b"bad bytes"
    assert headers["dlq.original.topic"] == b"t"
    assert headers["dlq.original.partition"] == b"2"
    assert headers["dlq.original.offset"] == b"5"
    assert headers["dlq.original.timestamp"] == b"7"
    assert headers["dlq.consumer.group"] == b"g"
    assert headers["dlq.stage"] == b"decode" and headers["dlq.attempts"] == b"1"
    assert b"T" in headers["dlq.failed.at"]
