"""A real schema registry (Apicurio Registry, Confluent-compatible API) in every component:
records produced with registry-assigned ids are answered by the consumer, the results carry
registry ids too and decode; the CLI and the SDK's ``from_env`` use SCHEMA_REGISTRY_URL."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import aiohttp
import pytest

from consumer.config import Settings
from consumer.edge.gateway import serve
from consumer.edge.replay import replay
from consumer.kafka.topics import ensure_service_topics
from consumer.runtime.service import ConsumerService
from producer_sdk import ExplanationProducer, KafkaConnection, ResultsReader
from schemas.codec import Codec
from schemas.errors import DecodeError, SchemaRegistryUnavailable
from schemas.models import ResultStatus
from schemas.registry import build_codec
from tests.integration.helpers import collect, end_offsets
from tests.integration.registry_helpers import start_registry, subject_id

pytestmark = [pytest.mark.kafka, pytest.mark.registry]


@pytest.fixture(scope="session")
def schema_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Base URL of the session's Apicurio Registry (ccompat API)."""
    yield from start_registry(tmp_path_factory.mktemp("apicurio"))


def _schema_id(value: bytes) -> int:
    return int.from_bytes(value[1:5], "big")


CONTEXTS = [
    {"analysis_type": "sentiment", "symbol": f"S{i}", "metrics": {"sentiment_score": i / 10}}
    for i in range(6)
]


async def test_registry_ids_are_answered_and_results_decode(
    make_settings: Callable[..., Settings], schema_registry: str
) -> None:
    settings = make_settings(schema_registry_url=schema_registry)
    await ensure_service_topics(settings)
    boot, prefix = settings.kafka_bootstrap_servers, settings.kafka_topic_prefix
    conn = KafkaConnection(bootstrap_servers=boot)
    async with ExplanationProducer(
        conn, topic_prefix=prefix, codec=build_codec(schema_registry), source="registry-test"
    ) as producer:
        ids = [
            *await producer.submit_many(CONTEXTS[:3], priority="urgent"),
            *await producer.submit_many(CONTEXTS[3:], priority="low"),
        ]
    request_id = subject_id(schema_registry, "ExplanationRequest-value")
    assert request_id != 1, "the registry assigned the ids, not the embedded registry"
    raw = await collect(boot, settings.request_topics()["urgent"], 3, decode=None)
    assert {_schema_id(r.value) for r in raw} == {request_id}
    # Unknown to the embedded ids, or an embedded id of another subject (results v3 is 4).
    with pytest.raises(DecodeError, match=f"schema id {request_id}"):
        Codec().decode_request(raw[0].value)  # the embedded ids would dead-letter these

    async with ConsumerService(settings):
        records = await collect(boot, settings.results_topic, len(ids), decode=None)
    result_id = subject_id(schema_registry, "ExplanationResult-value")
    assert result_id not in (1, 2, request_id)
    assert {_schema_id(r.value) for r in records} == {result_id}
    assert set((await end_offsets(boot, settings.dlq_topic)).values()) == {0}, "nothing DLQ'd"

    reader = ResultsReader(
        conn,
        topic_prefix=prefix,
        from_beginning=True,
        follow=False,
        codec=build_codec(schema_registry),
    )
    async with reader:
        results = [r async for r in reader]
    assert sorted(r.request_id for r in results) == sorted(ids)
    assert all(r.status is ResultStatus.OK for r in results)
    assert reader.skipped == 0


async def test_cli_produce_and_results_resolve_ids_through_the_registry(
    make_settings: Callable[..., Settings], schema_registry: str, tmp_path: Path
) -> None:
    settings = make_settings(schema_registry_url=schema_registry)
    await ensure_service_topics(settings)
    env = {
        **os.environ,
        "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap_servers,
        "KAFKA_TOPIC_PREFIX": settings.kafka_topic_prefix,
        "SCHEMA_REGISTRY_URL": schema_registry,
    }
    cli = [sys.executable, "-m", "consumer.cli"]
    produced = await asyncio.to_thread(
        subprocess.run,
        [*cli, "produce", "--priority", "high", "--context", json.dumps(CONTEXTS[0])],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert produced.returncode == 0, produced.stderr
    [request] = await collect(
        settings.kafka_bootstrap_servers, settings.request_topics()["high"], 1, decode=None
    )
    assert _schema_id(request.value) == subject_id(schema_registry, "ExplanationRequest-value")

    async with ConsumerService(settings):
        await collect(settings.kafka_bootstrap_servers, settings.results_topic, 1, decode=None)
    shown = await asyncio.to_thread(
        subprocess.run,
        [*cli, "results", "--from-beginning"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    [line] = shown.stdout.splitlines()
    assert json.loads(line)["request_id"] == produced.stdout.strip()
    assert json.loads(line)["status"] == "OK"


async def test_a_codec_whose_registry_is_down_says_retriable_not_undecodable(
    schema_registry: str,
) -> None:
    data = build_codec(schema_registry).encode_request(
        ExplanationProducer().build_request(CONTEXTS[0])
    )
    down = build_codec("http://127.0.0.1:9/apis/ccompat/v7")
    with pytest.raises(SchemaRegistryUnavailable) as info:
        await down.resolve(data)
    assert info.value.retriable
    fresh = build_codec(schema_registry)
    await fresh.resolve(data)
    assert fresh.decode_request(data).context.symbol == "S0"


async def test_gateway_and_replay_use_the_registry(
    make_settings: Callable[..., Settings], schema_registry: str
) -> None:
    settings = make_settings(schema_registry_url=schema_registry)
    await ensure_service_topics(settings)
    boot, prefix = settings.kafka_bootstrap_servers, settings.kafka_topic_prefix
    conn = KafkaConnection(bootstrap_servers=boot)
    with contextlib.closing(socket.socket()) as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    stop = asyncio.Event()
    server = asyncio.create_task(
        serve(
            conn, prefix, host="127.0.0.1", port=port, stop=stop, codec=build_codec(schema_registry)
        )
    )
    try:
        async with ConsumerService(settings), aiohttp.ClientSession() as session:
            body = {"context": {"analysis_type": "sentiment", "symbol": "GW", "iv_rank": 65}}
            async with asyncio.timeout(60):
                while True:  # until the gateway listens (serve() binds in the background)
                    try:
                        async with session.post(f"http://127.0.0.1:{port}/explain", json=body) as r:
                            status, answer = r.status, await r.json()
                            break
                    except aiohttp.ClientConnectorError:
                        await asyncio.sleep(0.1)
            assert status == 200, answer
            assert answer["status"] == "OK" and answer["explanation"]
    finally:
        stop.set()
        await server
    [sent] = await collect(boot, settings.request_topics()["normal"], 1, decode=None)
    registry_id = subject_id(schema_registry, "ExplanationRequest-value")
    assert _schema_id(sent.value) == registry_id

    report = await replay(
        conn,
        prefix,
        since=datetime.now(UTC) - timedelta(hours=1),
        until=datetime.now(UTC) + timedelta(minutes=1),
        tiers=["normal"],
        into="low",
        codec=build_codec(schema_registry),
    )
    assert (report.replayed, report.undecodable) == (1, 0), "registry ids decoded, not skipped"
    [copy] = await collect(boot, settings.request_topics()["low"], 1, decode=None)
    assert _schema_id(copy.value) == registry_id
    decoded = build_codec(schema_registry)
    await decoded.resolve(copy.value)
    assert decoded.decode_request(copy.value).replay_of == answer["request_id"]
