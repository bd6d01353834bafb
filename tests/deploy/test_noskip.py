"""``make test`` fails a run with a skipped test (tests/deploy/noskip.py), naming the cause."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _pytest(tmp_path: Path, body: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "test_sample.py").write_text(body)
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-q",
            "-p",
            "tests.deploy.noskip",
            "-p",
            "no:cacheprovider",
            "--rootdir",
            str(tmp_path),
            str(tmp_path / "test_sample.py"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_a_skip_fails_the_run_with_a_line_saying_so(tmp_path: Path) -> None:
    body = "import pytest\n\ndef test_a():\n    pytest.skip('promtool not installed')\n"
    result = _pytest(tmp_path, body)
    assert result.returncode == 1, result.stdout
    assert "1 test(s) skipped; every test must run here" in result.stdout


def test_a_run_without_skips_stays_green(tmp_path: Path) -> None:
    result = _pytest(tmp_path, "def test_a():\n    assert True\n")
    assert result.returncode == 0, result.stdout
