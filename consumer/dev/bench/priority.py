"""``explainstream bench priority``: urgent latency alone and under a saturating low backlog.

Each round starts one ``explainstream consume`` process on fresh topics (one partition per
tier) and runs two phases on it:
  * idle: a steady urgent stream (``--urgent`` requests at ``--urgent-rate``/s) alone;
  * loaded: ``--backlog`` low-tier requests are published first, and once the consumer is
    working through them the same urgent stream runs again.
Latency is result CreateTime - request CreateTime. The loaded phase checks that the backlog
was still unfinished when the last urgent result arrived (``saturated``). It runs with the
fake engine at a fixed latency and with the llama engine (the bundled model).
"""

from __future__ import annotations

import argparse
import asyncio
from typing import Any

from consumer.dev.bench import kit
from consumer.dev.bench.cli import percentile

__all__ = ["register", "run_priority_bench"]

#: Per-engine defaults: slots, urgent stream, backlog, tokens.
DEFAULTS: dict[str, dict[str, Any]] = {
    "fake": {"slots": 8, "urgent": 60, "urgent_rate": 5.0, "backlog": 3000, "max_tokens": 32},
    "llama": {"slots": 4, "urgent": 12, "urgent_rate": 0.5, "backlog": 150, "max_tokens": 32},
}


async def _round(
    bootstrap: str, engine: str, cfg: dict[str, Any], fake_latency_ms: float, bar: Any
) -> dict[str, Any]:
    prefix = kit.prefix(f"prio{engine}")
    await kit.ensure(bootstrap, prefix, partitions=1)
    proc = kit.ConsumerProcess(
        kit.consumer_env(
            bootstrap,
            prefix,
            engine=engine,
            fake_latency_ms=fake_latency_ms,
            max_concurrent_requests=cfg["slots"],
            kafka_partitions=1,
            request_timeout=600,
        ),
        name=f"prio-{engine}",
    )
    producer = kit.make_producer(bootstrap)
    collector = kit.ResultCollector(bootstrap, f"{prefix}.results", on_record=bar.advance)
    await producer.start()
    await collector.start()
    urgent_topic, low_topic = f"{prefix}.requests.urgent", f"{prefix}.requests.low"
    mt = cfg["max_tokens"]
    try:
        proc.start()
        await proc.wait_ready()
        idle_sent: dict[bytes, int] = {}
        idle = [
            kit.request_bytes(i, max_tokens=mt, tag=f"{prefix}-ui") for i in range(cfg["urgent"])
        ]
        await kit.publish_paced(producer, urgent_topic, idle, cfg["urgent_rate"], idle_sent)
        await collector.wait_for(len(idle), timeout_s=600)

        low_sent: dict[bytes, int] = {}
        low = [
            kit.request_bytes(i, max_tokens=mt, tag=f"{prefix}-lo") for i in range(cfg["backlog"])
        ]
        await kit.publish(producer, low_topic, low, low_sent)
        base = len(collector.arrivals)
        await collector.wait_for(base + 1, timeout_s=600)  # the backlog is being worked on
        loaded_sent: dict[bytes, int] = {}
        urgent = [
            kit.request_bytes(i, max_tokens=mt, tag=f"{prefix}-ul") for i in range(cfg["urgent"])
        ]
        await kit.publish_paced(producer, urgent_topic, urgent, cfg["urgent_rate"], loaded_sent)
        while sum(1 for a in collector.arrivals if a.key in loaded_sent) < len(urgent):
            await collector.wait_for(len(collector.arrivals) + 1, timeout_s=600)
        low_done = sum(1 for a in collector.arrivals if a.key in low_sent)
        # The engine's own counters (slots, preemptions...) say how the urgent ones got in.
        stats = await asyncio.to_thread(proc.admin_stats)
    finally:
        await producer.stop()
        await collector.stop()
        await proc.stop()
        proc.cleanup()
    return {
        "idle_ms": kit.latencies_ms(collector.arrivals, idle_sent),
        "loaded_ms": kit.latencies_ms(collector.arrivals, loaded_sent),
        "idle_breakdown": kit.breakdown_ms(collector.arrivals, idle_sent),
        "loaded_breakdown": kit.breakdown_ms(collector.arrivals, loaded_sent),
        "low_done_during_loaded": low_done,
        "saturated": low_done < len(low),
        "engine_status": stats.get("engine", {}),
    }


