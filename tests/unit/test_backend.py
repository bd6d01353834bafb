"""The image says which llama.cpp backend it has, and refuses GPU layers it cannot place."""

from __future__ import annotations

import pytest
from prometheus_client import CollectorRegistry

from consumer.config import Settings
from consumer.engines.backend import (
    BackendInfo,
    engine_backend,
    llama_backend,
    parse_backends,
    require_gpu,
)
from consumer.engines.fake import FakeEngine
from consumer.ops.metrics import Metrics
from schemas.errors import ConfigError
from schemas.version import __version__

CPU_INFO = "CPU : SSE3 = 1 | AVX2 = 1 | F16C = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | "
CUDA_INFO = (
    "CUDA : ARCHS = 800,860,890,900 | USE_GRAPHS = 1 | PEER_MAX_BATCH_SIZE = 128 | "
    "CPU : SSE3 = 1 | AVX2 = 1 | OPENMP = 1 | "
)


def test_backends_are_read_from_the_system_info_text() -> None:
    assert parse_backends(CPU_INFO) == ("CPU",)
    assert parse_backends(CUDA_INFO) == ("CUDA", "CPU")


def test_the_backend_name_is_the_gpu_one_only_when_a_device_takes_layers() -> None:
    assert BackendInfo(("CUDA", "CPU"), gpu_offload=True).name == "cuda"
    # A CUDA wheel on a node (or pod) without a GPU device runs on the CPU.
    assert BackendInfo(("CUDA", "CPU"), gpu_offload=False).name == "cpu"
    assert BackendInfo(("CPU",), gpu_offload=False).name == "cpu"


@pytest.mark.parametrize("layers", [-1, 1, 32])
def test_gpu_layers_on_a_build_without_gpu_offload_fail_naming_n_gpu_layers(layers: int) -> None:
    with pytest.raises(ConfigError) as refused:
        require_gpu(layers, BackendInfo(("CPU",), gpu_offload=False))
    assert refused.value.variable == "N_GPU_LAYERS"
    assert "backends: CPU" in str(refused.value)


def test_cpu_layers_always_start_and_gpu_layers_start_with_offload() -> None:
    require_gpu(0, BackendInfo(("CPU",), gpu_offload=False))
    require_gpu(-1, BackendInfo(("CUDA", "CPU"), gpu_offload=True))


def test_this_machines_llama_cpp_agrees_with_its_own_gpu_offload_answer() -> None:
    import llama_cpp

    from consumer.engines.model import init_llama_backend

    init_llama_backend()
    info = llama_backend()
    assert "CPU" in info.backends
    assert info.gpu_offload is bool(llama_cpp.llama_supports_gpu_offload())
    assert (info.name == "cpu") is (not info.gpu_offload)


def test_build_info_names_the_backend_once_known() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.set_backend("cuda")
    assert (
        registry.get_sample_value(
            "explainstream_build_info", {"version": __version__, "backend": "cuda"}
        )
        == 1
    )
    families = [f for f in registry.collect() if f.name == "explainstream_build_info"]
    assert [len(f.samples) for f in families] == [1]


def test_engines_without_llama_report_their_own_name() -> None:
    assert engine_backend(FakeEngine(Settings.from_env({}, engine="fake"))) == "fake"


def test_loading_a_model_with_gpu_layers_on_a_cpu_only_build_fails_before_the_load(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from consumer.engines import model as model_files

    monkeypatch.setattr(model_files, "llama_backend", lambda: BackendInfo(("CPU",), False))
    with pytest.raises(ConfigError, match="N_GPU_LAYERS"):
        model_files.load_model(model_files.resolve_model_path(None), -1)
