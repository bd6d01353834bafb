"""Where a profiled run's CPU time went, by package and by function (for ``bench pipeline``),
and the profiled service drain itself.

C calls (``isinstance``, ``len``, pydantic-core validation...) are charged to the Python
function that called them, so "the codec" includes the built-ins it spends its time in;
socket waits are kept apart.
"""

from __future__ import annotations

import asyncio
import cProfile
import pstats
import threading
import time
from collections.abc import Callable, Coroutine
from typing import Any

from consumer.dev.bench import kit

__all__ = ["Side", "category", "first_ready", "profile_side", "summarize"]

#: A bench side: (bootstrap prefix, group id, ready, stop) -> runs until ``stop`` is set.
Side = Callable[[str, str, asyncio.Event, asyncio.Event], Coroutine[Any, Any, None]]


#: Which package a profiled function belongs to, by path fragment (first match wins).
CATEGORIES: tuple[tuple[str, str], ...] = (
    ("aiokafka", "aiokafka (client, protocol, records)"),
    ("fastavro", "fastavro (Avro encode/decode)"),
    ("schemas/", "schemas (codec, schema guard, models)"),
    ("pydantic", "pydantic (models)"),
    ("prometheus_client", "prometheus_client (metrics)"),
    ("consumer/runtime", "consumer.runtime (service loops)"),
    ("consumer/core", "consumer.core (scheduler, offsets, breaker)"),
    ("consumer/engines", "consumer.engines (fake engine, prompts)"),
    ("consumer/kafka", "consumer.kafka (intake, sinks, commits)"),
    ("consumer/ops", "consumer.ops (metrics, http)"),
    ("asyncio", "asyncio (event loop, tasks)"),
    ("selectors", "socket IO (epoll, send, recv)"),
    ("epoll", "socket IO (epoll, send, recv)"),
    ("_socket", "socket IO (epoll, send, recv)"),
    ("/lib/python3", "stdlib (logging, uuid, datetime, enum...)"),
    ("<built-in", "C calls from C"),
    ("<method", "C calls from C"),
)

_PROJECT = ("consumer/", "schemas/", "producer_sdk/")


def category(where: str) -> str:
    """The package label of ``path:function``."""
    return next((g for frag, g in CATEGORIES if frag in where), "other Python")


def _short(path: str) -> str:
    if "site-packages/" in path:
        return path.split("site-packages/", 1)[1]
    for marker in _PROJECT:
        i = path.rfind("/" + marker)
        if i >= 0:
            return path[i + 1 :]
    if "/lib/python3" in path:
        return path.split("/lib/python3", 1)[1].split("/", 1)[-1]
    return path


def summarize(profiler: cProfile.Profile, wall_s: float, top: int = 15) -> dict[str, Any]:
    """CPU seconds, busy share of ``wall_s``, share by package and the top functions."""
    raw: dict[Any, Any] = pstats.Stats(profiler).stats  # type: ignore[attr-defined]
    total = sum(v[2] for v in raw.values()) or 1.0
    groups: dict[str, float] = {}
    rows = []
    for (path, line, func), (_cc, ncalls, tottime, cumtime, callers) in raw.items():
        rows.append((tottime, ncalls, cumtime, f"{_short(path)}:{line}({func})"))
        if path == "~" and "epoll" not in func and "socket" not in func and callers:
            for (cpath, _l, cfunc), cstats in callers.items():
                label = category(f"{cpath}:{cfunc}")
                groups[label] = groups.get(label, 0.0) + cstats[2]
            continue
        label = category(f"{path}:{func}")
        groups[label] = groups.get(label, 0.0) + tottime
    rows.sort(reverse=True)
    return {
        "profiled_cpu_s": total,
        "wall_s": wall_s,
        # Well under 1: the service thread waited (stalls), it was not short of CPU.
        "cpu_over_wall": total / wall_s if wall_s else float("nan"),
        "share_by_package": {
            k: round(v / total, 4) for k, v in sorted(groups.items(), key=lambda kv: -kv[1])
        },
        "top_functions": [
            {"function": name, "tottime_s": round(t, 4), "calls": c, "cumtime_s": round(cum, 4)}
            for t, c, cum, name in rows[:top]
        ],
    }


async def first_ready(ready: asyncio.Event, task: asyncio.Task[None]) -> None:
    """Wait until a side set ``ready``; raise if its task ended first."""
    waiter = asyncio.create_task(ready.wait())
    done, _ = await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
    if task in done:
        waiter.cancel()
        task.result()
        raise RuntimeError("side stopped before it was ready")


def profile_side(bootstrap: str, service: Side, n: int, top: int = 15) -> dict[str, Any]:
    """Drain a backlog through the service under cProfile; collect results on another thread."""
    prefix = kit.prefix("prof")
    items = [kit.request_bytes(i, tag=prefix) for i in range(n)]

    async def setup() -> None:
        await kit.ensure(bootstrap, prefix, partitions=1)
        producer = kit.make_producer(bootstrap, linger_ms=5)
        await producer.start()
        try:
            await kit.publish(producer, f"{prefix}.requests.normal", items)
        finally:
            await producer.stop()

    asyncio.run(setup())
    loop_box: list[asyncio.AbstractEventLoop] = []
    wall: list[float] = []
    done = asyncio.Event()

    def collect() -> None:
        async def main() -> None:
            collector = kit.ResultCollector(bootstrap, f"{prefix}.results")
            await collector.start()
            try:
                await collector.wait_for(n, timeout_s=600)
            finally:
                await collector.stop()
                loop_box[0].call_soon_threadsafe(done.set)

        asyncio.run(main())

    reader = threading.Thread(target=collect, name="profile-collector", daemon=True)
    # Thread CPU time: waiting in epoll is not work, and the collector thread is not ours.
    profiler = cProfile.Profile(time.thread_time)

    async def run() -> None:
        loop_box.append(asyncio.get_running_loop())
        reader.start()
        ready, stop = asyncio.Event(), asyncio.Event()
        task = asyncio.create_task(service(prefix, f"{prefix}-group", ready, stop))
        await first_ready(ready, task)
        t0 = time.perf_counter()
        profiler.enable()
        await done.wait()
        profiler.disable()
        wall.append(time.perf_counter() - t0)
        stop.set()
        await task

    asyncio.run(run())
    reader.join(30)
    return {"requests": n, **summarize(profiler, wall[0], top)}
