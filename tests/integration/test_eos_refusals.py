"""Exactly-once: a record the broker refuses for good never stalls its partition.

Under DELIVERY=exactly-once a result is held and written in the partition's transaction at
commit time, long after its request finished. A destination that refuses it for good (here:
a topic whose ``max.message.bytes`` is smaller than any result; an ACL that denies writing
behaves the same) used to abort every transaction of that partition, forever: the partition
stalled and nothing after it was answered. Now the refused record is replaced by its next
alternative (FAILED on the default results topic, then the DLQ); with none left the
partition is given up and liveness fails, so a restart retries.
"""

from __future__ import annotations

from collections.abc import Callable

from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from consumer.config import Settings
from consumer.core.partitions import PartitionState
from consumer.ops.metrics import Metrics
from consumer.runtime.service import ConsumerService
from schemas.models import ResultStatus
from tests.integration.helpers import (
    answer_around,
    make_request,
    produce_requests,
    service_topics,
    wait_until,
)

# Smaller than any result or dead letter, still above a transaction marker (~80 bytes): a
# topic that cannot take the abort marker keeps every transaction that touched it open.
TINY = {"max.message.bytes": "120"}


async def _create_tiny(bootstrap: str, *topics: str) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(t, 1, 1, topic_configs=TINY) for t in topics])
    finally:
        await admin.close()


async def test_a_refused_reply_to_answers_failed_and_the_partition_moves_on(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(delivery="exactly-once", publish_timeout_s=5.0)
    boot = settings.kafka_bootstrap_servers
    refusing = f"{settings.kafka_topic_prefix}.replies-tiny"  # allowed: under the prefix
    await _create_tiny(boot, refusing)
    await service_topics(settings)
    metrics = Metrics()
    refused, after, read = await answer_around(settings, refusing, metrics=metrics)
    assert refused.status is ResultStatus.FAILED
    assert refusing in (refused.error or "")
    assert "MessageSizeTooLarge" in (refused.error or "")
    assert all(r.status is ResultStatus.OK for r in after)
    assert read == 6  # read_committed: one answer each, nothing else visible
    fallbacks = "explainstream_publish_fallbacks_total"
    assert metrics.registry.get_sample_value(fallbacks, {"to": "results"}) == 1


async def test_refused_everywhere_gives_the_partition_up_and_fails_liveness(
    make_settings: Callable[..., Settings],
) -> None:
    settings = make_settings(
        delivery="exactly-once", publish_timeout_s=5.0, kafka_session_timeout_ms=6000
    )
    boot = settings.kafka_bootstrap_servers
    await _create_tiny(boot, settings.results_topic, settings.dlq_topic)
    await service_topics(settings)
    await produce_requests(boot, settings.request_topics()["normal"], [make_request(1)])
    metrics = Metrics()
    async with ConsumerService(settings, metrics=metrics) as svc:
        await wait_until(lambda: bool(svc.book.in_state(PartitionState.LOST)), timeout_s=60)
        lost = metrics.registry.get_sample_value(
            "explainstream_partitions_lost_total", {"reason": "refused"}
        )
        assert lost == 1
        assert svc.is_live()  # a lost partition alone is not a failure yet...
        await wait_until(lambda: not svc.is_live(), timeout_s=30)  # ...two session timeouts
        reasons = svc.live_reasons()
    normal = settings.request_topics()["normal"]
    assert any(normal in tp for tp in reasons["lost_partitions"])  # type: ignore[attr-defined]
