"""``explainstream bench quality``: how often answers agree with their data, per GROUNDING.

The same fixed contexts (:data:`~consumer.dev.quality_contexts.QUALITY_CONTEXTS`), seeds and
temperature go through one loaded engine once per policy (``off``, ``flag``, ``repair``, in
turn, each after the same warm-up), with the service's own code path: ``engine.generate``
then :func:`consumer.runtime.grounded.ground`. Every answer, whatever the policy, is also
checked, so ``off`` shows what the checker would have caught. Reported per policy: the
failure rate of each check on the model's first answers, the share of results written by
the model and by the template, repairs tried and won, engine tokens/s, results/s and
latency percentiles, and a sample of answers beside the figures. Printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections import Counter
from typing import Any

from consumer.config import GroundingPolicy
from consumer.core.grounding import CHECKS, check
from consumer.dev.bench.kit import common_args, emit, machine_info, ratio
from consumer.dev.bench.stats import percentile
from consumer.dev.quality_contexts import QUALITY_CONTEXTS
from consumer.engines.base import Engine, GenerationRequest
from consumer.engines.profiles import prompt_instructions
from consumer.runtime.grounded import ground, number_grammar
from schemas.models import GroundingSource

__all__ = ["compare", "register", "run_policy", "run_quality_bench"]


def _request(i: int, max_tokens: int, temperature: float, grammar: bool) -> GenerationRequest:
    profile, context = QUALITY_CONTEXTS[i % len(QUALITY_CONTEXTS)]
    return GenerationRequest(
        grammar=number_grammar(context) if grammar else None,
        request_id=f"quality-{i}",
        context=context,
        prompt_profile=profile,
        max_tokens=max_tokens,
        temperature=temperature,
        seed=i,
    )


async def run_policy(
    engine: Engine,
    policy: GroundingPolicy,
    n: int,
    concurrency: int,
    max_tokens: int,
    temperature: float,
    samples: int = 6,
    grammar_first: bool = False,
) -> dict[str, Any]:
    """One policy over the first ``n`` contexts (cycled), ``concurrency`` in flight."""
    latencies: list[float] = []
    first_fail: Counter[str] = Counter()
    published_fail: Counter[str] = Counter()
    sources: Counter[str] = Counter()
    answers: list[dict[str, Any]] = []
    tokens = repairs = repaired = failed = grounded_published = first_ok = 0
    next_i = 0

    async def worker() -> None:
        nonlocal next_i, tokens, repairs, repaired, failed, grounded_published, first_ok
        while next_i < n:
            i = next_i
            next_i += 1
            request = _request(i, max_tokens, temperature, grammar_first)
            t0 = time.perf_counter()
            try:
                first = await engine.generate(request)
                answer = await ground(engine, request, first, policy)
            except Exception as exc:
                failed += 1
                print(f"request {i}: {exc!r}", file=sys.stderr)
                continue
            latencies.append(time.perf_counter() - t0)
            tokens += answer.result.completion_tokens
            prompt = prompt_instructions(request.prompt_profile)
            verdict = check(first.text, request.context, prompt)  # the first answer, always
            first_ok += verdict.grounded
            for name in {f.split(":", 1)[0] for f in verdict.failed}:
                first_fail[name] += 1
            published = check(answer.result.text, request.context, prompt)
            grounded_published += published.grounded
            for name in {f.split(":", 1)[0] for f in published.failed}:
                published_fail[name] += 1
            g = answer.grounding
            source = "model" if g is None or g.source is GroundingSource.MODEL else "template"
            sources[source] += 1
            if g is not None and g.attempts > 1:
                repairs += 1
                repaired += source == "model"
            if len(answers) < samples or (not verdict.grounded and len(answers) < 2 * samples):
                answers.append(
                    {
                        "symbol": request.context.get("symbol"),
                        "profile": request.prompt_profile,
                        "first": first.text,
                        "first_failed": list(verdict.failed),
                        "published": answer.result.text,
                        "source": source,
                        "attempts": 1 if g is None else g.attempts,
                    }
                )

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - t0
    done = len(latencies)
    ms = sorted(x * 1000 for x in latencies)
    return {
        "policy": policy.value,
        "requests": n,
        "answered": done,
        "failed": failed,
        "first_answer_grounded": ratio(first_ok, done),
        "first_answer_fail_rate": {c: ratio(first_fail[c], done) for c in CHECKS},
        "published_grounded": ratio(grounded_published, done),
        "published_fail_rate": {c: ratio(published_fail[c], done) for c in CHECKS},
        "model_share": ratio(sources["model"], done),
        "template_share": ratio(sources["template"], done),
        "repairs": repairs,
        "repairs_won": repaired,
        "tokens_per_s": ratio(tokens, wall),
        "results_per_s": ratio(done, wall),
        "p50_ms": percentile(ms, 50),
        "p95_ms": percentile(ms, 95),
        "wall_s": wall,
        "samples": answers,
    }


async def run_quality_bench(
    policies: list[str],
    n: int,
    concurrency: int,
    max_tokens: int,
    temperature: float,
    settings_overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Every policy on one loaded engine (see module docstring)."""
    from dataclasses import asdict

    from consumer.config import Settings
    from consumer.engines import create_engine

    overrides = {"max_concurrent_requests": concurrency, **(settings_overrides or {})}
    engine = create_engine(Settings.from_env(**overrides))
    await engine.start()
    runs = []
    try:
        await engine.warmup()
        for spec in policies:
            policy = GroundingPolicy(spec.replace("-", "+").split("+")[0])
            # As the service does: checked answers are generated under the number grammar.
            grammar = spec.endswith("+grammar") or (
                policy is not GroundingPolicy.OFF and not spec.endswith("-grammar")
            )
            shape = (concurrency, max_tokens, temperature)
            await run_policy(engine, policy, min(n, 8), *shape, samples=0, grammar_first=grammar)
            run = await run_policy(engine, policy, n, *shape, grammar_first=grammar)
            run["policy"] = spec
            runs.append(run)
        info = asdict(engine.model_info())
    finally:
        await engine.stop()
    base = next((r for r in runs if r["policy"] == "off"), None)
    for r in runs:
        if base is not None:
            r["tokens_per_s_vs_off"] = ratio(r["tokens_per_s"], base["tokens_per_s"])
            r["results_per_s_vs_off"] = ratio(r["results_per_s"], base["results_per_s"])
            r["p95_vs_off"] = ratio(r["p95_ms"], base["p95_ms"])
    return {
        "benchmark": "quality",
        "engine": engine.name,
        "model": info,
        "contexts": len(QUALITY_CONTEXTS),
        "requests": n,
        "concurrency": concurrency,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "machine": machine_info(),
        "runs": runs,
    }


