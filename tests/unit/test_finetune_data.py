"""The fine-tuning set: checked pairs, unseen symbols, and refusal of bad lines by number."""

from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

from consumer.cli import main
from consumer.core.grounding import check
from consumer.dev.finetune_data import (
    DatasetError,
    Example,
    dump_dataset,
    explanations,
    load_dataset,
    training_contexts,
    training_examples,
)
from consumer.dev.quality_contexts import QUALITY_CONTEXTS


def test_contexts_are_seeded_cover_every_type_and_never_use_a_bench_symbol() -> None:
    first, again = training_contexts(60, seed=3), training_contexts(60, seed=3)
    assert first == again
    assert first != training_contexts(60, seed=4)
    bench_types = {c["analysis_type"] for _, c in QUALITY_CONTEXTS if c.get("symbol")}
    bench_symbols = {c.get("symbol") for _, c in QUALITY_CONTEXTS}
    trained_types = {c["analysis_type"] for _, c in first}
    assert trained_types >= bench_types - {"macro", "term_structure"}
    assert not {c["symbol"] for _, c in first} & bench_symbols
    signs = {v > 0 for _, c in first for v in c["metrics"].values() if v}
    assert signs == {True, False}


def test_every_generated_example_passes_the_checker_and_starts_with_its_symbol() -> None:
    examples = training_examples(120, seed=0)
    assert len(examples) >= 100  # a few contexts find no phrasing the checker accepts
    for ex in examples:
        assert check(ex.explanation, ex.context).grounded, ex.explanation
        assert ex.explanation.startswith(ex.context["symbol"])
    assert len({ex.explanation.split(" ", 2)[1] for ex in examples}) > 3  # varied openers


def test_explanations_name_metrics_as_people_do() -> None:
    context = {
        "analysis_type": "momentum",
        "symbol": "CSCO",
        "metrics": {"rsi_14": 22.5, "return_20d": -0.04},
    }
    texts = explanations(context, random.Random(0), n=6)
    assert texts
    joined = " ".join(texts)
    assert "14-day RSI" in joined and "20-day return" in joined
    assert "oversold" in joined or "forecast" in joined or "further figures" in joined


def _write(path: Path, lines: list[object]) -> Path:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in lines))
    return path


GOOD = {
    "profile": "default",
    "context": {"analysis_type": "sentiment", "symbol": "PEP", "metrics": {"sentiment_score": 0.4}},
    "explanation": "PEP: the sentiment score is 0.4, positive.",
}


def test_a_dataset_round_trips_and_each_bad_line_is_refused_by_number(tmp_path: Path) -> None:
    examples = training_examples(10, seed=1)
    n = dump_dataset(examples, tmp_path / "good.jsonl")
    assert load_dataset(tmp_path / "good.jsonl") == examples[:n]
    cases = {
        "not JSON": "{oops",
        "not a JSON object": "[1, 2]",
        'needs "context"': {"explanation": "x"},
        'the context needs "analysis_type"': {**GOOD, "context": {"symbol": "PEP"}},
        "unknown prompt profile": {**GOOD, "profile": "nope"},
        "fails the grounding checks: number": {
            **GOOD,
            "explanation": "PEP: the sentiment score is 0.9, positive.",
        },
        "must start with the symbol": {
            **GOOD,
            "explanation": "The sentiment score of PEP is 0.4, positive.",
        },
    }
    for needle, bad in cases.items():
        path = _write(tmp_path / "bad.jsonl", [GOOD, "", bad])
        with pytest.raises(DatasetError, match=r"^dataset line 3: ") as refused:
            load_dataset(path)
        assert needle in str(refused.value)
    with pytest.raises(DatasetError, match="no examples"):
        load_dataset(_write(tmp_path / "empty.jsonl", [""]))


def test_the_command_refuses_a_bad_dataset_before_any_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = {**GOOD, "explanation": "PEP: the sentiment score is 0.4, positive, at 55.5."}
    path = _write(tmp_path / "bad.jsonl", [GOOD, bad])
    out = tmp_path / "never.gguf"
    rc = main(["finetune", "--dataset", str(path), "--out", str(out)])
    err = capsys.readouterr().err
    assert rc == 2
    assert "dataset line 2: the explanation fails the grounding checks: number: 55.5" in err
    assert not out.exists()


def test_examples_serialise_as_dataset_lines() -> None:
    ex = Example("options", {"analysis_type": "skew", "symbol": "GS", "metrics": {}}, "GS.", "x")
    assert json.loads(ex.as_json()) == {
        "profile": "options",
        "context": ex.context,
        "explanation": "GS.",
        "source": "x",
    }
