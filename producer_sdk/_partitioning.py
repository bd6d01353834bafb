"""Partitioning by source: a producing service's requests confined to a few partitions.

Requests stay keyed by ``request_id`` (the topics' contract); only the partition is chosen
here. ``partition_by="source"`` puts every request of one source in ``spread`` consecutive
partitions starting at ``murmur2(source)`` — so one source's backlog waits in its own
partitions and another source's requests are not behind it in the same FIFO log. Within
those partitions the request id spreads the load. The cost: one source's requests can be
worked on by at most ``spread`` consumer instances (and KEDA's lag scaler, which counts
partitions with lag, scales a flood of one source to at most ``spread`` replicas).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from aiokafka.partitioner import murmur2

__all__ = ["PartitionBy", "source_partition"]

PartitionBy = Literal["request_id", "source"]


def _hash(text: str) -> int:
    return murmur2(text.encode()) & 0x7FFFFFFF  # as Kafka's Java client does


def source_partition(
    source: str, request_id: str, partitions: Sequence[int], spread: int = 1
) -> int:
    """The partition of one request of ``source`` among the topic's ``partitions``."""
    if not partitions:
        raise ValueError("the topic has no partitions")
    if spread < 1:
        raise ValueError("spread must be at least 1")
    ordered = sorted(partitions)
    width = min(spread, len(ordered))
    start = _hash(source) % len(ordered)
    return ordered[(start + _hash(request_id) % width) % len(ordered)]
