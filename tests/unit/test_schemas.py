"""The Avro schemas: documented, versioned, FULL-compatible across history, mirrored by pydantic."""

from __future__ import annotations

import copy
import json
import types
import typing
from datetime import datetime
from importlib import resources
from typing import Any

import pytest
from pydantic import BaseModel

from schemas.codec import REQUEST_SUBJECT, RESULT_SUBJECT, load_schema
from schemas.compat import check_full_compatibility, sample_records
from schemas.models import (
    AnalysisContext,
    ExplanationRequest,
    ExplanationResult,
    Grounding,
    GroundingSource,
    ModelInfoRecord,
    ResultStatus,
    SourceOffset,
    float32,
)

SUBJECTS = (REQUEST_SUBJECT, RESULT_SUBJECT)
MODELS: dict[str, type[Any]] = {
    "ExplanationRequest": ExplanationRequest,
    "AnalysisContext": AnalysisContext,
    "ExplanationResult": ExplanationResult,
    "ModelInfo": ModelInfoRecord,
    "SourceOffset": SourceOffset,
    "ResultStatus": ResultStatus,
    "Grounding": Grounding,
    "GroundingSource": GroundingSource,
}
#: Avro-required fields the pydantic model fills in itself when the caller omits them.
GENERATED = {
    ("ExplanationRequest", "request_id"),
    ("ExplanationRequest", "created_at"),
    ("ExplanationResult", "completed_at"),
}


def history_versions() -> list[int]:
    base = resources.files("schemas") / "history"
    return sorted(int(p.name[1:]) for p in base.iterdir() if p.name.startswith("v"))


def all_versions(subject: str) -> list[tuple[str, dict[str, Any]]]:
    versions = [(f"v{v}", load_schema(subject, v)) for v in history_versions()]
    return [*versions, ("current", load_schema(subject))]


