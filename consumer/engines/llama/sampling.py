"""Sampling in C, log-probabilities with numpy, token text and stop matching.

``confidence_score`` is ``exp(mean log p(token))`` over the generated tokens, where
``log p`` is the log-softmax of the model's raw logits (temperature 1, before top-k/top-p)
at the sampled token. It is computed once per step for all sampled rows together, with
numpy on the context's logits buffer (max, exp, sum into preallocated arrays).
"""

from __future__ import annotations

import ctypes
import math
import random
from typing import TYPE_CHECKING, Any

import numpy as np

from consumer.engines.prompts import PromptProfile

if TYPE_CHECKING:
    from consumer.engines.base import GenerationRequest

__all__ = [
    "MIN_P",
    "TOP_K",
    "TOP_P",
    "Logprobs",
    "Pieces",
    "free_sampler",
    "hit_stop",
    "make_sampler",
]

TOP_K = 40
TOP_P = 0.95
MIN_P = 0.05


def make_sampler(
    req: GenerationRequest, profile: PromptProfile, n_vocab: int, eog_ids: list[int]
) -> Any:
    """A ``llama_sampler`` chain for one request (greedy at temperature 0)."""
    import llama_cpp

    add = llama_cpp.llama_sampler_chain_add
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    if req.ignore_eos and eog_ids:
        arr: Any = (llama_cpp.llama_logit_bias * len(eog_ids))()
        for i, t in enumerate(eog_ids):
            arr[i].token = t
            arr[i].bias = -math.inf
        add(chain, llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(eog_ids), arr))
    if req.temperature <= 0:
        add(chain, llama_cpp.llama_sampler_init_greedy())
        return chain
    seed = req.seed if req.seed is not None else random.getrandbits(32)
    top_k = TOP_K if profile.top_k is None else profile.top_k
    if top_k > 0:
        add(chain, llama_cpp.llama_sampler_init_top_k(top_k))
    add(
        chain,
        llama_cpp.llama_sampler_init_top_p(TOP_P if profile.top_p is None else profile.top_p, 1),
    )
    add(
        chain,
        llama_cpp.llama_sampler_init_min_p(MIN_P if profile.min_p is None else profile.min_p, 1),
    )
    add(chain, llama_cpp.llama_sampler_init_temp(req.temperature))
    add(chain, llama_cpp.llama_sampler_init_dist(seed & 0xFFFFFFFF))
    return chain


def free_sampler(sampler: Any) -> None:
    """Free a chain made by :func:`make_sampler` (None is ignored)."""
    if sampler is not None:
        import llama_cpp

        llama_cpp.llama_sampler_free(sampler)


class Logprobs:
    """Log-softmax at the sampled tokens of the first ``n`` output rows, into fixed buffers."""

    def __init__(self, n_rows: int, n_vocab: int) -> None:
        self.n_vocab = n_vocab
        self._scratch = np.empty((n_rows, n_vocab), dtype=np.float32)
        self._max = np.zeros(n_rows, dtype=np.float32)
        self._sum = np.zeros(n_rows, dtype=np.float32)
        self._rows = np.arange(n_rows, dtype=np.int64)
        self._addr = 0
        self._view: np.ndarray = self._scratch
        self._n_rows = n_rows

    def compute(self, ctx: Any, tokens: np.ndarray, n: int) -> np.ndarray | None:
        """log p of ``tokens[:n]`` under output rows 0..n-1 of ``ctx``'s last decode."""
        import llama_cpp

        if n == 0:
            return None
        addr = ctypes.cast(llama_cpp.llama_get_logits(ctx), ctypes.c_void_p).value
        if not addr:
            return None
        if addr != self._addr:  # llama.cpp reallocated its output buffer
            self._view = np.ctypeslib.as_array(
                ctypes.cast(addr, ctypes.POINTER(ctypes.c_float)),
                shape=(self._n_rows, self.n_vocab),
            )
            self._addr = addr
        rows = self._view[:n]
        buf = self._scratch[:n]
        mx = self._max[:n]
        sm = self._sum[:n]
        np.max(rows, axis=1, out=mx)
        np.subtract(rows, mx[:, None], out=buf)
        np.exp(buf, out=buf)
        np.sum(buf, axis=1, out=sm)
        picked = rows[self._rows[:n], tokens[:n]]
        result: np.ndarray = picked - mx - np.log(sm)
        return result


class Pieces:
    """Token id -> UTF-8 bytes, cached (the vocabulary is fixed for a loaded model)."""

    def __init__(self, vocab: Any) -> None:
        self._vocab = vocab
        self._buf = ctypes.create_string_buffer(256)
        self._cache: dict[int, bytes] = {}

    def get(self, token: int) -> bytes:
        """The bytes ``token`` adds to the text."""
        piece = self._cache.get(token)
        if piece is None:
            import llama_cpp

            buf = self._buf
            k = llama_cpp.llama_token_to_piece(self._vocab, token, buf, len(buf), 0, False)
            piece = buf.raw[:k] if k > 0 else b""
            self._cache[token] = piece
        return piece


def hit_stop(text: bytearray, stops: tuple[bytes, ...], piece_len: int) -> bool:
    """True (and ``text`` cut before it) when a stop string ends in the newest piece."""
    for stop in stops:
        start = max(0, len(text) - piece_len - len(stop))
        idx = text.find(stop, start)
        if idx >= 0:
            del text[idx:]
            return True
    return False
