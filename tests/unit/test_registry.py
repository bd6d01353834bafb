"""The Confluent Schema Registry client against a tiny fake REST server (HTTP, not Kafka)."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from consumer.config import Settings
from schemas.codec import Codec, EmbeddedRegistry
from schemas.errors import ConfigError, DecodeError, RegistryError, SchemaRegistryUnavailable
from schemas.registry import (
    ConfluentSchemaRegistry,
    codec_from_env,
    codec_from_settings,
    resolve_waiting,
)
from tests.unit.test_codec import make_request, make_result


class FakeRegistry:
    """The subset of the Confluent REST API the client uses, with a call log."""

    def __init__(self) -> None:
        self.schemas: dict[int, str] = {}
        self.subjects: dict[str, dict[str, int]] = {}
        self.calls: list[tuple[str, str]] = []
        self.auth: list[str | None] = []
        self.fail_with: int | None = None
        self.refused = threading.Event()  # set when a request was answered with fail_with


def _handler(state: FakeRegistry) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _answer(self, code: int, body: dict[str, Any]) -> None:
            raw = json.dumps(body).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
            self.send_header("Content-Length", str(len(raw)))
            self.end_headers()
            self.wfile.write(raw)

        def do_POST(self) -> None:
            state.calls.append(("POST", self.path))
            state.auth.append(self.headers.get("Authorization"))
            if state.fail_with:
                state.refused.set()
                return self._answer(state.fail_with, {"error_code": 50001, "message": "boom"})
            parts = self.path.strip("/").split("/")
            if len(parts) != 3 or parts[0] != "subjects" or parts[2] != "versions":
                return self._answer(404, {"error_code": 404, "message": "no route"})
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            text = body["schema"]
            versions = state.subjects.setdefault(parts[1], {})
            if text not in versions:
                schema_id = 100 + len(state.schemas)
                state.schemas[schema_id] = text
                versions[text] = schema_id
            return self._answer(200, {"id": versions[text]})

        def do_GET(self) -> None:
            state.calls.append(("GET", self.path))
            parts = self.path.strip("/").split("/")
            if len(parts) == 3 and parts[:2] == ["schemas", "ids"]:
                text = state.schemas.get(int(parts[2]))
                if text is not None:
                    return self._answer(200, {"schema": text})
                return self._answer(404, {"error_code": 40403, "message": "Schema not found"})
            return self._answer(404, {"error_code": 404, "message": "no route"})

    return Handler


@pytest.fixture
def fake_registry() -> Iterator[tuple[str, FakeRegistry]]:
    state = FakeRegistry()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", state
    finally:
        server.shutdown()
        server.server_close()


def test_register_then_look_up_by_id(fake_registry: tuple[str, FakeRegistry]) -> None:
    url, state = fake_registry
    registry = ConfluentSchemaRegistry(url)
    schema = {"type": "record", "name": "R", "fields": [{"name": "a", "type": "int"}]}
    schema_id = registry.id_for("R", schema)
    assert ("POST", "/subjects/R-value/versions") in state.calls
    assert registry.id_for("R", schema) == schema_id
    assert len(state.calls) == 1, "ids are cached"
    fresh = ConfluentSchemaRegistry(url)
    assert fresh.schema_for(schema_id) == schema
    assert fresh.schema_for(schema_id) == schema
    assert state.calls.count(("GET", f"/schemas/ids/{schema_id}")) == 1


def test_codec_encodes_with_registry_ids_and_decodes_by_lookup(
    fake_registry: tuple[str, FakeRegistry],
) -> None:
    url, state = fake_registry
    writer = Codec(ConfluentSchemaRegistry(url))
    request, result = make_request(), make_result()
    request_bytes, result_bytes = writer.encode_request(request), writer.encode_result(result)
    assert set(state.subjects) == {"ExplanationRequest-value", "ExplanationResult-value"}
    reader = Codec(ConfluentSchemaRegistry(url))
    assert reader.decode_request(request_bytes) == request
    assert reader.decode_result(result_bytes) == result
    assert not any(method == "POST" for method, _ in state.calls[2:]), "decoding never registers"


def test_unknown_id_is_not_retriable_and_negatively_cached(
    fake_registry: tuple[str, FakeRegistry],
) -> None:
    url, state = fake_registry
    registry = ConfluentSchemaRegistry(url)
    with pytest.raises(RegistryError, match="40403") as info:
        registry.schema_for(4242)
    assert not info.value.retriable
    for _ in range(3):
        with pytest.raises(RegistryError, match="4242"):
            registry.schema_for(4242)
    assert state.calls.count(("GET", "/schemas/ids/4242")) == 1
    with pytest.raises(DecodeError, match="4242") as decode_info:
        Codec(registry).decode_request(b"\x00\x00\x00\x10\x92\x02")
    assert not decode_info.value.retriable


def test_server_errors_are_retriable(fake_registry: tuple[str, FakeRegistry]) -> None:
    url, state = fake_registry
    state.fail_with = 503
    with pytest.raises(RegistryError, match="HTTP 503") as info:
        ConfluentSchemaRegistry(url).id_for("R", {"type": "string"})
    assert info.value.retriable


def test_unreachable_registry_is_retriable() -> None:
    registry = ConfluentSchemaRegistry("http://127.0.0.1:9", timeout_s=1)
    with pytest.raises(RegistryError, match="unreachable") as info:
        registry.schema_for(1)
    assert info.value.retriable


def test_basic_auth_is_sent(fake_registry: tuple[str, FakeRegistry]) -> None:
    url, state = fake_registry
    ConfluentSchemaRegistry(url, username="u", password="p").id_for("R", {"type": "string"})
    assert state.auth == ["Basic dTpw"]


def test_bad_url_is_refused() -> None:
    with pytest.raises(RegistryError, match="not an http"):
        ConfluentSchemaRegistry("localhost:8081")


def test_bearer_token_is_sent(fake_registry: tuple[str, FakeRegistry]) -> None:
    url, state = fake_registry
    ConfluentSchemaRegistry(url, token="t0k").id_for("R", {"type": "string"})
    assert state.auth == ["Bearer t0k"]


async def test_resolve_fetches_the_writer_schema_once_then_decodes_offline(
    fake_registry: tuple[str, FakeRegistry],
) -> None:
    url, state = fake_registry
    data = Codec(ConfluentSchemaRegistry(url)).encode_request(make_request())
    reader = Codec(ConfluentSchemaRegistry(url))
    schema_id = int.from_bytes(data[1:5], "big")
    await asyncio.gather(*(reader.resolve(data) for _ in range(5)))
    assert state.calls.count(("GET", f"/schemas/ids/{schema_id}")) == 1, "one call per id"
    before = len(state.calls)
    reader.decode_request(data)
    await reader.resolve(data)
    assert len(state.calls) == before, "decode and a second resolve use the cache"
    # resolve also registered our result schema, so answering never waits on the registry.
    assert reader.writer_id("ExplanationResult") >= 100
    assert len(state.calls) == before


async def test_resolve_while_the_registry_is_unreachable_is_retriable() -> None:
    codec = Codec(ConfluentSchemaRegistry("http://127.0.0.1:9", timeout_s=1))
    with pytest.raises(SchemaRegistryUnavailable, match="unreachable") as info:
        await codec.resolve(b"\x00\x00\x00\x00\x07\x02")
    assert info.value.retriable
    assert isinstance(info.value, DecodeError), "intake handles it as a DecodeError that waits"


async def test_resolve_on_a_registry_answering_5xx_is_retriable(
    fake_registry: tuple[str, FakeRegistry],
) -> None:
    url, state = fake_registry
    data = Codec(ConfluentSchemaRegistry(url)).encode_request(make_request())
    state.fail_with = 503  # the id is known, but registering our own schemas answers 503
    with pytest.raises(SchemaRegistryUnavailable, match="HTTP 503") as info:
        await Codec(ConfluentSchemaRegistry(url)).resolve(data)
    assert info.value.retriable


async def test_resolve_of_an_unknown_id_or_bad_framing_is_not_retriable(
    fake_registry: tuple[str, FakeRegistry],
) -> None:
    url, _ = fake_registry
    codec = Codec(ConfluentSchemaRegistry(url))
    with pytest.raises(DecodeError, match="4242") as info:
        await codec.resolve(b"\x00\x00\x00\x10\x92\x02")
    assert not info.value.retriable
    with pytest.raises(DecodeError, match="magic byte") as bad:
        await codec.resolve(b"\x07\x00\x00\x00\x01\x02")
    assert not bad.value.retriable


async def test_resolve_is_a_no_op_with_the_embedded_registry() -> None:
    codec = Codec()
    await codec.resolve(b"\x07 not even framed")  # decode reports it; resolve has nothing to do
    await codec.prepare()
    assert codec.writer_id("ExplanationRequest") == 1


async def test_resolve_waiting_holds_a_record_until_the_registry_answers(
    fake_registry: tuple[str, FakeRegistry],
) -> None:
    url, state = fake_registry
    request = make_request()
    data = Codec(ConfluentSchemaRegistry(url)).encode_request(request)
    state.fail_with = 503  # POSTs fail: the reader cannot register its result schema yet
    codec = Codec(ConfluentSchemaRegistry(url))
    waiting = asyncio.create_task(resolve_waiting(codec, data, give_up_s=30, first_backoff_s=0.05))
    assert await asyncio.to_thread(state.refused.wait, 30)
    assert not waiting.done(), "the record waits while the registry cannot answer"
    state.fail_with = None
    await asyncio.wait_for(waiting, 30)
    assert codec.decode_request(data) == request


async def test_resolve_waiting_gives_up_with_the_retriable_error() -> None:
    codec = Codec(ConfluentSchemaRegistry("http://127.0.0.1:9", timeout_s=0.5))
    with pytest.raises(SchemaRegistryUnavailable):
        await resolve_waiting(codec, b"\x00\x00\x00\x00\x07\x02", give_up_s=0.3)


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"SCHEMA_REGISTRY_URL": "localhost:8081"}, "SCHEMA_REGISTRY_URL"),
        ({"SCHEMA_REGISTRY_USERNAME": "u"}, "SCHEMA_REGISTRY_USERNAME"),
        (
            {"SCHEMA_REGISTRY_URL": "http://r:8081", "SCHEMA_REGISTRY_PASSWORD": "p"},
            "SCHEMA_REGISTRY_USERNAME",
        ),
        (
            {
                "SCHEMA_REGISTRY_URL": "http://r:8081",
                "SCHEMA_REGISTRY_USERNAME": "u",
                "SCHEMA_REGISTRY_TOKEN": "t",
            },
            "SCHEMA_REGISTRY_TOKEN",
        ),
        (
            {"SCHEMA_REGISTRY_URL": "https://r", "SCHEMA_REGISTRY_CAFILE": "/no/ca.pem"},
            "SCHEMA_REGISTRY_CAFILE",
        ),
    ],
)
def test_bad_registry_settings_name_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(ConfigError) as info:
        codec_from_env(env)
    assert info.value.variable == variable
    with pytest.raises(ConfigError) as settings_info:
        Settings.from_env(env)
    assert settings_info.value.variable == variable


def test_codec_from_env_uses_the_registry_only_when_a_url_is_set(
    fake_registry: tuple[str, FakeRegistry],
) -> None:
    url, _ = fake_registry
    assert isinstance(codec_from_env({}).registry, EmbeddedRegistry)
    codec = codec_from_env({"SCHEMA_REGISTRY_URL": url, "SCHEMA_REGISTRY_TOKEN": "t"})
    assert isinstance(codec.registry, ConfluentSchemaRegistry)
    settings = Settings.from_env({"SCHEMA_REGISTRY_URL": url})
    assert isinstance(codec_from_settings(settings).registry, ConfluentSchemaRegistry)
    assert isinstance(codec_from_settings(Settings.from_env({})).registry, EmbeddedRegistry)
