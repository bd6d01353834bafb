"""The Dockerfile's promises that hadolint cannot see (issue 22, item 2): the llama.cpp wheel
never comes from a cache keyed without CMAKE_ARGS, base images name their Debian release,
CUDA kernels have architectures and a writable JIT cache."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _instructions() -> list[str]:
    """The Dockerfile's instructions, continuation lines joined, comments dropped."""
    text = (ROOT / "Dockerfile").read_text()
    lines = [ln for ln in text.splitlines() if not ln.lstrip().startswith("#")]
    return [i.strip() for i in re.split(r"\n(?=\S)", "\n".join(lines).replace("\\\n", " ")) if i]


def _arg(name: str) -> str:
    for ins in _instructions():
        m = re.match(rf'ARG {name}="?([^"\s]*)"?$', ins)
        if m:
            return m.group(1)
    raise AssertionError(f"no ARG {name}")


def test_the_llama_wheel_is_built_without_pips_cache_and_at_the_pinned_version() -> None:
    builds = [i for i in _instructions() if i.startswith("RUN") and "llama-cpp-python" in i]
    assert builds, "llama-cpp-python must be built in a step of its own"
    assert all("--mount=type=cache" not in b and "--no-cache-dir" in b for b in builds)
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    deps = project["optional-dependencies"]["consumer"]
    pinned = next(d for d in deps if d.startswith("llama-cpp-python=="))
    assert pinned == f"llama-cpp-python=={_arg('LLAMA_CPP_VERSION')}"
    # Every later wheel step finds that wheel instead of compiling (or fetching) another.
    cached = [i for i in _instructions() if "--mount=type=cache" in i and "pip wheel" in i]
    assert cached and all("--find-links /wheels" in i for i in cached)


def test_base_images_name_their_debian_release() -> None:
    for name in ("BUILDER_IMAGE", "RUNTIME_IMAGE"):
        assert re.fullmatch(r"python:3\.11\.\d+-slim-bookworm(@sha256:[0-9a-f]{64})?", _arg(name))


def test_cuda_builds_get_architectures_and_a_writable_jit_cache() -> None:
    env = " ".join(i for i in _instructions() if i.startswith("ENV"))
    assert "-DCMAKE_CUDA_ARCHITECTURES=${CUDA_ARCHITECTURES}" in env
    assert _arg("CUDA_ARCHITECTURES") == "80;86;89;90"
    assert re.search(r"CUDA_CACHE_PATH=/tmp/\S+", env), "only /tmp is writable in the pod"