def records_of(schema: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = []

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for branch in node:
                walk(branch)
        elif isinstance(node, dict):
            if node.get("type") in ("record", "enum"):
                found.append(node)
            for field in node.get("fields", ()):
                walk(field["type"])
            if isinstance(node.get("type"), (dict, list)):
                walk(node["type"])

    walk(schema)
    return found


@pytest.mark.parametrize("subject", SUBJECTS)
def test_every_field_is_documented_and_the_schema_is_versioned(subject: str) -> None:
    schema = load_schema(subject)
    assert schema["namespace"] == "io.explainstream"
    assert schema["version"] == max(history_versions())
    for record in records_of(schema):
        assert record.get("doc"), f"{record['name']} has no doc"
        for field in record.get("fields", ()):
            assert field.get("doc"), f"{record['name']}.{field['name']} has no doc"


@pytest.mark.parametrize("subject", SUBJECTS)
def test_current_schema_is_the_latest_released_version(subject: str) -> None:
    latest = max(history_versions())
    current = load_schema(subject)
    released = load_schema(subject, latest)
    assert current == released, (
        f"{subject} changed: copy it to schemas/history/v{latest + 1}/, bump 'version' "
        "and pin a new id in EMBEDDED_IDS"
    )


@pytest.mark.parametrize("subject", SUBJECTS)
def test_every_pair_of_versions_is_fully_compatible(subject: str) -> None:
    versions = all_versions(subject)
    for old_name, old in versions:
        for new_name, new in versions:
            problems = check_full_compatibility(old, new)
            assert not problems, f"{subject} {old_name} -> {new_name}: {problems}"


def _field(schema: dict[str, Any], name: str) -> dict[str, Any]:
    return next(f for f in schema["fields"] if f["name"] == name)


def _incompatible_edits() -> list[tuple[str, Any]]:
    def required_field_added(s: dict[str, Any]) -> None:
        s["fields"].append({"name": "tenant", "type": "string", "doc": "new, no default"})

    def type_changed(s: dict[str, Any]) -> None:
        _field(s, "max_tokens")["type"] = "string"
        _field(s, "max_tokens")["default"] = "200"

    def field_renamed(s: dict[str, Any]) -> None:
        _field(s, "source")["name"] = "producer"
        del _field(s, "producer")["default"]

    def required_field_removed(s: dict[str, Any]) -> None:
        s["fields"] = [f for f in s["fields"] if f["name"] != "created_at"]

    def map_values_narrowed(s: dict[str, Any]) -> None:
        _field(_field(s, "context")["type"], "metrics")["type"] = {"type": "map", "values": "int"}

    return [
        ("required field added", required_field_added),
        ("type changed", type_changed),
        ("field renamed", field_renamed),
        ("required field removed", required_field_removed),
        ("map values narrowed", map_values_narrowed),
    ]


@pytest.mark.parametrize(("name", "edit"), _incompatible_edits())
def test_an_incompatible_edit_is_detected(name: str, edit: Any) -> None:
    old = load_schema(REQUEST_SUBJECT)
    new = copy.deepcopy(old)
    edit(new)
    assert check_full_compatibility(old, new), f"{name} was not detected"


def test_a_compatible_edit_passes() -> None:
    old = load_schema(REQUEST_SUBJECT)
    new = copy.deepcopy(old)
    new["fields"].append(
        {"name": "tenant", "type": ["null", "string"], "default": None, "doc": "optional"}
    )
    _field(new, "source")["doc"] = "docs may change freely"
    assert check_full_compatibility(old, new) == []


def test_samples_cover_every_enum_symbol_and_union_branch() -> None:
    samples = sample_records(load_schema(RESULT_SUBJECT))
    assert {s["status"] for s in samples} == {m.value for m in ResultStatus}
    assert {s["explanation"] is None for s in samples} == {True, False}


# -- pydantic mirrors Avro ----------------------------------------------------------------


def _python_type(avro: Any) -> Any:
    if isinstance(avro, list):
        branches = [b for b in avro if b != "null"]
        assert len(branches) == 1 and len(avro) == 2, f"unsupported union {avro}"
        return _python_type(branches[0]) | None
    if isinstance(avro, dict):
        if avro.get("logicalType") == "timestamp-millis":
            return datetime
        kind = avro["type"]
        if kind == "map":
            return dict[str, _python_type(avro["values"])]  # type: ignore[misc]
        if kind == "array":
            return list[_python_type(avro["items"])]  # type: ignore[misc]
        if kind in ("record", "enum"):
            return MODELS[avro["name"]]
        return _python_type(kind)
    return {
        "string": str,
        "int": int,
        "long": int,
        "float": float,
        "double": float,
        "boolean": bool,
    }[avro]


def _normalise(annotation: Any) -> Any:
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        return frozenset(_normalise(a) for a in typing.get_args(annotation))
    if origin is not None:
        return (origin, tuple(_normalise(a) for a in typing.get_args(annotation)))
    return annotation


def _avro_default(avro_type: Any, value: Any) -> Any:
    if value is not None and avro_type == "float":
        return float32(value)
    if isinstance(avro_type, dict) and avro_type.get("type") == "enum":
        return MODELS[avro_type["name"]](value)
    return value


RECORDS = [r for s in SUBJECTS for r in records_of(load_schema(s)) if r["type"] == "record"]


@pytest.mark.parametrize("record", RECORDS, ids=[r["name"] for r in RECORDS])
def test_pydantic_models_agree_with_avro_field_by_field(record: dict[str, Any]) -> None:
    model: type[BaseModel] = MODELS[record["name"]]
    avro_fields = record["fields"]
    assert [f["name"] for f in avro_fields] == list(model.model_fields), "names or order differ"
    assert model.model_config.get("extra") == "forbid"
    for field in avro_fields:
        info = model.model_fields[field["name"]]
        where = f"{record['name']}.{field['name']}"
        assert _normalise(info.annotation) == _normalise(_python_type(field["type"])), where
        optional = isinstance(field["type"], list) and "null" in field["type"]
        assert (type(None) in typing.get_args(info.annotation)) == optional, where
        if "default" in field:
            assert not info.is_required(), f"{where}: Avro has a default, pydantic requires it"
            default = info.get_default(call_default_factory=True)
            if field["name"] == "temperature":
                default = float32(default)
            assert default == _avro_default(field["type"], field["default"]), where
        elif (record["name"], field["name"]) not in GENERATED:
            assert info.is_required(), f"{where}: required in Avro, optional in pydantic"


def test_enum_mirrors_avro_symbols_and_default() -> None:
    status = _field(load_schema(RESULT_SUBJECT), "status")["type"]
    assert [m.value for m in ResultStatus] == status["symbols"]
    assert status["default"] in status["symbols"]


def test_schema_files_are_valid_avro_records() -> None:
    """Every .avsc shipped (current and history) is a JSON object that fastavro accepts as a
    named record, read from the file's own text."""
    from pathlib import Path

    import fastavro

    import schemas

    files = sorted(Path(schemas.__file__).parent.glob("**/*.avsc"))
    assert len(files) >= 2 + 2 * len(SUBJECTS)
    for path in files:
        schema = json.loads(path.read_text())
        assert isinstance(schema, dict) and schema["type"] == "record", path
        parsed = fastavro.parse_schema(copy.deepcopy(schema))
        assert parsed["name"].endswith(schema["name"]), path


def test_every_python_package_is_shipped() -> None:
    """pyproject lists packages explicitly: a new one left out is missing from the wheel."""
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    listed = set(
        tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    )
    found = {
        str(p.parent.relative_to(root)).replace("/", ".")
        for top in ("consumer", "producer_sdk", "schemas")
        for p in (root / top).rglob("__init__.py")
    }
    assert found == listed
