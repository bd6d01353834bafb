"""Fixtures of the reliability suite: a scenario = topics + a history + consumer processes.

Every test here carries the ``reliability`` marker (and ``kafka``); rows of the JSON
summary are collected over the session and written at its end (see ``summary.py``).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from consumer.config import Settings
from producer_sdk.connection import KafkaConnection
from tests.integration.helpers import make_request
from tests.reliability.history import History, Verdict
from tests.reliability.procs import ConsumerProcess, consumer_env
from tests.reliability.summary import Row, summary_path, write

_HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.fspath)).parents:
            item.add_marker(pytest.mark.reliability)
            item.add_marker(pytest.mark.kafka)


_OUTCOME = pytest.StashKey[bool]()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Any:
    report = yield
    if report.when == "call":
        item.stash[_OUTCOME] = report.passed
    return report


@pytest.fixture(scope="session")
def summary_rows() -> Iterator[list[Row]]:
    """Rows of scenarios that passed; written as JSON when the session ends."""
    rows: list[Row] = []
    yield rows
    if rows:
        write(rows, summary_path())


@dataclass
class Scenario:
    """One scenario run: its topics, its history, the consumers it started."""

    name: str
    delivery: str
    settings: Settings
    history: History
    env: dict[str, Any]
    rows: list[Row]
    procs: list[ConsumerProcess] = field(default_factory=list)

    @property
    def topic(self) -> str:
        """The request topic the scenario loads (normal tier)."""
        return self.settings.request_topics()["normal"]

    async def load(self, count: int, topic: str | None = None, **fields: Any) -> list[str]:
        """Publish ``count`` valid requests; returns their ids."""
        requests = [make_request(i, **fields) for i in range(count)]
        await self.history.produce_requests(topic or self.topic, requests)
        return [r.request_id for r in requests]

    def consumer(self, name: str, *, start: bool = True, **env: Any) -> ConsumerProcess:
        """A consumer process on this scenario's topics (``env`` overrides variables)."""
        proc = ConsumerProcess(consumer_env(**{**self.env, **env}), name=name)
        self.procs.append(proc)
        return proc.start() if start else proc

    async def finish(
        self,
        bound: int,
        observed: str | Callable[[Verdict], str],
        *,
        statuses: Iterable[str] = ("OK",),
        **extra: Any,
    ) -> Verdict:
        """Stop every consumer still running, check the history, assert the guarantee, and
        keep the row for the summary (written only if the whole test passes).

        The guarantee: every input has an output, repeats within ``bound`` per fault
        window (in total without a fault), every valid request answered with one of
        ``statuses`` and none dead-lettered, no phantom. ``observed`` may be built from
        the verdict, so that its words are measured too."""
        for proc in self.procs:
            if proc.alive():
                await proc.terminate()
        verdict = await self.history.check()
        text = observed(verdict) if callable(observed) else observed
        extra = {
            "statuses": dict(verdict.statuses),
            "dead_lettered": verdict.dead_lettered,
            "aborted_hidden": verdict.aborted_hidden,
            "duplicates_below_commit": verdict.duplicates_below_commit,
            "faults": len(self.history.faults),
            "identical_copies": verdict.identical_copies,
            "per_fault": verdict.per_fault,
            "valid_statuses": dict(verdict.valid_statuses),
            **extra,
        }
        self.rows.append(
            Row(
                scenario=self.name,
                delivery=self.delivery,
                requests=verdict.requests,
                answered=verdict.answered,
                missing=len(verdict.missing),
                duplicates=verdict.duplicates,
                bound=bound,
                observed=text,
                extra=extra,
            )
        )
        problems = verdict.problems(bound, frozenset(statuses))
        if self.history.below_commit:
            sample = sorted(self.history.below_commit.items())[:5]
            problems.append(f"faults at committed {self.history.faults}; e.g. {sample}")
        assert not problems, f"{self.name} [{self.delivery}]: " + "; ".join(problems)
        return verdict


ScenarioFactory = Callable[..., Awaitable[Scenario]]


@pytest.fixture
async def scenario(
    kafka_bootstrap: str, summary_rows: list[Row], request: pytest.FixtureRequest
) -> AsyncIterator[ScenarioFactory]:
    """Factory: ``await scenario(name, delivery, bootstrap=..., **settings)``; topics are
    created with 3 partitions; every consumer started is gone after the test, and its
    rows reach the summary only if the test passed (its assertions after ``finish`` too)."""
    made: list[Scenario] = []
    pending: list[Row] = []

    async def make(
        name: str,
        delivery: str = "at-least-once",
        *,
        bootstrap: str | None = None,
        conn: KafkaConnection | None = None,
        consumer_bootstrap: str | None = None,
        **overrides: Any,
    ) -> Scenario:
        from consumer.kafka.topics import ensure_service_topics

        prefix = f"r{uuid.uuid4().hex[:10]}"
        boot = bootstrap or kafka_bootstrap
        values: dict[str, Any] = {
            "kafka_bootstrap_servers": boot,
            "kafka_topic_prefix": prefix,
            "kafka_group_id": f"{prefix}-group",
            "kafka_partitions": 3,
            "engine": "fake",
            "delivery": delivery,
            "fake_latency_ms": 20,
            "max_concurrent_requests": 4,
            "max_queue_size": 64,
            "max_uncommitted_per_partition": 64,
        }
        values.update(overrides)
        settings = Settings.from_env({}, **values)
        await ensure_service_topics(settings)
        env = {k.upper(): v for k, v in values.items()}
        if consumer_bootstrap:
            env["KAFKA_BOOTSTRAP_SERVERS"] = consumer_bootstrap
        history = History(
            conn or KafkaConnection(bootstrap_servers=boot),
            settings.results_topic,
            settings.dlq_topic,
        )
        sc = Scenario(name, delivery, settings, history, env, pending)
        made.append(sc)
        return sc

    yield make
    for sc in made:
        for proc in sc.procs:
            await proc.close()
    if request.node.stash.get(_OUTCOME, False):
        summary_rows.extend(replace(row, passed=True) for row in pending)


def alo_bound(settings: Settings) -> int:
    """At-least-once duplicate bound per fault: at most what one consumer held
    uncommitted: MAX_UNCOMMITTED_PER_PARTITION per partition plus its buffers and slots."""
    return (
        settings.kafka_partitions * settings.max_uncommitted_per_partition
        + settings.max_queue_size
        + settings.max_concurrent_requests
    )
