"""bench quality --compare-model: two models' figures side by side, and the report's rows."""

from __future__ import annotations

import asyncio
from typing import Any

from consumer.dev.bench.quality import compare, compare_markdown, run_quality_bench
from consumer.dev.bench.report import headline


def _run() -> dict[str, Any]:
    return asyncio.run(run_quality_bench(["off", "repair"], 6, 2, 16, 0.1, {"engine": "fake"}))


def test_the_comparison_pairs_each_policy_of_both_runs() -> None:
    base, other = _run(), _run()
    other["model"] = {**other["model"], "model_name": "tuned"}
    other["runs"][1]["model_share"] = 0.95
    other["runs"][1]["first_answer_grounded"] = 0.92
    rows = compare(base, other)
    assert [r["policy"] for r in rows] == ["off", "repair"]
    repair = rows[1]
    assert repair["model_share"] == [base["runs"][1]["model_share"], 0.95]
    assert repair["first_answer_failed"][1] == 1 - 0.92
    assert set(repair["first_answer_fail_rate"]) >= {"number", "echo"}
    report = {**base, "compare": other, "comparison": rows}
    text = compare_markdown(report)
    assert "beside" in text and "| repair |" in text
    finetuned = [r for r in headline({"finetuned": report}) if r[0] == "finetuned"]
    assert len(finetuned) == 3
    assert finetuned[0][1].startswith("fine-tuned: the model writes >= 90 %")
    assert finetuned[0][3] == "met"  # 95 % >= 90 %
    assert finetuned[1][3].startswith("met")  # 8 % of first answers failing <= 10 %
