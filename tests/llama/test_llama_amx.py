"""A llama.cpp build with AMX kernels loads the model without AMX buffers.

The vendored llama.cpp's AMX matmul segfaults in the first ``llama_decode`` of the bundled
Q4_1 model on a Sapphire Rapids Xeon (the whole process dies). ``make install`` builds the
wheel without AMX; a build of one's own that has it must still load safely.
"""

from __future__ import annotations

from typing import Any

import llama_cpp
import pytest

from consumer.engines.model import default_model_path, load_model


def _loaded_with(monkeypatch: pytest.MonkeyPatch, system_info: bytes) -> list[bool]:
    seen: list[bool] = []
    real = llama_cpp.llama_model_load_from_file

    def load(path: bytes, params: Any) -> Any:
        seen.append(bool(params.use_extra_bufts))
        return real(path, params)

    monkeypatch.setattr(llama_cpp, "llama_print_system_info", lambda: system_info)
    monkeypatch.setattr(llama_cpp, "llama_model_load_from_file", load)
    llama_cpp.llama_model_free(load_model(default_model_path(), 0))
    return seen


def test_an_amx_build_keeps_weights_out_of_amx_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    info = b"CPU : SSE3 = 1 | AVX2 = 1 | AVX512 = 1 | AMX_INT8 = 1 | REPACK = 1 |"
    assert _loaded_with(monkeypatch, info) == [False]


def test_a_build_without_amx_keeps_llama_cpp_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    info = b"CPU : SSE3 = 1 | AVX2 = 1 | FMA = 1 | REPACK = 1 |"
    assert _loaded_with(monkeypatch, info) == [True]
