"""Committed-offset reads: group-level OffsetFetch errors are errors, and a read that
never succeeds holds the partition instead of guessing where to start.

The broker side of this (a real non-coordinator answering NOT_COORDINATOR) runs on the
3-node cluster in ``tests/reliability/test_cluster_faults.py``; these tests pin the
decisions with aiokafka's own protocol structs and stand-ins for the coordinator seam.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from aiokafka import TopicPartition
from aiokafka import errors as kafka_errors
from aiokafka.protocol.commit import (
    OffsetFetchRequest,
    OffsetFetchResponse_v1,
    OffsetFetchResponse_v3,
)
from aiokafka.protocol.metadata import MetadataRequest

from consumer.kafka.committed import group_error, guard_offset_fetches
from consumer.kafka.group import seek_to_committed

TP = TopicPartition("t", 0)


def _v3(error_code: int, topics: list[Any] | None = None) -> OffsetFetchResponse_v3:
    return OffsetFetchResponse_v3(0, topics or [], error_code)


def test_group_error_reads_the_top_level_code() -> None:
    assert group_error(_v3(0, [("t", [(0, 7, "", 0)])])) is None
    assert group_error(_v3(14)) is kafka_errors.GroupLoadInProgressError
    assert group_error(_v3(15)) is kafka_errors.GroupCoordinatorNotAvailableError
    assert group_error(_v3(16)) is kafka_errors.NotCoordinatorForGroupError
    # v1 has no group-level code: its errors are per partition, which aiokafka handles.
    assert group_error(OffsetFetchResponse_v1([("t", [(0, -1, "", 16)])])) is None


class _Coordinator:
    """The two members of aiokafka's coordinator that the guard touches."""

    def __init__(self, response: Any) -> None:
        self.response = response
        self.dead = 0
        self.sent: list[Any] = []

    async def _send_req(self, request: Any) -> Any:
        self.sent.append(request)
        return self.response

    def coordinator_dead(self) -> None:
        self.dead += 1


class _Consumer:
    def __init__(self, coordinator: Any, group_id: str | None = "g") -> None:
        self._coordinator = coordinator
        self._group_id = group_id


async def test_a_group_level_error_raises_and_not_coordinator_rediscovers() -> None:
    coordinator = _Coordinator(_v3(16))
    guard_offset_fetches(_Consumer(coordinator))  # type: ignore[arg-type]
    with pytest.raises(kafka_errors.NotCoordinatorForGroupError) as info:
        await coordinator._send_req(OffsetFetchRequest("g", [("t", [0])]))
    assert info.value.retriable  # so aiokafka retries it after its backoff
    assert coordinator.dead == 1

    coordinator.response = _v3(14)
    with pytest.raises(kafka_errors.GroupLoadInProgressError):
        await coordinator._send_req(OffsetFetchRequest("g", [("t", [0])]))
    assert coordinator.dead == 1  # loading: same coordinator, just later


async def test_healthy_answers_and_other_requests_pass_through() -> None:
    ok = _v3(0, [("t", [(0, 7, "", 0)])])
    coordinator = _Coordinator(ok)
    consumer = _Consumer(coordinator)
    guard_offset_fetches(consumer)  # type: ignore[arg-type]
    guard_offset_fetches(consumer)  # type: ignore[arg-type]  # idempotent: one wrapper
    assert await coordinator._send_req(OffsetFetchRequest("g", [("t", [0])])) is ok
    coordinator.response = _v3(16)  # not an OffsetFetch: never inspected
    assert await coordinator._send_req(MetadataRequest([])) is coordinator.response
    assert len(coordinator.sent) == 2 and coordinator.dead == 0


def test_a_missing_seam_fails_loudly_and_a_groupless_consumer_is_left_alone() -> None:
    with pytest.raises(RuntimeError, match="_send_req"):
        guard_offset_fetches(_Consumer(object()))  # type: ignore[arg-type]
    untouched = _Coordinator(_v3(16))
    guard_offset_fetches(_Consumer(untouched, group_id=None))  # type: ignore[arg-type]
    assert not hasattr(untouched._send_req, "guarded")


class _Positions:
    """A consumer's committed()/seek surface, with the committed read scripted."""

    def __init__(self, committed: Any) -> None:
        self._committed = committed
        self.sought: dict[TopicPartition, int | str] = {}

    async def committed(self, tp: TopicPartition) -> int | None:
        return await self._committed(tp)

    def assignment(self) -> set[TopicPartition]:
        return {TP}

    def seek(self, tp: TopicPartition, offset: int) -> None:
        self.sought[tp] = offset

    async def seek_to_beginning(self, tp: TopicPartition) -> None:
        self.sought[tp] = "beginning"


async def test_seek_to_committed_positions_at_the_committed_offset() -> None:
    async def seven(tp: TopicPartition) -> int:
        return 7

    consumer = _Positions(seven)
    assert await seek_to_committed(consumer, [TP], timeout_s=5) == set()  # type: ignore[arg-type]
    assert consumer.sought == {TP: 7}


async def test_never_committed_starts_at_the_beginning() -> None:
    async def none(tp: TopicPartition) -> None:
        return None

    consumer = _Positions(none)
    assert await seek_to_committed(consumer, [TP], timeout_s=5) == set()  # type: ignore[arg-type]
    assert consumer.sought == {TP: "beginning"}


async def test_a_read_that_never_answers_or_fails_holds_the_partition() -> None:
    async def forever(tp: TopicPartition) -> int:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def refused(tp: TopicPartition) -> int:
        raise kafka_errors.GroupAuthorizationFailedError("g")

    for read in (forever, refused):
        consumer = _Positions(read)
        held = await seek_to_committed(consumer, [TP], timeout_s=0.2)  # type: ignore[arg-type]
        assert held == {TP} and consumer.sought == {}
