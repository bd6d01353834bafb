"""llama.cpp's log lines reach our logging at the right level."""

from __future__ import annotations

import logging

import pytest

from consumer.engines.model import _on_llama_log

NAME = "explainstream.llama_cpp"


def test_levels_are_mapped_and_continuations_keep_the_level(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger=NAME)
    _on_llama_log(2, b"llama_context: n_ctx = 8448\n", None)  # INFO: chatty -> DEBUG
    _on_llama_log(3, b"load: special tokens cache size\n", None)  # WARN
    _on_llama_log(5, b"  ... continued\n", None)  # CONT keeps WARN
    _on_llama_log(4, b"failed to allocate buffer\n", None)  # ERROR
    got = [(r.levelno, r.getMessage()) for r in caplog.records if r.name == NAME]
    assert got == [
        (logging.DEBUG, "llama_context: n_ctx = 8448"),
        (logging.WARNING, "load: special tokens cache size"),
        (logging.WARNING, "  ... continued"),
        (logging.ERROR, "failed to allocate buffer"),
    ]


def test_the_unified_kv_overflow_warning_is_not_a_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger=NAME)
    _on_llama_log(
        3, b"n_ctx_seq (8448) > n_ctx_train (8192) -- possible training context overflow\n", None
    )
    assert not [r for r in caplog.records if r.name == NAME]
