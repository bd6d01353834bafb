"""``explainstream bench peer``: our llama engine side by side with llama.cpp's own server.

The peer is ``llama-server`` built from the llama.cpp sources vendored inside the pinned
llama-cpp-python sdist, so both sides run the same kernels. It is built once and cached
under ``~/.cache/explainstream/llama-server/``; the build time is recorded beside it.

Both sides get the same GGUF, threads, slots, chat messages (the six ``bench engine``
contexts through our prompt profiles), sampling seed, temperature and output length (end of
generation ignored, so every request yields exactly ``--max-tokens`` tokens). Rounds
alternate which side goes first, and figures pool over rounds, so a noisy neighbour
penalises both alike. Figures are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from consumer.dev.bench.cli import (
    BENCH_CONTEXTS,
    EngineRun,
    _int_list,
    _Progress,
    _Sample,
    bench_one,
    summarize,
)
from consumer.dev.llama_server import obtain_llama_server
from consumer.dev.ports import free_port

__all__ = ["obtain_llama_server", "register", "run_peer_bench"]

PEER = "llama-server"
OURS = "llama"


@contextlib.asynccontextmanager
async def _peer_server(
    binary: Path,
    model: str,
    threads: tuple[int, int],
    slots: int,
    n_ctx: int,
    n_batch: int,
    gpu_layers: int,
    extra: Sequence[str] = (),
) -> AsyncIterator[str]:
    """Run llama-server on a free loopback port until the block ends; yields its base URL."""
    port = free_port()
    args = [
        str(binary), "-m", model, "-t", str(threads[0]), "-tb", str(threads[1]), "-np", str(slots),
        "-c", str(n_ctx), "-b", str(n_batch), "-ngl", str(gpu_layers),
        "--host", "127.0.0.1", "--port", str(port), "--no-webui", *extra,
    ]  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryFile() as log:
        proc = await asyncio.create_subprocess_exec(*args, stdout=log, stderr=subprocess.STDOUT)
        try:
            await _wait_ready(url, proc, log)
            yield url
        finally:
            if proc.returncode is None:
                proc.terminate()
                try:
                    await asyncio.wait_for(proc.wait(), 30)
                except TimeoutError:
                    proc.kill()
                    await proc.wait()


async def _wait_ready(url: str, proc: asyncio.subprocess.Process, log: Any) -> None:
    """Until llama-server's /health answers 200; its log tail if it exits first."""
    import aiohttp

    deadline = time.monotonic() + 600
    async with aiohttp.ClientSession() as http:
        while True:
            if proc.returncode is not None:
                log.seek(0)
                tail = log.read()[-2000:].decode(errors="replace")
                raise SystemExit(f"bench peer: llama-server exited ({proc.returncode}):\n{tail}")
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"{url}/health") as resp:
                    if resp.status == 200:
                        return
            if time.monotonic() > deadline:
                raise SystemExit("bench peer: llama-server not ready after 600 s")
            await asyncio.sleep(0.2)  # polling a process we do not control


async def _peer_one(
    url: str,
    concurrency: int,
    n_requests: int,
    max_tokens: int,
    temperature: float,
    acc: _Sample,
    on_done: Callable[[], None] | None,
) -> None:
    """``bench_one``'s plan against llama-server's OpenAI-compatible chat endpoint."""
    import aiohttp

    from consumer.engines.prompts import build_messages

    next_i = 0

    async def worker(http: aiohttp.ClientSession) -> None:
        nonlocal next_i
        while next_i < n_requests:
            i = next_i
            next_i += 1
            profile, context = BENCH_CONTEXTS[i % len(BENCH_CONTEXTS)]
            body = {
                "messages": build_messages(profile, context),
                "max_tokens": max_tokens,
                "temperature": temperature,
                "seed": i,
                "ignore_eos": True,
            }
            t0 = time.perf_counter()
            try:
                async with http.post(f"{url}/v1/chat/completions", json=body) as resp:
                    resp.raise_for_status()
                    data = await resp.json()
            except aiohttp.ClientError:
                acc.failed += 1
            else:
                acc.latencies_s.append(time.perf_counter() - t0)
                acc.completion_tokens += int(data["usage"]["completion_tokens"])
            if on_done is not None:
                on_done()

    timeout = aiohttp.ClientTimeout(total=3600)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as http:
        t0 = time.perf_counter()
        await asyncio.gather(*(worker(http) for _ in range(concurrency)))
        acc.wall_s += time.perf_counter() - t0


