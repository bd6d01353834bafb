"""Bounded pre-validation of Avro binary against a writer schema.

fastavro trusts the lengths and block counts it reads: a few bytes that declare a map or
array of millions of items make it allocate before it notices the data is missing. This
walk reads the same binary first, in pure Python, without building any values, and rejects
anything that declares more than the remaining bytes could hold or more than our limits.
Only data that passes is handed to fastavro.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from schemas.errors import DecodeError

__all__ = ["AvroGuard", "Limits"]

_PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}
_FIXED_SIZE = {"null": 0, "float": 4, "double": 8}
_INT_MIN, _INT_MAX = -(2**31), 2**31 - 1


@dataclass(frozen=True, slots=True)
class Limits:
    """Upper bounds one decoded record may reach."""

    max_string_bytes: int = 256 * 1024
    max_items: int = 10_000  # map entries + array items, summed over the whole record
    max_depth: int = 32


class AvroGuard:
    """Validates Avro binary against one writer schema; build once per schema."""

    def __init__(self, schema: Any, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self._names: dict[str, Any] = {}
        self._collect(schema, "")
        self._schema = schema
        self._min_sizes: dict[int, int] = {}

    def check(self, data: bytes | memoryview, start: int = 0) -> None:
        """Raise DecodeError unless ``data[start:]`` is exactly one valid datum."""
        walk = _Walk(bytes(data) if isinstance(data, memoryview) else data, start, self)
        walk.datum(self._schema, "", 0)
        if walk.pos != len(walk.data):
            raise DecodeError(f"{len(walk.data) - walk.pos} trailing bytes after the record")

    # -- schema helpers -------------------------------------------------------------------

    def _collect(self, schema: Any, namespace: str) -> None:
        if isinstance(schema, list):
            for branch in schema:
                self._collect(branch, namespace)
            return
        if not isinstance(schema, Mapping):
            return
        kind = schema.get("type")
        if kind in ("record", "error", "enum", "fixed"):
            full = _full_name(str(schema["name"]), schema.get("namespace", namespace))
            if full in self._names:
                return
            self._names[full] = schema
            namespace = full.rpartition(".")[0]
            for field in schema.get("fields", ()):
                self._collect(field["type"], namespace)
        elif kind == "array":
            self._collect(schema["items"], namespace)
        elif kind == "map":
            self._collect(schema["values"], namespace)
        elif isinstance(kind, (Mapping, list)):
            self._collect(kind, namespace)

    def resolve(self, schema: Any, namespace: str) -> tuple[Any, str]:
        """The schema a type reference names, and the namespace inside it."""
        while True:
            if isinstance(schema, str):
                if schema in _PRIMITIVES:
                    return schema, namespace
                named = self._names.get(schema) or self._names.get(_full_name(schema, namespace))
                if named is None:
                    raise DecodeError(f"writer schema references unknown type {schema!r}")
                full = _full_name(str(named["name"]), named.get("namespace", namespace))
                return named, full.rpartition(".")[0]
            if isinstance(schema, Mapping):
                kind = schema.get("type")
                if isinstance(kind, (str, list)) and kind not in (
                    "record",
                    "error",
                    "enum",
                    "fixed",
                    "array",
                    "map",
                ):
                    # {"type": "long", "logicalType": ...} or {"type": "SomeNamed"}
                    schema = kind
                    continue
                if isinstance(kind, Mapping):
                    schema = kind
                    continue
                if kind in ("record", "error", "enum", "fixed"):
                    full = _full_name(str(schema["name"]), schema.get("namespace", namespace))
                    return schema, full.rpartition(".")[0]
            return schema, namespace

    def min_size(self, schema: Any, namespace: str) -> int:
        """Fewest bytes one datum of ``schema`` can take (bounds block counts)."""
        resolved, namespace = self.resolve(schema, namespace)
        key = id(resolved)
        if key in self._min_sizes:
            return self._min_sizes[key]
        self._min_sizes[key] = 0  # recursion guard
        if isinstance(resolved, str):
            size = _FIXED_SIZE.get(resolved, 1)
        elif isinstance(resolved, list):
            size = 1
        else:
            kind = resolved.get("type")
            if kind in ("record", "error"):
                size = sum(self.min_size(f["type"], namespace) for f in resolved["fields"])
            elif kind == "fixed":
                size = int(resolved["size"])
            else:
                size = 1
        self._min_sizes[key] = size
        return size


class _Walk:
    __slots__ = ("data", "guard", "items", "pos")

    def __init__(self, data: bytes, pos: int, guard: AvroGuard) -> None:
        self.data = data
        self.pos = pos
        self.guard = guard
        self.items = 0

    def remaining(self) -> int:
        return len(self.data) - self.pos

    def skip(self, count: int, what: str) -> None:
        if count > self.remaining():
            raise DecodeError(f"truncated {what}: needs {count} bytes, {self.remaining()} left")
        self.pos += count

    def long(self) -> int:
        data, pos, shift, acc = self.data, self.pos, 0, 0
        for _ in range(10):
            if pos >= len(data):
                raise DecodeError("truncated varint")
            byte = data[pos]
            pos += 1
            acc |= (byte & 0x7F) << shift
            if not byte & 0x80:
                self.pos = pos
                return (acc >> 1) ^ -(acc & 1)
            shift += 7
        raise DecodeError("varint longer than 10 bytes")

    def length(self, what: str) -> int:
        size = self.long()
        if size < 0:
            raise DecodeError(f"negative {what} length {size}")
        if size > self.guard.limits.max_string_bytes:
            raise DecodeError(
                f"{what} of {size} bytes exceeds {self.guard.limits.max_string_bytes}"
            )
        return size

    def datum(self, schema: Any, namespace: str, depth: int) -> None:
        if depth > self.guard.limits.max_depth:
            raise DecodeError(f"nesting deeper than {self.guard.limits.max_depth}")
        resolved, namespace = self.guard.resolve(schema, namespace)
        if isinstance(resolved, str):
            self.primitive(resolved)
        elif isinstance(resolved, list):
            index = self.long()
            if not 0 <= index < len(resolved):
                raise DecodeError(f"union index {index} out of range 0..{len(resolved) - 1}")
            self.datum(resolved[index], namespace, depth + 1)
        else:
            kind = resolved.get("type")
            if kind in ("record", "error"):
                for field in resolved["fields"]:
                    self.datum(field["type"], namespace, depth + 1)
            elif kind == "enum":
                index = self.long()
                if not 0 <= index < len(resolved["symbols"]):
                    raise DecodeError(f"enum index {index} out of range")
            elif kind == "fixed":
                self.skip(int(resolved["size"]), "fixed")
            elif kind == "array":
                self.blocks(None, resolved["items"], namespace, depth)
            elif kind == "map":
                self.blocks("string", resolved["values"], namespace, depth)
            else:
                raise DecodeError(f"unsupported schema type {kind!r}")

    def primitive(self, kind: str) -> None:
        if kind == "null":
            return
        if kind == "boolean":
            self.skip(1, "boolean")
            if self.data[self.pos - 1] not in (0, 1):
                raise DecodeError("boolean byte is neither 0 nor 1")
        elif kind == "int":
            if not _INT_MIN <= self.long() <= _INT_MAX:
                raise DecodeError("int out of 32-bit range")
        elif kind == "long":
            self.long()
        elif kind in ("float", "double"):
            self.skip(_FIXED_SIZE[kind], kind)
        elif kind in ("string", "bytes"):
            self.skip(self.length(kind), kind)

    def blocks(self, key: str | None, values: Any, namespace: str, depth: int) -> None:
        per_item = self.guard.min_size(values, namespace) + (1 if key else 0)
        limit = self.guard.limits.max_items
        while True:
            count = self.long()
            if count == 0:
                return
            if count < 0:
                count = -count
                block_bytes = self.long()
                if not 0 <= block_bytes <= self.remaining():
                    raise DecodeError(f"block size {block_bytes} exceeds the data left")
            self.items += count
            if self.items > limit:
                raise DecodeError(f"more than {limit} map/array items declared")
            if count * per_item > self.remaining():
                raise DecodeError(
                    f"block declares {count} items but only {self.remaining()} bytes are left"
                )
            for _ in range(count):
                if key:
                    self.skip(self.length("map key"), "map key")
                self.datum(values, namespace, depth + 1)


def _full_name(name: str, namespace: str | None) -> str:
    if "." in name or not namespace:
        return name
    return f"{namespace}.{name}"
