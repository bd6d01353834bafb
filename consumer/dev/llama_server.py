"""``llama-server`` from the llama.cpp inside the pinned llama-cpp-python sdist, built once.

The binary is cached under ``~/.cache/explainstream/llama-server/<version>-<key>/`` (the key
covers this CPU's flags and the CMake options) with a ``build.json`` recording the build time.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

__all__ = ["LLAMA_CPP_VERSION", "obtain_llama_server"]

LLAMA_CPP_VERSION = "0.3.36"


def _cache_root() -> Path:
    return Path(os.environ.get("EXPLAINSTREAM_CACHE", Path.home() / ".cache" / "explainstream"))


#: The same as the Makefile's LLAMA_CFLAGS for the engine's wheel: llama.cpp's AMX matmul
#: segfaults on AMX CPUs with the bundled model, and both sides of a comparison must run the
#: same kernels.
NO_AMX = ("-mno-amx-tile", "-mno-amx-int8", "-mno-amx-bf16")


def compiler_flags() -> str:
    """C/C++ flags of the build: AMX left out on x86-64."""
    return " ".join(NO_AMX) if platform.machine() in ("x86_64", "AMD64") else ""


def _build_key(cmake_args: Sequence[str]) -> str:
    """The binary depends on this CPU's flags (native kernels), the compiler flags and the
    CMake options."""
    flags = ""
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        flags = next((line for line in f if line.startswith("flags")), "")
    key = flags + compiler_flags() + " ".join(cmake_args)
    digest = hashlib.md5(key.encode()).hexdigest()[:12]
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
        extra = compiler_flags()
        env = {
            **os.environ,
            "CFLAGS": f"{extra} {os.environ.get('CFLAGS', '')}".strip(),
            "CXXFLAGS": f"{extra} {os.environ.get('CXXFLAGS', '')}".strip(),
        }
        subprocess.run(configure, check=True, stdout=subprocess.DEVNULL, env=env)
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
        "cflags": compiler_flags(),
        "build_s": round(build_s, 1),
        "jobs": jobs,
        "cpus": os.cpu_count(),
    }
    record_path.write_text(json.dumps(record))
    say(f"llama-server built in {build_s:.0f} s with {jobs} jobs (cached in {folder})")
    return binary, {**record, "cached": False}
