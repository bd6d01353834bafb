"""A real Apicurio Registry for the session, and a gate that can cut the way to it."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import urllib.request
from collections.abc import Iterator
from pathlib import Path

from consumer.dev.registry import ApicurioRegistry


def start_registry(log_dir: Path) -> Iterator[str]:
    """Start Apicurio (in-memory) and fill it with other teams' schemas first, as a shared
    registry would be: our subjects then get ids other than the embedded 1 and 2."""
    registry = ApicurioRegistry(log_dir / "apicurio.log")
    url = registry.start()
    try:
        for i in range(3):
            schema = {
                "type": "record",
                "name": f"Other{i}",
                "fields": [{"name": "x", "type": "int"}],
            }
            body = json.dumps({"schema": json.dumps(schema)}).encode()
            request = urllib.request.Request(
                f"{url}/subjects/other-{i}-value/versions",
                data=body,
                method="POST",
                headers={"Content-Type": "application/vnd.schemaregistry.v1+json"},
            )
            with urllib.request.urlopen(request, timeout=10) as resp:
                assert resp.status == 200
        yield url
    finally:
        registry.stop()


def subject_id(url: str, subject: str) -> int:
    """The id the registry holds for the latest version of ``subject``."""
    with urllib.request.urlopen(f"{url}/subjects/{subject}/versions/latest", timeout=10) as resp:
        return int(json.loads(resp.read())["id"])


class RegistryGate:
    """A TCP front for the registry: closed, it accepts and hangs up at once (the registry
    is unreachable); open, it forwards to the registry. Counts refused connections."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.open = False
        self.refused = 0
        self.refused_event = asyncio.Event()
        self._server: asyncio.base_events.Server | None = None
        with contextlib.closing(socket.socket()) as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self.open:
            self.refused += 1
            self.refused_event.set()
            writer.close()
            return
        up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(reader, up_writer), pipe(up_reader, writer))
