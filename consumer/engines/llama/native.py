"""Native handles of the llama engine: model, context, prefix KV and batch memory.

Everything here calls llama-cpp-python's low-level (ctypes) API. The batch loop thread owns
these objects; :class:`NativeModel` is also used from the prompt-preparation thread, but only
for tokenisation, which reads the vocabulary and never the context.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from consumer.engines import model as model_files
from consumer.engines.base import ModelInfo
from consumer.engines.prompts import ChatPrompter, ProfileSet
from schemas.errors import EngineError, ModelLoadError

if TYPE_CHECKING:
    from consumer.config import Settings

__all__ = ["LLAMA_MAX_SEQ", "BatchMemory", "NativeModel", "load_native"]

LLAMA_MAX_SEQ = 256  # llama.cpp's compile-time LLAMA_MAX_SEQ


@dataclass(eq=False, slots=True)
class NativeModel:
    """One loaded model with its context; ``prefix_seq`` maps profile -> (seq id, tokens)."""

    path: str
    model: Any
    ctx: Any
    mem: Any
    vocab: Any
    n_vocab: int
    n_ctx: int
    info: ModelInfo
    prompter: ChatPrompter
    profiles: ProfileSet
    eog_ids: list[int]
    generation: int
    unified: bool = False  # one shared KV cell pool instead of a stream per sequence
    prefix_seq: dict[str, tuple[int, int]] = field(default_factory=dict)
    # Held while another thread tokenises with this model's vocabulary, and by the loop
    # thread while it frees the model, so a free never races a tokenisation.
    lock: threading.Lock = field(default_factory=threading.Lock)
    freed: bool = False

    def free(self) -> None:
        """Release context and model (idempotent)."""
        import llama_cpp

        with self.lock:
            if self.freed:
                return
            self.freed = True
            llama_cpp.llama_free(self.ctx)
            llama_cpp.llama_model_free(self.model)


class BatchMemory:
    """A preallocated ``llama_batch`` whose arrays are numpy views (no per-step allocation)."""

    def __init__(self, n_batch: int, n_out: int, ramp: int) -> None:
        import llama_cpp

        self.n_batch = n_batch
        self.token = np.zeros(n_batch, dtype=np.int32)
        self.pos = np.zeros(n_batch, dtype=np.int32)
        self.nseq = np.ones(n_batch, dtype=np.int32)
        self.seq = np.zeros(n_batch, dtype=np.int32)
        self.logits = np.zeros(n_batch, dtype=np.int8)
        i32p = ctypes.POINTER(ctypes.c_int32)
        base = self.seq.ctypes.data
        self._seq_ptrs = (i32p * n_batch)(
            *(ctypes.cast(base + 4 * i, i32p) for i in range(n_batch))
        )
        b: Any = llama_cpp.llama_batch()
        b.n_tokens = 0
        b.token = self.token.ctypes.data_as(i32p)
        b.embd = None
        b.pos = self.pos.ctypes.data_as(i32p)
        b.n_seq_id = self.nseq.ctypes.data_as(i32p)
        b.seq_id = ctypes.cast(self._seq_ptrs, ctypes.POINTER(i32p))
        b.logits = self.logits.ctypes.data_as(ctypes.POINTER(ctypes.c_int8))
        self.batch = b
        self.ramp = np.arange(ramp, dtype=np.int32)  # positions, sliced instead of built
        self.out_tok = np.zeros(n_out, dtype=np.int64)

    def decode(self, ctx: Any, n: int) -> int:
        """``llama_decode`` of the first ``n`` entries; llama.cpp's return code."""
        import llama_cpp

        self.batch.n_tokens = n
        return int(llama_cpp.llama_decode(ctx, self.batch))


def token_text(vocab: Any, token: int) -> str:
    """The vocabulary text of a special token ('' for none)."""
    import llama_cpp

    if token < 0:
        return ""
    raw = llama_cpp.llama_vocab_get_text(vocab, token)
    return raw.decode("utf-8", "replace") if raw else ""


def tokenize(vocab: Any, data: bytes, add_special: bool) -> list[int]:
    """Token ids of ``data`` (control tokens parsed)."""
    import llama_cpp

    cap = len(data) + 16
    buf = (llama_cpp.llama_token * cap)()
    n = llama_cpp.llama_tokenize(vocab, data, len(data), buf, cap, add_special, True)
    if n < 0:
        cap = -n
        buf = (llama_cpp.llama_token * cap)()
        n = llama_cpp.llama_tokenize(vocab, data, len(data), buf, cap, add_special, True)
    if n < 0:
        raise EngineError(f"tokenization failed ({n})")
    return list(buf[:n])


@dataclass(frozen=True, slots=True)
class ContextShape:
    """Sizes the context is created with."""

    n_slots: int
    n_batch: int
    n_threads: int
    n_threads_batch: int
    overrides: dict[str, Any]


