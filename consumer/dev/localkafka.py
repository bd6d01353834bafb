"""One-command local runs (demo, benchmarks): a throwaway single-node broker and Settings on it."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from consumer.dev.devbroker import DevBroker, free_port_block

if TYPE_CHECKING:
    from consumer.config import Settings

__all__ = ["local_kafka", "local_run_settings"]


@contextlib.contextmanager
def local_kafka(purpose: str) -> Iterator[str | None]:
    """For one-command local runs (demo, benchmarks): ``None`` when KAFKA_BOOTSTRAP_SERVERS
    is set (use that cluster), else a single-node broker on free ports in a temporary data
    directory, yielding its bootstrap address; stopped and deleted on exit."""
    if "KAFKA_BOOTSTRAP_SERVERS" in os.environ:
        yield None
        return
    data_dir = Path(tempfile.mkdtemp(prefix=f"explainstream-{purpose}-"))
    broker = DevBroker(data_dir, port=free_port_block(1))
    try:
        print("starting a local Apache Kafka broker ...", file=sys.stderr)
        yield broker.start()
    finally:
        broker.stop()
        shutil.rmtree(data_dir, ignore_errors=True)


@contextlib.contextmanager
def local_run_settings(purpose: str, **overrides: Any) -> Iterator[Settings]:
    """Settings for a one-command local run (demo, benchmarks) on :func:`local_kafka`.

    HTTP and metrics listen on ephemeral loopback ports unless ``overrides`` say otherwise,
    and aiokafka's start-up noise (coordinator not yet elected) is silenced.
    """
    import logging

    from consumer.config import Settings

    logging.getLogger("aiokafka").setLevel(logging.CRITICAL)
    overrides.setdefault("http_port", 0)
    overrides.setdefault("metrics_port", 0)
    overrides.setdefault("http_host", "127.0.0.1")
    with local_kafka(purpose) as bootstrap:
        if bootstrap is not None:
            overrides.update(kafka_bootstrap_servers=bootstrap, kafka_partitions=1)
        yield Settings.from_env(**overrides)
