"""Records the Kafka client cannot parse, written as any raw client could write them."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from aiokafka.producer import message_accumulator
from aiokafka.producer import producer as producer_module
from aiokafka.record.default_records import _DefaultRecordBatchBuilderPy
from aiokafka.structs import RecordMetadata

__all__ = ["NotUtf8", "send_with_hostile_header", "use_python_builder"]


class NotUtf8(str):
    """A header key whose bytes on the wire are not UTF-8 (any raw client can send one)."""

    def encode(self, encoding: str = "utf-8", errors: str = "strict") -> bytes:
        return b"\xff\xfekey"


def use_python_builder(monkeypatch: pytest.MonkeyPatch) -> None:
    """The pure-Python batch builder writes header keys through ``str.encode``: NotUtf8
    reaches the broker as it is. Only producers of the calling test are affected."""
    for module in (message_accumulator, producer_module):
        monkeypatch.setattr(module, "DefaultRecordBatchBuilder", _DefaultRecordBatchBuilderPy)


async def send_with_hostile_header(
    conn: dict[str, Any],
    topic: str,
    records: list[tuple[bytes, bytes, bool]],
    *,
    one_batch: bool = False,
) -> list[RecordMetadata]:
    """Send (key, value, hostile) in order to partition 0 of ``topic``; hostile ones carry
    the header. Each record is its own producer batch unless ``one_batch``. Needs
    :func:`use_python_builder` first. Returns where each landed."""
    producer = AIOKafkaProducer(**conn, acks="all", linger_ms=200)
    await producer.start()
    try:
        futures = []
        for key, value, hostile in records:
            headers = [(NotUtf8("k"), b"v")] if hostile else None
            future = await producer.send(topic, value, key=key, partition=0, headers=headers)
            if not one_batch:
                await future
            futures.append(future)
        return list(await asyncio.gather(*futures))
    finally:
        await producer.stop()
