"""The benchmarks live in one package, and every ``bench`` subcommand still registers.

``explainstream`` leaves out a command whose module fails to import with a missing
``consumer.*`` module (an optional extra), so a stale import path after a move would make a
subcommand vanish quietly; this pins them.
"""

from __future__ import annotations

import argparse
import importlib
from pathlib import Path

import consumer.dev
from consumer.cli import COMMAND_MODULES, build_parser
from consumer.dev.bench.cli import BENCH_MODULES

SUBCOMMANDS = {
    "engine",
    "make-model",
    "peer",
    "pipeline",
    "priority",
    "memory",
    "scale",
    "e2e",
    "quality",
    "report",
    "fairness",
}


def _bench_subcommands() -> set[str]:
    parser = build_parser()
    top = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    bench = top.choices["bench"]
    sub = next(a for a in bench._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices)


def test_every_bench_subcommand_registers() -> None:
    assert _bench_subcommands() == SUBCOMMANDS


def test_every_bench_module_is_in_the_bench_package_and_imports() -> None:
    assert "consumer.dev.bench.cli" in COMMAND_MODULES
    for name in BENCH_MODULES:
        assert name.startswith("consumer.dev.bench."), name
        assert hasattr(importlib.import_module(name), "register"), name


def test_no_flat_bench_module_is_left_in_dev() -> None:
    dev = Path(consumer.dev.__file__).parent
    flat = sorted(p.name for p in dev.glob("bench*.py"))
    assert flat == []
    assert (dev / "bench" / "__init__.py").is_file()


def test_the_developers_map_names_every_dev_module() -> None:
    dev = Path(consumer.dev.__file__).parent
    page = (dev.parents[1] / "docs" / "manual" / "development.md").read_text()
    for path in sorted(dev.glob("*.py")) + sorted(dev.glob("*.sh")):
        if path.name != "__init__.py":
            assert f"`consumer/dev/{path.name}`" in page or f"`{path.name}`" in page, path.name
    for path in sorted((dev / "bench").glob("*.py")):
        if path.name != "__init__.py":
            assert f"`consumer/dev/bench/{path.name}`" in page, path.name
