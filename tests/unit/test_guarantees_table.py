"""The Guarantees table (README and site) is the reliability suite's JSON summary, rendered."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.reliability.summary import BEGIN, END, render, replace_table

ROOT = Path(__file__).resolve().parents[2]
SUMMARY = ROOT / "docs" / "reliability" / "summary.json"


#: The pages holding the table between the markers: the README and the site's page.
PAGES = ("README.md", "docs/manual/guarantees.md")


@pytest.mark.parametrize("page", PAGES)
def test_guarantees_table_is_rendered_from_the_summary(page: str) -> None:
    doc = json.loads(SUMMARY.read_text())
    text = (ROOT / page).read_text()
    assert replace_table(text, render(doc)) == text, (
        f"{page} Guarantees table differs from docs/reliability/summary.json: run "
        "python -m tests.reliability.summary docs/reliability/summary.json --readme "
        + " ".join(PAGES)
    )


def test_the_summary_covers_every_scenario_and_holds_its_bounds() -> None:
    rows = json.loads(SUMMARY.read_text())["rows"]
    numbers = {row["scenario"].split()[0] for row in rows}
    assert numbers - {"nemesis"} == {str(n) for n in range(1, 10)}
    for row in rows:
        assert row.get("passed") is True, f"a row of a run that did not pass: {row}"
        assert row["missing"] == 0, row
        assert row["answered"] == row["requests"], row
        windows = row["extra"]["per_fault"] or [row["duplicates"]]
        assert len(windows) == max(1, row["extra"]["faults"]), row
        assert all(n <= row["bound"] for n in windows), row
        assert sum(windows) <= row["duplicates"], row
        if row["delivery"] == "exactly-once":
            assert row["bound"] == 0, row
    deliveries = {(r["scenario"].split()[0], r["delivery"]) for r in rows}
    for n in range(1, 10):
        assert {(str(n), "at-least-once"), (str(n), "exactly-once")} <= deliveries


def test_replace_table_keeps_the_text_around_the_markers() -> None:
    text = f"before\n{BEGIN}\nold\n{END}\nafter\n"
    assert replace_table(text, "| new |") == f"before\n{BEGIN}\n| new |\n{END}\nafter\n"
