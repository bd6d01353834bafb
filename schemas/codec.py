"""Confluent-framed Avro codec: magic byte 0, 4-byte big-endian schema id, Avro binary.

Schemas are parsed once at construction. Decoding treats the bytes as untrusted: framing,
size and the schema id are checked, then a bounded walk (:mod:`schemas._guard`) validates
every length, block count, union and enum index against the writer schema before fastavro
allocates anything. Every failure surfaces as :class:`~schemas.errors.DecodeError`.
"""

from __future__ import annotations

import io
import json
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from typing import Any, Protocol, runtime_checkable

import fastavro
import fastavro.validation

from schemas._guard import AvroGuard, Limits
from schemas.errors import (
    DecodeError,
    EncodeError,
    RegistryError,
    SchemaRegistryUnavailable,
)
from schemas.models import ExplanationRequest, ExplanationResult

__all__ = [
    "MAGIC_BYTE",
    "MAX_RECORD_BYTES",
    "AsyncSchemaRegistry",
    "Codec",
    "EmbeddedRegistry",
    "Limits",
    "SchemaRegistry",
    "load_schema",
]

MAGIC_BYTE = 0
#: Requests and results are small; anything larger is refused before decoding (and on
#: encode, so that nothing we write is refused on read). Kafka's default max is 1 MiB.
MAX_RECORD_BYTES = 1000 * 1024
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


@runtime_checkable
class AsyncSchemaRegistry(SchemaRegistry, Protocol):
    """A registry behind a network call: the codec awaits it before the synchronous paths."""

    def cached_schema(self, schema_id: int) -> Mapping[str, Any] | None:
        """The schema of ``schema_id`` when already fetched; no call."""
        ...

    async def fetch_schema(self, schema_id: int) -> Mapping[str, Any]:
        """Writer schema for ``schema_id``, fetched once; RegistryError when it cannot."""
        ...

    async def register(self, subject: str, schema: Mapping[str, Any]) -> int:
        """Id of ``schema`` under ``subject``, registering it; RegistryError when it cannot."""
        ...


