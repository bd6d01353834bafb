"""``explainstream bench engine``: the engines side by side on the same prompts.

Every engine gets the same contexts, profiles, seeds and temperature, and generates exactly
``--max-tokens`` tokens per request (end-of-generation is suppressed), so tokens/s compares
equal work. At each concurrency level ``--requests`` requests are kept ``concurrency`` in
flight at a time. Figures are printed, never asserted: benchmarks are not tests.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import platform
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from consumer.dev.bench.stats import (
    BENCH_CONTEXTS,
    EngineRun,
    format_table,
    percentile,
    ratios,
    summarize,
)
from consumer.engines.base import Engine, GenerationRequest

__all__ = [
    "BENCH_CONTEXTS",
    "EngineRun",
    "bench_one",
    "format_table",
    "percentile",
    "ratios",
    "register",
    "run_engine_bench",
    "summarize",
]


class _Progress:
    """A plain-text progress bar on stderr."""

    def __init__(self, total: int, stream: Any = None) -> None:
        self.total = max(total, 1)
        self.done = 0
        self.stream = stream if stream is not None else sys.stderr
        self.label = ""
        self._tty = bool(getattr(self.stream, "isatty", lambda: False)())
        self._last = -1

    def advance(self, n: int = 1) -> None:
        self.done += n
        pct = int(100 * self.done / self.total)
        if not self._tty and pct // 10 == self._last // 10 and self.done < self.total:
            return
        self._last = pct
        width = 30
        fill = int(width * self.done / self.total)
        bar = "#" * fill + "." * (width - fill)
        end = "" if self._tty and self.done < self.total else "\n"
        prefix = "\r" if self._tty else ""
        self.stream.write(f"{prefix}[{bar}] {self.done}/{self.total} {self.label:<24}{end}")
        self.stream.flush()


def _request(
    i: int, max_tokens: int, temperature: float, ignore_eos: bool = True
) -> GenerationRequest:
    profile, context = BENCH_CONTEXTS[i % len(BENCH_CONTEXTS)]
    return GenerationRequest(
        request_id=f"bench-{i}",
        context=context,
        prompt_profile=profile,
        max_tokens=max_tokens,
        temperature=temperature,
        seed=i,
        ignore_eos=ignore_eos,
    )


@dataclass(slots=True)
class _Sample:
    latencies_s: list[float]
    completion_tokens: int = 0
    wall_s: float = 0.0
    failed: int = 0
    steps: int = 0
    overhead_s: float = 0.0
    seqs: int = 0

    def add_steps(self, before: dict[str, Any], after: dict[str, Any]) -> None:
        """Add the engine's step counters between two ``stats()`` snapshots."""
        if "python_cpu_s" in after:
            self.steps += after["steps"] - before["steps"]
            self.overhead_s += after["python_cpu_s"] - before["python_cpu_s"]
            self.seqs += after["seqs_in_steps"] - before["seqs_in_steps"]


async def bench_one(
    engine: Engine,
    concurrency: int,
    n_requests: int,
    max_tokens: int,
    temperature: float,
    on_done: Callable[[], None] | None = None,
    sample: _Sample | None = None,
    ignore_eos: bool = True,
) -> EngineRun:
    """Run ``n_requests`` through ``engine`` with ``concurrency`` in flight.

    With ``sample`` the figures are added to it (several rounds of one configuration).
    ``ignore_eos`` (the default) makes every request generate exactly ``max_tokens``.
    """
    acc = sample if sample is not None else _Sample([])
    next_i = 0

    async def worker() -> None:
        nonlocal next_i
        while next_i < n_requests:
            i = next_i
            next_i += 1
            t0 = time.perf_counter()
            try:
                result = await engine.generate(_request(i, max_tokens, temperature, ignore_eos))
            except Exception:
                acc.failed += 1
            else:
                acc.latencies_s.append(time.perf_counter() - t0)
                acc.completion_tokens += result.completion_tokens
            if on_done is not None:
                on_done()

    t0 = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    acc.wall_s += time.perf_counter() - t0
    return summarize(
        engine.name, concurrency, acc.latencies_s, acc.completion_tokens, acc.wall_s, acc.failed
    )


