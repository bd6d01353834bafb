"""Full fine-tuning with llama.cpp's own trainer (``llama_opt_*``), driven from Python.

The vendored llama.cpp's ``llama-finetune`` example tokenizes one text file and trains on
overlapping windows of it, so every token is seen twice and an example's answer is followed
by the next example's system prompt. This driver calls the same library functions
(``llama_opt_init``, ``llama_opt_epoch``, ggml-opt's dataset and AdamW) on a dataset of one
example per row, padded to one length, shuffled (seeded) every epoch, with the held-out rows
evaluated before training and after each epoch. It needs no build: the functions are in the
engine's own shared libraries. The model must be F32 and loaded without mmap (the optimizer
writes the weights in place); the K/V cache is F32 (no F16 backward for OUT_PROD).

llama-cpp-python declares ``llama_opt_params`` without its last field (the optimizer type),
so this module declares the struct and the two entry points itself.
"""

from __future__ import annotations

import ctypes
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from consumer.engines.model import init_llama_backend
from schemas.errors import ModelLoadError

__all__ = ["ROW_QUANTUM", "EpochLoss", "TrainSettings", "train"]

_GGML_TYPE_F32 = 0
_GGML_TYPE_I32 = 26
_ADAMW = 0
_FLASH_ATTN_DISABLED = 0
_LOAD_MODE_NONE = 0
#: Row lengths are multiples of this: llama.cpp pads a context to it.
ROW_QUANTUM = 256


class _AdamW(ctypes.Structure):
    _fields_ = [(n, ctypes.c_float) for n in ("alpha", "beta1", "beta2", "eps", "wd")]


class _Sgd(ctypes.Structure):
    _fields_ = [("alpha", ctypes.c_float), ("wd", ctypes.c_float)]


class _OptimizerParams(ctypes.Structure):
    _fields_ = [("adamw", _AdamW), ("sgd", _Sgd)]


class _OptParams(ctypes.Structure):
    """``struct llama_opt_params`` of the vendored llama.h, all fields."""

    _fields_ = [
        ("n_ctx_train", ctypes.c_uint32),
        ("param_filter", ctypes.c_void_p),
        ("param_filter_ud", ctypes.c_void_p),
        ("get_opt_pars", ctypes.c_void_p),
        ("get_opt_pars_ud", ctypes.c_void_p),
        ("optimizer_type", ctypes.c_int),
    ]


_EpochCallback = ctypes.CFUNCTYPE(
    None, ctypes.c_bool, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p,
    ctypes.c_int64, ctypes.c_int64, ctypes.c_int64,
)  # fmt: skip


@dataclass(frozen=True, slots=True)
class TrainSettings:
    """How to train (the defaults are the ones ``explainstream finetune`` measured)."""

    epochs: int = 2
    learning_rate: float = 3e-5
    min_lr_ratio: float = 0.1  # the rate decays linearly to this share of learning_rate
    warmup_share: float = 0.05
    weight_decay: float = 0.0
    threads: int = 2
    seed: int = 0


@dataclass(slots=True)
class EpochLoss:
    """Mean cross-entropy per token of one pass (``epoch`` 0: held-out before training)."""

    epoch: int
    train: float | None
    held_out: float
    seconds: float


@dataclass(slots=True)
class _Lib:
    llama: Any
    ggml: Any


def _libs() -> _Lib:
    import llama_cpp
    from llama_cpp import llama_cpp as bindings

    llama = bindings._lib
    ggml = ctypes.CDLL(str(Path(llama_cpp.__file__).parent / "lib" / "libggml-base.so"))
    ggml.ggml_opt_dataset_init.restype = ctypes.c_void_p
    ggml.ggml_opt_dataset_init.argtypes = [ctypes.c_int, ctypes.c_int] + [ctypes.c_int64] * 4
    for name in ("ggml_opt_dataset_data", "ggml_opt_dataset_labels"):
        getattr(ggml, name).restype = ctypes.c_void_p
        getattr(ggml, name).argtypes = [ctypes.c_void_p]
    ggml.ggml_get_data.restype = ctypes.c_void_p
    ggml.ggml_get_data.argtypes = [ctypes.c_void_p]
    ggml.ggml_opt_dataset_free.argtypes = [ctypes.c_void_p]
    ggml.ggml_opt_result_init.restype = ctypes.c_void_p
    for name in ("ggml_opt_result_free", "ggml_opt_result_reset"):
        getattr(ggml, name).argtypes = [ctypes.c_void_p]
    ggml.ggml_opt_result_loss.argtypes = [ctypes.c_void_p] + [ctypes.POINTER(ctypes.c_double)] * 2
    llama.llama_opt_init.argtypes = [ctypes.c_void_p, ctypes.c_void_p, _OptParams]
    llama.llama_opt_init.restype = None
    llama.llama_opt_epoch.argtypes = [ctypes.c_void_p] * 4 + [ctypes.c_int64] + [_EpochCallback] * 2
    llama.llama_opt_epoch.restype = None
    return _Lib(llama, ggml)


