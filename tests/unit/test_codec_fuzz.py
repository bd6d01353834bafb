"""Fuzzing the decoder: random and mutated bytes raise only DecodeError, fast, in bounded memory."""

from __future__ import annotations

import struct
import tracemalloc
from collections.abc import Callable
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas.codec import Codec
from schemas.errors import DecodeError
from schemas.models import AnalysisContext, ExplanationRequest, ExplanationResult
from tests.unit.test_codec import make_request, make_result

CODEC = Codec()
VALID_REQUEST = CODEC.encode_request(make_request())
VALID_RESULT = CODEC.encode_result(make_result())
MEMORY_BOUND = 2 * 1024 * 1024

FUZZ = settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def decode_bounded(decode: Callable[[bytes], Any], data: bytes) -> None:
    """Decode ``data``: success or DecodeError, under the memory bound (no time bound: it
    would depend on the machine)."""
    tracemalloc.start()
    try:
        decode(data)
    except DecodeError:
        pass
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < MEMORY_BOUND, f"decode peaked at {peak} bytes"


def mutate(base: bytes, edits: list[tuple[int, int, int]]) -> bytes:
    """Apply (kind, position, value) edits: 0 overwrite, 1 insert, 2 delete, 3 truncate."""
    data = bytearray(base)
    for kind, position, value in edits:
        if not data:
            break
        at = position % len(data)
        if kind == 0:
            data[at] = value
        elif kind == 1:
            data.insert(at, value)
        elif kind == 2:
            del data[at]
        else:
            del data[at:]
    return bytes(data)


EDITS = st.lists(
    st.tuples(st.integers(0, 3), st.integers(0, 10_000), st.integers(0, 255)),
    min_size=1,
    max_size=8,
)
HEADERS = st.sampled_from([b"\x00\x00\x00\x00\x01", b"\x00\x00\x00\x00\x02"])


@FUZZ
@given(st.binary(max_size=2048))
def test_random_bytes_raise_only_decode_error(data: bytes) -> None:
    decode_bounded(CODEC.decode_request, data)
    decode_bounded(CODEC.decode_result, data)


@FUZZ
@given(HEADERS, st.binary(max_size=512))
def test_random_bodies_behind_a_valid_header_raise_only_decode_error(
    header: bytes, body: bytes
) -> None:
    decode_bounded(CODEC.decode_request, header + body)
    decode_bounded(CODEC.decode_result, header + body)


@FUZZ
@given(EDITS)
def test_mutated_requests_raise_only_decode_error(edits: list[tuple[int, int, int]]) -> None:
    decode_bounded(CODEC.decode_request, mutate(VALID_REQUEST, edits))


@FUZZ
@given(EDITS)
def test_mutated_results_raise_only_decode_error(edits: list[tuple[int, int, int]]) -> None:
    decode_bounded(CODEC.decode_result, mutate(VALID_RESULT, edits))


@FUZZ
@given(st.integers(-(2**63), 2**63 - 1), st.binary(max_size=16))
def test_huge_declared_counts_and_lengths_are_cheap(count: int, tail: bytes) -> None:
    """Any varint at any position where a length or block count is read."""
    value = (count << 1) ^ (count >> 63)
    varint = bytearray()
    while value > 0x7F:
        varint.append((value & 0x7F) | 0x80)
        value >>= 7
    varint.append(value)
    for cut in range(5, len(VALID_REQUEST), 7):
        decode_bounded(CODEC.decode_request, VALID_REQUEST[:cut] + bytes(varint) + tail)


CONTEXTS = st.builds(
    AnalysisContext,
    analysis_type=st.text(min_size=1, max_size=20),
    symbol=st.none() | st.text(max_size=8),
    metrics=st.dictionaries(
        st.text(max_size=12), st.floats(allow_nan=False, allow_infinity=False), max_size=8
    ),
    attributes=st.dictionaries(st.text(max_size=12), st.text(max_size=40), max_size=8),
)


@settings(max_examples=200, deadline=None)
@given(CONTEXTS, st.integers(1, 8192), st.floats(0, 2))
def test_every_valid_request_round_trips(
    context: AnalysisContext, max_tokens: int, temperature: float
) -> None:
    request = ExplanationRequest(context=context, max_tokens=max_tokens, temperature=temperature)
    assert CODEC.decode_request(CODEC.encode_request(request)) == request


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=2000), st.none() | st.floats(0, 1))
def test_every_valid_result_round_trips(explanation: str, confidence: float | None) -> None:
    result = make_result(explanation=explanation, confidence_score=confidence)
    assert isinstance(result, ExplanationResult)
    assert CODEC.decode_result(CODEC.encode_result(result)) == result


def test_header_struct_is_confluent() -> None:
    assert VALID_REQUEST[:5] == struct.pack(">bI", 0, 1)
