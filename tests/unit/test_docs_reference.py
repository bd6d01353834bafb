"""The generated reference pages are what the code renders now, and the renderer reads it."""

from __future__ import annotations

from pathlib import Path

from consumer.config import Settings
from consumer.dev import docref

ROOT = Path(__file__).resolve().parents[2]


def test_committed_pages_match_the_code() -> None:
    for path, render in docref.PAGES.items():
        committed = (ROOT / path).read_text()
        assert committed == render(), f"{path} is stale: run make docs-reference"


def test_check_names_a_page_that_drifted(tmp_path: Path) -> None:
    (tmp_path / "docs" / "manual").mkdir(parents=True)
    docref.write(tmp_path)
    assert docref.check(tmp_path) == []
    page = tmp_path / "docs" / "manual" / "metrics.md"
    page.write_text(page.read_text().replace("llama_requests_total", "llama_requests"))
    assert docref.check(tmp_path) == ["docs/manual/metrics.md"]
    page.unlink()
    assert docref.check(tmp_path) == ["docs/manual/metrics.md"]


def test_every_setting_has_a_row_with_its_description() -> None:
    page = docref.configuration_page()
    for name, field in Settings.model_fields.items():
        assert field.description, f"{name.upper()} has no docstring"
        row = next(line for line in page.splitlines() if line.startswith(f"| {name.upper()} |"))
        assert field.description.split()[0] in row


def test_configuration_rows_carry_type_default_and_bounds() -> None:
    rows = {line.split(" | ")[0][2:]: line for line in docref.configuration_page().splitlines()}
    assert rows["MAX_CONCURRENT_REQUESTS"].startswith(
        "| MAX_CONCURRENT_REQUESTS | integer | `8` | ≥ 1; ≤ 256 |"
    )
    assert "| string | `at-least-once` | `at-least-once`, `exactly-once` |" in rows["DELIVERY"]
    assert f"| string, optional | {docref.NONE} |" in rows["MODEL_PATH"]
    assert "| boolean | `true` |" in rows["WARMUP_ON_START"]


def test_metrics_rows_carry_exposed_name_type_and_labels() -> None:
    page = docref.metrics_page()
    assert "| llama_requests_total | counter | priority, status |" in page
    assert "| explainstream_queue_wait_seconds | histogram | priority |" in page
    assert f"| explainstream_model_info | info | {docref.NONE} |" in page
    # Series created on first use are listed too.
    assert "| explainstream_compute_seconds_total | counter | priority |" in page
    assert "process_" not in page.split("|---|")[1]