@dataclass(slots=True)
class _Rows:
    """Token rows (inputs) and their next tokens (labels), one ggml-opt dataset."""

    lib: _Lib
    length: int
    rows: Sequence[Sequence[int]]
    pad: int
    handle: int = field(init=False)

    def __post_init__(self) -> None:
        n = len(self.rows)
        self.handle = self.lib.ggml.ggml_opt_dataset_init(
            _GGML_TYPE_I32, _GGML_TYPE_I32, self.length, self.length, n, 1
        )
        self.fill(list(range(n)))

    def fill(self, order: Sequence[int]) -> None:
        """Write the rows in ``order`` (a permutation) into the dataset's tensors."""
        import numpy as np

        ggml, width, n = self.lib.ggml, self.length, len(order)
        padded = np.full((n, width + 1), self.pad, dtype=np.int32)
        for slot, index in enumerate(order):
            row = list(self.rows[index])[: width + 1]
            padded[slot, : len(row)] = row
        for tensor, part in (
            (ggml.ggml_opt_dataset_data(self.handle), padded[:, :width]),
            (ggml.ggml_opt_dataset_labels(self.handle), padded[:, 1:]),
        ):
            buffer = (ctypes.c_int32 * (width * n)).from_address(ggml.ggml_get_data(tensor))
            np.ctypeslib.as_array(buffer)[:] = part.reshape(-1)

    def free(self) -> None:
        self.lib.ggml.ggml_opt_dataset_free(self.handle)


class _Progress:
    """The epoch callback: a one-line progress bar with the running loss, and the rate
    schedule (linear warm-up, then linear decay), set before each optimizer step."""

    def __init__(self, params: _OptimizerParams, settings: TrainSettings, steps: int) -> None:
        self.params, self.settings, self.total = params, settings, max(1, steps)
        self.done = 0
        self.label = ""
        self.started = time.monotonic()
        self.lib: _Lib | None = None
        self.out = sys.stderr
        self.callback = _EpochCallback(self._on_batch)
        self._set_rate()

    def start(self, label: str) -> None:
        """A new pass begins."""
        self.label, self.started = label, time.monotonic()

    def _set_rate(self) -> None:
        s = self.settings
        warm = max(1, int(self.total * s.warmup_share))
        if self.done < warm:
            share = (self.done + 1) / warm
        else:
            left = (self.total - self.done) / max(1, self.total - warm)
            share = s.min_lr_ratio + (1 - s.min_lr_ratio) * max(0.0, left)
        self.params.adamw.alpha = s.learning_rate * share

    def _on_batch(
        self, train: bool, _opt: Any, _ds: Any, result: Any, ibatch: int, nbatch: int, _t0: int
    ) -> None:
        if train:
            self.done += 1
            self._set_rate()
        if self.lib is None or (ibatch != nbatch and ibatch % 4):
            return
        loss, unc = ctypes.c_double(), ctypes.c_double()
        self.lib.ggml.ggml_opt_result_loss(result, ctypes.byref(loss), ctypes.byref(unc))
        width = 24
        filled = width * ibatch // max(1, nbatch)
        elapsed = time.monotonic() - self.started
        eta = elapsed / max(1, ibatch) * (nbatch - ibatch)
        bar = "#" * filled + "." * (width - filled)
        self.out.write(
            f"\r{self.label} [{bar}] {ibatch}/{nbatch} loss {loss.value:.3f}"
            f" lr {self.params.adamw.alpha:.1e} {elapsed:.0f}s (ETA {eta:.0f}s)"
        )
        if ibatch == nbatch:
            self.out.write("\n")
        self.out.flush()


def _mean_loss(lib: _Lib, result: int) -> float:
    loss, unc = ctypes.c_double(), ctypes.c_double()
    lib.ggml.ggml_opt_result_loss(result, ctypes.byref(loss), ctypes.byref(unc))
    return float(loss.value)


