"""A registry that truncates, garbles or drops its answers is a transient fault (real HTTP
server on loopback): valid records wait for it instead of going to the DLQ or killing the
intake, and ids the registry does not know are remembered in a bounded cache."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable, Iterator

import pytest

from schemas.errors import RegistryError
from schemas.registry import ConfluentSchemaRegistry

SCHEMA = b'{"schema": "{\\"type\\": \\"string\\"}"}'


@pytest.fixture
def raw_server() -> Iterator[Callable[[Callable[[socket.socket], None]], str]]:
    """``serve(answer)`` -> URL of a one-thread TCP server that runs ``answer(conn)`` for
    each connection after reading the request head."""
    sockets: list[socket.socket] = []
    threads: list[threading.Thread] = []

    def serve(answer: Callable[[socket.socket], None]) -> str:
        listener = socket.create_server(("127.0.0.1", 0))
        listener.settimeout(10)
        sockets.append(listener)

        def loop() -> None:
            while True:
                try:
                    conn, _ = listener.accept()
                except OSError:
                    return
                with conn:
                    conn.recv(65536)
                    answer(conn)

        thread = threading.Thread(target=loop, daemon=True)
        thread.start()
        threads.append(thread)
        return f"http://127.0.0.1:{listener.getsockname()[1]}"

    yield serve
    for s in sockets:
        s.close()
    for t in threads:
        t.join(5)


def truncated(conn: socket.socket) -> None:
    conn.sendall(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 400\r\n\r\n"
        + SCHEMA[:20]
    )


def short_body(conn: socket.socket) -> None:
    body = SCHEMA[:20]  # the length matches: a 200 whose JSON was cut by a proxy
    conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


def garbled(conn: socket.socket) -> None:
    conn.sendall(b"HTTTP/9 what\r\n\r\n")


def dropped(conn: socket.socket) -> None:
    pass  # closes without a byte


def not_found(conn: socket.socket) -> None:
    body = b'{"error_code": 40403, "message": "Schema not found"}'
    conn.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))


@pytest.mark.parametrize("answer", [truncated, short_body, garbled, dropped])
def test_a_broken_answer_is_retriable_and_not_remembered(raw_server, answer) -> None:
    registry = ConfluentSchemaRegistry(raw_server(answer), timeout_s=5)
    with pytest.raises(RegistryError) as info:
        registry.schema_for(7)
    assert info.value.retriable, info.value
    assert 7 not in registry._missing  # the next record asks again


def test_unknown_ids_are_remembered_in_a_bounded_cache(raw_server) -> None:
    registry = ConfluentSchemaRegistry(raw_server(not_found), timeout_s=5)
    for schema_id in range(1100):
        with pytest.raises(RegistryError) as info:
            registry.schema_for(schema_id)
        assert not info.value.retriable
    assert len(registry._missing) <= 1024
    assert 1099 in registry._missing and 0 not in registry._missing  # oldest evicted
