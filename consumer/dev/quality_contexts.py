"""The fixed contexts of ``bench quality``: types, symbols, signs, magnitudes, both profiles.

None of them is in the prompts, tests or few-shot text anywhere else in the project; the
symbols are real tickers and the values plausible, so a model's general knowledge can
tempt it away from the data (the failure the grounding checks exist for).
"""

from __future__ import annotations

from typing import Any

__all__ = ["QUALITY_CONTEXTS"]


def _c(
    profile: str, kind: str, symbol: str | None, metrics: dict[str, float], **attributes: str
) -> tuple[str, dict[str, Any]]:
    context: dict[str, Any] = {"analysis_type": kind, "metrics": metrics, "attributes": attributes}
    if symbol is not None:
        context["symbol"] = symbol
    return profile, context


#: (prompt profile, AnalysisContext as a dict), 48 of them.
QUALITY_CONTEXTS: tuple[tuple[str, dict[str, Any]], ...] = (
    _c("default", "sentiment", "AAPL", {"sentiment_score": -0.72, "current_price": 187.4}),
    _c(
        "default", "sentiment", "BA", {"sentiment_score": 0.35, "news_volume": 412.0}, source="news"
    ),
    _c("default", "sentiment", "KO", {"sentiment_score": 0.08, "current_price": 61.92}),
    _c("default", "sentiment", "XOM", {"sentiment_score": -0.41, "return_5d": -0.027}),
    _c(
        "default",
        "sentiment",
        "JPM",
        {"sentiment_score": 0.66, "mentions": 1840.0},
        source="social",
    ),
    _c(
        "default",
        "momentum",
        "MSFT",
        {"rsi_14": 28.4, "current_price": 402.15, "return_20d": -0.061},
    ),
    _c("default", "momentum", "AMZN", {"rsi_14": 74.9, "sma_50": 176.3, "current_price": 189.05}),
    _c("default", "momentum", "NFLX", {"macd": 4.21, "macd_signal": 3.02, "return_1m": 0.112}),
    _c("default", "momentum", "INTC", {"rsi_14": 45.0, "return_3m": -0.184}, timeframe="daily"),
    _c("default", "trend", "COST", {"sma_50": 842.7, "sma_200": 781.2, "current_price": 861.0}),
    _c("default", "trend", "DIS", {"sma_50": 98.4, "sma_200": 104.9, "current_price": 95.12}),
    _c("default", "earnings", "NVDA", {"eps_surprise": 0.12, "revenue_growth": 0.94}, quarter="Q3"),
    _c("default", "earnings", "WMT", {"eps": 1.84, "eps_estimate": 1.77, "revenue_growth": 0.052}),
    _c(
        "default", "earnings", "PFE", {"eps_surprise": -0.08, "revenue_growth": -0.41}, quarter="Q2"
    ),
    _c("default", "earnings", "ORCL", {"eps": 1.47, "guidance_change": 0.03}, quarter="Q1 FY2027"),
    _c(
        "default",
        "valuation",
        "GOOGL",
        {"pe_ratio": 23.8, "forward_pe": 20.1, "current_price": 172.6},
    ),
    _c("default", "valuation", "T", {"dividend_yield": 0.064, "pe_ratio": 8.9}),
    _c("default", "valuation", "BRK.B", {"price_to_book": 1.52, "market_cap": 903000000000.0}),
    _c("default", "valuation", "SHOP", {"ev_to_sales": 14.2, "revenue_growth": 0.26}),
    _c(
        "default",
        "volume",
        "AMD",
        {"volume_ratio": 2.7, "current_price": 158.3, "return_1d": 0.043},
    ),
    _c("default", "volume", "F", {"volume_ratio": 0.6, "return_1d": -0.011}),
    _c("default", "risk", "TSLA", {"beta": 2.31, "max_drawdown": -0.38, "volatility_30d": 0.58}),
    _c("default", "risk", "JNJ", {"beta": 0.54, "volatility_30d": 0.14}),
    _c("default", "macro", None, {"cpi_yoy": 0.031, "fed_funds_rate": 0.0525}, region="US"),
    _c(
        "default", "sector", "XLE", {"return_1m": -0.048, "sentiment_score": -0.22}, sector="energy"
    ),
    _c("default", "sector", "XLK", {"return_1m": 0.067, "sentiment_score": 0.51}),
    _c("default", "credit", "HYG", {"spread_bps": 312.0, "spread_change_bps": -18.0}),
    _c("default", "flows", "QQQ", {"net_inflow": 1250000000.0, "return_5d": 0.019}),
    _c("options", "options_flow", "AAPL", {"put_call_ratio": 0.62, "call_volume": 1850000.0}),
    _c("options", "options_flow", "META", {"put_call_ratio": 1.38, "unusual_volume": 3.4}),
    _c("options", "volatility", "TSLA", {"iv_rank": 88.0, "implied_volatility": 0.71}),
    _c("options", "volatility", "SPY", {"iv_rank": 12.0, "implied_volatility": 0.118}, tenor="30d"),
    _c("options", "volatility", "NVDA", {"iv_rank": 64.0, "iv_percentile": 71.0, "hv_30d": 0.49}),
    _c("options", "skew", "SPY", {"skew_25d": -0.062, "iv_rank": 23.0}, tenor="30d"),
    _c("options", "skew", "GLD", {"skew_25d": 0.018, "implied_volatility": 0.152}),
    _c("options", "open_interest", "AMZN", {"open_interest": 1250000.0, "oi_change": 0.14}),
    _c("options", "greeks", "MSFT", {"delta": 0.52, "gamma": 0.018, "theta": -0.41, "vega": 0.33}),
    _c("options", "earnings_move", "NFLX", {"implied_move": 0.082, "iv_rank": 79.0}, quarter="Q4"),
    _c("options", "term_structure", "VIX", {"front_month": 14.2, "second_month": 16.8}),
    _c(
        "options",
        "volatility",
        "AMD",
        {"iv_rank": 41.0, "implied_volatility": 0.47, "return_5d": 0.031},
    ),
    _c("options", "options_flow", "COIN", {"put_call_ratio": 0.88, "iv_rank": 57.0}),
    _c("options", "skew", "IWM", {"skew_25d": -0.091, "put_call_ratio": 1.21}),
    _c("default", "sentiment", "UBER", {"sentiment_score": -0.15, "return_1m": 0.022}),
    _c("default", "momentum", "CRM", {"rsi_14": 33.7, "return_1m": -0.092, "current_price": 246.8}),
    _c("default", "earnings", "ADBE", {"eps_surprise": 0.047, "eps": 4.81}, quarter="Q3"),
    _c("default", "dividend", "PG", {"dividend_yield": 0.024, "payout_ratio": 0.61}),
    _c("default", "liquidity", "PLTR", {"bid_ask_spread_bps": 3.5, "avg_volume": 52000000.0}),
    _c("default", "sentiment", "BABA", {"sentiment_score": 0.0, "mentions": 960.0}, source="news"),
)
