"""The suite's JSON summary and the README table rendered from it.

Each scenario adds one :class:`Row` per delivery mode. At the end of the session the rows are
written to ``$RELIABILITY_SUMMARY`` (``make reliability-report`` points it at
``docs/reliability/summary.json``), else to a file in the temp directory.
``python -m tests.reliability.summary docs/reliability/summary.json --readme README.md
docs/manual/guarantees.md`` rewrites the Guarantees table between its markers in both.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BEGIN = "<!-- guarantees-table:begin (generated from docs/reliability/summary.json) -->"
END = "<!-- guarantees-table:end -->"


@dataclass
class Row:
    """One scenario under one delivery mode, as the history checker counted it."""

    scenario: str
    delivery: str  # at-least-once | exactly-once
    requests: int
    answered: int
    missing: int
    duplicates: int
    bound: int
    observed: str  # what the consumer did, in words with figures
    extra: dict[str, Any] = field(default_factory=dict)
    passed: bool = False  # set only once the scenario's test passed as a whole


def summary_path() -> Path:
    """Where this session's summary goes."""
    given = os.environ.get("RELIABILITY_SUMMARY")
    if given:
        return Path(given)
    return Path(tempfile.gettempdir()) / "explainstream-reliability-summary.json"


def write(rows: list[Row], path: Path) -> None:
    """Merge ``rows`` into ``path`` (a re-run scenario replaces its old rows)."""
    old: list[dict[str, Any]] = []
    if path.exists():
        try:
            old = json.loads(path.read_text())["rows"]
        except (ValueError, KeyError):
            old = []
    fresh = [asdict(r) for r in rows]
    keys = {(r["scenario"], r["delivery"]) for r in fresh}
    merged = [r for r in old if (r["scenario"], r["delivery"]) not in keys] + fresh
    merged.sort(key=lambda r: (r["scenario"], r["delivery"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    doc = {
        "generated_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}",
        "rows": merged,
    }
    path.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n")


def render(doc: dict[str, Any]) -> str:
    """The Markdown table of a summary document."""
    lines = [
        "| scenario | delivery | requests | answered | missing | duplicates (bound) | "
        "what the consumer did |",
        "|---|---|---:|---:|---:|---:|---|",
    ]
    for r in doc["rows"]:
        lines.append(
            f"| {r['scenario']} | {r['delivery']} | {r['requests']} | {r['answered']} | "
            f"{r['missing']} | {r['duplicates']} ({_bound(r)}) | {r['observed']} |"
        )
    return "\n".join(lines)


def _bound(row: dict[str, Any]) -> str:
    faults = row["extra"].get("faults", 0)
    if not faults:
        return f"≤ {row['bound']}"
    return f"≤ {row['bound']} per fault window, {faults} window{'s' if faults > 1 else ''}"


def replace_table(readme: str, table: str) -> str:
    """``readme`` with the text between the markers replaced by ``table``."""
    head, sep, rest = readme.partition(BEGIN)
    _, sep2, tail = rest.partition(END)
    if not sep or not sep2:
        raise SystemExit(f"README has no {BEGIN!r} … {END!r} markers")
    return f"{head}{BEGIN}\n{table}\n{END}{tail}"


def main(argv: list[str] | None = None) -> int:
    """Print the table, or write it into the README."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("summary", type=Path)
    parser.add_argument("--readme", type=Path, nargs="+", help="files holding the markers")
    args = parser.parse_args(argv)
    table = render(json.loads(args.summary.read_text()))
    if args.readme:
        for path in args.readme:
            path.write_text(replace_table(path.read_text(), table))
    else:
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