def load_native(
    path: str,
    settings: Settings,
    shape: ContextShape,
    profiles: ProfileSet,
    batch: BatchMemory,
    generation: int,
) -> NativeModel:
    """Load ``path``, create its context and evaluate every profile's prompt prefix."""
    import llama_cpp

    if not settings.debug:
        from llama_cpp import _logger

        _logger.set_verbose(False)
    model = model_files.load_model(path, settings.n_gpu_layers)
    ctx = None
    try:
        meta = model_files.model_metadata(model)
        vocab = llama_cpp.llama_model_get_vocab(model)
        n_vocab = llama_cpp.llama_vocab_n_tokens(vocab)
        template = meta.get("tokenizer.chat_template")
        if not template:
            raise ModelLoadError(f"model has no tokenizer.chat_template: {path}")
        bos = token_text(vocab, llama_cpp.llama_vocab_bos(vocab))
        eos = token_text(vocab, llama_cpp.llama_vocab_eos(vocab))
        add_bos = bool(llama_cpp.llama_vocab_get_add_bos(vocab))

        def tok(text: str) -> list[int]:
            special = add_bos and not (bos and text.startswith(bos))
            return tokenize(vocab, text.encode("utf-8"), special)

        prompter = ChatPrompter(
            template, bos_token=bos, eos_token=eos, tokenize=tok, profiles=profiles
        )
        prefixes = {p: prompter.prefix(p)[1] for p in profiles.names()}
        use_prefix = shape.n_slots + len(prefixes) <= LLAMA_MAX_SEQ
        n_seq = shape.n_slots + (len(prefixes) if use_prefix else 0)
        # One KV stream per sequence, like llama-server with -np: attention then reads only
        # the sequence's own cells. A unified cache makes every token attend over (a mask
        # of) every sequence's cells, which at 8 sequences cost 0.77x llama-server's
        # tokens/s; prefix KV is shared by copying the prefix stream (a buffer copy).
        unified = bool(shape.overrides.get("kv_unified", False))
        if unified:
            n_ctx = model_files.context_size(settings)
            if use_prefix:
                n_ctx += sum(len(t) for t in prefixes.values())
        else:
            n_ctx = n_seq * model_files.seq_budget(settings)
        params = llama_cpp.llama_context_default_params()
        params.n_ctx = n_ctx
        params.n_batch = shape.n_batch
        params.n_ubatch = shape.n_batch
        params.n_seq_max = n_seq
        # llama.cpp reserves logits rows for max(outputs, n_seq_max) and asserts that this
        # fits n_outputs_max (which defaults to n_batch).
        params.n_outputs_max = max(shape.n_batch, params.n_seq_max)
        params.n_threads = shape.n_threads
        params.n_threads_batch = shape.n_threads_batch
        params.type_k = model_files.ggml_type(settings.kv_cache_type)
        params.type_v = model_files.ggml_type(settings.kv_cache_type)
        params.kv_unified = unified
        params.flash_attn_type = model_files.flash_attn_type(settings)
        params.no_perf = True
        for key, value in shape.overrides.items():
            setattr(params, key, value)
        ctx = llama_cpp.llama_init_from_model(model, params)
        if not ctx:
            raise ModelLoadError(
                f"failed to create a llama.cpp context (n_ctx={n_ctx}, "
                f"kv_cache_type={settings.kv_cache_type}) for {path}"
            )
        m = NativeModel(
            path=path,
            model=model,
            ctx=ctx,
            mem=llama_cpp.llama_get_memory(ctx),
            vocab=vocab,
            n_vocab=n_vocab,
            n_ctx=llama_cpp.llama_n_ctx(ctx),
            info=model_files.model_info(meta, path, settings, n_ctx),
            prompter=prompter,
            profiles=profiles,
            eog_ids=[t for t in range(n_vocab) if llama_cpp.llama_vocab_is_eog(vocab, t)],
            generation=generation,
            unified=unified,
        )
        if use_prefix:
            _eval_prefixes(m, prefixes, shape.n_slots, batch)
        return m
    except BaseException:
        if ctx:
            llama_cpp.llama_free(ctx)
        llama_cpp.llama_model_free(model)
        raise


def _eval_prefixes(
    m: NativeModel, prefixes: dict[str, list[int]], first_seq: int, b: BatchMemory
) -> None:
    for i, (profile, toks) in enumerate(sorted(prefixes.items())):
        if not toks or len(toks) > b.n_batch:
            continue
        seq = first_seq + i
        n = len(toks)
        b.token[:n] = toks
        b.pos[:n] = b.ramp[:n]
        b.seq[:n] = seq
        b.logits[:n] = 0
        b.logits[n - 1] = 1
        rc = b.decode(m.ctx, n)
        if rc != 0:
            raise ModelLoadError(f"evaluating the {profile!r} prompt prefix failed ({rc})")
        m.prefix_seq[profile] = (seq, n)
