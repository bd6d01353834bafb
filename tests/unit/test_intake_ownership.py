"""Ownership is re-checked after every await of the intake (the real Intake, stub IO)."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any

from consumer.core.offsets import OffsetTracker
from consumer.core.partitions import PartitionBook
from consumer.core.scheduler import TierScheduler
from consumer.kafka.intake import Intake
from schemas.codec import Codec
from schemas.errors import SchemaRegistryUnavailable
from tests.integration.helpers import make_request

TP = ("explain.requests.normal", 0)


class Consumer:
    """Records seeks; owns TP."""

    def __init__(self) -> None:
        self.seeks: list[tuple[Any, int]] = []

    def assignment(self) -> set[Any]:
        return {TP}

    def seek(self, tp: Any, offset: int) -> None:
        self.seeks.append((tp, offset))


class SlowRegistryCodec(Codec):
    """The embedded codec, with a registry round trip the test controls."""

    def __init__(self, fail: bool = False) -> None:
        super().__init__()
        self.entered, self.release = asyncio.Event(), asyncio.Event()
        self.fail = fail

    async def resolve(self, data: bytes) -> None:
        self.entered.set()
        await self.release.wait()
        if self.fail:
            raise SchemaRegistryUnavailable("registry down")


def intake(codec: Codec, consumer: Consumer, book: PartitionBook) -> tuple[Intake, Any, Any]:
    scheduler: TierScheduler[Any] = TierScheduler(tiers=4, capacity_per_tier=16)
    tracker = OffsetTracker()
    dlq = SimpleNamespace(full=lambda: False)
    return (
        Intake(
            consumer,  # type: ignore[arg-type]
            codec=codec,
            scheduler=scheduler,
            tracker=tracker,
            book=book,
            tiers=("urgent", "high", "normal", "low"),
            dead_letters=dlq,  # type: ignore[arg-type]
            breaker_open=lambda now: False,
            max_uncommitted=100,
            wake=asyncio.Event(),
        ),
        scheduler,
        tracker,
    )


def record(offset: int) -> Any:
    request = make_request(offset)
    return SimpleNamespace(
        offset=offset, key=b"k", value=Codec().encode_request(request), headers=(), timestamp=0
    )


def revoke_and_give_back(book: PartitionBook) -> None:
    book.revoking([TP], 0.0)
    book.remove([TP])
    book.assigning([TP], {TP: 2}, 0.0)
    book.ready([TP], 0.0)


async def take_with_rebalance_inside_the_resolve(fail: bool) -> tuple[Any, Any, Consumer]:
    book = PartitionBook()
    book.assigning([TP], {TP: 2}, 0.0)
    book.ready([TP], 0.0)
    codec, consumer = SlowRegistryCodec(fail), Consumer()
    taker, scheduler, tracker = intake(codec, consumer, book)
    task = asyncio.create_task(taker._take({TP: [record(5), record(6)]}))
    await codec.entered.wait()
    revoke_and_give_back(book)  # READY again, but a new assignment
    codec.release.set()
    await task
    return scheduler, tracker, consumer


async def test_a_rebalance_inside_the_registry_round_trip_takes_nothing() -> None:
    scheduler, tracker, consumer = await take_with_rebalance_inside_the_resolve(fail=False)
    # Used to buffer the record for the old assignment: answered by both members.
    assert len(scheduler) == 0
    assert tracker.outstanding(TP) == 0
    assert consumer.seeks == []


async def test_a_failed_resolve_after_a_rebalance_does_not_seek_the_new_assignment() -> None:
    scheduler, tracker, consumer = await take_with_rebalance_inside_the_resolve(fail=True)
    # Used to seek the new assignment to the old batch's offset (and hold it).
    assert consumer.seeks == []
    assert len(scheduler) == 0 and tracker.outstanding(TP) == 0


def test_an_owner_token_changes_with_every_assignment() -> None:
    book = PartitionBook()
    assert book.owner(TP) is None
    book.assigning([TP], {TP: 2}, 0.0)
    assert book.owner(TP) is None  # not READY yet
    book.ready([TP], 0.0)
    first = book.owner(TP)
    revoke_and_give_back(book)
    assert book.owner(TP) is not None and book.owner(TP) != first