def _pct(x: Any) -> str:
    return "n/a" if x is None or x != x else f"{x:.0%}"


def markdown(report: dict[str, Any]) -> str:
    """The report as a markdown summary: one row per policy, the checks, sample answers."""
    model = report.get("model") or {}
    lines = [
        f"# bench quality: {report['requests']} requests over {report['contexts']} contexts, "
        f"{model.get('model_name', '?')} ({model.get('quantization', '?')}), "
        f"concurrency {report['concurrency']}, max_tokens {report['max_tokens']}, "
        f"temperature {report['temperature']}",
        "",
        "| GROUNDING | first answers grounded | published grounded | model | template | "
        "repairs (won) | tokens/s | results/s | p95 ms | tokens/s vs off | p95 vs off |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in report["runs"]:
        lines.append(
            f"| {r['policy']} | {_pct(r['first_answer_grounded'])} | "
            f"{_pct(r['published_grounded'])} | {_pct(r['model_share'])} | "
            f"{_pct(r['template_share'])} | {r['repairs']} ({r['repairs_won']}) | "
            f"{r['tokens_per_s']:.1f} | {r['results_per_s']:.2f} | {r['p95_ms']:.0f} | "
            f"{r.get('tokens_per_s_vs_off', float('nan')):.2f}x | "
            f"{r.get('p95_vs_off', float('nan')):.2f}x |"
        )
    lines += [
        "",
        "First answers failing each check:",
        "",
        "| check | " + " | ".join(r["policy"] for r in report["runs"]) + " |",
        "|---|" + "---|" * len(report["runs"]),
    ]
    for c in CHECKS:
        lines.append(
            f"| {c} | "
            + " | ".join(_pct(r["first_answer_fail_rate"][c]) for r in report["runs"])
            + " |"
        )
    last = report["runs"][-1] if report["runs"] else None
    if last is not None:
        lines += ["", f"Sample answers ({last['policy']}):", ""]
        for a in last["samples"]:
            first = " ".join(a["first"].split())[:220]
            lines.append(f'- **{a["symbol"]}** ({a["profile"]}): "{first}"')
            if a["first_failed"]:
                lines.append(f"  - failed: {', '.join(a['first_failed'])}")
            if a["published"] != a["first"]:
                pub = " ".join(a["published"].split())[:220]
                lines.append(f'  - published ({a["source"]}, {a["attempts"]} attempts): "{pub}"')
    return "\n".join(lines)


def plot(report: dict[str, Any], path: str) -> None:
    """Two panels: first-answer failure rate per check, and who answered, per policy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = report["runs"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    width = 0.8 / max(1, len(runs))
    for k, r in enumerate(runs):
        xs = [i + k * width for i in range(len(CHECKS))]
        left.bar(
            xs,
            [100 * (r["first_answer_fail_rate"][c] or 0) for c in CHECKS],
            width,
            label=r["policy"],
        )
    left.set_xticks([i + 0.4 - width / 2 for i in range(len(CHECKS))], CHECKS, rotation=30)
    left.set_ylabel("first answers failing (%)")
    left.set_title("What the checker catches")
    left.legend()
    names = [r["policy"] for r in runs]
    model = [100 * (r["model_share"] or 0) for r in runs]
    grounded = [100 * (r["published_grounded"] or 0) for r in runs]
    right.bar(names, model, label="written by the model")
    right.bar(names, [100 - m for m in model], bottom=model, label="written by the template")
    right.plot(names, grounded, "ko-", label="published grounded")
    right.set_ylim(0, 105)
    right.set_ylabel("% of OK results")
    right.set_title("Who answers, and is it grounded")
    right.legend(loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _policies(text: str) -> list[str]:
    """``off,flag,repair`` as the service runs them (the first answer under the number
    grammar unless ``off``); ``+grammar`` / ``-grammar`` force it on or off."""
    specs = [x.strip() for x in text.split(",") if x.strip()]
    for spec in specs:
        base, _, extra = spec.replace("-", "+").partition("+")
        if base not in {p.value for p in GroundingPolicy} or extra not in ("", "grammar"):
            raise argparse.ArgumentTypeError(
                f"policies are off, flag, repair, each optionally +grammar or -grammar: {text!r}"
            )
    return specs


def compare(base: dict[str, Any], other: dict[str, Any]) -> list[dict[str, Any]]:
    """Per policy, the other model's figures beside the base's (same contexts and seeds)."""
    rows = []
    for a in base["runs"]:
        b = next((r for r in other["runs"] if r["policy"] == a["policy"]), None)
        if b is None:
            continue
        rows.append(
            {
                "policy": a["policy"],
                "first_answer_failed": [1 - (a["first_answer_grounded"] or 0),
                                        1 - (b["first_answer_grounded"] or 0)],
                "model_share": [a["model_share"], b["model_share"]],
                "published_grounded": [a["published_grounded"], b["published_grounded"]],
                "tokens_per_s": [a["tokens_per_s"], b["tokens_per_s"]],
                "tokens_per_s_ratio": ratio(b["tokens_per_s"], a["tokens_per_s"]),
                "first_answer_fail_rate": {
                    c: [a["first_answer_fail_rate"][c], b["first_answer_fail_rate"][c]]
                    for c in CHECKS
                },
            }
        )  # fmt: skip
    return rows


def compare_markdown(report: dict[str, Any]) -> str:
    """Both models' reports, then the side-by-side table."""
    base, other = report, report["compare"]
    names = [m.get("model_name", "?") for m in (base["model"], other["model"])]
    lines = [markdown(base), "", markdown(other), "", f"## {names[1]} beside {names[0]}", ""]
    lines += [
        "| GROUNDING | first answers failing (base → other) | written by the model | "
        "published grounded | tokens/s (other/base) |",
        "|---|---|---|---|---|",
    ]
    for r in report["comparison"]:
        fa, ms, pg = r["first_answer_failed"], r["model_share"], r["published_grounded"]
        lines.append(
            f"| {r['policy']} | {_pct(fa[0])} → {_pct(fa[1])} | {_pct(ms[0])} → {_pct(ms[1])} | "
            f"{_pct(pg[0])} → {_pct(pg[1])} | {r['tokens_per_s_ratio']:.2f}x |"
        )
    return "\n".join(lines)


def _cmd(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {"engine": args.engine}
    if args.model_path:
        overrides["model_path"] = args.model_path
    if args.threads:
        overrides["n_threads"] = args.threads
    shape = (
        args.policies,
        args.requests or len(QUALITY_CONTEXTS),
        args.concurrency,
        args.max_tokens,
        args.temperature,
    )
    report = asyncio.run(run_quality_bench(*shape, overrides))
    render = markdown
    if args.compare_model:
        other = asyncio.run(
            run_quality_bench(*shape, {**overrides, "model_path": args.compare_model})
        )
        report["compare"] = other
        report["comparison"] = compare(report, other)
        render = compare_markdown
    if args.plot:
        plot(report, args.plot)
    emit(report, args, render)
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``bench quality``."""
    q = sub.add_parser("quality", help="grounding: checks failed, model vs template, cost")
    q.add_argument("--policies", type=_policies, default=_policies("off,flag,repair"))
    q.add_argument("--engine", choices=["llama", "sequential", "fake"], default="llama")
    q.add_argument("--requests", type=int, default=0, help="default: one per context (48)")
    q.add_argument("--concurrency", type=int, default=4)
    q.add_argument("--max-tokens", type=int, default=120)
    q.add_argument("--temperature", type=float, default=0.1)
    q.add_argument("--model-path", default=None, help="GGUF file (default: MODEL_PATH)")
    q.add_argument("--threads", type=int, default=0, help="ggml threads (default: N_THREADS)")
    q.add_argument(
        "--compare-model",
        default=None,
        metavar="GGUF",
        help="run the same contexts on this model too and print both side by side",
    )
    q.add_argument("--plot", default=None, metavar="PNG", help="also write the plot here")
    common_args(q)
    q.set_defaults(func=_cmd)