def train(
    model_path: str,
    out_path: str,
    train_rows: Sequence[Sequence[int]],
    held_out_rows: Sequence[Sequence[int]],
    *,
    length: int,
    pad: int,
    settings: TrainSettings,
    on_epoch: Callable[[EpochLoss], None] | None = None,
) -> list[EpochLoss]:
    """Train the F32 GGUF ``model_path`` on ``train_rows`` (token ids, each at most
    ``length + 1``), write the result to ``out_path``; returns the held-out loss before
    training and after each epoch, with each epoch's training loss."""
    import llama_cpp

    if not train_rows or not held_out_rows:
        raise ValueError("fine-tuning needs training rows and held-out rows")
    init_llama_backend()
    lib = _libs()
    mparams = llama_cpp.llama_model_default_params()
    mparams.load_mode = _LOAD_MODE_NONE  # no mmap: the optimizer writes the weights in place
    mparams.n_gpu_layers = 0
    model = llama_cpp.llama_model_load_from_file(model_path.encode(), mparams)
    if not model:
        raise ModelLoadError(f"failed to load {model_path} for training")
    cparams = llama_cpp.llama_context_default_params()
    cparams.n_ctx = cparams.n_batch = cparams.n_ubatch = length
    cparams.n_threads = cparams.n_threads_batch = settings.threads
    cparams.type_k = cparams.type_v = _GGML_TYPE_F32
    cparams.flash_attn_type = _FLASH_ATTN_DISABLED
    ctx = llama_cpp.llama_init_from_model(model, cparams)
    if not ctx:
        llama_cpp.llama_model_free(model)
        raise ModelLoadError(f"failed to create a training context for {model_path}")
    if llama_cpp.llama_n_ctx(ctx) != length:
        # llama.cpp rounds the context up (to 256 cells); the rows must fill it exactly,
        # and K/V get gradients only when one micro-batch is the whole context.
        actual = llama_cpp.llama_n_ctx(ctx)
        llama_cpp.llama_free(ctx)
        llama_cpp.llama_model_free(model)
        raise ValueError(
            f"row length {length} is not a context size ({actual}): use {ROW_QUANTUM}s"
        )
    rng = random.Random(settings.seed)
    opt = _OptimizerParams()
    opt.adamw.beta1, opt.adamw.beta2, opt.adamw.eps = 0.9, 0.999, 1e-8
    opt.adamw.wd = settings.weight_decay
    progress = _Progress(opt, settings, settings.epochs * len(train_rows))
    progress.lib = lib
    lopt = _OptParams(
        0,
        ctypes.cast(lib.llama.llama_opt_param_filter_all, ctypes.c_void_p).value,
        None,
        ctypes.cast(lib.ggml.ggml_opt_get_constant_optimizer_params, ctypes.c_void_p).value,
        ctypes.cast(ctypes.pointer(opt), ctypes.c_void_p).value,
        _ADAMW,
    )
    lib.llama.llama_opt_init(ctx, model, lopt)
    train_set = _Rows(lib, length, train_rows, pad)
    held_set = _Rows(lib, length, held_out_rows, pad)
    r_train, r_eval = lib.ggml.ggml_opt_result_init(), lib.ggml.ggml_opt_result_init()
    history: list[EpochLoss] = []
    no_callback = _EpochCallback()
    try:
        for epoch in range(settings.epochs + 1):
            t0 = time.monotonic()
            train_loss = None
            if epoch:
                order = list(range(len(train_rows)))
                rng.shuffle(order)
                train_set.fill(order)
                progress.start(f"epoch {epoch}/{settings.epochs}")
                lib.llama.llama_opt_epoch(
                    ctx, train_set.handle, r_train, r_eval, len(train_rows),
                    progress.callback, no_callback,
                )  # fmt: skip
                train_loss = _mean_loss(lib, r_train)
            lib.llama.llama_opt_epoch(
                ctx, held_set.handle, r_train, r_eval, 0, no_callback, no_callback
            )
            row = EpochLoss(epoch, train_loss, _mean_loss(lib, r_eval), time.monotonic() - t0)
            history.append(row)
            if on_epoch is not None:
                on_epoch(row)
            lib.ggml.ggml_opt_result_reset(r_train)
            lib.ggml.ggml_opt_result_reset(r_eval)
        llama_cpp.llama_model_save_to_file(model, out_path.encode())
    finally:
        lib.ggml.ggml_opt_result_free(r_train)
        lib.ggml.ggml_opt_result_free(r_eval)
        train_set.free()
        held_set.free()
        llama_cpp.llama_free(ctx)
        llama_cpp.llama_model_free(model)
    return history
