"""``explainstream bench pipeline``: the service against a raw aiokafka loop, side by side.

Both sides read the same Avro requests from the normal tier and write one record per request
to their own output topic with the same producer and fetch settings (acks=all, idempotent,
linger 2 ms, fetch wait 100 ms, commit after the writes are acknowledged). The raw loop does
nothing else: it forwards a pre-encoded result of the service's size. The service runs in
this process on the zero-latency fake engine, so every millisecond it adds over the raw loop
is Kafka intake, Avro, scheduling, result building, publishing and committing.

Phases, alternating which side goes first each round:
  * saturation: a backlog of ``--requests`` is drained; results/s from partition assignment
    to the last result read back;
  * paced: ``--rate-fraction`` of the service's saturation rate for ``--paced-s`` seconds;
    latency = result record CreateTime - request record CreateTime (1 ms resolution).
Then one more service drain runs under cProfile (not timed) to show where the time goes.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from typing import Any

from consumer.dev.bench import kit
from consumer.dev.bench.prof import Side, first_ready, profile_side

__all__ = ["raw_loop", "register", "run_pipeline_bench"]


def _result_bytes(tier: str = "normal") -> bytes:
    """An encoded OK result of the size the fake engine's results have."""
    from schemas.models import (
        ExplanationResult,
        ModelInfoRecord,
        ResultStatus,
        SourceOffset,
    )

    result = ExplanationResult(
        request_id="00000000-0000-4000-8000-000000000000",
        status=ResultStatus.OK,
        explanation="sentiment for AAPL: current_price=189.5, iv_rank=41, sentiment_score=0.72.",
        tier=tier,
        prompt_tokens=60,
        completion_tokens=8,
        processing_time_ms=0.01,
        confidence_score=0.9,
        model_info=ModelInfoRecord(
            model_name="fake", quantization="none", gpu_layers=0, context_size=0, model_sha256="0"
        ),
        consumer_id="bench-raw-loop",
        request_offset=SourceOffset(topic=f"x.requests.{tier}", partition=0, offset=0),
    )
    return bytes(kit._codec().encode_result(result))


async def raw_loop(
    bootstrap: str,
    in_topics: list[str],
    out_topic: str,
    group: str,
    value: bytes,
    ready: asyncio.Event,
    stop: asyncio.Event,
) -> None:
    """Consume -> produce -> commit, nothing else; the peer the service is measured against."""
    from aiokafka import AIOKafkaConsumer

    consumer = AIOKafkaConsumer(
        *in_topics,
        bootstrap_servers=bootstrap,
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        isolation_level="read_committed",
        fetch_max_wait_ms=100,
        max_partition_fetch_bytes=256 * 1024,
    )
    producer = kit.make_producer(bootstrap, linger_ms=2)
    await consumer.start()
    await producer.start()
    try:
        while not stop.is_set():
            batch = await consumer.getmany(timeout_ms=100)
            if consumer.assignment():
                ready.set()
            futures = [
                await producer.send(out_topic, value, key=r.key)
                for records in batch.values()
                for r in records
            ]
            if futures:
                await asyncio.gather(*futures)
                await consumer.commit()
    finally:
        await consumer.stop()
        await producer.stop()


_WARMUP = 20  # requests through each side before a paced phase is timed


def _sides(
    bootstrap: str, concurrency: int, queue: int, overrides: dict[str, Any]
) -> dict[str, Side]:
    value = _result_bytes()

    async def raw(prefix: str, group: str, ready: asyncio.Event, stop: asyncio.Event) -> None:
        tiers = [f"{prefix}.requests.{t}" for t in ("urgent", "high", "normal", "low")]
        await raw_loop(bootstrap, tiers, f"{prefix}.results", group, value, ready, stop)

    async def service(prefix: str, group: str, ready: asyncio.Event, stop: asyncio.Event) -> None:
        from consumer.config import Settings
        from consumer.runtime.service import ConsumerService

        settings = Settings.from_env(
            kafka_bootstrap_servers=bootstrap,
            kafka_topic_prefix=prefix,
            kafka_group_id=group,
            kafka_partitions=1,
            engine="fake",
            fake_latency_ms=0.0,
            max_concurrent_requests=concurrency,
            max_queue_size=queue,
            prometheus_enabled=False,
            http_host="127.0.0.1",
            http_port=0,
            metrics_port=0,
            log_level="WARNING",
            **overrides,
        )
        async with ConsumerService(settings) as svc:
            await svc.wait_assigned()
            ready.set()
            await stop.wait()

    return {"raw": raw, "service": service}


