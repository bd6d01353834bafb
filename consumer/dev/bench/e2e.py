"""``explainstream bench e2e``: explanations/min through Kafka, llama engine vs sequential.

The same ``--requests`` greedy requests (the bench contexts over both profiles) are published
to the normal tier of fresh topics for each engine; one ``explainstream consume`` process with
that engine is started and the clock runs from its ``/ready`` until the last result is read
back. Rounds alternate the engine order so a busy neighbour on the machine hurts both alike.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from consumer.dev.bench import kit
from consumer.dev.bench.cli import percentile

__all__ = ["register", "run_e2e_bench"]


async def _one(
    bootstrap: str, engine: str, n: int, max_tokens: int, slots: int, bar: Any
) -> dict[str, Any]:
    prefix = kit.prefix(f"e2e{engine}")
    await kit.ensure(bootstrap, prefix, partitions=1)
    producer = kit.make_producer(bootstrap, linger_ms=5)
    await producer.start()
    try:
        items = [kit.request_bytes(i, max_tokens=max_tokens, tag="e2e") for i in range(n)]
        await kit.publish(producer, f"{prefix}.requests.normal", items)
    finally:
        await producer.stop()
    collector = kit.ResultCollector(bootstrap, f"{prefix}.results", on_record=bar.advance)
    await collector.start()
    proc = kit.ConsumerProcess(
        kit.consumer_env(
            bootstrap,
            prefix,
            engine=engine,
            max_concurrent_requests=slots,
            kafka_partitions=1,
            request_timeout=600,
        ),
        name=f"e2e-{engine}",
    )
    try:
        proc.start()
        ready_s = await proc.wait_ready(timeout_s=300)
        t0 = time.perf_counter()
        await collector.wait_for(n, timeout_s=1800)
        wall = collector.arrivals[n - 1].read_at - t0
    finally:
        await collector.stop()
        await proc.stop()
        proc.cleanup()
    results = collector.decoded()
    statuses: dict[str, int] = {}
    for r in results:
        statuses[r.status.value] = statuses.get(r.status.value, 0) + 1
    return {
        "ready_s": ready_s,
        "wall_s": wall,
        "results": n,
        "completion_tokens": sum(r.completion_tokens for r in results),
        "processing_ms": [r.processing_time_ms for r in results],
        "statuses": statuses,
    }


def _pool(engine: str, runs: list[dict[str, Any]]) -> dict[str, Any]:
    wall = sum(r["wall_s"] for r in runs)
    n = sum(r["results"] for r in runs)
    tokens = sum(r["completion_tokens"] for r in runs)
    proc = [x for r in runs for x in r["processing_ms"]]
    statuses: dict[str, int] = {}
    for r in runs:
        for k, v in r["statuses"].items():
            statuses[k] = statuses.get(k, 0) + v
    return {
        "engine": engine,
        "rounds": len(runs),
        "results": n,
        "wall_s": wall,
        "explanations_per_min": 60.0 * n / wall if wall else float("nan"),
        "explanations_per_min_each": [60.0 * r["results"] / r["wall_s"] for r in runs],
        "tokens_per_s": tokens / wall if wall else float("nan"),
        "completion_tokens": tokens,
        "p50_processing_ms": percentile(proc, 50),
        "p95_processing_ms": percentile(proc, 95),
        "ready_s_each": [r["ready_s"] for r in runs],
        "statuses": statuses,
    }


def run_e2e_bench(
    bootstrap: str,
    *,
    requests: int,
    max_tokens: int,
    slots: int,
    rounds: int,
    engines: tuple[str, str] = ("llama", "sequential"),
    progress: bool = True,
) -> dict[str, Any]:
    """Both engines through Kafka on the same requests, alternating order per round."""
    machine = kit.machine_info()
    bar = kit.Progress(rounds * len(engines) * requests) if progress else kit.NullProgress()

    async def main() -> dict[str, list[dict[str, Any]]]:
        runs: dict[str, list[dict[str, Any]]] = {e: [] for e in engines}
        for r in range(rounds):
            for engine in engines if r % 2 == 0 else tuple(reversed(engines)):
                bar.label = f"{engine} round {r + 1}"
                runs[engine].append(await _one(bootstrap, engine, requests, max_tokens, slots, bar))
        return runs

    runs = asyncio.run(main())
    pooled = {e: _pool(e, rs) for e, rs in runs.items()}
    a, b = engines
    return {
        "benchmark": "e2e",
        "machine": machine,
        "requests": requests,
        "max_tokens": max_tokens,
        "temperature": 0.0,
        "slots": slots,
        "rounds": rounds,
        "engines": pooled,
        f"{a}_over_{b}_explanations_per_min": kit.ratio(
            pooled[a]["explanations_per_min"], pooled[b]["explanations_per_min"]
        ),
    }


def markdown(report: dict[str, Any]) -> str:
    """The report as a markdown summary."""
    m = report["machine"]
    lines = [
        f"### bench e2e ({m['date']}, {m['cpus']} CPUs)",
        "",
        f"{report['requests']} greedy requests (up to {report['max_tokens']} tokens) per run, "
        f"{report['rounds']} round(s) alternating order, MAX_CONCURRENT_REQUESTS="
        f"{report['slots']}, one consumer through Kafka",
        "",
        "| engine | explanations/min | tokens/s | processing p50 / p95 ms | statuses |",
        "|---|---:|---:|---:|---|",
    ]
    for e, s in report["engines"].items():
        lines.append(
            f"| {e} | {s['explanations_per_min']:.1f} | {s['tokens_per_s']:.1f} | "
            f"{s['p50_processing_ms']:.0f} / {s['p95_processing_ms']:.0f} | {s['statuses']} |"
        )
    ratio = report.get("llama_over_sequential_explanations_per_min")
    if ratio is not None:
        lines += ["", f"llama / sequential explanations/min: **{ratio:.2f}x**"]
    return "\n".join(lines)


def _cmd(args: argparse.Namespace) -> int:
    with kit.bench_broker() as bootstrap:
        report = run_e2e_bench(
            bootstrap,
            requests=args.requests,
            max_tokens=args.max_tokens,
            slots=args.concurrency,
            rounds=args.rounds,
            progress=not args.no_progress,
        )
    kit.emit(report, args, markdown)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``bench e2e`` to the ``bench`` subcommands."""
    p = sub.add_parser("e2e", help="explanations/min through Kafka: llama vs sequential engine")
    p.add_argument("--requests", type=int, default=24, help="per engine per round")
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--concurrency", type=int, default=8, help="MAX_CONCURRENT_REQUESTS")
    p.add_argument("--rounds", type=int, default=2, help="alternating-order rounds")
    kit.common_args(p)
    p.set_defaults(func=_cmd)
