"""GPU telemetry through NVIDIA's NVML (the ``pynvml`` module of ``nvidia-ml-py``).

On a machine without the NVIDIA driver or the Python binding, :class:`GpuProbe` reports no
GPUs and never raises: the service runs normally and the metrics say ``gpu available = 0``.
"""

from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from types import ModuleType
from typing import Any

__all__ = ["GpuProbe", "GpuSample"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class GpuSample:
    """One reading of one GPU. ``utilization_ratio`` is 0..1, None when NVML can't tell."""

    index: int
    name: str
    memory_used_bytes: int
    memory_total_bytes: int
    utilization_ratio: float | None


class GpuProbe:
    """Lazy NVML wrapper: initialises on first use; any NVML failure means "no GPU".

    ``nvml`` injects a module with pynvml's API (tests); by default ``pynvml`` is imported.
    """

    def __init__(self, nvml: ModuleType | Any | None = None) -> None:
        self._nvml = nvml
        self._state: str = "new"  # new | ok | unavailable
        self._handles: list[Any] = []

    @property
    def available(self) -> bool:
        """True when NVML initialised and sees at least one GPU."""
        self._ensure_init()
        return self._state == "ok" and bool(self._handles)

    def _ensure_init(self) -> None:
        if self._state != "new":
            return
        try:
            nvml = self._nvml if self._nvml is not None else importlib.import_module("pynvml")
            nvml.nvmlInit()
            count = int(nvml.nvmlDeviceGetCount())
            self._handles = [nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
            self._nvml = nvml
            self._state = "ok"
            log.info("NVML: %d GPU(s) visible", count)
        except Exception as exc:  # ImportError, NVMLError_LibraryNotFound, driver errors, ...
            self._state = "unavailable"
            self._handles = []
            log.info("GPU metrics unavailable: %s", exc)

    def sample(self) -> list[GpuSample]:
        """Read every GPU now; [] when NVML is unavailable. Never raises."""
        self._ensure_init()
        if self._state != "ok":
            return []
        nvml = self._nvml
        assert nvml is not None
        out: list[GpuSample] = []
        for index, handle in enumerate(self._handles):
            try:
                mem = nvml.nvmlDeviceGetMemoryInfo(handle)
            except Exception as exc:
                log.debug("NVML memory read failed for GPU %d: %s", index, exc)
                continue
            try:
                util: float | None = float(nvml.nvmlDeviceGetUtilizationRates(handle).gpu) / 100
            except Exception:
                util = None
            try:
                raw_name = nvml.nvmlDeviceGetName(handle)
                name = raw_name.decode() if isinstance(raw_name, bytes) else str(raw_name)
            except Exception:
                name = f"gpu{index}"
            out.append(
                GpuSample(
                    index=index,
                    name=name,
                    memory_used_bytes=int(mem.used),
                    memory_total_bytes=int(mem.total),
                    utilization_ratio=util,
                )
            )
        return out

    def close(self) -> None:
        """Shut NVML down (idempotent)."""
        if self._state == "ok" and self._nvml is not None:
            try:
                self._nvml.nvmlShutdown()
            except Exception as exc:
                log.debug("nvmlShutdown failed: %s", exc)
        self._state = "new" if self._state == "ok" else self._state
        self._handles = []
