"""``explainstream bench fairness``: a quiet source's latency alone and beside a 10x flood.

Two sources publish to one tier. Each configuration starts one ``explainstream consume``
process on fresh topics and runs two phases on it:
  * alone: the quiet source at ``--quiet-rate``/s for ``--seconds``;
  * flood: the noisy source at ``--flood-factor`` x that rate (more than the consumer can
    serve, so a backlog grows) starts first; ``--lead-s`` later the same quiet stream runs
    again beside it.
Latency is result CreateTime - request CreateTime (the quiet source's requests only). The
configurations are the consumer's settings and the producers' partitioning side by side
(:data:`CONFIGS`). Figures are printed, never asserted: benchmarks are not tests.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Sequence
from typing import Any

from consumer.dev.bench import kit
from consumer.dev.bench.stats import percentile
from producer_sdk._partitioning import source_partition
from schemas.codec import Codec
from schemas.models import ResultStatus

__all__ = ["CONFIGS", "register", "run_fairness_bench"]

QUIET, NOISY = "pricing", "replay-job"

#: name -> (consumer settings, producers partition by source)
CONFIGS: dict[str, tuple[dict[str, Any], bool]] = {
    "arrival order": ({"fair_share": "false"}, False),
    "fair share": ({"fair_share": "true"}, False),
    "fair share + reject over half the buffer": (
        {"fair_share": "true", "source_max_buffer_share": 0.5, "source_over_share": "reject"},
        False,
    ),
    "fair share + partition by source": (
        {"fair_share": "true", "source_max_buffer_share": 0.5, "source_over_share": "pause"},
        True,
    ),
    "fair share + partition by source + 3/4 of the slots": (
        {
            "fair_share": "true",
            "source_max_buffer_share": 0.5,
            "source_over_share": "pause",
            "source_max_slot_share": 0.75,
        },
        True,
    ),
}

#: Per-engine defaults: slots, quiet rate, seconds per phase, tokens.
DEFAULTS: dict[str, dict[str, Any]] = {
    "fake": {"slots": 4, "quiet_rate": 10.0, "seconds": 10.0, "max_tokens": 32},
    "llama": {"slots": 4, "quiet_rate": 0.2, "seconds": 40.0, "max_tokens": 24},
}


async def _paced(
    producer: Any,
    topic: str,
    source: str,
    count: int,
    rate_per_s: float,
    sent_ms: dict[bytes, int],
    partitions: Sequence[int] | None,
    max_tokens: int,
) -> None:
    """``count`` requests of ``source`` at ``rate_per_s``, each on its own schedule; with
    ``partitions`` placed as ``partition_by="source"`` places them."""
    t0 = time.perf_counter()
    futures = []
    for n in range(count):
        delay = t0 + n / rate_per_s - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        key, value = kit.request_bytes(n, max_tokens=max_tokens, tag=source)
        part = None if partitions is None else source_partition(source, key.decode(), partitions)
        now = int(time.time() * 1000)
        sent_ms[key] = now
        futures.append(await producer.send(topic, value, key=key, timestamp_ms=now, partition=part))
    await asyncio.gather(*futures)


async def _wait_keys(collector: Any, keys: dict[bytes, int], timeout_s: float) -> None:
    while sum(1 for a in collector.arrivals if a.key in keys) < len(keys):
        await collector.wait_for(len(collector.arrivals) + 1, timeout_s=timeout_s)


async def _config_round(
    bootstrap: str, engine: str, name: str, cfg: dict[str, Any], args: dict[str, Any], bar: Any
) -> dict[str, Any]:
    settings, by_source = CONFIGS[name]
    codec = Codec()
    prefix = kit.prefix(f"fair{engine}")
    partitions = args["partitions"]
    await kit.ensure(bootstrap, prefix, partitions=partitions)
    proc = kit.ConsumerProcess(
        kit.consumer_env(
            bootstrap,
            prefix,
            engine=engine,
            fake_latency_ms=args["fake_latency_ms"],
            max_concurrent_requests=cfg["slots"],
            max_queue_size=args["queue"],
            kafka_partitions=partitions,
            request_timeout=600,
            drain_timeout_s=5,
            grounding="off",
            **settings,
        ),
        name=f"fair-{engine}",
    )
    producer = kit.make_producer(bootstrap)
    collector = kit.ResultCollector(bootstrap, f"{prefix}.results", on_record=bar.advance)
    topic = f"{prefix}.requests.normal"
    parts = list(range(partitions)) if by_source else None
    rate, seconds, mt = cfg["quiet_rate"], cfg["seconds"], cfg["max_tokens"]
    quiet_n = max(1, round(rate * seconds))
    try:
        await producer.start()
        await collector.start()
        proc.start()
        await proc.wait_ready()
        alone: dict[bytes, int] = {}
        await _paced(producer, topic, QUIET, quiet_n, rate, alone, parts, mt)
        await _wait_keys(collector, alone, 600)
        flood: dict[bytes, int] = {}
        beside: dict[bytes, int] = {}
        noisy_rate = rate * args["flood_factor"]
        noisy_n = round(noisy_rate * (seconds + args["lead_s"]))

        async def quiet_later() -> None:
            await asyncio.sleep(args["lead_s"])
            await _paced(producer, topic, QUIET, quiet_n, rate, beside, parts, mt)

        await asyncio.gather(
            _paced(producer, topic, NOISY, noisy_n, noisy_rate, flood, parts, mt), quiet_later()
        )
        await _wait_keys(collector, beside, 900)
        noisy = [codec.decode_result(a.value) for a in collector.arrivals if a.key in flood]
    finally:
        await producer.stop()
        await collector.stop()
        await proc.stop()
        proc.cleanup()
    return {
        "alone_ms": sorted(kit.latencies_ms(collector.arrivals, alone)),
        "flood_ms": sorted(kit.latencies_ms(collector.arrivals, beside)),
        "noisy_sent": noisy_n,
        "noisy_answered_when_quiet_done": len(noisy),
        "noisy_rejected": sum(1 for r in noisy if r.status is ResultStatus.REJECTED),
    }


def run_fairness_bench(
    bootstrap: str,
    *,
    engines: list[str],
    configs: list[str],
    args: dict[str, Any],
    overrides: dict[str, dict[str, Any]] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Quiet-source latency alone and beside a flood, per engine and configuration."""
    cfgs = {e: {**DEFAULTS[e], **(overrides or {}).get(e, {})} for e in engines}
    total = 0
    for c in cfgs.values():
        quiet_n = max(1, round(c["quiet_rate"] * c["seconds"]))
        noisy_n = round(c["quiet_rate"] * args["flood_factor"] * (c["seconds"] + args["lead_s"]))
        total += len(configs) * (2 * quiet_n + noisy_n)
    bar = kit.Progress(total) if progress else kit.NullProgress()
    machine = kit.machine_info()

    async def main() -> dict[str, Any]:
        out: dict[str, Any] = {}
        for engine, cfg in cfgs.items():
            out[engine] = {"config": cfg, "runs": {}}
            for name in configs:
                bar.label = f"{engine}: {name}"[:24]
                run = await _config_round(bootstrap, engine, name, cfg, args, bar)
                run["alone"] = kit.latency_summary(run["alone_ms"])
                run["flood"] = kit.latency_summary(run["flood_ms"])
                run["p95_flood_over_alone"] = kit.ratio(
                    percentile(run["flood_ms"], 95), percentile(run["alone_ms"], 95)
                )
                run["settings"], run["partition_by_source"] = CONFIGS[name]
                out[engine]["runs"][name] = run
        return out

    return {
        "benchmark": "fairness",
        "machine": machine,
        "params": args,
        "engines": asyncio.run(main()),
    }