async def _phase(
    bootstrap: str,
    name: str,
    side: Side,
    n: int,
    rate: float | None,
    bar: Any,
) -> dict[str, Any]:
    """One side on fresh topics: a backlog (``rate`` None) or a paced stream of ``n``."""
    prefix = kit.prefix("pipe")
    await kit.ensure(bootstrap, prefix, partitions=1)
    items = [kit.request_bytes(i, tag=prefix) for i in range(n)]
    sent: dict[bytes, int] = {}
    producer = kit.make_producer(bootstrap, linger_ms=0 if rate else 5)
    await producer.start()
    collector = kit.ResultCollector(bootstrap, f"{prefix}.results", on_record=bar.advance)
    ready, stop = asyncio.Event(), asyncio.Event()
    try:
        if rate is None:
            await kit.publish(producer, f"{prefix}.requests.normal", items, sent)
        await collector.start()
        task = asyncio.create_task(side(prefix, f"{prefix}-group", ready, stop))
        try:
            await asyncio.wait_for(first_ready(ready, task), 120)
            skip = 0
            if rate is not None:
                # Warm-up: the first fetch after assignment (offset lookup) is not steady state.
                warm = [kit.request_bytes(i, tag=prefix) for i in range(_WARMUP)]
                await kit.publish(producer, f"{prefix}.requests.normal", warm)
                await collector.wait_for(_WARMUP, timeout_s=120)
                skip = _WARMUP
            t0 = time.perf_counter()
            if rate is not None:
                await kit.publish_paced(producer, f"{prefix}.requests.normal", items, rate, sent)
            await collector.wait_for(skip + n, timeout_s=600)
            wall = collector.arrivals[skip + n - 1].read_at - t0
        finally:
            stop.set()
            await task
    finally:
        await producer.stop()
        await collector.stop()
    statuses: dict[str, int] = {}
    if name == "service":
        for result in collector.decoded():
            statuses[result.status.value] = statuses.get(result.status.value, 0) + 1
    out: dict[str, Any] = {"results": n, "wall_s": wall, "results_per_s": n / wall}
    out["latency"] = kit.latency_summary(kit.latencies_ms(collector.arrivals, sent))
    if statuses:
        out["statuses"] = statuses
    return out


