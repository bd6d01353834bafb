"""The ``explainstream`` command line.

Each command lives in its own module exposing ``register(subparsers)``; modules are imported
only when their command may run, so the base install (SDK + schemas) can use ``produce``,
``explain`` and ``results`` without the consumer extras.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Sequence

from schemas.errors import ExplainstreamError, KafkaUnavailable
from schemas.version import __version__

__all__ = ["build_parser", "main"]

#: Modules providing ``register(subparsers)``, in help order.
COMMAND_MODULES: tuple[str, ...] = (
    "consumer.runtime.service",
    "producer_sdk.cli",
    "consumer.kafka.topics",
    "consumer.kafka.lag",
    "consumer.edge.replay",
    "consumer.dev.devbroker_cli",
    "consumer.dev.demo",
    "consumer.edge.gateway",
    "consumer.dev.bench.cli",
    "consumer.dev.finetune",
)


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (commands whose module is missing are left out)."""
    parser = argparse.ArgumentParser(
        prog="explainstream", description="Kafka-native LLM explanation service"
    )
    parser.add_argument("--version", action="version", version=f"explainstream {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            # An optional extra is not installed: the command is simply unavailable.
            if exc.name and exc.name.split(".")[0] in {
                "consumer",
                "llama_cpp",
                "aiohttp",
                "prometheus_client",
                "numpy",
            }:
                continue
            raise
        module.register(sub)
    return parser


def preload_llama() -> None:
    """Load llama.cpp's shared libraries before anything imports numpy.

    On an H200 host with llama.cpp built there for CUDA, loading a model segfaulted in
    llama.cpp's tokenizer set-up whenever numpy had been imported before libllama was
    loaded, and never when libllama came first (docs/benchmarks/gpu/README.md). Without
    the consumer extra there is nothing to load.
    """
    try:
        importlib.import_module("llama_cpp.llama_cpp")
    except ImportError:
        return


def _with_cause(exc: KafkaUnavailable) -> KafkaUnavailable:
    import asyncio

    from producer_sdk._diagnose import diagnosed
    from producer_sdk.connection import KafkaConnection

    try:
        conn = KafkaConnection.from_env()
    except ExplainstreamError:
        return exc
    return asyncio.run(diagnosed(conn, exc))


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the console script; returns the exit code."""
    preload_llama()
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=getattr(args, "log_level", None) or "WARNING",
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        code = args.func(args)
    except KafkaUnavailable as exc:
        # aiokafka says only "Unable to bootstrap"; one more attempt finds out why.
        print(f"explainstream {args.command}: {_with_cause(exc)}", file=sys.stderr)
        return 2
    except ExplainstreamError as exc:
        print(f"explainstream {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    return int(code or 0)


if __name__ == "__main__":
    sys.exit(main())