def _summary(engine: str, cfg: dict[str, Any], rounds: list[dict[str, Any]]) -> dict[str, Any]:
    idle = sorted(x for r in rounds for x in r["idle_ms"])
    loaded = sorted(x for r in rounds for x in r["loaded_ms"])
    out: dict[str, Any] = {
        "engine": engine,
        **cfg,
        "rounds": len(rounds),
        "idle": kit.latency_summary(idle),
        "loaded": kit.latency_summary(loaded),
        "saturated_every_round": all(r["saturated"] for r in rounds),
        "low_done_during_loaded": [r["low_done_during_loaded"] for r in rounds],
        "engine_status_after_loaded": [r["engine_status"] for r in rounds],
        "idle_ms": idle,
        "loaded_ms": loaded,
    }
    for phase in ("idle", "loaded"):
        parts = sorted(
            (b for r in rounds for b in r.get(f"{phase}_breakdown", [])),
            key=lambda b: b["total_ms"],
        )
        out[f"{phase}_breakdown_mean"] = _mean_parts(parts)
        # The slowest tenth (at least one): what the p95 is made of.
        out[f"{phase}_breakdown_tail"] = _mean_parts(parts[-max(1, len(parts) // 10) :])
    out["p95_loaded_over_idle"] = kit.ratio(percentile(loaded, 95), percentile(idle, 95))
    out["p50_loaded_over_idle"] = kit.ratio(percentile(loaded, 50), percentile(idle, 50))
    return out


def _mean_parts(parts: list[dict[str, float]]) -> dict[str, float]:
    keys = ("total_ms", "engine_ms", "compute_ms", "outside_ms")
    return {k: round(sum(p[k] for p in parts) / len(parts), 1) if parts else 0.0 for k in keys}


def run_priority_bench(
    bootstrap: str,
    *,
    engines: list[str],
    rounds: int,
    fake_latency_ms: float,
    overrides: dict[str, dict[str, Any]] | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Idle and loaded urgent latency for each engine, ``rounds`` consumer runs each."""
    cfgs = {e: {**DEFAULTS[e], **(overrides or {}).get(e, {})} for e in engines}
    total = sum(rounds * (2 * c["urgent"] + c["backlog"]) for c in cfgs.values())
    bar = kit.Progress(total) if progress else kit.NullProgress()
    machine = kit.machine_info()

    async def main() -> dict[str, Any]:
        out = {}
        for engine, cfg in cfgs.items():
            runs = []
            for r in range(rounds):
                bar.label = f"{engine} round {r + 1}"
                runs.append(await _round(bootstrap, engine, cfg, fake_latency_ms, bar))
            out[engine] = _summary(engine, cfg, runs)
        return out

    results = asyncio.run(main())
    return {
        "benchmark": "priority",
        "machine": machine,
        "fake_latency_ms": fake_latency_ms,
        "engines": results,
    }


def markdown(report: dict[str, Any]) -> str:
    """The report as a markdown summary."""
    m = report["machine"]
    lines = [
        f"### bench priority ({m['date']}, {m['cpus']} CPUs)",
        "",
        "| engine | slots | urgent/s | low backlog | idle p50 / p95 ms | loaded p50 / p95 ms "
        "| p95 loaded / idle | backlog unfinished |",
        "|---|---:|---:|---:|---:|---:|---:|---|",
    ]
    for e, s in report["engines"].items():
        label = f"fake ({report['fake_latency_ms']:g} ms)" if e == "fake" else e
        lines.append(
            f"| {label} | {s['slots']} | {s['urgent_rate']:g} | {s['backlog']} | "
            f"{s['idle']['p50_ms']:.0f} / {s['idle']['p95_ms']:.0f} | "
            f"{s['loaded']['p50_ms']:.0f} / {s['loaded']['p95_ms']:.0f} | "
            f"**{s['p95_loaded_over_idle']:.2f}x** | {s['saturated_every_round']} |"
        )
    for e, s in report["engines"].items():
        counters = [c for c in s.get("engine_status_after_loaded", []) if "preemptions" in c]
        if counters:
            pre = [c["preemptions"] for c in counters]
            seqs = [round(c.get("mean_seqs_per_step", 0.0), 2) for c in counters]
            lines.append(
                f"\n{e} engine counters at the end of each loaded phase: preemptions {pre}, "
                f"mean sequences per decode step {seqs}."
            )
    for e, s in report["engines"].items():
        if "loaded_breakdown_tail" not in s:
            continue
        lines.append(f"\n{e}: where urgent latency goes (mean ms; total = engine + outside)")
        lines.append("")
        lines.append(
            "| requests | total | engine (slot to last token) | of which compute | outside |"
        )
        lines.append("|---|---:|---:|---:|---:|")
        for label, key in (
            ("idle, all", "idle_breakdown_mean"),
            ("loaded, all", "loaded_breakdown_mean"),
            ("loaded, slowest tenth", "loaded_breakdown_tail"),
        ):
            b = s[key]
            lines.append(
                f"| {label} | {b['total_ms']:.0f} | {b['engine_ms']:.0f} "
                f"| {b['compute_ms']:.0f} | {b['outside_ms']:.0f} |"
            )
    lines += ["", "Goal: urgent p95 under load <= 2x idle."]
    return "\n".join(lines)


def _cmd(args: argparse.Namespace) -> int:
    overrides: dict[str, dict[str, Any]] = {}
    for engine in args.engines:
        o = overrides.setdefault(engine, {})
        for key in ("urgent", "urgent_rate", "backlog", "slots", "max_tokens"):
            value = getattr(args, key)
            if value is not None:
                o[key] = value
    with kit.bench_broker() as bootstrap:
        report = run_priority_bench(
            bootstrap,
            engines=args.engines,
            rounds=args.rounds,
            fake_latency_ms=args.fake_latency_ms,
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


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``bench priority`` to the ``bench`` subcommands."""
    p = sub.add_parser("priority", help="urgent latency alone vs under a saturating low backlog")
    p.add_argument("--engines", type=_engines, default=["fake", "llama"])
    p.add_argument("--rounds", type=int, default=2, help="consumer runs per engine")
    p.add_argument("--fake-latency-ms", type=float, default=50.0)
    p.add_argument("--urgent", type=int, default=None, help="urgent requests per phase")
    p.add_argument("--urgent-rate", type=float, default=None, help="urgent requests/s")
    p.add_argument("--backlog", type=int, default=None, help="low-tier backlog")
    p.add_argument("--slots", type=int, default=None, help="MAX_CONCURRENT_REQUESTS")
    p.add_argument("--max-tokens", type=int, default=None)
    kit.common_args(p)
    p.set_defaults(func=_cmd)
