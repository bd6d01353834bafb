"""The consumer as a real process (``explainstream consume``), driven by signals."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

_HTTP = re.compile(r"HTTP on http://[^:]+:(\d+)")


def consumer_env(**values: Any) -> dict[str, str]:
    """The environment of a consumer process: ours, minus inherited Kafka settings, plus
    ``values`` (upper-cased names; None drops the variable)."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("KAFKA_", "FAKE_", "DELIVERY", "ENGINE", "MAX_"))
    }
    defaults: dict[str, Any] = {
        "ENGINE": "fake",
        "HTTP_PORT": 0,
        "HTTP_HOST": "127.0.0.1",
        "METRICS_PORT": 0,
        "PROMETHEUS_ENABLED": "false",
        "COMMIT_INTERVAL_MS": 100,
        # A dead or frozen member is noticed after the session timeout: keep it short.
        "KAFKA_SESSION_TIMEOUT_MS": 6000,
        "LOG_LEVEL": "INFO",
    }
    for key, value in {**defaults, **{k.upper(): v for k, v in values.items()}}.items():
        if value is None:
            env.pop(key, None)
        else:
            env[key] = str(value)
    return env


class ConsumerProcess:
    """One ``explainstream consume`` subprocess; stderr goes to a file we can read."""

    def __init__(self, env: dict[str, str], name: str = "consumer") -> None:
        self.env = {**env, "CONSUMER_ID": env.get("CONSUMER_ID", name)}
        self.name = name
        fd, path = tempfile.mkstemp(prefix=f"reliability-{name}-", suffix=".log")
        os.close(fd)
        self.log_path = Path(path)
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    def start(self) -> ConsumerProcess:
        """Launch the process (returns at once)."""
        with self.log_path.open("ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "consumer.cli", "consume"],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        self.started_at = time.monotonic()
        return self

    @property
    def pid(self) -> int:
        """The process id (started processes only)."""
        assert self.proc is not None
        return self.proc.pid

    def log(self) -> str:
        """Everything the process wrote so far."""
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        """True while the process runs."""
        return self.proc is not None and self.proc.poll() is None

    async def http_port(self, timeout_s: float = 60) -> int:
        """The ephemeral HTTP port it logged."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            found = _HTTP.search(self.log())
            if found:
                return int(found.group(1))
            if not self.alive():
                raise AssertionError(f"{self.name} exited early:\n{self.log()[-3000:]}")
            await asyncio.sleep(0.1)
        raise AssertionError(f"{self.name} never logged its HTTP port:\n{self.log()[-3000:]}")

    async def get(self, path: str, token: str | None = None) -> tuple[int, str]:
        """GET (or POST for /admin/warmup and /admin/reload) on its HTTP port."""
        port = await self.http_port()
        return await asyncio.to_thread(_http, port, path, token, None)

    async def post(self, path: str, body: str | None, token: str | None = None) -> tuple[int, str]:
        """POST ``body`` on its HTTP port."""
        port = await self.http_port()
        return await asyncio.to_thread(_http, port, path, token, body)

    async def wait_ready(self, timeout_s: float = 90) -> float:
        """Wait for GET /ready = 200 (model loaded, partitions assigned); seconds taken."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if not self.alive():
                raise AssertionError(f"{self.name} exited:\n{self.log()[-3000:]}")
            try:
                code, _ = await self.get("/ready")
            except OSError:
                code = 0
            if code == 200:
                return time.monotonic() - self.started_at
            await asyncio.sleep(0.2)
        raise AssertionError(f"{self.name} not ready in {timeout_s}s:\n{self.log()[-3000:]}")

    def signal(self, sig: signal.Signals) -> None:
        """Send ``sig`` to the process."""
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def kill(self) -> None:
        """SIGKILL and reap."""
        if self.alive():
            self.signal(signal.SIGKILL)
        if self.proc is not None:
            await asyncio.to_thread(self.proc.wait, 30)

    async def terminate(self, timeout_s: float = 60) -> int:
        """SIGTERM, wait for the graceful exit; returns the exit code."""
        assert self.proc is not None
        if self.alive():
            self.signal(signal.SIGTERM)
        try:
            return await asyncio.to_thread(self.proc.wait, timeout_s)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise AssertionError(
                f"{self.name} ignored SIGTERM for {timeout_s}s:\n{self.log()[-3000:]}"
            ) from None

    async def close(self) -> None:
        """Make sure the process is gone (SIGCONT first, in case it was frozen)."""
        if self.alive():
            self.signal(signal.SIGCONT)
            await self.kill()


def _http(port: int, path: str, token: str | None, body: str | None) -> tuple[int, str]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    data = body.encode() if body is not None else None
    method = "POST" if data is not None or path.startswith("/admin/w") else "GET"
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}{path}", data=data, headers=headers, method=method
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()
