"""``explainstream bench memory``: consumer RSS while it works through a deep backlog.

``--requests`` requests (100,000 by default) are published to the normal tier first; then one
``explainstream consume`` process (fake engine) is started and its resident set size is read
from /proc every ``--interval-s`` until the last result is back. Bounded buffers mean memory
should not follow the backlog: after warm-up (the first ``--warmup-fraction`` of the results)
the RSS should stay within 10 % of its level.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from consumer.dev.bench import kit

__all__ = ["register", "rss_flatness", "run_memory_bench"]


def rss_flatness(samples: list[dict[str, float]], warmup_results: int) -> dict[str, Any]:
    """Spread and drift of RSS over the samples taken after ``warmup_results`` results."""
    after = [s["rss_mb"] for s in samples if s["results"] >= warmup_results]
    if not after:
        return {"samples_after_warmup": 0}
    lo, hi = min(after), max(after)
    return {
        "samples_after_warmup": len(after),
        "rss_mb_at_warmup": after[0],
        "rss_mb_min": lo,
        "rss_mb_max": hi,
        "rss_mb_last": after[-1],
        "spread": (hi - lo) / lo if lo else float("nan"),
        "drift": (after[-1] - after[0]) / after[0] if after[0] else float("nan"),
    }


def run_memory_bench(
    bootstrap: str,
    *,
    requests: int,
    interval_s: float = 0.5,
    warmup_fraction: float = 0.1,
    slots: int = 8,
    fake_latency_ms: float = 0.0,
    progress: bool = True,
) -> dict[str, Any]:
    """Publish the backlog, run one consumer through it, sample its RSS."""
    machine = kit.machine_info()
    bar = kit.Progress(2 * requests) if progress else kit.NullProgress()
    prefix = kit.prefix("mem")

    async def main() -> dict[str, Any]:
        await kit.ensure(bootstrap, prefix, partitions=1)
        producer = kit.make_producer(bootstrap, linger_ms=20)
        await producer.start()
        bar.label = "publishing backlog"
        t_pub = time.perf_counter()
        try:
            # Built and sent in chunks so the bench itself never holds the whole backlog.
            step = 5000
            for start in range(0, requests, step):
                items = [
                    kit.request_bytes(i, tag=prefix)
                    for i in range(start, min(requests, start + step))
                ]
                await kit.publish(producer, f"{prefix}.requests.normal", items, None, bar.advance)
        finally:
            await producer.stop()
        publish_s = time.perf_counter() - t_pub
        collector = kit.ResultCollector(
            bootstrap, f"{prefix}.results", on_record=bar.advance, keep_values=False
        )
        await collector.start()
        proc = kit.ConsumerProcess(
            kit.consumer_env(
                bootstrap,
                prefix,
                engine="fake",
                fake_latency_ms=fake_latency_ms,
                max_concurrent_requests=slots,
                kafka_partitions=1,
            ),
            name="memory",
        )
        samples: list[dict[str, float]] = []
        bar.label = "draining"
        try:
            proc.start()
            t0 = time.perf_counter()
            ready_s = None
            while len(collector.arrivals) < requests:
                rss = proc.rss_bytes()
                if proc.proc is not None and proc.proc.poll() is not None:
                    raise RuntimeError(f"consumer exited: {proc.log_tail()}")
                if rss is not None:
                    samples.append(
                        {
                            "t_s": round(time.perf_counter() - t0, 3),
                            "rss_mb": round(rss / 2**20, 2),
                            "results": len(collector.arrivals),
                        }
                    )
                if ready_s is None and await asyncio.to_thread(proc.ready_now):
                    ready_s = time.perf_counter() - t0
                if time.perf_counter() - t0 > 1800:
                    raise TimeoutError(f"{len(collector.arrivals)}/{requests} in 30 min")
                await asyncio.sleep(interval_s)
            wall = time.perf_counter() - t0
        finally:
            await collector.stop()
            await proc.stop()
            proc.cleanup()
        return {"samples": samples, "wall_s": wall, "ready_s": ready_s, "publish_s": publish_s}

    run = asyncio.run(main())
    warmup_results = int(warmup_fraction * requests)
    return {
        "benchmark": "memory",
        "machine": machine,
        "engine": "fake",
        "fake_latency_ms": fake_latency_ms,
        "requests": requests,
        "slots": slots,
        "interval_s": interval_s,
        "warmup_fraction": warmup_fraction,
        "warmup_results": warmup_results,
        "publish_s": run["publish_s"],
        "ready_s": run["ready_s"],
        "wall_s": run["wall_s"],
        "results_per_s": requests / run["wall_s"],
        "flatness": rss_flatness(run["samples"], warmup_results),
        "samples": run["samples"],
    }


def markdown(report: dict[str, Any]) -> str:
    """The report as a markdown summary."""
    m, f = report["machine"], report["flatness"]
    lines = [
        f"### bench memory ({m['date']}, {m['cpus']} CPUs)",
        "",
        f"{report['requests']} requests backlog, fake engine, one consumer process; "
        f"drained in {report['wall_s']:.0f} s ({report['results_per_s']:.0f} results/s), "
        f"{len(report['samples'])} RSS samples.",
        "",
    ]
    if f.get("samples_after_warmup"):
        lines += [
            "| RSS after warm-up | MB |",
            "|---|---:|",
            f"| at warm-up ({report['warmup_results']} results) | {f['rss_mb_at_warmup']:.1f} |",
            f"| min / max | {f['rss_mb_min']:.1f} / {f['rss_mb_max']:.1f} |",
            f"| last | {f['rss_mb_last']:.1f} |",
            "",
            f"spread (max-min)/min **{f['spread']:.1%}**, drift last/first "
            f"{f['drift']:+.1%} (goal: flat within 10 %)",
        ]
    return "\n".join(lines)


def _cmd(args: argparse.Namespace) -> int:
    with kit.bench_broker() as bootstrap:
        report = run_memory_bench(
            bootstrap,
            requests=args.requests,
            interval_s=args.interval_s,
            warmup_fraction=args.warmup_fraction,
            slots=args.slots,
            progress=not args.no_progress,
        )
    kit.emit(report, args, markdown)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``bench memory`` to the ``bench`` subcommands."""
    p = sub.add_parser("memory", help="consumer RSS over a deep backlog (fake engine)")
    p.add_argument("--requests", type=int, default=100_000, help="backlog size")
    p.add_argument("--interval-s", type=float, default=0.5, help="RSS sampling interval")
    p.add_argument("--warmup-fraction", type=float, default=0.1)
    p.add_argument("--slots", type=int, default=8, help="MAX_CONCURRENT_REQUESTS")
    kit.common_args(p)
    p.set_defaults(func=_cmd)
