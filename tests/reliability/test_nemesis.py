"""The seeded random nemesis (``tests/reliability/nemesis.py``) under both deliveries.

``NEMESIS_SEED`` (default 1) and ``NEMESIS_MINUTES`` (per delivery, default 1.2: about three
minutes for both in CI) choose the run; ``make nemesis SEED=… MINUTES=…`` sets them and
writes what each run did to ``NEMESIS_REPORT`` (JSON lines).
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from consumer.dev.devbroker import DevBroker
from consumer.dev.ports import free_port
from tests.reliability.brokers import dedicated_broker
from tests.reliability.conftest import ScenarioFactory, alo_bound
from tests.reliability.nemesis import Nemesis
from tests.reliability.proxy import FaultProxy

SEED = int(os.environ.get("NEMESIS_SEED", "1"))
MINUTES = float(os.environ.get("NEMESIS_MINUTES", "1.2"))


@pytest.fixture(scope="module")
def nemesis_broker() -> Iterator[tuple[DevBroker, int]]:
    """(broker, the port its proxied listener advertises)."""
    advertised = free_port()
    with dedicated_broker("nemesis", proxied=(free_port(), advertised)) as broker:
        yield broker, advertised


@pytest.fixture
async def nemesis_proxy(nemesis_broker: tuple[DevBroker, int]) -> AsyncIterator[FaultProxy]:
    broker, advertised = nemesis_broker
    assert broker.proxied is not None
    fp = FaultProxy(target_port=broker.proxied[0], listen_port=advertised)
    await fp.start()
    yield fp
    await fp.stop()


@pytest.mark.timeout(int(MINUTES * 60) + 600)
@pytest.mark.parametrize("delivery", ["at-least-once", "exactly-once"])
async def test_random_faults_under_steady_load(
    scenario: ScenarioFactory,
    nemesis_broker: tuple[DevBroker, int],
    nemesis_proxy: FaultProxy,
    delivery: str,
) -> None:
    broker, advertised = nemesis_broker
    sc = await scenario(
        f"nemesis seed {SEED}, {MINUTES:g} min: random faults under load",
        delivery,
        bootstrap=broker.bootstrap,
        fake_latency_ms=20,
    )
    nemesis = Nemesis(sc, broker, nemesis_proxy, advertised, SEED, MINUTES)
    did = await nemesis.run()
    await sc.history.wait_answered(timeout_s=300)
    bound = 0 if delivery == "exactly-once" else alo_bound(sc.settings)
    faults = ", ".join(f"{n} {kind}" for kind, n in did["faults_by_kind"].items())
    verdict = await sc.finish(
        bound,
        f"{did['faults_total']} faults survived ({faults}); {did['members_started']} members "
        "started",
        statuses=("OK", "FAILED"),
        **did,
    )
    assert did["faults_total"] > 0, "no fault applied: the run proves nothing"
    report = os.environ.get("NEMESIS_REPORT")
    if report:
        line = {
            **did,
            "delivery": delivery,
            "requests": verdict.requests,
            "answered": verdict.answered,
            "missing": len(verdict.missing),
            "duplicates": verdict.duplicates,
            "per_fault_max": max(verdict.per_fault, default=0),
            "bound_per_fault": bound,
            "statuses": dict(verdict.statuses),
        }
        _append(Path(report), line)


def _append(path: Path, line: dict[str, object]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(line) + "\n")
