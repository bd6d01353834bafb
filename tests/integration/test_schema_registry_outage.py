"""An unreachable registry delays records instead of dead-lettering them: the consumer's path
to the registry goes through a gate that hangs up on every connection; the consumer keeps
trying (the gate counts it), nothing reaches the DLQ or the results topic; once the gate
opens, every request is answered and nothing was dead-lettered.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from urllib.parse import urlsplit

import pytest

from consumer.config import Settings
from consumer.kafka.topics import ensure_service_topics
from consumer.runtime.service import ConsumerService
from producer_sdk import ExplanationProducer, KafkaConnection
from schemas.models import ResultStatus
from schemas.registry import build_codec
from tests.integration.helpers import collect, end_offsets
from tests.integration.registry_helpers import RegistryGate, start_registry

pytestmark = [pytest.mark.kafka, pytest.mark.registry]


@pytest.fixture(scope="session")
def schema_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of the session's Apicurio Registry (ccompat API)."""
    yield from start_registry(tmp_path_factory.mktemp("apicurio-outage"))


async def test_an_unreachable_registry_delays_records_instead_of_dead_lettering_them(
    make_settings: Callable[..., Settings], schema_registry: str
) -> None:
    parts = urlsplit(schema_registry)
    gate = RegistryGate(parts.port or 80)
    await gate.start()
    try:
        gated_url = f"http://127.0.0.1:{gate.port}{parts.path}"
        settings = make_settings(schema_registry_url=gated_url)
        await ensure_service_topics(settings)
        boot = settings.kafka_bootstrap_servers
        conn = KafkaConnection(bootstrap_servers=boot)
        contexts = [{"analysis_type": "sentiment", "symbol": f"W{i}"} for i in range(5)]
        # The producer reaches the registry directly; only the consumer's path is cut.
        async with ExplanationProducer(
            conn, topic_prefix=settings.kafka_topic_prefix, codec=build_codec(schema_registry)
        ) as producer:
            ids = await producer.submit_many(contexts, priority="normal")
        async with ConsumerService(settings):
            # The consumer tried (and was refused) at least twice: it is retrying, not done.
            async with asyncio.timeout(60):
                while gate.refused < 2:
                    gate.refused_event.clear()
                    await gate.refused_event.wait()
            assert set((await end_offsets(boot, settings.dlq_topic)).values()) == {0}
            assert set((await end_offsets(boot, settings.results_topic)).values()) == {0}
            gate.open = True
            records = await collect(
                boot, settings.results_topic, len(ids), timeout_s=120, decode=None
            )
        # Results carry the registry's id for the result schema: decode through it.
        reader = build_codec(schema_registry)
        results = []
        for record in records:
            await reader.resolve(record.value)
            results.append(reader.decode_result(record.value))
        assert sorted(r.request_id for r in results) == sorted(ids)
        assert all(r.status is ResultStatus.OK for r in results)
        assert set((await end_offsets(boot, settings.dlq_topic)).values()) == {0}
    finally:
        await gate.stop()
