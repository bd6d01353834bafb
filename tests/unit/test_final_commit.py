"""The final commit on shutdown: a failure is logged for the operator, not swallowed."""

from __future__ import annotations

import logging
from collections.abc import Hashable, Iterable

import pytest

from consumer.config import Settings
from consumer.core.offsets import OffsetTracker
from consumer.runtime.service import ConsumerService


class _BrokenSink:
    async def commit(self, tracker: OffsetTracker, tps: Iterable[Hashable]) -> None:
        raise RuntimeError("coordinator unreachable")


async def test_a_failed_final_commit_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    svc = ConsumerService(Settings.from_env({}, engine="fake", prometheus_enabled=False))
    svc.sink = _BrokenSink()  # type: ignore[assignment]
    with caplog.at_level(logging.ERROR):
        await svc._final_commit()
    assert any(
        "final commit failed" in r.getMessage() and "coordinator unreachable" in r.getMessage()
        for r in caplog.records
    )
