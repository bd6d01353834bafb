"""Kafka's own client quotas cap one source at the broker: the SDK's client id is the source.

The quota is set the way an operator would, with the Kafka distribution's ``kafka-configs``
(its main class ``kafka.admin.ConfigCommand``, run with Java on the dev broker's classpath;
aiokafka's admin client has no AlterClientQuotas). Two sources then publish the same bytes
at the same time: the capped one is held back by the broker, the other is not.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from collections.abc import Callable

import pytest

from consumer.config import Settings
from consumer.dev.kafkajars import fetch_jars, find_java
from consumer.kafka.topics import settings_connection
from producer_sdk import ExplanationProducer
from tests.integration.helpers import service_topics

pytestmark = pytest.mark.kafka

QUOTA_BYTES_PER_S = 20_000
RECORDS = 150
#: Kafka measures a rate over (quota.window.num - 1) x quota.window.size.seconds = 10 s at
#: least, so the first ~10 s worth of the quota pass unthrottled.
QUOTA_WINDOW_S = 10.0


def kafka_configs(bootstrap: str, *args: str) -> str:
    """Run ``kafka-configs`` (kafka.admin.ConfigCommand) against ``bootstrap``."""
    lib = fetch_jars(quiet=True)
    command = [
        find_java(),
        "-cp",
        f"{lib}/*",
        "kafka.admin.ConfigCommand",
        "--bootstrap-server",
        bootstrap,
        *args,
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    return done.stdout


async def _publish(settings: Settings, source: str) -> tuple[int, float]:
    """Publish RECORDS requests of ~2 KB as ``source``; (bytes, seconds until all acked)."""
    producer = ExplanationProducer(
        settings_connection(settings), topic_prefix=settings.kafka_topic_prefix, source=source
    )
    contexts = [
        {"analysis_type": "bulk", "symbol": "AAPL", "attributes": {"note": f"{i} " + "x" * 2000}}
        for i in range(RECORDS)
    ]
    async with producer:
        assert producer.client_id == source
        requests = [producer.build_request(c) for c in contexts]
        size = sum(len(producer.codec.encode_request(r)) for r in requests)
        started = time.monotonic()
        await producer.send_requests(requests, priority="low")
        return size, time.monotonic() - started


async def test_a_client_quota_on_one_sources_client_id_throttles_it_and_not_another(
    make_settings: Callable[..., Settings],
) -> None:
    settings = await service_topics(make_settings())
    capped, free = f"{settings.kafka_topic_prefix}-replay", f"{settings.kafka_topic_prefix}-pricing"
    boot = settings.kafka_bootstrap_servers
    await asyncio.to_thread(
        kafka_configs,
        boot,
        "--alter",
        "--entity-type",
        "clients",
        "--entity-name",
        capped,
        "--add-config",
        f"producer_byte_rate={QUOTA_BYTES_PER_S}",
    )
    described = await asyncio.to_thread(
        kafka_configs, boot, "--describe", "--entity-type", "clients", "--entity-name", capped
    )
    assert f"producer_byte_rate={QUOTA_BYTES_PER_S}" in described.replace(".0", "")
    (capped_bytes, capped_s), (free_bytes, free_s) = await asyncio.gather(
        _publish(settings, capped), _publish(settings, free)
    )
    # The broker cannot let the capped source finish faster than its quota allows beyond
    # the measurement window's free allowance; the other source has no such floor.
    floor_s = capped_bytes / QUOTA_BYTES_PER_S - QUOTA_WINDOW_S
    assert floor_s > 2.0, "the test must send more than the window's allowance"
    assert capped_s >= 0.8 * floor_s, f"capped source done in {capped_s:.1f}s, floor {floor_s}"
    assert free_bytes == pytest.approx(capped_bytes, rel=0.05)
    assert free_s * 3 < capped_s, f"uncapped {free_s:.1f}s vs capped {capped_s:.1f}s"
