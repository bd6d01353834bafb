"""Free loopback ports for servers started later (dev brokers, registries, benches).

Ports come from below the kernel's ephemeral range: a port inside it can be handed to any
outgoing connection between the check here and the server's own bind.
"""

from __future__ import annotations

import contextlib
import random
import socket
from pathlib import Path

__all__ = ["ephemeral_range", "free_base", "free_port"]


def ephemeral_range() -> tuple[int, int]:
    """The kernel's range for outgoing connections' local ports (Linux default if unknown)."""
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32768, 60999


def _bindable(port: int) -> bool:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_base(offsets: list[int]) -> int:
    """A base port such that every ``base + offset`` is free and outside the ephemeral range.

    A port from the kernel's ephemeral range can be handed to any outgoing connection (the
    nodes' own connections to each other included) between this check and the server's bind,
    which made a 3-node start fail now and then; ports below that range only ever go to
    explicit binds.
    """
    low, high = ephemeral_range()
    span = max(offsets) + 1
    floor, ceiling = (10000, low - span) if low - span > 10000 else (high + 1, 65536 - span)
    rng = random.SystemRandom()
    for _ in range(200):
        base = rng.randrange(floor, ceiling)
        if all(_bindable(base + offset) for offset in offsets):
            return base
    raise OSError("no free port found on 127.0.0.1")


def free_port() -> int:
    """One free loopback port outside the ephemeral range (for a server started later)."""
    return free_base([0])
