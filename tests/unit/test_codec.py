"""The codec: Confluent framing, round trips, and refusing hostile bytes before they cost memory."""

from __future__ import annotations

import struct
import tracemalloc
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from schemas.codec import MAX_RECORD_BYTES, Codec, EmbeddedRegistry, Limits, load_schema
from schemas.errors import DecodeError, EncodeError, RegistryError
from schemas.models import (
    AnalysisContext,
    ExplanationRequest,
    ExplanationResult,
    ModelInfoRecord,
    ResultStatus,
    SourceOffset,
    float32,
)


def zigzag(n: int) -> bytes:
    value = (n << 1) ^ (n >> 63)
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def avro_string(text: str) -> bytes:
    raw = text.encode()
    return zigzag(len(raw)) + raw


def frame(schema_id: int, body: bytes) -> bytes:
    return struct.pack(">bI", 0, schema_id) + body


def make_request(**overrides: Any) -> ExplanationRequest:
    values: dict[str, Any] = {
        "context": AnalysisContext(
            analysis_type="sentiment",
            symbol="AAPL",
            metrics={"sentiment_score": 0.75, "current_price": 150.0, "iv_rank": 65.0},
            attributes={"sector": "tech"},
            as_of=datetime(2024, 1, 2, 3, 4, 5, 678_000, tzinfo=UTC),
        ),
        "deadline": datetime.now(UTC) + timedelta(minutes=1),
        "max_tokens": 120,
        "temperature": 0.3,
        "prompt_profile": "default",
        "reply_to": "my.replies",
        "replay_of": None,
        "source": "unit-test",
    }
    values.update(overrides)
    return ExplanationRequest(**values)


def make_result(status: ResultStatus = ResultStatus.OK, **overrides: Any) -> ExplanationResult:
    values: dict[str, Any] = {
        "request_id": "5b0d7c1e-9a8b-4c3d-8e2f-1a2b3c4d5e6f",
        "status": status,
        "explanation": "AAPL sentiment is positive." if status is ResultStatus.OK else None,
        "error": None if status is ResultStatus.OK else "why",
        "tier": "high",
        "prompt_tokens": 40,
        "completion_tokens": 12,
        "queue_time_ms": 3.5,
        "processing_time_ms": 42.0,
        "confidence_score": 0.8125,
        "model_info": ModelInfoRecord(
            model_name="smollm2",
            quantization="Q8_0",
            gpu_layers=0,
            context_size=2048,
            model_sha256="ab" * 32,
        ),
        "consumer_id": "c-1",
        "request_offset": SourceOffset(topic="explain.requests.high", partition=2, offset=7),
    }
    values.update(overrides)
    return ExplanationResult(**values)


# -- round trips ---------------------------------------------------------------------------


def test_request_round_trips_with_confluent_framing() -> None:
    codec = Codec()
    request = make_request()
    data = codec.encode_request(request)
    assert data[0] == 0
    assert struct.unpack(">I", data[1:5])[0] == codec.writer_id("ExplanationRequest") == 1
    assert codec.decode_request(data) == request


def test_minimal_request_round_trips() -> None:
    codec = Codec()
    request = ExplanationRequest(context=AnalysisContext(analysis_type="earnings"))
    assert codec.decode_request(codec.encode_request(request)) == request


@pytest.mark.parametrize("status", list(ResultStatus))
def test_result_round_trips_for_every_status(status: ResultStatus) -> None:
    codec = Codec()
    result = make_result(status, confidence_score=None if status is not ResultStatus.OK else 0.5)
    data = codec.encode_result(result)
    assert struct.unpack(">I", data[1:5])[0] == 5  # ExplanationResult v4 (service_version)
    assert codec.decode_result(data) == result


def test_float_fields_decode_to_the_shortest_decimal_of_their_32_bits() -> None:
    import io

    import fastavro

    from producer_sdk.cli import result_json

    codec = Codec()
    # Written by plain fastavro, as any other producer would: 0.9 travels as a 32-bit float.
    record = make_result().model_dump()
    record["status"] = "OK"
    record["confidence_score"] = 0.9
    body = io.BytesIO()
    schema = fastavro.parse_schema(load_schema("ExplanationResult"))
    fastavro.schemaless_writer(body, schema, record)
    data = struct.pack(">bI", 0, codec.writer_id("ExplanationResult")) + body.getvalue()
    decoded = codec.decode_result(data)
    assert decoded.confidence_score == 0.9
    assert '"confidence_score":0.9,' in result_json(decoded)
    request = codec.decode_request(codec.encode_request(make_request(temperature=0.1)))
    assert repr(request.temperature) == "0.1"


@pytest.mark.parametrize("bits", [0x3F666666, 0x3DCCCCCD, 0x00000001, 0x7F7FFFFF, 0xBF800000])
def test_float32_keeps_the_wire_bits(bits: int) -> None:
    single = struct.unpack("<f", struct.pack("<I", bits))[0]
    shortest = float32(single)
    assert struct.pack("<f", shortest) == struct.pack("<I", bits)
    assert len(repr(shortest)) <= len(repr(single))


def test_other_avro_tools_read_our_bytes() -> None:
    import io

    import fastavro

    data = Codec().encode_request(make_request())
    schema = fastavro.parse_schema(load_schema("ExplanationRequest"))
    record: Any = fastavro.schemaless_reader(io.BytesIO(data[5:]), schema, None)
    assert record["context"]["symbol"] == "AAPL"


