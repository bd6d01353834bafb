"""``explainstream bench scale``: throughput of 1, 2, 3 consumers and the pause of each change.

Per mode (dynamic membership, then static with ``KAFKA_GROUP_INSTANCE_ID``), on fresh topics
with ``--partitions`` partitions per tier and at least ``--backlog`` requests kept waiting,
spread evenly over the normal tier's partitions, ``explainstream consume`` processes (fake
engine at ``--fake-latency-ms``) join one group: 1, then 2, then 3; the third restarts with
the same identity, then the third and the second leave. Throughput is counted over
``--window-s`` with N members. Each change is an event that lasts until every partition
has produced a result again after it (plus ``--settle-s``). Its group gap is the longest
time with no result at all; its partition gap the longest time any partition produced none
(a stalled partition is a pause for its keys).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import itertools
import time
from typing import Any

from consumer.dev.bench import kit

__all__ = ["gaps", "register", "run_scale_bench"]


def gaps(points: list[tuple[int, int]], start_ms: int, end_ms: int) -> dict[str, float]:
    """Longest silence in [start, end] over all partitions and per partition, in seconds.

    ``points`` are (result timestamp ms, request partition).
    """
    inside = sorted(p for p in points if start_ms <= p[0] <= end_ms)
    stamps = [start_ms, *(t for t, _ in inside), end_ms]
    group = max(b - a for a, b in itertools.pairwise(stamps))
    by_part: dict[int, list[int]] = {}
    for t, part in inside:
        by_part.setdefault(part, []).append(t)
    worst = 0
    for ts in by_part.values():
        seq = [start_ms, *ts, end_ms]
        worst = max(worst, *(b - a for a, b in itertools.pairwise(seq)))
    return {"group_gap_s": group / 1000.0, "partition_gap_s": worst / 1000.0}


class _Timeline:
    """Results decoded as they arrive: (timestamp ms, request partition)."""

    def __init__(self, collector: kit.ResultCollector) -> None:
        self.collector = collector
        self.points: list[tuple[int, int]] = []

    def update(self) -> None:
        codec = kit._codec()
        for a in self.collector.arrivals[len(self.points) :]:
            part = codec.decode_result(a.value).request_offset.partition
            self.points.append((a.timestamp_ms, part))

    async def all_flowing_after(self, t_ms: int, partitions: int, timeout_s: float) -> bool:
        """Wait until every partition has a result stamped after ``t_ms``."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            self.update()
            if len({p for t, p in self.points if t > t_ms}) >= partitions:
                return True
            await asyncio.sleep(0.1)
        return False


def _now_ms() -> int:
    return int(time.time() * 1000)


async def _mode(bootstrap: str, static: bool, cfg: dict[str, Any], bar: Any) -> dict[str, Any]:
    parts = cfg["partitions"]
    prefix = kit.prefix("scale" + ("s" if static else "d"))
    await kit.ensure(bootstrap, prefix, partitions=parts)
    producer = kit.make_producer(bootstrap, linger_ms=5)
    await producer.start()
    collector = kit.ResultCollector(bootstrap, f"{prefix}.results", on_record=bar.advance)
    await collector.start()
    line = _Timeline(collector)
    published = 0
    fed = asyncio.Event()

    async def feed() -> None:
        # Keeps at least ``backlog`` requests waiting, spread evenly over the partitions, so
        # the group is never short of work however fast it goes.
        nonlocal published
        while True:
            if published - len(collector.arrivals) < cfg["backlog"]:
                items = [kit.request_bytes(i, tag=prefix) for i in range(cfg["backlog"])]
                await kit.publish(producer, f"{prefix}.requests.normal", items, partitions=parts)
                published += len(items)
                bar.total += len(items)
                fed.set()
            await asyncio.sleep(0.5)

    feeder = asyncio.create_task(feed(), name="scale feeder")
    await asyncio.wait({feeder, asyncio.create_task(fed.wait())}, return_when="FIRST_COMPLETED")
    if feeder.done():
        feeder.result()
    members: dict[int, kit.ConsumerProcess] = {}

    def member(k: int) -> kit.ConsumerProcess:
        extra = {"kafka_group_instance_id": f"{prefix}-member-{k}"} if static else {}
        return kit.ConsumerProcess(
            kit.consumer_env(
                bootstrap,
                prefix,
                engine="fake",
                fake_latency_ms=cfg["fake_latency_ms"],
                max_concurrent_requests=cfg["slots"],
                kafka_partitions=parts,
                kafka_session_timeout_ms=cfg["session_timeout_ms"],
                **extra,
            ),
            name=f"scale-{k}",
        )

    events: list[dict[str, Any]] = []
    windows: dict[str, float] = {}
    steady: dict[str, dict[str, float]] = {}
    t_origin = _now_ms()
    settle_s = cfg["settle_s"]
    timeout = cfg["session_timeout_ms"] / 1000.0 + 60

    async def event(kind: str, k: int) -> None:
        bar.label = f"{'static' if static else 'dynamic'} {kind} #{k}"
        start = _now_ms()
        if kind in {"leave", "restart"}:
            await members[k].stop()
            members.pop(k).cleanup()
        if kind in {"join", "restart"}:
            members[k] = member(k)
            members[k].start()
            await members[k].wait_ready()
        mark = _now_ms()
        flowing = await line.all_flowing_after(mark, parts, timeout)
        await asyncio.sleep(settle_s)
        end = _now_ms()
        line.update()
        events.append(
            {
                "kind": kind,
                "member": k,
                "members_after": len(members),
                "start_s": (start - t_origin) / 1000.0,
                "end_s": (end - t_origin) / 1000.0,
                "all_partitions_flowing": flowing,
                **gaps(line.points, start, end),
            }
        )

    async def window(n: int) -> None:
        bar.label = f"{'static' if static else 'dynamic'} {n} member(s)"
        a = _now_ms()
        await asyncio.sleep(cfg["window_s"])
        b = _now_ms()
        line.update()
        windows[str(n)] = sum(1 for t, _ in line.points if a <= t < b) / ((b - a) / 1000.0)
        # The same gaps with nothing changing: the baseline an event's gaps compare with.
        steady[str(n)] = gaps(line.points, a, b)

    try:
        members[1] = member(1)
        members[1].start()
        await members[1].wait_ready()
        await line.all_flowing_after(_now_ms(), parts, timeout)
        await window(1)
        await event("join", 2)
        await window(2)
        await event("join", 3)
        await window(3)
        await event("restart", 3)
        await event("leave", 3)
        await event("leave", 2)
        line.update()
    finally:
        feeder.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await feeder
        await producer.stop()
        await collector.stop()
        for proc in members.values():
            await proc.stop()
            proc.cleanup()
    done = len(line.points)
    end_s = (max((t for t, _ in line.points), default=t_origin) - t_origin) / 1000.0
    per_s = [0] * (int(end_s) + 1)
    for t, _ in line.points:
        if t >= t_origin:
            per_s[int((t - t_origin) / 1000)] += 1
    return {
        "static_membership": static,
        "results": done,
        "published": published,
        "results_per_s": windows,
        "speedup": {n: kit.ratio(v, windows["1"]) for n, v in windows.items()},
        "events": events,
        "steady_gaps": steady,
        "results_per_second_timeline": per_s,
    }