async def run_peer_bench(
    concurrency: Sequence[int],
    max_tokens: int,
    requests: int | None,
    rounds: int,
    threads: int | None = None,
    gpu_layers: int | None = None,
    model_path: str | None = None,
    server: str | None = None,
    cmake_args: Sequence[str] = (),
    temperature: float = 0.1,
    progress: bool = True,
    peer_args: Sequence[str] = (),
) -> dict[str, Any]:
    """Load our engine once, start llama-server once with the same knobs, alternate rounds."""
    from consumer.config import Settings
    from consumer.engines import create_engine
    from consumer.engines import model as model_files
    from consumer.engines.model import flash_attn_type

    say: Callable[[str], None] = (
        (lambda m: print(m, file=sys.stderr)) if progress else (lambda m: None)
    )
    if server:
        binary, build = Path(server), {"prebuilt": server}
    else:
        binary, build = obtain_llama_server(cmake_args, say=say)
    slots = max(concurrency)
    overrides: dict[str, Any] = {
        "engine": OURS,
        "max_concurrent_requests": slots,
        "max_queue_size": max(256, slots),
        "max_tokens_limit": max(1024, max_tokens),
    }
    if threads:
        overrides["n_threads"] = threads
    if gpu_layers is not None:
        overrides["n_gpu_layers"] = gpu_layers
    if model_path:
        overrides["model_path"] = model_path
    settings = Settings.from_env(**overrides)
    engine = create_engine(settings)
    await engine.start()
    samples: dict[tuple[str, int], _Sample] = {}
    plan = [(c, requests or max(8, 2 * c)) for c in concurrency]
    bar = _Progress(2 * rounds * sum(n for _, n in plan)) if progress else None
    try:
        await engine.warmup()
        stats = engine.stats()
        used_threads = int(threads or stats.get("n_threads") or os.cpu_count() or 1)
        batch_threads = int(threads or stats.get("n_threads_batch") or used_threads)
        model = str(model_path or settings.model_path or model_files.default_model_path())
        n_ctx = slots * settings.seq_budget_tokens
        async with _peer_server(
            binary,
            model,
            (used_threads, batch_threads),
            slots,
            n_ctx,
            settings.n_batch,
            settings.n_gpu_layers,
            peer_args,
        ) as url:
            # One warm-up request per profile on the peer too, as our engine's warmup does.
            await _peer_one(url, 1, 2, 4, temperature, _Sample([]), None)
            for r in range(max(1, rounds)):
                for c, n in plan:
                    sides = [PEER, OURS] if r % 2 == 0 else [OURS, PEER]
                    for side in sides:
                        acc = samples.setdefault((side, c), _Sample([]))
                        if bar is not None:
                            bar.label = f"{side} c={c}"
                        done = bar.advance if bar is not None else None
                        if side == PEER:
                            await _peer_one(url, c, n, max_tokens, temperature, acc, done)
                        else:
                            await bench_one(engine, c, n, max_tokens, temperature, done, acc)
        info = engine.model_info()
    finally:
        await engine.stop()
    runs = [
        summarize(side, c, s.latencies_s, s.completion_tokens, s.wall_s, s.failed)
        for (side, c), s in sorted(samples.items(), key=lambda kv: (kv[0][1], kv[0][0]))
    ]
    by = {(r.engine, r.concurrency): r for r in runs}
    ratio = {
        str(c): round(by[(OURS, c)].tokens_per_s / by[(PEER, c)].tokens_per_s, 3)
        for c, _ in plan
        if by[(PEER, c)].tokens_per_s > 0
    }
    return {
        "benchmark": "peer",
        "model": asdict(info),
        "threads": used_threads,
        "threads_batch": batch_threads,
        "slots": slots,
        "gpu_layers": settings.n_gpu_layers,
        "max_tokens": max_tokens,
        "temperature": temperature,
        "ignore_eos": True,
        "rounds": rounds,
        "llama_server": build,
        "llama_server_args": list(peer_args),
        "flash_attn": {"llama": settings.flash_attn, "resolved": flash_attn_type(settings)},
        "machine": _machine(),
        "date": time.strftime("%Y-%m-%d"),
        "runs": [asdict(r) for r in runs],
        "ratio_llama_over_llama_server": ratio,
    }


