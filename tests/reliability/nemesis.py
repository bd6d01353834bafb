"""A seeded random nemesis: the suite's faults at random times under steady load.

The fixed scenarios prove what was scripted; the nemesis looks for what nobody scripted, in
the manner of Jepsen. One :class:`Nemesis` drives a group of consumer processes on a broker
of its own (members alternate between the direct listener and one behind a fault-injecting
proxy) while a steady load of all four tiers is produced. Until its time is up it picks,
from a ``random.Random(seed)``, one fault after another: SIGKILL, SIGSTOP past the session
timeout, SIGTERM, a member joining or leaving, the broker frozen or killed and restarted, the
proxied members' network cut, latency on it, or a member whose engine fails half its calls.
Each fault is held for a random time, healed, and given a moment to settle. Then everything
is healed, one healthy member finishes the work, and the scenario's strict checker runs.

Faults come one at a time (a fault during another fault's healing is not tried); the
3-broker leader kill of scenario 4 is left out (it needs a cluster of its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import signal
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from consumer.config import TIERS
from consumer.dev.devbroker import DevBroker
from tests.integration.helpers import make_request
from tests.reliability.conftest import Scenario
from tests.reliability.procs import ConsumerProcess
from tests.reliability.proxy import FaultProxy

__all__ = ["FAULTS", "Nemesis"]

FAULTS = (
    "kill",
    "stop",
    "term",
    "join",
    "leave",
    "broker-freeze",
    "broker-restart",
    "cut",
    "latency",
    "engine-failing",
)
SESSION_TIMEOUT_S = 6.0
MAX_MEMBERS = 3


@dataclass
class Nemesis:
    """Faults at random under load, for ``minutes``; see the module docstring."""

    sc: Scenario
    broker: DevBroker
    proxy: FaultProxy
    advertised: int
    seed: int
    minutes: float
    rng: random.Random = field(init=False)
    members: list[ConsumerProcess] = field(default_factory=list)
    survived: Counter[str] = field(default_factory=Counter)
    produced: int = 0
    _made: int = 0
    _load_open: asyncio.Event = field(default_factory=asyncio.Event)
    _load_idle: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self._load_open.set()

    # -- members --------------------------------------------------------------------------

    def _start(self, **env: Any) -> ConsumerProcess:
        self._made += 1
        name = f"m{self._made}"
        proxied = self._made % 2 == 0
        boot = f"127.0.0.1:{self.advertised}" if proxied else self.broker.bootstrap
        proc = self.sc.consumer(name, KAFKA_BOOTSTRAP_SERVERS=boot, CONSUMER_ID=name, **env)
        self.members.append(proc)
        return proc

    def _live(self) -> list[ConsumerProcess]:
        return [m for m in self.members if m.alive()]

    def _settled(self) -> list[ConsumerProcess]:
        """Live members past start-up (a SIGTERM while Python still imports ends the
        process by the signal, before the service's handler exists)."""
        return [m for m in self._live() if "started: engine=" in m.log()]

    async def _wait_started(self, proc: ConsumerProcess, timeout_s: float = 60) -> None:
        deadline = time.monotonic() + timeout_s
        while "started: engine=" not in proc.log():
            assert proc.alive(), proc.log()[-3000:]
            assert time.monotonic() < deadline, f"{proc.name} never started"
            await asyncio.sleep(0.1)

    # -- load -----------------------------------------------------------------------------

    async def _load(self, stop: asyncio.Event) -> None:
        """About 40 requests a second over the four tiers, in batches of 8. Paused while
        the broker is the fault: a send that fails on a dead broker may or may not have
        been stored, and the history records only what was acknowledged."""
        topics = self.sc.settings.request_topics()
        while not stop.is_set():
            self._load_idle.set()
            await self._load_open.wait()
            self._load_idle.clear()
            tier = self.rng.choice(TIERS)
            batch = [make_request(100_000 + self.produced + i) for i in range(8)]
            await self.sc.history.produce_requests(topics[tier], batch)
            self.produced += len(batch)
            await asyncio.sleep(0.2)
        self._load_idle.set()

    async def _pause_load(self) -> None:
        self._load_open.clear()
        await self._load_idle.wait()

    # -- faults ---------------------------------------------------------------------------

    async def _mark(self) -> None:
        await self.sc.history.mark_fault(self.sc.settings.kafka_group_id)

    async def _hold(self, low: float, high: float) -> None:
        await asyncio.sleep(self.rng.uniform(low, high))

    async def _fault(self, kind: str) -> bool:
        """Apply, hold and heal one fault; False when it does not apply right now."""
        live = self._live()
        settled = self._settled()
        if kind in ("kill", "stop") and not live:
            return False
        if kind in ("term", "leave") and (not settled or (kind == "leave" and len(live) < 2)):
            return False
        if kind in ("join", "engine-failing") and len(live) >= MAX_MEMBERS:
            return False
        if kind == "kill":
            await self.rng.choice(live).kill()
            await self._mark()
        elif kind == "stop":
            victim = self.rng.choice(live)
            victim.signal(signal.SIGSTOP)
            await self._mark()
            await self._hold(SESSION_TIMEOUT_S + 1, SESSION_TIMEOUT_S + 4)
            victim.signal(signal.SIGCONT)
        elif kind in ("term", "leave"):
            code = await self.rng.choice(settled).terminate()
            assert code == 0, f"a member exited {code} on SIGTERM"
        elif kind == "join":
            self._start()
        elif kind in ("broker-freeze", "broker-restart"):
            await self._pause_load()
            await self._mark()  # nothing can be read or committed while the broker is down
            try:
                if kind == "broker-freeze":
                    self.broker.freeze()
                    await self._hold(2, SESSION_TIMEOUT_S + 2)
                    self.broker.thaw()
                else:
                    await asyncio.to_thread(self.broker.kill_node, 0)
                    await asyncio.to_thread(self.broker.restart_node, 0)
            finally:
                self._load_open.set()
        elif kind == "cut":
            self.proxy.cut()
            await self._mark()
            await self._hold(2, 2 * SESSION_TIMEOUT_S)
            self.proxy.restore()
        elif kind == "latency":
            self.proxy.latency_s = 0.2
            await self._hold(3, 8)
            self.proxy.latency_s = 0.0
        elif kind == "engine-failing":
            failing = self._start(FAKE_FAILURE_RATE=0.5, RETRY_ATTEMPTS=2, RETRY_BACKOFF_MS=10)
            await self._wait_started(failing)
            await self._hold(4, 10)
            code = await failing.terminate()
            assert code == 0, f"the failing member exited {code} on SIGTERM"
        return True

    async def run(self) -> dict[str, Any]:
        """The whole run; returns what it did (faults survived by kind, requests)."""
        stop = asyncio.Event()
        self._start()
        loader = asyncio.create_task(self._load(stop))
        started = time.monotonic()
        try:
            while time.monotonic() - started < self.minutes * 60:
                if not self._live():
                    self._start()
                kind = self.rng.choice(FAULTS)
                if await self._fault(kind):
                    self.survived[kind] += 1
                await self._hold(1, 4)  # settle
                assert not loader.done(), "the load stopped"
        finally:
            stop.set()
            self._load_open.set()
            self.proxy.restore()
            self.proxy.latency_s = 0.0
            with contextlib.suppress(Exception):
                self.broker.thaw()
            for m in self._live():
                m.signal(signal.SIGCONT)
            await loader
        if not self._live():
            self._start()
        return {
            "seed": self.seed,
            "minutes": self.minutes,
            "faults_by_kind": dict(sorted(self.survived.items())),
            "faults_total": sum(self.survived.values()),
            "members_started": self._made,
            "requests_produced": self.produced,
        }
