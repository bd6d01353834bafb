"""PromQL expressions of the dashboard and the rules, and helpers to check them.

Shared by test_promtool.py (static checks) and test_real_prometheus.py (live queries).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy" / "grafana" / "explainstream-dashboard.json"
RULES = ROOT / "deploy" / "prometheus" / "rules.yml"
RULES_TEST = ROOT / "deploy" / "prometheus" / "rules_test.yml"
PROM_CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"

# What Grafana would substitute; "All" for the tier variable.
GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "15s", "$priority": ".*"}

_METRIC = re.compile(r"\b(?:llama_|explainstream_)\w+|\b[a-z_]+:[a-z_0-9]+:[a-z_0-9]+\b")
_LABEL_VALUES = re.compile(r"^label_values\(\s*([a-zA-Z_:][\w:]*)\s*,\s*(\w+)\s*\)$")


def load_dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def load_rules() -> dict[str, Any]:
    return yaml.safe_load(RULES.read_text())


def substitute(expr: str) -> str:
    """Replace Grafana variables the way Grafana would (longest names first)."""
    for name in sorted(GRAFANA_VARS, key=len, reverse=True):
        expr = expr.replace(name, GRAFANA_VARS[name])
    return expr


def dashboard_exprs() -> list[tuple[str, str]]:
    """(panel title / refId, expr with variables substituted) for every panel target."""
    out = []
    for panel in load_dashboard()["panels"]:
        for target in panel.get("targets", []):
            out.append((f"{panel['title']} [{target['refId']}]", substitute(target["expr"])))
    return out


def dashboard_variable_queries() -> list[tuple[str, str, str]]:
    """(variable, metric, label) of every ``label_values(metric, label)`` variable."""
    out = []
    for var in load_dashboard()["templating"]["list"]:
        if var["type"] != "query":
            continue
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        m = _LABEL_VALUES.match(query.strip())
        assert m, f"variable {var['name']}: unsupported query {query!r}"
        out.append((var["name"], m.group(1), m.group(2)))
    return out


def rules() -> list[dict[str, Any]]:
    return [r for g in load_rules()["groups"] for r in g["rules"]]


def recording_rules() -> list[tuple[str, str]]:
    return [(r["record"], r["expr"]) for r in rules() if "record" in r]


def alert_rules() -> list[tuple[str, str]]:
    return [(r["alert"], r["expr"]) for r in rules() if "alert" in r]


def metric_names(expr: str) -> set[str]:
    """Our metric and recording-rule names mentioned in ``expr`` (label values excluded)."""
    without_matchers = re.sub(r"\{[^}]*\}", "", expr)
    return set(_METRIC.findall(without_matchers))


def _matching_paren(text: str, open_at: int) -> int:
    depth = 0
    quote = ""
    for i in range(open_at, len(text)):
        c = text[i]
        if quote:
            if c == "\\":
                continue
            if c == quote:
                quote = ""
        elif c in "\"'`":
            quote = c
        elif c == "(":
            depth += 1
        elif c == ")":
            depth -= 1
            if depth == 0:
                return i
    raise ValueError(f"unbalanced parentheses in {text!r}")


def bool_form(expr: str) -> str:
    """The alert expression with its filters turned off, so it returns every watched series.

    Every comparison operator gets the ``bool`` modifier (``a > 5`` returns 0/1 for every
    series of ``a`` instead of only those above 5) and ``absent(x)`` becomes ``(x)``. An empty
    result of the bool form then means a metric or label the alert names does not exist.
    """
    while (m := re.search(r"\babsent\(", expr)) is not None:
        end = _matching_paren(expr, m.end() - 1)
        expr = expr[: m.start()] + "(" + expr[m.end() : end] + ")" + expr[end + 1 :]
    out: list[str] = []
    i = 0
    depth = 0
    quote = ""
    while i < len(expr):
        c = expr[i]
        if quote:
            out.append(c)
            if c == quote:
                quote = ""
            i += 1
            continue
        if c in "\"'`":
            quote = c
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
        elif depth == 0 and c in "=!<>":
            op = expr[i : i + 2] if expr[i : i + 2] in ("==", "!=", ">=", "<=") else c
            if op in ("==", "!=", ">=", "<=", ">", "<"):
                out.append(op)
                i += len(op)
                if not re.match(r"\s*bool\b", expr[i:]):
                    out.append(" bool")
                continue
        out.append(c)
        i += 1
    return "".join(out)
