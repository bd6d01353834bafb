"""Reading a group's committed offsets without mistaking "not now" for "none".

An OffsetFetch answered while the group coordinator is loading its state, or by a broker
that is no longer the coordinator (a stale cache after a coordinator move, a broker that
was fenced and rejoined), carries a *group-level* error code and no partitions (protocol
v2 and later). aiokafka 0.14 reads only the per-partition codes, so such an answer looks
like "this group never committed here": ``committed()`` returns None, and the fetcher
resets the partition to ``auto_offset_reset`` (earliest), re-reading everything the group
had already acknowledged. Seen after a broker was frozen past its session with the
controller: the partitions were read again from offset 0.

:func:`guard_offset_fetches` makes the consumer's coordinator raise that group-level error
instead, which aiokafka already handles for per-partition errors: a retriable error is
retried after its backoff (the coordinator rediscovered on NOT_COORDINATOR), so neither
``committed()`` nor the fetcher ever sees a missing offset that exists.
:func:`group_offsets` does the same for the admin client's read (the lag report), where a
silent "none" would show the whole log as lag.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka import errors as kafka_errors
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.protocol.commit import OffsetFetchRequest

__all__ = ["group_error", "group_offsets", "guard_offset_fetches"]

log = logging.getLogger("explainstream.group")

# Group-level codes after which the coordinator must be looked up again.
_REDISCOVER = (
    kafka_errors.NotCoordinatorForGroupError,
    kafka_errors.GroupCoordinatorNotAvailableError,
)


def group_error(response: Any) -> type[kafka_errors.KafkaError] | None:
    """The group-level error of an OffsetFetch response (v2+), or None when there is none."""
    code = int(getattr(response, "error_code", 0) or 0)
    return kafka_errors.for_code(code) if code else None


def guard_offset_fetches(consumer: AIOKafkaConsumer) -> None:
    """Make ``consumer``'s committed-offset reads raise group-level errors (see module doc).

    Call after ``start()`` (which creates the coordinator). A consumer without a group has
    no coordinator to guard. Raises RuntimeError if aiokafka no longer has the seam this
    relies on, so an upgrade fails loudly at start instead of silently re-reading.
    """
    coordinator = getattr(consumer, "_coordinator", None)
    if coordinator is None or not getattr(consumer, "_group_id", None):
        return
    send: Callable[[Any], Awaitable[Any]] | None = getattr(coordinator, "_send_req", None)
    if send is None or not callable(send):
        raise RuntimeError("aiokafka's group coordinator has no _send_req; check the pin")
    if getattr(send, "guarded", False):
        return

    async def checked(request: Any) -> Any:
        response = await send(request)
        if isinstance(request, OffsetFetchRequest):
            error = group_error(response)
            if error is not None:
                log.debug("committed offsets not readable now (%s); retrying", error.__name__)
                if issubclass(error, _REDISCOVER):
                    coordinator.coordinator_dead()
                raise error()
        return response

    checked.guarded = True  # type: ignore[attr-defined]
    coordinator._send_req = checked


async def group_offsets(
    admin: AIOKafkaAdminClient,
    group_id: str,
    tps: list[TopicPartition],
    coordinator_id: int | None = None,
) -> dict[TopicPartition, int | None]:
    """Committed offsets of ``group_id`` for ``tps`` (None: never committed) via the admin
    client, which is asked ``coordinator_id`` (default: looked up).

    A healthy answer lists every partition asked for (-1 where nothing was committed); one
    with none of them is a group-level error, raised as CoordinatorNotAvailable (retriable).
    """
    if not tps:
        return {}
    got = await admin.list_consumer_group_offsets(
        group_id, group_coordinator_id=coordinator_id, partitions=tps
    )
    if not got:
        raise kafka_errors.GroupCoordinatorNotAvailableError(
            f"committed offsets of group {group_id} not readable now "
            "(its coordinator is loading or has moved)"
        )
    return {tp: (om.offset if om.offset >= 0 else None) for tp, om in got.items()}