def _pool(runs: list[dict[str, Any]]) -> dict[str, Any]:
    n = sum(r["results"] for r in runs)
    wall = sum(r["wall_s"] for r in runs)
    out: dict[str, Any] = {"rounds": len(runs), "results": n, "wall_s": wall}
    out["results_per_s"] = n / wall if wall else float("nan")
    out["results_per_s_each"] = [r["results_per_s"] for r in runs]
    # Latency percentiles per round; the pooled figure is their median (rounds are equal).
    for key in ("p50_ms", "p95_ms", "p99_ms"):
        vals = sorted(r["latency"][key] for r in runs)
        out[key] = vals[len(vals) // 2]
        out[f"{key}_each"] = [r["latency"][key] for r in runs]
    statuses: dict[str, int] = {}
    for r in runs:
        for k, v in r.get("statuses", {}).items():
            statuses[k] = statuses.get(k, 0) + v
    if statuses:
        out["statuses"] = statuses
    return out


def run_pipeline_bench(
    bootstrap: str,
    *,
    requests: int,
    rounds: int = 2,
    rate_fraction: float = 0.5,
    paced_s: float = 10.0,
    profile_requests: int | None = None,
    concurrency: int = 8,
    queue: int = 256,
    overrides: dict[str, str] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Saturation and paced phases for both sides in alternating order, then the profile."""
    sides = _sides(bootstrap, concurrency, queue, dict(overrides or {}))
    rounds = max(1, rounds)
    sat: dict[str, list[dict[str, Any]]] = {"raw": [], "service": []}
    paced: dict[str, list[dict[str, Any]]] = {"raw": [], "service": []}
    machine = kit.machine_info()

    async def main() -> float:
        rate = 0.0
        paced_n = 0
        for r in range(rounds):
            order = ["raw", "service"] if r % 2 == 0 else ["service", "raw"]
            for name in order:
                bar.label = f"saturate {name} r{r + 1}"
                sat[name].append(await _phase(bootstrap, name, sides[name], requests, None, bar))
            if r == 0:
                rate = max(1.0, rate_fraction * sat["service"][0]["results_per_s"])
                paced_n = max(10, int(rate * paced_s))
                bar.total += rounds * 2 * paced_n
            for name in order:
                bar.label = f"paced {name} r{r + 1}"
                paced[name].append(await _phase(bootstrap, name, sides[name], paced_n, rate, bar))
        return rate

    bar = kit.Progress(rounds * 2 * requests) if progress else kit.NullProgress()
    rate = asyncio.run(main())
    report: dict[str, Any] = {
        "benchmark": "pipeline",
        "engine": "fake",
        "fake_latency_ms": 0.0,
        "requests": requests,
        "rounds": rounds,
        "concurrency": concurrency,
        "max_queue_size": queue,
        "service_settings": dict(overrides or {}),
        "machine": machine,
        "saturation": {name: _pool(runs) for name, runs in sat.items()},
        "paced": {name: _pool(runs) for name, runs in paced.items()},
        "paced_rate_per_s": rate,
        "rate_fraction": rate_fraction,
    }
    s, raw = report["saturation"]["service"], report["saturation"]["raw"]
    report["service_over_raw_results_per_s"] = kit.ratio(s["results_per_s"], raw["results_per_s"])
    ps, pr = report["paced"]["service"], report["paced"]["raw"]
    report["added_p50_ms"] = ps["p50_ms"] - pr["p50_ms"]
    report["added_p99_ms"] = ps["p99_ms"] - pr["p99_ms"]
    # Kept for older readers of this report: the service's own figures.
    report["pipeline"] = {"results_per_s": s["results_per_s"], "statuses": s.get("statuses", {})}
    if profile_requests != 0:
        n = profile_requests or requests
        report["profile"] = profile_side(bootstrap, sides["service"], n)
    return report


def markdown(report: dict[str, Any]) -> str:
    """The report as a markdown summary."""
    s, r = report["saturation"]["service"], report["saturation"]["raw"]
    ps, pr = report["paced"]["service"], report["paced"]["raw"]
    lines = [
        f"### bench pipeline ({report['machine']['date']}, {report['machine']['cpus']} CPUs)",
        "",
        f"fake engine at 0 ms, {report['requests']} requests per drain, "
        f"{report['rounds']} rounds alternating order; paced at {report['paced_rate_per_s']:.0f}"
        f" requests/s ({report['rate_fraction']:.0%} of the service's saturation)",
        "",
        "| side | results/s (saturated) | paced p50 ms | paced p95 ms | paced p99 ms |",
        "|---|---:|---:|---:|---:|",
        f"| raw aiokafka loop | {r['results_per_s']:.0f} | {pr['p50_ms']:.1f} | "
        f"{pr['p95_ms']:.1f} | {pr['p99_ms']:.1f} |",
        f"| service | {s['results_per_s']:.0f} | {ps['p50_ms']:.1f} | {ps['p95_ms']:.1f} | "
        f"{ps['p99_ms']:.1f} |",
        "",
        f"service / raw results/s: **{report['service_over_raw_results_per_s']:.2f}x** "
        f"(goal >= 0.5x); added latency at {report['rate_fraction']:.0%} load: "
        f"p50 {report['added_p50_ms']:+.1f} ms, **p99 {report['added_p99_ms']:+.1f} ms** "
        f"(goal <= 5 ms); statuses {s.get('statuses', {})}",
    ]
    prof = report.get("profile")
    if prof:
        lines += [
            "",
            f"Profile of one service drain ({prof['requests']} requests, cProfile, thread CPU "
            f"time): {prof['profiled_cpu_s']:.2f} s CPU in {prof['wall_s']:.2f} s wall "
            f"({prof['cpu_over_wall']:.0%} busy).",
            "",
        ]
        lines += ["| package | share of CPU time |", "|---|---:|"]
        lines += [f"| {k} | {v:.1%} |" for k, v in prof["share_by_package"].items() if v >= 0.01]
        lines += ["", "| function | tottime s | calls |", "|---|---:|---:|"]
        lines += [
            f"| `{f['function']}` | {f['tottime_s']:.3f} | {f['calls']} |"
            for f in prof["top_functions"][:10]
        ]
    return "\n".join(lines)


def _cmd(args: argparse.Namespace) -> int:
    with kit.bench_broker() as bootstrap:
        report = run_pipeline_bench(
            bootstrap,
            requests=args.requests,
            rounds=args.rounds,
            rate_fraction=args.rate_fraction,
            paced_s=args.paced_s,
            profile_requests=args.profile_requests,
            concurrency=args.concurrency,
            queue=args.max_queue_size,
            overrides=dict(args.set),
            progress=not args.no_progress,
        )
    kit.emit(report, args, markdown)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``bench pipeline`` to the ``bench`` subcommands."""
    p = sub.add_parser(
        "pipeline", help="the service vs a raw aiokafka loop: results/s, added latency, profile"
    )
    p.add_argument("--engine", choices=["fake"], default="fake", help="zero-latency fake only")
    p.add_argument("--requests", type=int, default=5000, help="backlog per drain")
    p.add_argument("--rounds", type=int, default=2, help="alternating-order rounds")
    p.add_argument("--rate-fraction", type=float, default=0.5, help="of saturation, paced")
    p.add_argument("--paced-s", type=float, default=10.0, help="length of a paced phase")
    p.add_argument("--profile-requests", type=int, default=None, help="0: no profile")
    p.add_argument("--concurrency", type=int, default=8, help="MAX_CONCURRENT_REQUESTS")
    p.add_argument("--max-queue-size", type=int, default=256, help="MAX_QUEUE_SIZE")
    p.add_argument(
        "--set",
        type=_setting,
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a service Settings field for this run, e.g. commit_interval_ms=100 (repeatable)",
    )
    kit.common_args(p)
    p.set_defaults(func=_cmd)


def _setting(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected FIELD=VALUE, got {text!r}")
    return key.strip().lower(), value.strip()
