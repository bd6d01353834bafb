"""Which llama.cpp backend this build has, and the start-up check against N_GPU_LAYERS.

An image whose llama-cpp-python wheel was compiled for the CPU still loads a model with
``N_GPU_LAYERS=-1``: llama.cpp quietly keeps every layer on the CPU. The service therefore
asks llama.cpp itself (``llama_supports_gpu_offload()``: a GPU backend compiled in *and* a
device found) and refuses to start when GPU layers are asked for and none can be placed.
The backend's name goes to the start-up log line, ``/status`` and ``explainstream_build_info``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from schemas.errors import ConfigError

__all__ = ["BackendInfo", "engine_backend", "llama_backend", "parse_backends", "require_gpu"]

# "CPU : SSE3 = 1 | AVX2 = 1 | CUDA : ARCHS = 800,860 | USE_GRAPHS = 1 | ..."
_BACKEND = re.compile(r"(?:^|\|)\s*([A-Za-z][A-Za-z0-9_-]*) : ")


@dataclass(frozen=True)
class BackendInfo:
    """The backends compiled into llama.cpp and whether a GPU device can take layers."""

    backends: tuple[str, ...]
    gpu_offload: bool

    @property
    def name(self) -> str:
        """``cpu``, or the GPU backends (``cuda``, ``metal``, ``vulkan`` ...) joined by ``+``."""
        gpus = [b.lower() for b in self.backends if b.upper() != "CPU"]
        return "+".join(gpus) if gpus and self.gpu_offload else "cpu"


def parse_backends(system_info: str) -> tuple[str, ...]:
    """Backend names in ``llama_print_system_info()``'s text, in order."""
    return tuple(_BACKEND.findall(system_info))


def llama_backend() -> BackendInfo:
    """Ask the loaded llama.cpp (its backend initialised) what it can run on."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info()
    text = info.decode("utf-8", "replace") if isinstance(info, bytes) else str(info)
    return BackendInfo(parse_backends(text), bool(llama_cpp.llama_supports_gpu_offload()))


def require_gpu(n_gpu_layers: int, info: BackendInfo) -> None:
    """ConfigError naming N_GPU_LAYERS when it asks for GPU layers this build cannot place."""
    if n_gpu_layers != 0 and not info.gpu_offload:
        found = ", ".join(info.backends) or "none"
        raise ConfigError(
            "N_GPU_LAYERS",
            f"asks for {n_gpu_layers} GPU layers, but this llama.cpp build has no usable GPU "
            f"(backends: {found}; no GPU device found or a CPU-only wheel): build the image "
            "with the CUDA build-args and give the pod a GPU, or set N_GPU_LAYERS=0",
        )


def engine_backend(engine: Any) -> str:
    """The backend an engine runs on: its ``backend`` attribute, else its name (fake, openai)."""
    return str(getattr(engine, "backend", None) or engine.name)