def _machine() -> dict[str, Any]:
    cpu = platform.processor()
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    return {"cpus": os.cpu_count(), "cpu_model": cpu, "platform": platform.platform()}


def _fa_label(report: dict[str, Any]) -> str:
    resolved = report.get("flash_attn", {}).get("resolved", -1)
    ours = {0: "off", 1: "on"}.get(resolved, "llama.cpp's auto")
    peer = " ".join(report.get("llama_server_args", [])) or "its defaults"
    return f"{ours} (llama) / llama-server with {peer}"


def format_peer_table(report: dict[str, Any]) -> str:
    """Markdown table: both sides per concurrency, then the ratio."""
    runs = [EngineRun(**r) for r in report["runs"]]
    by = {(r.engine, r.concurrency): r for r in runs}
    lines = [
        f"model {report['model']['model_name']} ({report['model']['quantization']}), "
        f"threads {report['threads']}/{report.get('threads_batch', report['threads'])} "
        f"(token/batch), slots {report['slots']}, "
        f"{report['max_tokens']} tokens, {report['rounds']} rounds, flash attention "
        f"{_fa_label(report)}",
        "",
        "| concurrency | llama-server tok/s | llama tok/s | ratio | llama-server expl/min "
        "| llama expl/min | llama-server p50/p95 s | llama p50/p95 s |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in sorted({r.concurrency for r in runs}):
        p, o = by[(PEER, c)], by[(OURS, c)]
        ratio = report["ratio_llama_over_llama_server"].get(str(c), float("nan"))
        lines.append(
            f"| {c} | {p.tokens_per_s:.1f} | {o.tokens_per_s:.1f} | {ratio:.2f}x "
            f"| {p.explanations_per_min:.1f} | {o.explanations_per_min:.1f} "
            f"| {p.p50_latency_s:.2f}/{p.p95_latency_s:.2f} "
            f"| {o.p50_latency_s:.2f}/{o.p95_latency_s:.2f} |"
        )
    return "\n".join(lines)


def _cmd_peer(args: argparse.Namespace) -> int:
    report = asyncio.run(
        run_peer_bench(
            args.concurrency,
            args.max_tokens,
            args.requests,
            args.rounds,
            threads=args.threads,
            gpu_layers=args.n_gpu_layers,
            model_path=args.model_path,
            server=args.server,
            cmake_args=args.cmake_arg,
            temperature=args.temperature,
            progress=not args.no_progress,
            peer_args=args.peer_arg,
        )
    )
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1))
    print(json.dumps(report) if args.json else format_peer_table(report))
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``bench peer`` to the ``bench`` subcommands."""
    p = sub.add_parser("peer", help="llama engine vs llama.cpp's llama-server, side by side")
    p.add_argument("--concurrency", type=_int_list, default=[1, 8])
    p.add_argument("--max-tokens", type=int, default=120)
    p.add_argument("--requests", type=int, default=None, help="per level and round")
    p.add_argument("--rounds", type=int, default=2, help="alternating which side goes first")
    p.add_argument("--threads", type=int, default=None, help="both sides (default: ours)")
    p.add_argument("--n-gpu-layers", type=int, default=None, help="both sides (N_GPU_LAYERS)")
    p.add_argument("--model-path", default=None, help="GGUF file (default: MODEL_PATH)")
    p.add_argument("--server", default=None, help="a llama-server binary to use as is")
    p.add_argument(
        "--cmake-arg", action="append", default=[], help="extra CMake option for the build"
    )
    p.add_argument(
        "--peer-arg",
        action="append",
        default=[],
        help="extra llama-server argument, repeatable (e.g. --peer-arg=-fa --peer-arg=off)",
    )
    p.add_argument("--temperature", type=float, default=0.1)
    p.add_argument("--out", default=None, help="also write the JSON report to this file")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_peer)
