"""A small asyncio TCP proxy that injects network faults between a client and a broker.

``cut()`` is a partition, not a reset: connections stay open but no byte moves in either
direction (new connections are accepted and stall too), as when a switch drops packets;
``restore()`` lets the held bytes flow again. ``latency_s`` delays every chunk each way.
The broker must advertise the proxy's address on the listener the client uses, or the
client would reach the broker directly after its first metadata request.
"""

from __future__ import annotations

import asyncio
import contextlib


class FaultProxy:
    """Listens on 127.0.0.1:``listen_port`` and forwards to ``target_port``."""

    def __init__(self, target_port: int, listen_port: int = 0, host: str = "127.0.0.1") -> None:
        self.host = host
        self.target_port = target_port
        self.listen_port = listen_port
        self.latency_s = 0.0
        self.connections = 0
        self._open = asyncio.Event()
        self._open.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: set[asyncio.StreamWriter] = set()

    async def start(self) -> int:
        """Start listening; returns the port."""
        self._server = await asyncio.start_server(self._accept, self.host, self.listen_port)
        self.listen_port = int(self._server.sockets[0].getsockname()[1])
        return self.listen_port

    async def stop(self) -> None:
        """Close the listener and every connection."""
        if self._server is not None:
            self._server.close()
        self._open.set()
        for writer in list(self._writers):
            writer.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), 5)

    def cut(self) -> None:
        """Stop moving bytes (both ways, all connections, new ones too)."""
        self._open.clear()

    def restore(self) -> None:
        """Move bytes again."""
        self._open.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        try:
            await self._open.wait()
            up_reader, up_writer = await asyncio.open_connection(self.host, self.target_port)
        except OSError:
            writer.close()
            return
        self._writers.update((writer, up_writer))
        pumps = [
            asyncio.create_task(self._pump(reader, up_writer)),
            asyncio.create_task(self._pump(up_reader, writer)),
        ]
        self._tasks.update(pumps)
        try:
            # One side closing ends the connection: close both.
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in pumps:
                task.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            self._tasks.difference_update(pumps)
            for w in (writer, up_writer):
                self._writers.discard(w)
                w.close()

    async def _pump(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await src.read(65536):
                await self._open.wait()
                if self.latency_s:
                    await asyncio.sleep(self.latency_s)
                await self._open.wait()
                dst.write(data)
                await dst.drain()
