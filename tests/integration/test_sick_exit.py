"""The sick exit on the real broker: a member whose engine fails every call gives its
partitions up, and the healthy member ends up with the work (issue 22, item 1)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from consumer.config import Settings
from consumer.engines.base import GenerationRequest, GenerationResult
from consumer.engines.fake import FakeEngine
from consumer.runtime.service import ConsumerService
from consumer.runtime.sick import SICK_EXIT_STATUS
from schemas.models import ResultStatus
from tests.integration.helpers import (
    FlakyEngine,
    collect,
    make_request,
    produce_requests,
    results_by_id,
    service_topics,
    wait_committed,
    wait_until,
)

pytestmark = pytest.mark.kafka


class _HangingEngine(FakeEngine):
    """Every generation hangs, like a decode stuck in a GPU call: only REQUEST_TIMEOUT ends it."""

    async def generate(self, request: GenerationRequest) -> GenerationResult:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


@pytest.mark.parametrize("sickness", [FlakyEngine, _HangingEngine], ids=["failing", "hanging"])
async def test_a_member_whose_breaker_never_closes_leaves_and_the_healthy_one_takes_over(
    make_settings: Callable[..., Settings], sickness: type[FakeEngine]
) -> None:
    settings = await service_topics(
        make_settings(
            request_timeout=0.3,
            kafka_partitions=4,
            fake_latency_ms=20,
            max_concurrent_requests=4,
            retry_attempts=1,
            breaker_window=3,
            breaker_min_calls=3,
            breaker_open_s=0.5,
            breaker_half_open_timeout_s=1.0,
            breaker_max_open_s=3.0,
            drain_timeout_s=2.0,
        )
    )
    boot = settings.kafka_bootstrap_servers
    normal = settings.request_topics()["normal"]
    requests = [make_request(i) for i in range(200)]
    sick = ConsumerService(
        settings.model_copy(update={"consumer_id": "sick"}),
        engine=sickness(settings),  # fails (or hangs) every attempt, never recovers
    )
    sick_run = asyncio.create_task(sick.run_until_signal())
    await sick.wait_assigned()
    async with ConsumerService(settings.model_copy(update={"consumer_id": "healthy"})) as healthy:
        await wait_until(lambda: bool(healthy.assigned()) and bool(sick.assigned()), 30)
        sick_share = {tp.partition for tp in sick.assigned() if tp.topic == normal}
        assert sick_share, "the sick member should hold some of the tier's partitions"
        await produce_requests(boot, normal, requests)
        # Awaited events, not sleeps: the sick member's own exit, then every answer.
        assert await asyncio.wait_for(sick_run, 60) == SICK_EXIT_STATUS
        results = await collect(
            boot, settings.results_topic, len(requests), timeout_s=60, exact=False
        )
        await wait_committed(settings, "normal")
        owned = {tp.partition for tp in healthy.assigned() if tp.topic == normal}
    assert sick.sick_reason and "BREAKER_MAX_OPEN_S" in sick.sick_reason
    assert not sick.is_live()
    assert owned == set(range(4)), "the healthy member owns every partition after the exit"
    by_id = results_by_id(results)
    assert set(by_id) == {r.request_id for r in requests}, "every request is answered"
    failed = [r for r in results if r.status is not ResultStatus.OK]
    assert all(r.consumer_id == "sick" and r.status is ResultStatus.FAILED for r in failed)
    # Only what the sick member tried before and between its breaker's openings failed.
    assert len(failed) < 20
    for answers in by_id.values():
        # At least once: a FAILED answer above a gap the sick member could not commit is
        # answered again by the healthy member; nothing else is ever repeated.
        healthy_answers = [r for r in answers if r.consumer_id == "healthy"]
        assert len(healthy_answers) <= 1 and len(answers) - len(healthy_answers) <= 1