async def run_engine_bench(
    engines: Sequence[str],
    concurrency: Sequence[int],
    max_tokens: int,
    requests: int | None,
    temperature: float = 0.1,
    settings_overrides: dict[str, Any] | None = None,
    progress: bool = True,
    rounds: int = 1,
) -> dict[str, Any]:
    """Run each concurrency level on each engine in turn, one engine loaded at a time.

    With ``rounds`` > 1 the whole plan repeats with the engine order reversed every other
    round, and each configuration's figures are pooled (tokens / wall time summed), so a
    noisy neighbour on the machine penalises both engines alike.
    """
    from consumer.config import Settings
    from consumer.engines import create_engine

    overrides = dict(settings_overrides or {})
    overrides.setdefault("max_concurrent_requests", max(concurrency))
    overrides.setdefault("max_queue_size", max(256, max(concurrency)))
    overrides.setdefault("max_tokens_limit", max(1024, max_tokens))
    plan = [(c, requests or max(8, 2 * c)) for c in concurrency]
    total = rounds * len(engines) * sum(n for _, n in plan)
    bar = _Progress(total) if progress else None
    samples: dict[tuple[str, int], _Sample] = {}
    info = None
    for r in range(max(1, rounds)):
        order = list(engines) if r % 2 == 0 else list(reversed(engines))
        for c, n in plan:
            for name in order:
                # One engine loaded at a time: llama.cpp's OpenMP build keeps a worker team per
                # calling thread, and another engine's docked team throttles the running one's
                # barrier spin (both engines measured 20-50 % slow side by side in one process).
                # Reloaded per level on purpose: the engines stay side by side at each level,
                # minutes apart at most, so machine drift does not enter their ratio.
                engine = create_engine(Settings.from_env(engine=name, **overrides))
                await engine.start()
                try:
                    await engine.warmup()
                    if bar is not None:
                        bar.label = f"{engine.name} c={c}"
                    acc = samples.setdefault((engine.name, c), _Sample([]))
                    before = engine.stats()
                    await bench_one(
                        engine, c, n, max_tokens, temperature, bar.advance if bar else None, acc
                    )
                    acc.add_steps(before, engine.stats())
                    info = info or engine.model_info()
                finally:
                    await engine.stop()
    runs = [
        summarize(
            name,
            c,
            s.latencies_s,
            s.completion_tokens,
            s.wall_s,
            s.failed,
            (s.steps, s.overhead_s, s.seqs) if s.steps else None,
        )
        for (name, c), s in samples.items()
    ]
    ratio = ratios(runs)
    return {
        "benchmark": "engine",
        "model": None if info is None else asdict(info),
        "max_tokens": max_tokens,
        "temperature": temperature,
        "ignore_eos": True,
        "rounds": rounds,
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
        },
        "runs": [asdict(r) for r in runs],
        "ratio_llama_over_sequential": {str(k): round(v, 3) for k, v in ratio.items()},
    }


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers: {text!r}") from exc
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers: {text!r}")
    return values


def _engine_list(text: str) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    bad = [n for n in names if n not in {"llama", "sequential", "fake"}]
    if not names or bad:
        raise argparse.ArgumentTypeError(f"engines are llama, sequential, fake; got {text!r}")
    return names


