"""A cap on how far the Kafka client may inflate one compressed batch.

aiokafka decompresses a whole fetched batch in memory with no limit: 50 MB of zeros is
~50 KB of gzip, well under the broker's message limit, and 1 MB of gzip can be ~1 GB in
RAM. :func:`bound_decompression` replaces the decoders aiokafka's record readers call
with ones that stop at ``max_bytes``: gzip is inflated incrementally and refused as soon
as the output would pass the cap (memory stays bounded); snappy, lz4 and zstd (only with
the optional ``cramjam``) are refused after decoding. The refusal raises from
``getmany``, where :mod:`producer_sdk._unreadable` finds the batch's records and the
intake dead-letters them as references.
"""

from __future__ import annotations

import importlib
import zlib
from collections.abc import Callable
from typing import Any

__all__ = ["MAX_INFLATED_BATCH_BYTES", "InflatedTooLarge", "bound_decompression"]

#: Far above any valid batch of requests or results (records are at most a few tens of KB).
MAX_INFLATED_BATCH_BYTES = 64 * 1024 * 1024

_READERS = (
    "aiokafka.record._crecords.default_records",
    "aiokafka.record._crecords.legacy_records",
    "aiokafka.record.default_records",
    "aiokafka.record.legacy_records",
)
_installed: list[int] = []


class InflatedTooLarge(ValueError):
    """A compressed batch inflates past the cap."""


_CHUNK = 1 << 20  # inflate at most this much per call: the peak stays near the cap


def _bounded_gzip(max_bytes: int) -> Callable[[Any], bytes]:
    def gzip_decode(payload: Any) -> bytes:
        # Chunks in a list, joined once at the end: growing one bytearray would copy it
        # on every reallocation (twice the cap resident at the worst moment).
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        chunks: list[bytes] = []
        size = 0
        data = bytes(payload)
        while data:
            chunk = inflater.decompress(data, min(_CHUNK, max_bytes + 1 - size))
            size += len(chunk)
            if size > max_bytes:
                chunks.clear()
                raise InflatedTooLarge(f"a compressed batch inflates past {max_bytes} bytes")
            chunks.append(chunk)
            data = inflater.unconsumed_tail
            if inflater.eof:
                data = inflater.unused_data  # concatenated gzip members
                if data:
                    inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        return b"".join(chunks)

    return gzip_decode


def _checked(decode: Callable[[Any], bytes], max_bytes: int) -> Callable[[Any], bytes]:
    def checked(payload: Any) -> bytes:
        out = decode(payload)
        if len(out) > max_bytes:
            raise InflatedTooLarge(f"a compressed batch inflates past {max_bytes} bytes")
        return out

    return checked


def bound_decompression(max_bytes: int = MAX_INFLATED_BATCH_BYTES) -> None:
    """Install the bounded decoders in every aiokafka record reader (idempotent; the
    process's first cap wins)."""
    if _installed:
        return
    from aiokafka import codec

    gzip = _bounded_gzip(max_bytes)
    others = {
        name: _checked(getattr(codec, name), max_bytes)
        for name in ("snappy_decode", "lz4_decode", "zstd_decode")
    }
    for module_name in _READERS:
        try:
            module = importlib.import_module(module_name)
        except ImportError:  # a build without the C extensions
            continue
        if hasattr(module, "gzip_decode"):
            setattr(module, "gzip_decode", gzip)  # noqa: B010
        for name, decode in others.items():
            if hasattr(module, name):
                setattr(module, name, decode)
    _installed.append(max_bytes)
