"""Running the consumer until a signal: the process-level lifecycle of ``consume``.

SIGTERM or SIGINT after start-up: stop intake, drain, commit, leave (ConsumerService.stop).
During start-up (topic creation, model load, warm-up) nothing has been taken from Kafka yet,
so nothing is owed a drain, and a model load inside llama.cpp cannot be interrupted: the
process exits at once with status 143 instead of making the kubelet wait out the load (and
then SIGKILL it at the end of the grace period). A sick exit ends the run with status 3.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from consumer.runtime.sick import SICK_EXIT_STATUS

if TYPE_CHECKING:
    from consumer.runtime.service import ConsumerService

__all__ = ["STARTUP_SIGNAL_STATUS", "run_until_signal"]

log = logging.getLogger("explainstream.consumer")

STARTUP_SIGNAL_STATUS = 128 + signal.SIGTERM
"""Exit status after a signal during start-up (as a shell reports a SIGTERM)."""

_SIGNALS = (signal.SIGTERM, signal.SIGINT)


async def run_until_signal(
    service: ConsumerService, prepare: Callable[[], Awaitable[object]] | None = None
) -> int:
    """``prepare()`` (e.g. create topics), start ``service``, run until a signal or a sick
    exit, stop it; returns the exit status (0, or 3 after a sick exit)."""
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()

    def on_signal() -> None:
        if not service.joined():
            log.warning("signal during start-up: exiting now (nothing consumed, no drain owed)")
            logging.shutdown()
            os._exit(STARTUP_SIGNAL_STATUS)
        stop.set()

    for sig in _SIGNALS:
        loop.add_signal_handler(sig, on_signal)
    try:
        if prepare is not None:
            await prepare()
        await service.start()
        signalled = asyncio.ensure_future(stop.wait())
        stopped = asyncio.ensure_future(service.wait_stopped())
        try:
            await asyncio.wait([signalled, stopped], return_when=asyncio.FIRST_COMPLETED)
            if stop.is_set():
                log.info("signal received: draining")
        finally:
            signalled.cancel()
            stopped.cancel()
            await service.stop()
    finally:
        for sig in _SIGNALS:
            loop.remove_signal_handler(sig)
    return SICK_EXIT_STATUS if service.sick_reason else 0
