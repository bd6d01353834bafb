"""Dedicated dev brokers for the scenarios that fault the broker itself."""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from consumer.dev.devbroker import DevBroker, free_port_block


@contextlib.contextmanager
def dedicated_broker(purpose: str, **options: Any) -> Iterator[DevBroker]:
    """A broker of our own (``DevBroker`` options), stopped and deleted afterwards."""
    data_dir = Path(tempfile.mkdtemp(prefix=f"explainstream-{purpose}-"))
    brokers = int(options.get("brokers", 1))
    broker = DevBroker(data_dir, port=free_port_block(brokers), **options)
    try:
        broker.start(quiet=True, timeout_s=180)
        yield broker
    finally:
        for node in range(brokers):
            # A frozen node ignores SIGTERM: thaw first so stop() is clean.
            with contextlib.suppress(Exception):
                broker.thaw(node)
        broker.stop()
        shutil.rmtree(data_dir, ignore_errors=True)
