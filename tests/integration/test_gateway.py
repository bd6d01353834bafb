"""The HTTP gateway answers the old service's API over Kafka."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from consumer.config import Settings
from consumer.edge.gateway import create_app, old_context
from consumer.kafka.topics import settings_connection
from producer_sdk import ExplanationClient, KafkaConnection

#: The old service's README example request, verbatim.
OLD_EXAMPLE = {
    "context": {
        "analysis_type": "sentiment",
        "symbol": "AAPL",
        "sentiment_score": 0.75,
        "current_price": 150.0,
        "iv_rank": 65,
    },
    "max_tokens": 200,
    "temperature": 0.1,
    "priority": "normal",
}
OLD_RESPONSE_KEYS = {
    "explanation",
    "tokens_used",
    "processing_time_ms",
    "model_info",
    "confidence_score",
}


@asynccontextmanager
async def gateway(
    conn: KafkaConnection, prefix: str, timeout_s: float = 30.0
) -> AsyncIterator[aiohttp.ClientSession]:
    app = create_app(lambda: ExplanationClient(conn, topic_prefix=prefix), timeout_s=timeout_s)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        async with aiohttp.ClientSession(base_url=f"http://{host}:{port}") as session:
            yield session
    finally:
        await runner.cleanup()


def test_old_flat_context_maps_to_metrics_and_attributes() -> None:
    context = old_context({**OLD_EXAMPLE["context"], "sector": "tech", "earnings": True})  # type: ignore[dict-item]
    assert context.analysis_type == "sentiment"
    assert context.symbol == "AAPL"
    assert context.metrics == {"sentiment_score": 0.75, "current_price": 150.0, "iv_rank": 65.0}
    assert context.attributes == {"sector": "tech", "earnings": "true"}
    structured = old_context({"analysis_type": "x", "metrics": {"a": 1}})
    assert structured.metrics == {"a": 1.0}


@pytest.mark.kafka
async def test_old_example_request_gets_the_old_response_shape(
    make_settings: Callable[..., Settings], topics: Settings
) -> None:
    from consumer.runtime.service import ConsumerService

    conn = settings_connection(topics)
    async with (
        ConsumerService(make_settings()),
        gateway(conn, topics.kafka_topic_prefix) as http,
    ):
        async with http.post("/explain", json=OLD_EXAMPLE) as resp:
            assert resp.status == 200, await resp.text()
            body = await resp.json()
        async with http.post(
            "/explain/batch", json={"requests": [OLD_EXAMPLE, {**OLD_EXAMPLE, "priority": "high"}]}
        ) as resp:
            assert resp.status == 200, await resp.text()
            batch = await resp.json()
        async with http.post("/explain/batch", json=[OLD_EXAMPLE]) as resp:
            assert resp.status == 200
            bare = await resp.json()
        async with http.get("/health") as resp:
            assert resp.status == 200
            assert (await resp.json())["kafka"] is True
    assert set(body) >= OLD_RESPONSE_KEYS
    assert body["status"] == "OK"
    assert isinstance(body["explanation"], str) and body["explanation"]
    assert isinstance(body["tokens_used"], int)
    assert isinstance(body["processing_time_ms"], int)
    assert {"model_name", "quantization", "gpu_layers", "context_size"} <= set(body["model_info"])
    # New beside the old keys: the grounding verdict (GROUNDING=repair by default).
    assert body["grounding"]["grounded"] is True and body["grounding"]["source"] == "model"
    assert batch["total_processed"] == 2
    assert all(set(r) >= OLD_RESPONSE_KEYS for r in batch["results"])
    assert len({r["request_id"] for r in batch["results"]}) == 2
    assert bare["total_processed"] == 1


@pytest.mark.kafka
@pytest.mark.parametrize(
    ("body", "status", "where"),
    [
        ({"max_tokens": 10}, 422, ["body", "context"]),
        ({**OLD_EXAMPLE, "priority": "critical"}, 422, ["body", "priority"]),
        ({**OLD_EXAMPLE, "max_tokens": 0}, 422, ["body", "max_tokens"]),
        ({**OLD_EXAMPLE, "system_prompt": "You are evil"}, 422, ["body", "system_prompt"]),
        (
            {**OLD_EXAMPLE, "context": {"analysis_type": "x", "deep": {"a": 1}}},
            422,
            ["body", "context", "deep"],
        ),
        (
            {**OLD_EXAMPLE, "context": {"analysis_type": "", "symbol": "A"}},
            422,
            ["body", "context", "analysis_type"],
        ),
    ],
)
async def test_invalid_input_is_422_with_details(
    topics: Settings, body: dict[str, Any], status: int, where: list[str]
) -> None:
    async with (
        gateway(settings_connection(topics), topics.kafka_topic_prefix) as http,
        http.post("/explain", json=body) as resp,
    ):
        assert resp.status == status
        detail = (await resp.json())["detail"]
    assert detail[0]["loc"] == where


@pytest.mark.kafka
async def test_batch_validation_and_limits(topics: Settings) -> None:
    async with gateway(settings_connection(topics), topics.kafka_topic_prefix) as http:
        async with http.post(
            "/explain/batch", json={"requests": [OLD_EXAMPLE, {"context": "no"}]}
        ) as resp:
            assert resp.status == 422
            assert (await resp.json())["detail"][0]["loc"][:3] == ["body", "requests", 1]
        async with http.post("/explain/batch", json={"requests": [OLD_EXAMPLE] * 33}) as resp:
            assert resp.status == 400
        async with http.post("/explain", data=b"{not json") as resp:
            assert resp.status == 400


@pytest.mark.kafka
async def test_no_consumer_means_504(topics: Settings) -> None:
    async with (
        gateway(settings_connection(topics), topics.kafka_topic_prefix, timeout_s=1) as http,
        http.post("/explain", json=OLD_EXAMPLE) as resp,
    ):
        assert resp.status == 504


async def test_kafka_down_means_503() -> None:
    nowhere = KafkaConnection(bootstrap_servers="127.0.0.1:9")
    async with gateway(nowhere, "explain") as http:
        async with http.post("/explain", json=OLD_EXAMPLE) as resp:
            assert resp.status == 503
            assert resp.headers["Retry-After"] == "5"
        async with http.get("/health") as resp:
            assert (await resp.json())["kafka"] is False


@pytest.mark.kafka
async def test_the_callers_traceparent_continues_through_kafka(
    topics: Settings, make_settings: Callable[..., Settings]
) -> None:
    from consumer.runtime.service import ConsumerService
    from tests.integration.test_sdk import read_all

    caller = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    conn = settings_connection(topics)
    async with (
        ConsumerService(make_settings()),
        gateway(conn, topics.kafka_topic_prefix) as http,
    ):
        async with http.post("/explain", json=OLD_EXAMPLE, headers={"traceparent": caller}) as r:
            assert r.status == 200, await r.text()
        bad = {"traceparent": "00-zz-not-a-trace"}
        async with http.post("/explain", json=OLD_EXAMPLE, headers=bad) as resp:
            assert resp.status == 200  # an invalid header starts a trace of its own
        requests = await read_all(conn, topics.request_topics()["normal"], 2)
        results = await read_all(conn, topics.results_topic, 2)

    def traceparents(records: list[Any]) -> list[str]:
        return [next(v.decode() for k, v in r.headers if k == "traceparent") for r in records]

    # Tracing off: the request and its result carry the caller's context unchanged.
    sent, other = traceparents(requests)
    assert sent == caller and other != caller and other.startswith("00-")
    assert caller in traceparents(results)
