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
import hashlib
import json
import os
import platform
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from consumer.dev.bench import (
    BENCH_CONTEXTS,
    EngineRun,
    _int_list,
    _Progress,
    _Sample,
    bench_one,
    summarize,
)

__all__ = ["obtain_llama_server", "register", "run_peer_bench"]

LLAMA_CPP_VERSION = "0.3.36"
PEER = "llama-server"
OURS = "llama"


def _cache_root() -> Path:
    return Path(os.environ.get("EXPLAINSTREAM_CACHE", Path.home() / ".cache" / "explainstream"))


def _build_key(cmake_args: Sequence[str]) -> str:
    """The binary depends on this CPU's flags (native kernels) and the CMake options."""
    flags = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        flags = next((line for line in f if line.startswith("flags")), "")
    digest = hashlib.md5((flags + " ".join(cmake_args)).encode()).hexdigest()[:12]
    return f"{LLAMA_CPP_VERSION}-{digest}"


def _sdist(say: Callable[[str], None]) -> Path:
    """The pinned llama-cpp-python sdist, downloaded once with pip."""
    folder = _cache_root() / "sdist"
    name = f"llama_cpp_python-{LLAMA_CPP_VERSION}.tar.gz"
    path = folder / name
    if not path.is_file():
        say(f"downloading the llama-cpp-python {LLAMA_CPP_VERSION} sdist with pip ...")
        folder.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [
                *(sys.executable, "-m", "pip", "download", "-q", "--no-deps"),
                *("--no-binary", ":all:", "-d", str(folder)),
                f"llama-cpp-python=={LLAMA_CPP_VERSION}",
            ],
            check=True,
        )
    return path


def _extract_llama_cpp(sdist: Path, into: Path) -> Path:
    """Unpack only the vendored llama.cpp sources (no vocab files, docs or git objects)."""
    top = f"llama_cpp_python-{LLAMA_CPP_VERSION}/vendor/llama.cpp/"
    skip = ("docs/", "media/", "models/", ".git")
    with tarfile.open(sdist) as tar:
        members = [
            m
            for m in tar.getmembers()
            if m.name.startswith(top) and not m.name[len(top) :].startswith(skip)
        ]
        tar.extractall(into, members=members, filter="data")
    return into / top


def obtain_llama_server(
    cmake_args: Sequence[str] = (), jobs: int | None = None, say: Callable[[str], None] = print
) -> tuple[Path, dict[str, Any]]:
    """Path of a cached ``llama-server`` (building it on first use) and its build record."""
    key = _build_key(cmake_args)
    folder = _cache_root() / "llama-server" / key
    binary = folder / "llama-server"
    record_path = folder / "build.json"
    if binary.is_file() and record_path.is_file():
        return binary, {**json.loads(record_path.read_text()), "cached": True}
    if shutil.which("cmake") is None:
        raise SystemExit(
            "bench peer: cmake builds llama-server; install it (apt-get install cmake)"
        )
    sdist = _sdist(say)
    jobs = jobs or os.cpu_count() or 1
    with tempfile.TemporaryDirectory(prefix="explainstream-llama-server-") as tmp:
        src = _extract_llama_cpp(sdist, Path(tmp))
        build = Path(tmp) / "build"
        configure = [
            "cmake", "-S", str(src), "-B", str(build), "-DCMAKE_BUILD_TYPE=Release",
            "-DBUILD_SHARED_LIBS=OFF", "-DLLAMA_BUILD_SERVER=ON", "-DLLAMA_BUILD_TOOLS=ON",
            "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_CURL=OFF",
            "-DLLAMA_OPENSSL=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_BUILD_UI=OFF",
            *cmake_args,
        ]  # fmt: skip
        say(f"building llama-server from llama-cpp-python {LLAMA_CPP_VERSION}'s llama.cpp ...")
        t0 = time.monotonic()
        subprocess.run(configure, check=True, stdout=subprocess.DEVNULL)
        subprocess.run(
            ["cmake", "--build", str(build), "--target", "llama-server", "-j", str(jobs)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        build_s = time.monotonic() - t0
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copy2(build / "bin" / "llama-server", binary)
    record = {
        "llama_cpp_python": LLAMA_CPP_VERSION,
        "cmake_args": list(cmake_args),
        "build_s": round(build_s, 1),
        "jobs": jobs,
        "cpus": os.cpu_count(),
    }
    record_path.write_text(json.dumps(record))
    say(f"llama-server built in {build_s:.0f} s with {jobs} jobs (cached in {folder})")
    return binary, {**record, "cached": False}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def _peer_server(
    binary: Path,
    model: str,
    threads: tuple[int, int],
    slots: int,
    n_ctx: int,
    n_batch: int,
    gpu_layers: int,
) -> AsyncIterator[str]:
    """Run llama-server on a free loopback port until the block ends; yields its base URL."""
    port = _free_port()
    args = [
        str(binary), "-m", model, "-t", str(threads[0]), "-tb", str(threads[1]), "-np", str(slots),
        "-c", str(n_ctx), "-b", str(n_batch), "-ngl", str(gpu_layers),
        "--host", "127.0.0.1", "--port", str(port), "--no-webui",
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
) -> dict[str, Any]:
    """Load our engine once, start llama-server once with the same knobs, alternate rounds."""
    from consumer.config import Settings
    from consumer.engines import create_engine
    from consumer.engines import model as model_files

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


def format_peer_table(report: dict[str, Any]) -> str:
    """Markdown table: both sides per concurrency, then the ratio."""
    runs = [EngineRun(**r) for r in report["runs"]]
    by = {(r.engine, r.concurrency): r for r in runs}
    lines = [
        f"model {report['model']['model_name']} ({report['model']['quantization']}), "
        f"threads {report['threads']}/{report.get('threads_batch', report['threads'])} "
        f"(token/batch), slots {report['slots']}, "
        f"{report['max_tokens']} tokens, {report['rounds']} rounds",
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
    p.add_argument("--temperature", type=float, default=0.1)
    p.add_argument("--out", default=None, help="also write the JSON report to this file")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=_cmd_peer)
