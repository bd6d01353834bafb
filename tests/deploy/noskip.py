"""pytest plugin for ``make test``: a skipped test fails the run, naming what it lacked.

``make test`` sets up every tool the suite needs; a skip there means a set-up step did not
work on this machine, which must show as a failure rather than a quietly shorter run.
"""

from __future__ import annotations

import pytest


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Turn a green run with skips into a failure."""
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    skipped = reporter.stats.get("skipped", []) if reporter is not None else []
    if skipped and exitstatus == pytest.ExitCode.OK:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Say why the run failed."""
    skipped = terminalreporter.stats.get("skipped", [])
    if skipped:
        terminalreporter.write_line(
            f"make test: {len(skipped)} test(s) skipped; every test must run here "
            "(see the SKIPPED lines above for the missing tool)",
            red=True,
        )
