"""The CLI loads llama.cpp's libraries before numpy (a CUDA build crashed the other way)."""

from __future__ import annotations

import subprocess
import sys

PROBE = """
import sys
import consumer.cli
assert "numpy" not in sys.modules, "the CLI module must not import numpy itself"
consumer.cli.preload_llama()
mods = list(sys.modules)
assert "llama_cpp.llama_cpp" in mods
print(mods.index("llama_cpp.llama_cpp") < mods.index("numpy"))
"""


def test_llama_library_is_loaded_before_numpy() -> None:
    out = subprocess.run(
        [sys.executable, "-c", PROBE], capture_output=True, text=True, check=True, timeout=120
    )
    assert out.stdout.strip() == "True"
