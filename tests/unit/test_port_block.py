"""Port blocks for local brokers stay out of the kernel's ephemeral range."""

from __future__ import annotations

import socket

from consumer.dev import devbroker
from consumer.dev.devbroker import free_port_block
from consumer.dev.ports import ephemeral_range


def test_port_block_and_controller_ports_lie_outside_the_ephemeral_range() -> None:
    low, high = ephemeral_range()
    for count in (1, 3):
        for _ in range(20):
            base = free_port_block(count)
            ports = [base + i for i in range(count)]
            ports += [p + devbroker._CONTROLLER_PORT_OFFSET for p in ports]
            assert all(not low <= p <= high for p in ports), (ports, low, high)
            assert all(p < 65536 for p in ports)


def test_port_block_skips_a_port_someone_holds() -> None:
    base = free_port_block(1)
    with socket.socket() as held:
        held.bind(("127.0.0.1", base))
        held.listen()
        assert all(free_port_block(1) != base for _ in range(50))
