"""FULL compatibility check between two versions of a schema, by Avro schema resolution.

Each schema writes sample records that exercise every union branch and every enum symbol;
the other schema must read them (fastavro resolution), in both directions. Used by the test
suite over ``schemas/history`` and usable before registering a new version.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from typing import Any

import fastavro

__all__ = ["check_full_compatibility", "compatibility_problems", "sample_records"]

_PRIMITIVE_SAMPLES: dict[str, list[Any]] = {
    "null": [None],
    "boolean": [True, False],
    "int": [0, 7, -(2**31)],
    "long": [0, 1_700_000_000_000, -1],
    "float": [0.5, 0.0],
    "double": [1.25, -3.0],
    "bytes": [b"", b"\x00\xff"],
    "string": ["x", ""],
}


def sample_records(schema: Mapping[str, Any], count: int | None = None) -> list[Any]:
    """Records valid for ``schema``; variant ``i`` takes branch/symbol ``i`` where it can."""
    names: dict[str, Any] = {}
    _collect(schema, "", names)
    variants = count or max(3, _widest(schema, names, set()))
    return [_sample(schema, "", names, i, 0) for i in range(variants)]


def compatibility_problems(writer: Mapping[str, Any], reader: Mapping[str, Any]) -> list[str]:
    """Why data written with ``writer`` cannot be read with ``reader`` (empty when it can)."""
    problems: list[str] = []
    try:
        parsed_writer = fastavro.parse_schema(dict(writer), named_schemas={})
        parsed_reader = fastavro.parse_schema(dict(reader), named_schemas={})
    except Exception as exc:
        return [f"schema does not parse: {exc}"]
    for index, record in enumerate(sample_records(writer)):
        buf = io.BytesIO()
        fastavro.schemaless_writer(buf, parsed_writer, record)
        buf.seek(0)
        try:
            fastavro.schemaless_reader(buf, parsed_writer, parsed_reader)
        except Exception as exc:
            problems.append(f"sample {index}: {type(exc).__name__}: {exc}")
    return problems


def check_full_compatibility(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Problems in either direction: new reads old data (backward), old reads new (forward)."""
    backward = [f"new schema reading old data: {p}" for p in compatibility_problems(old, new)]
    forward = [f"old schema reading new data: {p}" for p in compatibility_problems(new, old)]
    return backward + forward


def _full(name: str, namespace: str) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


def _collect(schema: Any, namespace: str, names: dict[str, Any]) -> None:
    if isinstance(schema, list):
        for branch in schema:
            _collect(branch, namespace, names)
    elif isinstance(schema, Mapping):
        kind = schema.get("type")
        if kind in ("record", "enum", "fixed"):
            full = _full(schema["name"], schema.get("namespace", namespace))
            names[full] = schema
            for field in schema.get("fields", ()):
                _collect(field["type"], full.rpartition(".")[0], names)
        elif kind == "array":
            _collect(schema["items"], namespace, names)
        elif kind == "map":
            _collect(schema["values"], namespace, names)
        elif isinstance(kind, (Mapping, list)):
            _collect(kind, namespace, names)


def _resolve(schema: Any, namespace: str, names: dict[str, Any]) -> tuple[Any, str]:
    if isinstance(schema, str) and schema not in _PRIMITIVE_SAMPLES:
        named = names.get(schema) or names[_full(schema, namespace)]
        full = _full(named["name"], named.get("namespace", namespace))
        return named, full.rpartition(".")[0]
    if isinstance(schema, Mapping) and schema.get("type") in _PRIMITIVE_SAMPLES:
        return schema["type"], namespace
    return schema, namespace


def _widest(schema: Any, names: dict[str, Any], seen: set[int]) -> int:
    schema, _ = _resolve(schema, "", names)
    if isinstance(schema, list):
        return max([len(schema), *(_widest(b, names, seen) for b in schema)])
    if not isinstance(schema, Mapping) or id(schema) in seen:
        return 1
    seen.add(id(schema))
    kind = schema.get("type")
    if kind == "enum":
        return len(schema["symbols"])
    if kind == "record":
        return max([1, *(_widest(f["type"], names, seen) for f in schema["fields"])])
    if kind == "array":
        return _widest(schema["items"], names, seen)
    if kind == "map":
        return _widest(schema["values"], names, seen)
    return 1


def _sample(schema: Any, namespace: str, names: dict[str, Any], i: int, depth: int) -> Any:
    schema, namespace = _resolve(schema, namespace, names)
    if isinstance(schema, str):
        options = _PRIMITIVE_SAMPLES[schema]
        return options[i % len(options)]
    if isinstance(schema, list):
        branch = schema[i % len(schema)]
        if depth > 8:
            branch = next((b for b in schema if b == "null"), branch)
        return _sample(branch, namespace, names, i, depth + 1)
    kind = schema["type"]
    if kind == "record":
        return {
            f["name"]: _sample(f["type"], namespace, names, i, depth + 1) for f in schema["fields"]
        }
    if kind == "enum":
        return schema["symbols"][i % len(schema["symbols"])]
    if kind == "fixed":
        return b"\x01" * int(schema["size"])
    if kind == "array":
        return [] if i % 2 else [_sample(schema["items"], namespace, names, i, depth + 1)]
    if kind == "map":
        return {} if i % 2 else {"k": _sample(schema["values"], namespace, names, i, depth + 1)}
    raise ValueError(f"cannot sample schema type {kind!r}")