def run_scale_bench(bootstrap: str, cfg: dict[str, Any], progress: bool = True) -> dict[str, Any]:
    """Both membership modes in turn."""
    machine = kit.machine_info()
    bar = kit.Progress(0) if progress else kit.NullProgress()

    async def main() -> dict[str, Any]:
        return {
            "dynamic": await _mode(bootstrap, False, cfg, bar),
            "static": await _mode(bootstrap, True, cfg, bar),
        }

    modes = asyncio.run(main())
    return {"benchmark": "scale", "machine": machine, **cfg, "modes": modes}


def markdown(report: dict[str, Any]) -> str:
    """The report as a markdown summary."""
    m = report["machine"]
    lines = [
        f"### bench scale ({m['date']}, {m['cpus']} CPUs)",
        "",
        f"fake engine {report['fake_latency_ms']:g} ms x {report['slots']} slots per consumer, "
        f"{report['partitions']} partitions per tier, session timeout "
        f"{report['session_timeout_ms']} ms, windows of {report['window_s']:g} s",
        "",
        "| membership | 1 consumer results/s | 2 consumers | 3 consumers |",
        "|---|---:|---:|---:|",
    ]
    for name, mode in report["modes"].items():
        r, s = mode["results_per_s"], mode["speedup"]
        lines.append(
            f"| {name} | {r.get('1', 0):.1f} | {r.get('2', 0):.1f} ({s.get('2', 0):.2f}x) | "
            f"{r.get('3', 0):.1f} ({s.get('3', 0):.2f}x) |"
        )
    lines += [
        "",
        "| membership | event | members after | group gap s | partition gap s |",
        "|---|---|---:|---:|---:|",
    ]
    for name, mode in report["modes"].items():
        for e in mode["events"]:
            lines.append(
                f"| {name} | {e['kind']} #{e['member']} | {e['members_after']} | "
                f"{e['group_gap_s']:.2f} | {e['partition_gap_s']:.2f} |"
            )
    for name, mode in report["modes"].items():
        for n, g in mode.get("steady_gaps", {}).items():
            lines.append(
                f"| {name} | steady, no change | {n} | {g['group_gap_s']:.2f} | "
                f"{g['partition_gap_s']:.2f} |"
            )
    lines += ["", "Goals: N consumers >= 0.9 x N; pause <= 2 s."]
    return "\n".join(lines)


def _cmd(args: argparse.Namespace) -> int:
    cfg = {
        "partitions": args.partitions,
        "fake_latency_ms": args.fake_latency_ms,
        "slots": args.slots,
        "backlog": args.backlog,
        "window_s": args.window_s,
        "settle_s": args.settle_s,
        "session_timeout_ms": args.session_timeout_ms,
    }
    with kit.bench_broker() as bootstrap:
        report = run_scale_bench(bootstrap, cfg, progress=not args.no_progress)
    kit.emit(report, args, markdown)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``bench scale`` to the ``bench`` subcommands."""
    p = sub.add_parser("scale", help="1-3 consumers in one group: throughput and rebalance gaps")
    p.add_argument("--partitions", type=int, default=6, help="per tier")
    p.add_argument("--fake-latency-ms", type=float, default=100.0)
    p.add_argument("--slots", type=int, default=4, help="MAX_CONCURRENT_REQUESTS")
    p.add_argument("--backlog", type=int, default=3000, help="requests kept waiting")
    p.add_argument("--window-s", type=float, default=10.0, help="throughput window")
    p.add_argument("--settle-s", type=float, default=2.0, help="after all partitions flow")
    p.add_argument("--session-timeout-ms", type=int, default=10000)
    kit.common_args(p)
    p.set_defaults(func=_cmd)
