"""``explainstream bench report``: plots and REPORT.md from the benchmarks' JSON files.

Reads ``<dir>/{engine,peer,pipeline,priority,memory,scale,e2e}.json`` (whichever exist),
writes PNG plots with matplotlib and ``REPORT.md`` (machine, date, the headline table of
goals, each benchmark's summary, the plots, and ``NOTES.md`` — the hand-written analysis —
when present). Needs matplotlib (in the ``dev`` extra).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

__all__ = ["build_report", "headline", "register"]

NAMES = ("engine", "peer", "pipeline", "priority", "memory", "scale", "e2e", "quality", "finetuned")


def load(directory: Path) -> dict[str, dict[str, Any]]:
    """Every ``<name>.json`` present in ``directory``."""
    out = {}
    for name in NAMES:
        path = directory / f"{name}.json"
        if path.is_file():
            out[name] = json.loads(path.read_text())
    return out


def _num(value: Any) -> float:
    return float("nan") if value is None else float(value)


def headline(data: dict[str, dict[str, Any]]) -> list[tuple[str, str, str, str]]:
    """(benchmark, goal, measured, verdict) for every goal that has a measurement."""
    rows: list[tuple[str, str, str, str]] = []

    def verdict(ok: bool, miss: str) -> str:
        return "met" if ok else f"missed: {miss}"

    if "pipeline" in data:
        p = data["pipeline"]
        r = _num(p.get("service_over_raw_results_per_s"))
        rows.append(
            (
                "pipeline",
                "service >= 0.5x raw aiokafka loop (results/s)",
                f"{r:.2f}x",
                verdict(r >= 0.5, f"{r / 0.5:.0%} of the goal"),
            )
        )
        a = _num(p.get("added_p99_ms"))
        rows.append(
            (
                "pipeline",
                f"added p99 <= 5 ms at {p.get('rate_fraction', 0.5):.0%} of saturation",
                f"{a:+.1f} ms (service p99 {_num(p['paced']['service']['p99_ms']):.1f} ms)",
                verdict(a <= 5, f"by {a - 5:.1f} ms"),
            )
        )
    if "priority" in data:
        for engine, s in data["priority"]["engines"].items():
            x = _num(s.get("p95_loaded_over_idle"))
            rows.append(
                (
                    "priority",
                    f"urgent p95 loaded <= 2x idle ({engine})",
                    f"{x:.2f}x ({_num(s['idle']['p95_ms']):.0f} -> "
                    f"{_num(s['loaded']['p95_ms']):.0f} ms)",
                    verdict(x <= 2, f"{x / 2:.1f}x the goal"),
                )
            )
    if "memory" in data:
        f = data["memory"]["flatness"]
        sp = _num(f.get("spread"))
        rows.append(
            (
                "memory",
                f"RSS flat within 10% after warm-up ({data['memory']['requests']} backlog)",
                f"{sp:.1%} ({_num(f.get('rss_mb_min')):.0f}-{_num(f.get('rss_mb_max')):.0f} MB)",
                verdict(sp <= 0.10, f"by {(sp - 0.10) * 100:.1f} points"),
            )
        )
    if "scale" in data:
        for mode, m in data["scale"]["modes"].items():
            for n in ("2", "3"):
                s = _num(m["speedup"].get(n))
                rows.append(
                    (
                        "scale",
                        f"{n} consumers >= {0.9 * int(n):.1f}x one ({mode})",
                        f"{s:.2f}x",
                        verdict(s >= 0.9 * int(n), f"{s / (0.9 * int(n)):.0%} of the goal"),
                    )
                )
            worst = max(m["events"], key=lambda e: e["group_gap_s"], default=None)
            if worst:
                g = worst["group_gap_s"]
                steady = max(
                    (x["partition_gap_s"] for x in m.get("steady_gaps", {}).values()), default=0
                )
                rows.append(
                    (
                        "scale",
                        f"pause <= 2 s ({mode}: longest output gap of the group, any event)",
                        f"{g:.2f} s ({worst['kind']} #{worst['member']}); longest partition "
                        f"gap in an event {max(e['partition_gap_s'] for e in m['events']):.1f} s"
                        f" vs {steady:.1f} s with no change",
                        verdict(g <= 2, f"by {g - 2:.2f} s"),
                    )
                )
    if "engine" in data:
        for c, r in data["engine"].get("ratio_llama_over_sequential", {}).items():
            rows.append(
                ("engine", f"llama / sequential tokens/s, concurrency {c}", f"{r:.2f}x", "figure")
            )
    if "peer" in data:
        for c, r in data["peer"].get("ratio_llama_over_llama_server", {}).items():
            rows.append(
                ("peer", f"llama / llama-server tokens/s, concurrency {c}", f"{r:.2f}x", "figure")
            )
    if "quality" in data:
        rows += _quality_rows(data["quality"])
    if "finetuned" in data:
        rows += _finetuned_rows(data["finetuned"])
    if "e2e" in data:
        r = _num(data["e2e"].get("llama_over_sequential_explanations_per_min"))
        rows.append(
            ("e2e", "llama vs sequential explanations/min through Kafka", f"{r:.2f}x", "figure")
        )
    return rows


def _quality_rows(q: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    runs = {r["policy"]: r for r in q.get("runs", [])}
    r = runs.get("repair")
    if r is None:
        return []
    share, tps = _num(r.get("model_share")), _num(r.get("tokens_per_s_vs_off"))
    return [
        (
            "quality",
            "GROUNDING=repair: the model writes >= 70 % of OK results (stretch 90 %)",
            f"{share:.0%} (published grounded {_num(r.get('published_grounded')):.0%})",
            "met" if share >= 0.7 else f"missed: {share / 0.7:.0%} of the goal",
        ),
        (
            "quality",
            "GROUNDING=repair costs <= 15 % of tokens/s vs off",
            f"{tps:.2f}x (results/s {_num(r.get('results_per_s_vs_off')):.2f}x, "
            f"p95 {_num(r.get('p95_vs_off')):.2f}x)",
            "met" if tps >= 0.85 else f"missed: by {0.85 - tps:.2f}",
        ),
    ]


def _finetuned_rows(q: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """The fine-tuned model beside the base (``bench quality --compare-model``)."""
    r = next((x for x in q.get("comparison", []) if x["policy"] == "repair"), None)
    if r is None:
        return []
    share, failed = r["model_share"], r["first_answer_failed"]

    def verdict(ok: bool, miss: str) -> str:
        return "met" if ok else f"missed: {miss}"

    return [
        (
            "finetuned",
            "fine-tuned: the model writes >= 90 % of OK results (GROUNDING=repair)",
            f"{_num(share[1]):.1%} (base {_num(share[0]):.1%}, same contexts, same run)",
            verdict(_num(share[1]) >= 0.9, f"by {100 * (0.9 - _num(share[1])):.1f} points"),
        ),
        (
            "finetuned",
            "fine-tuned: first answers failing a check <= 10 %",
            f"{_num(failed[1]):.1%} (base {_num(failed[0]):.1%})",
            verdict(_num(failed[1]) <= 0.1, f"by {100 * (_num(failed[1]) - 0.1):.1f} points"),
        ),
        (
            "finetuned",
            "fine-tuned / base tokens/s (GROUNDING=repair)",
            f"{_num(r['tokens_per_s_ratio']):.2f}x",
            "figure",
        ),
    ]


def _plots(data: dict[str, dict[str, Any]], out: Path) -> list[tuple[str, str]]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    made: list[tuple[str, str]] = []

    def save(fig: Any, name: str, title: str) -> None:
        fig.tight_layout()
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        made.append((name, title))

    if "engine" in data or "peer" in data:
        fig, ax = plt.subplots(figsize=(6.4, 4))
        series: dict[str, list[tuple[int, float]]] = {}
        for src in ("engine", "peer"):
            tokens = data.get(src, {}).get("max_tokens", "?")
            for r in data.get(src, {}).get("runs", []):
                if {"engine", "concurrency", "tokens_per_s"} <= set(r):
                    # Runs of different lengths are different work: say which run a line is.
                    label = f"{r['engine']} (bench {src}, {tokens} tokens)"
                    series.setdefault(label, []).append((r["concurrency"], r["tokens_per_s"]))
        for label, pts in sorted(series.items()):
            pts.sort()
            ax.plot([c for c, _ in pts], [t for _, t in pts], marker="o", label=label)
        ax.set_xscale("log", base=2)
        ticks = sorted({c for pts in series.values() for c, _ in pts})
        ax.set_xticks(ticks, [str(c) for c in ticks])
        ax.set_xlabel("concurrency (requests in flight)")
        ax.set_ylabel("aggregate tokens/s")
        ax.set_title("Engine throughput vs concurrency")
        ax.legend()
        ax.grid(alpha=0.3)
        save(fig, "throughput_vs_concurrency.png", "Throughput vs concurrency per engine")
    if "priority" in data:
        engines = data["priority"]["engines"]
        fig, axes = plt.subplots(1, len(engines), figsize=(5 * len(engines), 3.8), squeeze=False)
        for ax, (engine, s) in zip(axes[0], engines.items(), strict=False):
            for key, label in (("idle_ms", "urgent alone"), ("loaded_ms", "urgent + low backlog")):
                xs = sorted(v for v in s[key] if v is not None)
                if xs:
                    ax.step(
                        xs, [(i + 1) / len(xs) for i in range(len(xs))], where="post", label=label
                    )
            ax.set_xlabel("urgent latency, ms (request -> result record)")
            ax.set_ylabel("fraction of requests")
            ax.set_title(f"{engine}: urgent latency CDF")
            ax.legend()
            ax.grid(alpha=0.3)
        save(fig, "priority_cdf.png", "Urgent latency CDF, idle vs loaded")
    if "memory" in data:
        m = data["memory"]
        fig, ax = plt.subplots(figsize=(6.4, 3.8))
        ts = [s["t_s"] for s in m["samples"]]
        ax.plot(ts, [s["rss_mb"] for s in m["samples"]], label="consumer RSS")
        warm = next((s["t_s"] for s in m["samples"] if s["results"] >= m["warmup_results"]), None)
        if warm is not None:
            ax.axvline(warm, color="grey", linestyle="--", label="end of warm-up")
        ax2 = ax.twinx()
        ax2.plot(ts, [s["results"] for s in m["samples"]], color="tab:orange", alpha=0.6)
        ax2.set_ylabel("results published", color="tab:orange")
        ax.set_xlabel("seconds since the consumer started")
        ax.set_ylabel("RSS, MB")
        ax.set_ylim(bottom=0)
        ax.set_title(f"Consumer RSS over a {m['requests']:,}-request backlog")
        ax.legend(loc="lower right")
        save(fig, "memory_rss.png", "Consumer RSS over time")
    if "scale" in data:
        modes = data["scale"]["modes"]
        fig, axes = plt.subplots(len(modes) + 1, 1, figsize=(7.5, 3 * (len(modes) + 1)))
        ax = axes[0]
        width = 0.35
        for i, (mode, m) in enumerate(modes.items()):
            ns = sorted(m["results_per_s"], key=int)
            ax.bar(
                [int(n) + (i - 0.5) * width for n in ns],
                [m["results_per_s"][n] for n in ns],
                width,
                label=mode,
            )
        base = next(iter(modes.values()))["results_per_s"].get("1", 0)
        ax.plot([1, 2, 3], [base, 2 * base, 3 * base], "k--", label="linear")
        ax.set_xticks([1, 2, 3])
        ax.set_xlabel("consumers in the group")
        ax.set_ylabel("results/s")
        ax.set_title("Scale-out")
        ax.legend()
        for ax, (mode, m) in zip(axes[1:], modes.items(), strict=False):
            per_s = m["results_per_second_timeline"]
            ax.plot(range(len(per_s)), per_s, drawstyle="steps-post")
            for e in m["events"]:
                ax.axvspan(e["start_s"], e["end_s"], alpha=0.15, color="tab:red")
                ax.text(
                    e["start_s"],
                    max(per_s or [1]) * 0.95,
                    f"{e['kind']} #{e['member']}",
                    fontsize=7,
                    rotation=90,
                    va="top",
                )
            ax.set_ylabel("results/s")
            ax.set_title(f"{mode} membership: output per second, events shaded")
        axes[-1].set_xlabel("seconds")
        save(fig, "scale.png", "Scale-out and rebalance gaps")
    if "pipeline" in data:
        p = data["pipeline"]
        fig, axes = plt.subplots(1, 2, figsize=(8, 3.5))
        sides = ["raw", "service"]
        axes[0].bar(sides, [p["saturation"][s]["results_per_s"] for s in sides])
        axes[0].set_ylabel("results/s (backlog drain)")
        axes[0].set_title("Saturation")
        for s in sides:
            q = p["paced"][s]
            axes[1].plot(
                ["p50", "p95", "p99"], [q["p50_ms"], q["p95_ms"], q["p99_ms"]], marker="o", label=s
            )
        axes[1].set_ylabel("ms, request -> result record")
        axes[1].set_title(f"Latency at {p['paced_rate_per_s']:.0f} requests/s")
        axes[1].legend()
        save(fig, "pipeline.png", "Service vs raw aiokafka loop")
    return made


def build_report(directory: Path) -> Path:
    """Write the plots and REPORT.md in ``directory``; returns the REPORT.md path."""
    from consumer.dev.bench import e2e, memory, pipeline, priority, scale

    data = load(directory)
    plots = _plots(data, directory)
    machines = {n: d["machine"] for n, d in data.items() if isinstance(d.get("machine"), dict)}
    # The Kafka benches record the most (CPU model, Python, date, load): describe by them.
    m: dict[str, Any] = max(machines.values(), key=len, default={})
    runs = []
    for name, report in data.items():
        x = machines.get(name, {})
        when = x.get("date") or report.get("date") or "no date recorded"
        load_1m = x.get("loadavg_1m_at_start")
        rev = x.get("revision")
        runs.append(
            f"{name} {when}"
            + ("" if load_1m is None else f" (load {load_1m})")
            + ("" if not rev else f" at `{rev}`")
        )
    lines = [
        "# explainstream benchmarks",
        "",
        f"Machine: {m.get('cpus', '?')} CPUs, {m.get('cpu_model') or 'CPU model unknown'}, "
        f"{m.get('platform', '')}, Python {m.get('python', '?')}.",
        "",
        f"Runs (1-minute load average at the start): {'; '.join(runs) or 'none'}.",
        "",
        "Every comparison was measured side by side in the same run (alternating order where "
        "there are rounds); read ratios, not absolute figures. Built by "
        "`explainstream bench report` from the JSON files beside this file.",
        "",
        "## Headline",
        "",
        "| benchmark | goal | measured | verdict |",
        "|---|---|---|---|",
        *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in headline(data)),
        "",
    ]
    notes = directory / "NOTES.md"
    if notes.is_file():
        lines += ["## Analysis", "", notes.read_text().strip(), ""]
    summaries = {
        "pipeline": pipeline.markdown,
        "priority": priority.markdown,
        "memory": memory.markdown,
        "scale": scale.markdown,
        "e2e": e2e.markdown,
    }
    lines += ["## Results", ""]
    for name, fn in summaries.items():
        if name in data:
            lines += [fn(data[name]).replace("### ", "### "), ""]
        else:
            lines += [f"### bench {name}", "", "_not run (no JSON file)._", ""]
    missing = [n for n in ("engine", "peer") if n not in data]
    if missing:
        lines += [f"_No {' or '.join(missing)}.json: the throughput plot shows what exists._", ""]
    lines += ["## Plots", ""]
    lines += [f"![{title}]({name})" + "\n" for name, title in plots]
    path = directory / "REPORT.md"
    path.write_text("\n".join(lines).rstrip() + "\n")
    return path


def _cmd(args: argparse.Namespace) -> int:
    path = build_report(Path(args.dir))
    print(path)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``bench report`` to the ``bench`` subcommands."""
    p = sub.add_parser("report", help="plots + REPORT.md from the benchmarks' JSON files")
    p.add_argument("--dir", default="docs/benchmarks", help="where the JSON files are")
    p.set_defaults(func=_cmd)
