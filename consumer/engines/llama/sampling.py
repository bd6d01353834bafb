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
from schemas.errors import EngineError

if TYPE_CHECKING:
    from consumer.engines.base import GenerationRequest

__all__ = [
    "MIN_P",
    "TOP_K",
    "TOP_P",
    "Logprobs",
    "Pieces",
    "Sampler",
    "free_sampler",
    "hit_stop",
    "make_sampler",
]

TOP_K = 40
TOP_P = 0.95
MIN_P = 0.05


class Sampler:
    """One request's ``llama_sampler`` chain and, with a grammar, its grammar sampler.

    The grammar is applied lazily, as llama.cpp's own common sampler does: the chain picks
    a token, the grammar judges that one token, and only a refused pick makes the grammar
    filter the whole vocabulary (a pass over all 49k candidates that the batch's step waits
    for; side by side in ``bench quality`` the lazy grammar kept 0.91x the tokens/s of no
    grammar). A refused pick is replaced by the most likely token the grammar allows.
    """

    def __init__(self, chain: Any, grammar: Any = None, n_vocab: int = 0) -> None:
        self.chain = chain
        self.grammar = grammar
        self.n_vocab = n_vocab
        self.refused = 0  # picks the grammar refused (each cost a full-vocabulary pass)
        self._one: Any = None
        self._all: np.ndarray | None = None

    def sample(self, ctx: Any, idx: int) -> int:
        """The next token for output row ``idx`` of ``ctx``'s last decode."""
        import llama_cpp

        token = int(llama_cpp.llama_sampler_sample(self.chain, ctx, idx))
        if self.grammar is None:
            return token
        if not self._allows(token):
            self.refused += 1
            token = self._best_allowed(llama_cpp.llama_get_logits_ith(ctx, idx))
        llama_cpp.llama_sampler_accept(self.grammar, token)
        return token

    def _allows(self, token: int) -> bool:
        import llama_cpp

        if self._one is None:
            self._one = (llama_cpp.llama_token_data * 1)()
        self._one[0].id, self._one[0].logit, self._one[0].p = token, 0.0, 0.0
        arr = llama_cpp.llama_token_data_array(self._one, 1, -1, False)
        llama_cpp.llama_sampler_apply(self.grammar, ctypes.byref(arr))
        return bool(math.isfinite(self._one[0].logit))

    def _best_allowed(self, logits_ptr: Any) -> int:
        import llama_cpp

        n = self.n_vocab
        if self._all is None:
            self._all = np.zeros(n, dtype=_TOKEN_DATA)
            self._all["id"] = np.arange(n, dtype=np.int32)
        logits = np.ctypeslib.as_array(logits_ptr, shape=(n,))
        self._all["logit"] = logits
        self._all["p"] = 0.0
        data = self._all.ctypes.data_as(ctypes.POINTER(llama_cpp.llama_token_data))
        arr = llama_cpp.llama_token_data_array(data, n, -1, False)
        llama_cpp.llama_sampler_apply(self.grammar, ctypes.byref(arr))
        return int(self._all["id"][int(np.argmax(self._all["logit"]))])

    def free(self) -> None:
        """Free the C samplers (idempotent)."""
        import llama_cpp

        if self.chain is not None:
            llama_cpp.llama_sampler_free(self.chain)
            self.chain = None
        if self.grammar is not None:
            llama_cpp.llama_sampler_free(self.grammar)
            self.grammar = None


# llama_token_data as numpy lays it out: int32 id, float logit, float p.
_TOKEN_DATA = np.dtype([("id", "<i4"), ("logit", "<f4"), ("p", "<f4")])


def make_sampler(
    req: GenerationRequest,
    profile: PromptProfile,
    n_vocab: int,
    eog_ids: list[int],
    vocab: Any = None,
) -> Sampler:
    """The samplers of one request (greedy at temperature 0; ``req.grammar`` constrains
    the text, see :class:`Sampler`). EngineError when the grammar does not parse."""
    import llama_cpp

    grammar = None
    if req.grammar:
        grammar = llama_cpp.llama_sampler_init_grammar(vocab, req.grammar.encode(), b"root")
        if not grammar:
            raise EngineError(f"request {req.request_id}: grammar does not parse")
    add = llama_cpp.llama_sampler_chain_add
    chain = llama_cpp.llama_sampler_chain_init(llama_cpp.llama_sampler_chain_default_params())
    sampler = Sampler(chain, grammar, n_vocab)
    if req.ignore_eos and eog_ids:
        arr: Any = (llama_cpp.llama_logit_bias * len(eog_ids))()
        for i, t in enumerate(eog_ids):
            arr[i].token = t
            arr[i].bias = -math.inf
        add(chain, llama_cpp.llama_sampler_init_logit_bias(n_vocab, len(eog_ids), arr))
    if req.temperature <= 0:
        add(chain, llama_cpp.llama_sampler_init_greedy())
        return sampler
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
    return sampler


def free_sampler(sampler: Sampler | None) -> None:
    """Free what :func:`make_sampler` made (None is ignored)."""
    if sampler is not None:
        sampler.free()


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
