"""A bench consumer: ``explainstream consume`` in a subprocess, and the environment it gets."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from consumer.dev.ports import free_port

__all__ = ["ConsumerProcess", "consumer_env"]


class ConsumerProcess:
    """One ``explainstream consume`` in a subprocess, ready when its ``/ready`` answers 200."""

    def __init__(self, env: Mapping[str, str], name: str = "consumer") -> None:
        self.name = name
        self.http_port = free_port()
        self.env = {
            **os.environ,
            "HTTP_HOST": "127.0.0.1",
            "HTTP_PORT": str(self.http_port),
            "METRICS_PORT": "0",
            "PROMETHEUS_ENABLED": "false",
            "LOG_LEVEL": "WARNING",
            "ADMIN_TOKEN": uuid.uuid4().hex,
            **env,
        }
        self._log = tempfile.NamedTemporaryFile(  # noqa: SIM115 - lives as long as the process
            prefix=f"explainstream-bench-{name}-", suffix=".log", delete=False
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def start(self) -> None:
        """Spawn the process (returns at once)."""
        self.started_at = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "consumer.cli", "consume"],
            env=self.env,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )

    def ready_now(self) -> bool:
        """Whether ``/ready`` answers 200 right now."""
        url = f"http://127.0.0.1:{self.http_port}/ready"
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                return bool(resp.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def admin_stats(self) -> dict[str, Any]:
        """``GET /admin/stats`` (status + engine counters); empty when it does not answer."""
        req = urllib.request.Request(
            f"http://127.0.0.1:{self.http_port}/admin/stats",
            headers={"Authorization": f"Bearer {self.env['ADMIN_TOKEN']}"},
        )
        try:
            with urllib.request.urlopen(req, timeout=5) as resp:
                return dict(json.loads(resp.read()))
        except (urllib.error.URLError, OSError, ValueError):
            return {}

    async def wait_ready(self, timeout_s: float = 180.0) -> float:
        """Seconds from spawn until ``/ready`` answered 200 (model loaded, partitions held)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited {self.proc.returncode}: {self.log_tail()}")
            if await asyncio.to_thread(self.ready_now):
                return time.perf_counter() - self.started_at
            await asyncio.sleep(0.2)
        raise TimeoutError(f"{self.name} not ready after {timeout_s:.0f} s: {self.log_tail()}")

    def rss_bytes(self) -> int | None:
        """Resident set size now (Linux /proc), None when unknown."""
        if self.proc is None:
            return None
        try:
            for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    # Under 1 MiB the process is still being exec'd: not a measurement yet.
                    rss = int(line.split()[1]) * 1024
                    return rss if rss >= 2**20 else None
        except OSError:
            return None
        return None

    async def stop(self, timeout_s: float = 60.0) -> int | None:
        """SIGTERM (graceful drain), then SIGKILL after ``timeout_s``; returns the exit code."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return await asyncio.to_thread(self.proc.wait, timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return await asyncio.to_thread(self.proc.wait, 10)

    def log_tail(self, n: int = 1500) -> str:
        """The end of the process's output."""
        try:
            return Path(self._log.name).read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def cleanup(self) -> None:
        """Kill if still running and remove the log file."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()
        with contextlib.suppress(OSError):
            os.unlink(self._log.name)


def consumer_env(
    bootstrap: str, prefix: str, *, group: str | None = None, **values: Any
) -> dict[str, str]:
    """Environment of a bench consumer: broker, prefix, group plus upper-cased ``values``."""
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
        "KAFKA_TOPIC_PREFIX": prefix,
        "KAFKA_GROUP_ID": group or f"{prefix}-group",
    }
    env.update({k.upper(): str(v) for k, v in values.items()})
    return env