def _cmd_engine(args: argparse.Namespace) -> int:
    overrides: dict[str, Any] = {}
    if args.model_path:
        overrides["model_path"] = args.model_path
    if args.threads:
        overrides["n_threads"] = args.threads
    report = asyncio.run(
        run_engine_bench(
            args.engines,
            args.concurrency,
            args.max_tokens,
            args.requests,
            temperature=args.temperature,
            settings_overrides=overrides,
            progress=not args.no_progress,
            rounds=args.rounds,
        )
    )
    if args.json:
        print(json.dumps(report))
    else:
        from consumer.engines.base import ModelInfo

        runs = [EngineRun(**r) for r in report["runs"]]
        ratio = {int(k): v for k, v in report["ratio_llama_over_sequential"].items()}
        model = report["model"]
        if model:
            mi = ModelInfo(**model)
            print(f"model: {mi.model_name} ({mi.quantization}), {report['max_tokens']} tokens")
        print(format_table(runs, ratio))
    return 0


def _cmd_make_model(args: argparse.Namespace) -> int:
    from consumer.dev.synthmodel import make_synthetic_model

    def say(msg: str) -> None:
        if not args.no_progress:
            print(msg, file=sys.stderr, flush=True)

    report = make_synthetic_model(
        args.out,
        args.shape,
        args.quantization,
        tokenizer_from=args.tokenizer_from,
        progress=say,
    )
    print(json.dumps(report))
    return 0


#: Modules adding ``bench`` subcommands through ``register(sub)``, in help order.
BENCH_MODULES: tuple[str, ...] = (
    "consumer.dev.bench.peer",
    "consumer.dev.bench.pipeline",
    "consumer.dev.bench.priority",
    "consumer.dev.bench.memory",
    "consumer.dev.bench.scale",
    "consumer.dev.bench.e2e",
    "consumer.dev.bench.quality",
    "consumer.dev.bench.report",
    "consumer.dev.bench.fairness",
)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``bench`` with its ``engine``, ``make-model`` and ``pipeline`` subcommands."""
    bench = subparsers.add_parser("bench", help="benchmarks (print figures)")
    sub = bench.add_subparsers(dest="bench_command", required=True, metavar="BENCH")
    eng = sub.add_parser(
        "engine", help="llama vs sequential engine: tokens/s, explanations/min, latency"
    )
    eng.add_argument("--engines", type=_engine_list, default=["llama", "sequential"])
    eng.add_argument("--concurrency", type=_int_list, default=[1, 2, 4, 8, 16])
    eng.add_argument("--max-tokens", type=int, default=120)
    eng.add_argument(
        "--requests", type=int, default=None, help="per level (default: max(8, 2 x concurrency))"
    )
    eng.add_argument("--temperature", type=float, default=0.1)
    eng.add_argument(
        "--rounds", type=int, default=1, help="repeat the plan, alternating engine order"
    )
    eng.add_argument("--model-path", default=None, help="GGUF file (default: MODEL_PATH)")
    eng.add_argument(
        "--threads", type=int, default=0, help="ggml threads (default: N_THREADS, else engine's)"
    )
    eng.add_argument("--json", action="store_true", help="print one JSON object")
    eng.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    eng.set_defaults(func=_cmd_engine)
    mk = sub.add_parser(
        "make-model",
        help="write a synthetic GGUF of a given shape (random weights, bundled tokenizer)",
    )
    mk.add_argument(
        "--shape",
        choices=["7b", "1b", "tiny", "vocab-only"],
        default="7b",
        help="vocab-only: just the tokenizer and chat template (a few MB, no weights)",
    )
    mk.add_argument("--quantization", choices=["Q4_K_M", "Q4_0", "Q8_0", "F16"], default="Q4_K_M")
    mk.add_argument("--out", required=True, help="GGUF file to write")
    mk.add_argument(
        "--tokenizer-from",
        default=None,
        metavar="GGUF",
        help="take vocab, merges, special tokens and chat template from this GGUF "
        "(default: the bundled model; a vocab-only GGUF is enough)",
    )
    mk.add_argument("--no-progress", action="store_true", help="no progress lines on stderr")
    mk.set_defaults(func=_cmd_make_model)
    for name in BENCH_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name != name:
                raise
            continue
        module.register(sub)
