"""Fair share between sources on the real broker: a flood no longer delays a quiet source
behind it in the same tier, and what a share refuses is answered REJECTED, not dropped."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from consumer.config import Settings
from consumer.kafka.topics import settings_connection
from consumer.runtime.service import ConsumerService
from producer_sdk import ExplanationProducer
from producer_sdk._partitioning import source_partition
from schemas.models import ResultStatus
from tests.integration.helpers import collect, make_request, produce_requests, service_topics
from tests.integration.test_sdk import CONTEXT

pytestmark = pytest.mark.kafka


async def _flood_then_quiet(
    settings: Settings, flood: int, quiet: int
) -> tuple[set[str], set[str]]:
    boot, topic = settings.kafka_bootstrap_servers, settings.request_topics()["normal"]
    noisy = [make_request(i, source="replay-job") for i in range(flood)]
    calm = [make_request(10_000 + i, source="pricing") for i in range(quiet)]
    await produce_requests(boot, topic, noisy)
    await produce_requests(boot, topic, calm)
    return {r.request_id for r in noisy}, {r.request_id for r in calm}


async def test_a_quiet_source_is_served_between_a_flood_in_the_buffer(
    make_settings: Callable[..., Settings],
) -> None:
    settings = await service_topics(
        make_settings(fake_latency_ms=10, max_concurrent_requests=2, max_queue_size=1000)
    )
    noisy, calm = await _flood_then_quiet(settings, flood=200, quiet=10)
    async with ConsumerService(settings):
        results = await collect(settings.kafka_bootstrap_servers, settings.results_topic, 210)
    order = [r.request_id for r in results]
    assert set(order) == noisy | calm and all(r.status is ResultStatus.OK for r in results)
    last_quiet = max(i for i, rid in enumerate(order) if rid in calm)
    # Arrival order would finish the quiet source 201st to 210th; fair share interleaves it
    # as soon as its requests are in the buffer (the intake reads in batches, hence slack).
    assert last_quiet < 120, f"the last quiet request finished {last_quiet + 1}th of 210"


async def test_requests_over_a_sources_buffer_share_are_answered_rejected_with_the_reason(
    make_settings: Callable[..., Settings],
) -> None:
    settings = await service_topics(
        make_settings(
            fake_latency_ms=20,
            max_concurrent_requests=2,
            max_queue_size=40,  # 10 places per tier
            source_max_buffer_share=0.5,
            source_over_share="reject",
        )
    )
    noisy, calm = await _flood_then_quiet(settings, flood=120, quiet=5)
    async with ConsumerService(settings):
        results = await collect(settings.kafka_bootstrap_servers, settings.results_topic, 125)
    by_id = {r.request_id: r for r in results}
    assert set(by_id) == noisy | calm  # exactly one answer each: nothing dropped
    assert all(by_id[rid].status is ResultStatus.OK for rid in calm)
    rejected = [by_id[rid] for rid in noisy if by_id[rid].status is ResultStatus.REJECTED]
    served = [by_id[rid] for rid in noisy if by_id[rid].status is ResultStatus.OK]
    assert rejected and served and len(rejected) + len(served) == len(noisy)
    assert all(
        "SOURCE_MAX_BUFFER_SHARE" in (r.error or "") and "retry" in (r.error or "")
        for r in rejected
    )


async def test_partitioned_by_source_a_late_quiet_source_overtakes_a_flood_held_at_its_share(
    make_settings: Callable[..., Settings],
) -> None:
    settings = await service_topics(
        make_settings(
            kafka_partitions=2,
            fake_latency_ms=10,
            max_concurrent_requests=2,
            max_queue_size=40,  # 10 places per tier, 5 for one source
            source_max_buffer_share=0.5,
        )
    )
    conn = settings_connection(settings)
    prefix = settings.kafka_topic_prefix
    boot = settings.kafka_bootstrap_servers

    async def send(source: str, count: int) -> list[str]:
        async with ExplanationProducer(
            conn, topic_prefix=prefix, source=source, partition_by="source"
        ) as producer:
            return await producer.submit_many([CONTEXT] * count, max_tokens=16)

    # murmur2 puts "replay-job" in partition 0 and "pricing" in 1 of a 2-partition topic.
    assert source_partition("replay-job", "any", [0, 1]) == 0
    assert source_partition("pricing", "any", [0, 1]) == 1
    flood = await send("replay-job", 300)
    async with ConsumerService(settings):
        first = await collect(boot, settings.results_topic, 20, exact=False)
        assert len(first) >= 20
        quiet = set(await send("pricing", 10))
        results = await collect(boot, settings.results_topic, 310)
    assert all(r.status is ResultStatus.OK for r in results)  # held back, not refused
    order = [r.request_id for r in results]
    assert set(order) == set(flood) | quiet
    last_quiet = max(i for i, rid in enumerate(order) if rid in quiet)
    # Published after the 20th result; in a partition shared with the flood: 310th.
    assert last_quiet < 80, f"the last quiet request finished {last_quiet + 1}th of 310"
