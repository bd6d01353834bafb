"""SIGTERM during start-up exits at once instead of waiting for the model load to end
(issue 22, item 4): nothing has been consumed then, so no drain is owed."""

from __future__ import annotations

import asyncio
import signal
import sys

from consumer.runtime.signals import STARTUP_SIGNAL_STATUS

# A consumer whose engine load blocks a thread for an hour, like llama.cpp loading a large
# model from a slow volume: start() cannot finish and cannot be cancelled.
_CHILD = """
import asyncio, sys, time
from consumer.config import Settings
from consumer.engines.fake import FakeEngine
from consumer.runtime.service import ConsumerService

class LoadingEngine(FakeEngine):
    async def start(self):
        print("loading", flush=True)
        await asyncio.to_thread(time.sleep, 3600)

settings = Settings.from_env({}, engine="fake", http_port=0, metrics_port=0)
service = ConsumerService(settings, engine=LoadingEngine(settings))
sys.exit(asyncio.run(service.run_until_signal()))
"""


async def test_sigterm_while_the_model_loads_exits_with_143_without_waiting() -> None:
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-c", _CHILD, stdout=asyncio.subprocess.PIPE
    )
    assert child.stdout is not None
    try:
        assert await asyncio.wait_for(child.stdout.readline(), 60) == b"loading\n"
        child.send_signal(signal.SIGTERM)
        # The load would take an hour; the exit is awaited, with a bound far below that.
        assert await asyncio.wait_for(child.wait(), 30) == STARTUP_SIGNAL_STATUS == 143
    finally:
        if child.returncode is None:
            child.kill()
            await child.wait()
