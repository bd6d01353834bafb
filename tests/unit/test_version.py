"""One version: package metadata feeds --version, build_info and the result's provenance."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

from consumer.cli import build_parser
from consumer.ops.metrics import Metrics
from schemas.codec import RESULT_SUBJECT, Codec, load_schema
from schemas.compat import check_full_compatibility
from schemas.version import __version__
from tests.unit.test_codec import make_result
from tests.unit.test_llama_accounting import _record, _roundtrip

ROOT = Path(__file__).resolve().parents[2]


def test_the_version_is_the_package_metadata_of_pyproject() -> None:
    declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    assert __version__ == metadata.version("explainstream") == declared == "0.3.0"


def test_cli_prints_the_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["--version"])
    assert exited.value.code == 0
    assert capsys.readouterr().out.strip() == f"explainstream {__version__}"


def test_build_info_is_one_series_with_the_version() -> None:
    registry = CollectorRegistry()
    Metrics(registry)
    labels = {"version": __version__, "backend": "unknown"}
    assert registry.get_sample_value("explainstream_build_info", labels) == 1
    families = [f for f in registry.collect() if f.name == "explainstream_build_info"]
    assert [len(f.samples) for f in families] == [1]


def test_result_v4_adds_service_version_with_full_compatibility() -> None:
    v3, v4 = load_schema(RESULT_SUBJECT, 3), load_schema(RESULT_SUBJECT, 4)
    assert load_schema(RESULT_SUBJECT) == v4
    assert check_full_compatibility(v3, v4) == []
    assert check_full_compatibility(v4, v3) == []
    assert _roundtrip(_record(), v3, v4)["service_version"] is None  # an older consumer wrote it
    old_reader = _roundtrip(_record(service_version="0.3.0"), v4, v3)
    assert "service_version" not in old_reader and old_reader["request_id"] == "r1"
    codec = Codec()
    decoded = codec.decode_result(codec.encode_result(make_result(service_version=__version__)))
    assert decoded.service_version == __version__


def test_changelog_is_keep_a_changelog_with_this_version_on_top() -> None:
    text = (ROOT / "CHANGELOG.md").read_text()
    assert text.startswith("# Changelog")
    assert "keepachangelog.com" in text and "semver.org" in text
    releases = re.findall(r"^## \[(\d+\.\d+\.\d+)\] - (\d{4}-\d{2}-\d{2})$", text, re.M)
    assert releases and releases[0][0] == __version__
    versions = [tuple(int(p) for p in v.split(".")) for v, _ in releases]
    assert versions == sorted(versions, reverse=True)
    manual = (ROOT / "docs" / "manual" / "changelog.md").read_text()
    assert "CHANGELOG.md" in manual