def markdown(report: dict[str, Any]) -> str:
    """The report as a markdown summary."""
    m, p = report["machine"], report["params"]
    lines = [
        f"### bench fairness ({m['date']}, {m['cpus']} CPUs, load {m['loadavg_1m_at_start']})",
        "",
        f"Quiet source at its rate, noisy at {p['flood_factor']:g}x, one tier, "
        f"{p['partitions']} partitions, MAX_QUEUE_SIZE {p['queue']}.",
        "",
        "| engine | configuration | quiet alone p50 / p95 ms | quiet beside the flood "
        "p50 / p95 ms | p95 flood / alone | noisy answered (of which REJECTED) / sent |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for engine, e in report["engines"].items():
        c = e["config"]
        label = f"fake ({p['fake_latency_ms']:g} ms)" if engine == "fake" else engine
        label += f", {c['slots']} slots, quiet {c['quiet_rate']:g}/s"
        for name, r in e["runs"].items():
            lines.append(
                f"| {label} | {name} | {r['alone']['p50_ms']:.0f} / {r['alone']['p95_ms']:.0f} "
                f"| {r['flood']['p50_ms']:.0f} / {r['flood']['p95_ms']:.0f} "
                f"| **{r['p95_flood_over_alone']:.2f}x** "
                f"| {r['noisy_answered_when_quiet_done']} ({r['noisy_rejected']}) "
                f"/ {r['noisy_sent']} |"
            )
    lines += ["", "Goal: quiet p95 beside the flood <= 2x alone."]
    return "\n".join(lines)


def _cmd(args: argparse.Namespace) -> int:
    overrides: dict[str, dict[str, Any]] = {}
    for engine in args.engines:
        o = overrides.setdefault(engine, {})
        for key in ("slots", "quiet_rate", "seconds", "max_tokens"):
            value = getattr(args, key)
            if value is not None:
                o[key] = value
    params = {
        "flood_factor": args.flood_factor,
        "lead_s": args.lead_s,
        "partitions": args.partitions,
        "queue": args.queue,
        "fake_latency_ms": args.fake_latency_ms,
    }
    with kit.bench_broker() as bootstrap:
        report = run_fairness_bench(
            bootstrap,
            engines=args.engines,
            configs=args.configs,
            args=params,
            overrides=overrides,
            progress=not args.no_progress,
        )
    kit.emit(report, args, markdown)
    return 0


def _engines(text: str) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    if not names or any(n not in DEFAULTS for n in names):
        raise argparse.ArgumentTypeError(f"engines are fake, llama; got {text!r}")
    return names


def _configs(text: str) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    if not names or any(n not in CONFIGS for n in names):
        raise argparse.ArgumentTypeError(f"configurations are {', '.join(CONFIGS)}")
    return names


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg,unused-ignore]
    """Add ``bench fairness`` to the ``bench`` subcommands."""
    p = sub.add_parser("fairness", help="a quiet source's latency alone vs beside a 10x flood")
    p.add_argument("--engines", type=_engines, default=["fake"])
    p.add_argument("--configs", type=_configs, default=list(CONFIGS), help="comma-separated")
    p.add_argument("--flood-factor", type=float, default=10.0, help="noisy rate / quiet rate")
    p.add_argument("--lead-s", type=float, default=2.0, help="flood alone before quiet starts")
    p.add_argument("--partitions", type=int, default=4, help="partitions per tier topic")
    p.add_argument("--queue", type=int, default=256, help="MAX_QUEUE_SIZE")
    p.add_argument("--fake-latency-ms", type=float, default=50.0)
    p.add_argument("--slots", type=int, default=None, help="MAX_CONCURRENT_REQUESTS")
    p.add_argument("--quiet-rate", type=float, default=None, help="quiet requests/s")
    p.add_argument("--seconds", type=float, default=None, help="quiet stream length")
    p.add_argument("--max-tokens", type=int, default=None)
    kit.common_args(p)
    p.set_defaults(func=_cmd)