# -- framing and schema id -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (None, "tombstone"),
        (b"", "too short"),
        (b"\x00\x00\x00", "too short"),
        (b"\x01\x00\x00\x00\x01\x02", "magic"),
        (frame(99, b"\x02a"), "unknown schema id 99"),
    ],
)
def test_bad_framing_is_a_decode_error(data: bytes | None, message: str) -> None:
    with pytest.raises(DecodeError, match=message):
        Codec().decode_request(data)


def test_result_bytes_are_not_a_request() -> None:
    codec = Codec()
    with pytest.raises(DecodeError, match="not a ExplanationRequest"):
        codec.decode_request(codec.encode_result(make_result()))


def test_trailing_and_truncated_bytes_are_rejected() -> None:
    codec = Codec()
    data = codec.encode_request(make_request())
    with pytest.raises(DecodeError, match="trailing"):
        codec.decode_request(data + b"\x00")
    for cut in range(6, len(data)):
        with pytest.raises(DecodeError):
            codec.decode_request(data[:cut])


def test_oversized_records_are_rejected_on_both_sides() -> None:
    codec = Codec()
    with pytest.raises(DecodeError, match="exceeds"):
        codec.decode_request(frame(1, b"\x00" * MAX_RECORD_BYTES))
    small = Codec(max_record_bytes=64)
    with pytest.raises(EncodeError, match="byte limit"):
        small.encode_request(make_request())


def test_request_that_fails_validation_is_a_decode_error() -> None:
    body = avro_string("not-a-uuid") + zigzag(0) + b"\x00" + avro_string("x") + b"\x00"
    body += zigzag(0) + zigzag(0) + b"\x00" + zigzag(200) + struct.pack("<f", 0.1)
    body += avro_string("default") + b"\x00" + b"\x00" + avro_string("s")
    with pytest.raises(DecodeError, match="request_id"):
        Codec().decode_request(frame(1, body))


class FlakyRegistry(EmbeddedRegistry):
    def schema_for(self, schema_id: int) -> Mapping[str, Any]:
        raise RegistryError("registry down", retriable=True)


def test_unreachable_registry_gives_a_retriable_decode_error() -> None:
    data = Codec().encode_request(make_request())
    with pytest.raises(DecodeError) as info:
        Codec(FlakyRegistry()).decode_request(data)
    assert info.value.retriable


# -- hostile inputs ------------------------------------------------------------------------


def _request_prefix() -> bytes:
    """request_id, created_at, deadline=null, context.analysis_type, context.symbol=null."""
    return (
        avro_string("5b0d7c1e-9a8b-4c3d-8e2f-1a2b3c4d5e6f")
        + zigzag(0)
        + b"\x00"
        + (avro_string("x") + b"\x00")
    )


def _peak(fn: Any) -> int:
    """Peak bytes allocated while ``fn`` runs (a time bound would depend on the machine)."""
    tracemalloc.start()
    try:
        fn()
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    return peak


@pytest.mark.parametrize("count", [30_000_000, -30_000_000, 2**62])
def test_map_declaring_millions_of_entries_is_rejected_in_bounded_memory(count: int) -> None:
    codec = Codec()
    body = _request_prefix() + zigzag(count) + (zigzag(5) if count < 0 else b"")

    def decode() -> None:
        with pytest.raises(DecodeError, match=r"items|block"):
            codec.decode_request(frame(1, body))

    assert _peak(decode) < 256 * 1024


def test_string_declaring_gigabytes_is_rejected_in_bounded_memory() -> None:
    codec = Codec()
    body = zigzag(2**40) + b"abc"

    def decode() -> None:
        with pytest.raises(DecodeError, match="string of"):
            codec.decode_request(frame(1, body))

    assert _peak(decode) < 256 * 1024


class HostileRegistry(EmbeddedRegistry):
    """Serves a writer schema with an array of nulls: items that take zero bytes each."""

    def schema_for(self, schema_id: int) -> Mapping[str, Any]:
        if schema_id != 666:
            return super().schema_for(schema_id)
        schema = dict(load_schema("ExplanationRequest"))
        schema["fields"] = [{"name": "padding", "type": {"type": "array", "items": "null"}}]
        return schema


def test_array_of_30_million_nulls_in_five_bytes_is_rejected() -> None:
    codec = Codec(HostileRegistry())
    body = zigzag(30_000_000) + zigzag(0)
    assert len(body) <= 6

    def decode() -> None:
        with pytest.raises(DecodeError, match="more than 10000"):
            codec.decode_request(frame(666, body))

    assert _peak(decode) < 256 * 1024


def test_limits_are_configurable() -> None:
    codec = Codec(limits=Limits(max_items=2))
    request = make_request()
    with pytest.raises(DecodeError, match="more than 2"):
        codec.decode_request(codec.encode_request(request))


@pytest.mark.parametrize(
    "body",
    [
        b"\xff" * 11,  # varint longer than 10 bytes
        _request_prefix() + zigzag(-1),  # negative block count with no block size
        avro_string("5b0d7c1e-9a8b-4c3d-8e2f-1a2b3c4d5e6f") + zigzag(0) + zigzag(7),  # bad union
    ],
)
def test_malformed_structure_is_rejected(body: bytes) -> None:
    with pytest.raises(DecodeError):
        Codec().decode_request(frame(1, body))
