"""Confluent-framed Avro codec: magic byte 0, 4-byte big-endian schema id, Avro binary.

Schemas are parsed once at construction. Decoding treats the bytes as untrusted: framing,
size and the schema id are checked before fastavro sees them, and every failure surfaces as
:class:`~schemas.errors.DecodeError`.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any, Protocol

import fastavro
import fastavro.validation

from schemas.errors import DecodeError, EncodeError, RegistryError
from schemas.models import ExplanationRequest, ExplanationResult

__all__ = [
    "MAGIC_BYTE",
    "MAX_RECORD_BYTES",
    "Codec",
    "EmbeddedRegistry",
    "SchemaRegistry",
    "load_schema",
]

MAGIC_BYTE = 0
#: Requests and results are small; anything larger is refused before decoding.
MAX_RECORD_BYTES = 256 * 1024
_HEADER = struct.Struct(">bI")

REQUEST_SUBJECT = "ExplanationRequest"
RESULT_SUBJECT = "ExplanationResult"


def load_schema(name: str, version: int | None = None) -> dict[str, Any]:
    """Load a schema JSON from the package: the current one, or ``history/v<version>``."""
    base = resources.files("schemas")
    file_name = {
        REQUEST_SUBJECT: "explanation_request.avsc",
        RESULT_SUBJECT: "explanation_result.avsc",
    }[name]
    path = base / file_name if version is None else base / "history" / f"v{version}" / file_name
    loaded: dict[str, Any] = json.loads(path.read_text())
    return loaded


class SchemaRegistry(Protocol):
    """Where schema ids come from."""

    def id_for(self, subject: str, schema: Mapping[str, Any]) -> int:
        """Id of ``schema`` under ``subject`` (registering it if the registry allows)."""
        ...

    def schema_for(self, schema_id: int) -> Mapping[str, Any]:
        """Writer schema for ``schema_id``; RegistryError when unknown."""
        ...


#: Pinned ids of the embedded registry: (subject, version) -> id. Never renumber.
EMBEDDED_IDS: dict[tuple[str, int], int] = {
    (REQUEST_SUBJECT, 1): 1,
    (RESULT_SUBJECT, 1): 2,
}


class EmbeddedRegistry:
    """A registry built from the schemas shipped in this package; no server needed."""

    def __init__(self) -> None:
        self._by_id: dict[int, dict[str, Any]] = {}
        self._current: dict[str, int] = {}
        for (subject, version), schema_id in EMBEDDED_IDS.items():
            self._by_id[schema_id] = load_schema(subject, version)
            if version >= max(v for s, v in EMBEDDED_IDS if s == subject):
                self._current[subject] = schema_id

    def id_for(self, subject: str, schema: Mapping[str, Any]) -> int:
        """Id of the current version of ``subject``; the embedded schemas are fixed."""
        try:
            return self._current[subject]
        except KeyError:
            raise RegistryError(f"unknown subject {subject!r}") from None

    def schema_for(self, schema_id: int) -> Mapping[str, Any]:
        """Writer schema for a pinned id."""
        try:
            return self._by_id[schema_id]
        except KeyError:
            raise RegistryError(f"unknown schema id {schema_id}") from None


@dataclass
class _Record:
    subject: str
    reader: Any
    writer_id: int


class Codec:
    """Encode/decode requests and results with Confluent framing."""

    def __init__(self, registry: SchemaRegistry | None = None) -> None:
        self.registry: SchemaRegistry = registry or EmbeddedRegistry()
        self._records: dict[str, _Record] = {}
        self._writers: dict[tuple[str, int], Any] = {}
        for subject in (REQUEST_SUBJECT, RESULT_SUBJECT):
            raw = load_schema(subject)
            parsed = fastavro.parse_schema(raw)
            self._records[subject] = _Record(subject, parsed, self.registry.id_for(subject, raw))

    def _writer_schema(self, subject: str, schema_id: int) -> Any:
        key = (subject, schema_id)
        parsed = self._writers.get(key)
        if parsed is None:
            try:
                raw = self.registry.schema_for(schema_id)
            except RegistryError as exc:
                raise DecodeError(str(exc)) from exc
            if raw.get("name") != subject and raw.get("name") != subject.split(".")[-1]:
                raise DecodeError(f"schema id {schema_id} is not a {subject}")
            parsed = fastavro.parse_schema(dict(raw))
            self._writers[key] = parsed
        return parsed

    def _encode(self, subject: str, record: dict[str, Any]) -> bytes:
        rec = self._records[subject]
        buf = io.BytesIO()
        buf.write(_HEADER.pack(MAGIC_BYTE, rec.writer_id))
        try:
            fastavro.schemaless_writer(buf, rec.reader, record)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            raise EncodeError(f"cannot encode {subject}: {exc}") from exc
        return buf.getvalue()

    def _decode(self, subject: str, data: bytes | None) -> dict[str, Any]:
        if data is None:
            raise DecodeError("record has no value (tombstone)")
        if len(data) < _HEADER.size + 1:
            raise DecodeError(f"record of {len(data)} bytes is too short for Confluent framing")
        if len(data) > MAX_RECORD_BYTES:
            raise DecodeError(f"record of {len(data)} bytes exceeds {MAX_RECORD_BYTES}")
        magic, schema_id = _HEADER.unpack_from(data)
        if magic != MAGIC_BYTE:
            raise DecodeError(f"unknown magic byte {magic}")
        writer = self._writer_schema(subject, schema_id)
        body = io.BytesIO(memoryview(data)[_HEADER.size :])
        try:
            record = fastavro.schemaless_reader(body, writer, self._records[subject].reader)
        except Exception as exc:  # fastavro raises many types on bad bytes
            raise DecodeError(f"invalid {subject} body: {type(exc).__name__}: {exc}") from exc
        if body.tell() != len(data) - _HEADER.size:
            raise DecodeError(f"{len(data) - _HEADER.size - body.tell()} trailing bytes")
        if not isinstance(record, dict):
            raise DecodeError(f"{subject} body is not a record")
        return record

    def encode_request(self, request: ExplanationRequest) -> bytes:
        """Frame and encode a request."""
        return self._encode(REQUEST_SUBJECT, request.model_dump())

    def decode_request(self, data: bytes | None) -> ExplanationRequest:
        """Decode untrusted bytes into a validated request; DecodeError on any problem."""
        record = self._decode(REQUEST_SUBJECT, data)
        try:
            return ExplanationRequest.model_validate(record)
        except Exception as exc:
            raise DecodeError(f"invalid ExplanationRequest: {exc}") from exc

    def encode_result(self, result: ExplanationResult) -> bytes:
        """Frame and encode a result."""
        record = result.model_dump()
        record["status"] = result.status.value
        return self._encode(RESULT_SUBJECT, record)

    def decode_result(self, data: bytes | None) -> ExplanationResult:
        """Decode bytes from a results topic."""
        record = self._decode(RESULT_SUBJECT, data)
        try:
            return ExplanationResult.model_validate(record)
        except Exception as exc:
            raise DecodeError(f"invalid ExplanationResult: {exc}") from exc