#: Pinned ids of the embedded registry: (subject, version) -> id. Never renumber.
EMBEDDED_IDS: dict[tuple[str, int], int] = {
    (REQUEST_SUBJECT, 1): 1,
    (RESULT_SUBJECT, 1): 2,
    (RESULT_SUBJECT, 2): 3,  # adds compute_ms
    (RESULT_SUBJECT, 3): 4,  # adds grounding
    (RESULT_SUBJECT, 4): 5,  # adds service_version
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
    raw: dict[str, Any]
    reader: Any
    writer_id: int | None = None


@dataclass(frozen=True)
class _Writer:
    parsed: Any
    guard: AvroGuard


class Codec:
    """Encode/decode requests and results with Confluent framing.

    ``registry`` defaults to the :class:`EmbeddedRegistry`; pass a
    :class:`~schemas.registry.ConfluentSchemaRegistry` to use a server. The writer id of
    our own schemas is looked up (registered) on the first encode, so a decode-only codec
    never writes to the registry. ``limits`` bounds what one decoded record may declare.
    """

    def __init__(
        self,
        registry: SchemaRegistry | None = None,
        *,
        limits: Limits | None = None,
        max_record_bytes: int = MAX_RECORD_BYTES,
    ) -> None:
        self.registry: SchemaRegistry = registry or EmbeddedRegistry()
        self.limits = limits or Limits()
        self.max_record_bytes = max_record_bytes
        self._records: dict[str, _Record] = {}
        self._writers: dict[tuple[str, int], _Writer] = {}
        for subject in (REQUEST_SUBJECT, RESULT_SUBJECT):
            raw = load_schema(subject)
            self._records[subject] = _Record(subject, raw, fastavro.parse_schema(raw))

    def writer_id(self, subject: str) -> int:
        """Schema id our encoder writes for ``subject`` (looked up once)."""
        rec = self._records[subject]
        if rec.writer_id is None:
            rec.writer_id = self.registry.id_for(subject, rec.raw)
        return rec.writer_id

    async def prepare(self) -> None:
        """Look up (register) the writer ids of our own schemas without blocking the loop.

        A no-op with the embedded registry. Raises RegistryError (``retriable`` when the
        registry is unreachable). Encoding after this never calls the registry.
        """
        if not isinstance(self.registry, AsyncSchemaRegistry):
            return
        for subject, rec in self._records.items():
            if rec.writer_id is None:
                rec.writer_id = await self.registry.register(subject, rec.raw)

    async def resolve(self, payload: bytes) -> None:
        """Make sure the writer schema of a Confluent-framed ``payload`` is known.

        With a registry server: fetch the schema by the payload's id (once; cached) and
        register our own writer schemas (once), so that the synchronous decode and the
        result encode that follow never wait on the network. Raises
        :class:`~schemas.errors.SchemaRegistryUnavailable` (``retriable``: the record must
        wait) when the registry cannot be reached, and a non-retriable DecodeError for bad
        framing or an id the registry does not know. A no-op with the embedded registry.
        """
        registry = self.registry
        if not isinstance(registry, AsyncSchemaRegistry):
            return
        schema_id = self._schema_id(payload)
        try:
            if registry.cached_schema(schema_id) is None:
                await registry.fetch_schema(schema_id)
            await self.prepare()
        except RegistryError as exc:
            if exc.retriable:
                raise SchemaRegistryUnavailable(str(exc)) from exc
            raise DecodeError(str(exc)) from exc

    def _schema_id(self, data: bytes | None) -> int:
        if data is None:
            raise DecodeError("record has no value (tombstone)")
        if not isinstance(data, (bytes, bytearray, memoryview)):
            raise DecodeError(f"expected bytes, got {type(data).__name__}")
        if len(data) < _HEADER.size + 1:
            raise DecodeError(f"record of {len(data)} bytes is too short for Confluent framing")
        if len(data) > self.max_record_bytes:
            raise DecodeError(f"record of {len(data)} bytes exceeds {self.max_record_bytes}")
        magic, schema_id = _HEADER.unpack_from(bytes(data[: _HEADER.size]))
        if magic != MAGIC_BYTE:
            raise DecodeError(f"unknown magic byte {magic}")
        return int(schema_id)

    def _writer(self, subject: str, schema_id: int) -> _Writer:
        key = (subject, schema_id)
        writer = self._writers.get(key)
        if writer is None:
            try:
                raw = self.registry.schema_for(schema_id)
            except RegistryError as exc:
                if exc.retriable:
                    raise SchemaRegistryUnavailable(str(exc)) from exc
                raise DecodeError(str(exc)) from exc
            name = str(raw.get("name", ""))
            full = name if "." in name else f"{raw.get('namespace', '')}.{name}"
            if name != subject and full != f"io.explainstream.{subject}":
                raise DecodeError(f"schema id {schema_id} is {name!r}, not a {subject}")
            try:
                parsed = fastavro.parse_schema(dict(raw), named_schemas={})
                writer = _Writer(parsed, AvroGuard(dict(raw), self.limits))
            except DecodeError:
                raise
            except Exception as exc:
                raise DecodeError(f"schema id {schema_id} does not parse: {exc}") from exc
            if len(self._writers) < 1024:  # unknown ids must not grow the cache without end
                self._writers[key] = writer
        return writer

    def _encode(self, subject: str, record: dict[str, Any]) -> bytes:
        rec = self._records[subject]
        buf = io.BytesIO()
        buf.write(_HEADER.pack(MAGIC_BYTE, self.writer_id(subject)))
        try:
            fastavro.schemaless_writer(buf, rec.reader, record)
        except (ValueError, TypeError, KeyError, AttributeError, OverflowError) as exc:
            raise EncodeError(f"cannot encode {subject}: {exc}") from exc
        data = buf.getvalue()
        if len(data) > self.max_record_bytes:
            raise EncodeError(
                f"{subject} of {len(data)} bytes exceeds the {self.max_record_bytes} byte limit"
            )
        return data

    def _decode(self, subject: str, data: bytes | None) -> dict[str, Any]:
        schema_id = self._schema_id(data)
        data = bytes(data or b"")
        writer = self._writer(subject, schema_id)
        writer.guard.check(data, _HEADER.size)
        body = io.BytesIO(data)
        body.seek(_HEADER.size)
        try:
            record = fastavro.schemaless_reader(body, writer.parsed, self._records[subject].reader)
        except Exception as exc:  # fastavro raises many types on bad bytes
            raise DecodeError(f"invalid {subject} body: {type(exc).__name__}: {exc}") from exc
        if body.tell() != len(data):
            raise DecodeError(f"{len(data) - body.tell()} trailing bytes")
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
            raise DecodeError(f"invalid ExplanationRequest: {_first_error(exc)}") from exc

    def encode_result(self, result: ExplanationResult) -> bytes:
        """Frame and encode a result."""
        record = result.model_dump()
        record["status"] = result.status.value
        return self._encode(RESULT_SUBJECT, record)

    def decode_result(self, data: bytes | None) -> ExplanationResult:
        """Decode untrusted bytes into a result; DecodeError on any problem."""
        record = self._decode(RESULT_SUBJECT, data)
        try:
            return ExplanationResult.model_validate(record)
        except Exception as exc:
            raise DecodeError(f"invalid ExplanationResult: {_first_error(exc)}") from exc


def _first_error(exc: Exception) -> str:
    errors = getattr(exc, "errors", None)
    if callable(errors):
        try:
            first = errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            return f"{where}: {first['msg']}"
        except Exception:
            pass
    return str(exc)
