"""The report's figures (:mod:`fae_data.report` inlines them in its page).

Figures are drawn on :class:`matplotlib.figure.Figure` objects and saved with the Agg
renderer; pyplot is never imported, so no global backend is switched under a caller and no
figure is registered anywhere that could leak.

The two value helpers the page's text shares with the figures (:func:`_bytes`,
:func:`_num`) live here too, so that this module need not import the report.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from fae_data.manifest import Manifest
from fae_data.plan_budget import format_bytes
from fae_data.skew import TableSkew

#: The lowest cumulative share an access curve's y axis shows.
_MIN_SHARE = 1e-4
_KIND_COLOURS = {"hot": "#d9534f", "cold": "#337ab7", "all": "#8c8c8c"}


def _cdf_combined(skews: Sequence[TableSkew]) -> Figure:
    fig = Figure(figsize=(10, 5.2), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    colours = _colours(len(skews))
    for s, c in zip(skews, colours):
        ax.plot(s.ranks, _positive(s.cum_share), color=c, lw=1.2, label=s.name)
        if s.hot_rows and s.hot_coverage > 0:
            ax.plot([s.hot_rows], [s.hot_coverage], "o", color=c, ms=4)
    _loglog(ax, skews, "rows (first N ids)", "cumulative share of accesses")
    ax.set_title(f"Access CDF, all {len(skews)} tables (dot = k_t)")
    ax.legend(ncol=2 if len(skews) > 13 else 1, fontsize=7, loc="upper left",
              bbox_to_anchor=(1.01, 1.0), frameon=False, handlelength=1.2)
    return fig


def _cdf_multiples(skews: Sequence[TableSkew]) -> Figure:
    cols = min(4, len(skews))
    nrows = math.ceil(len(skews) / cols)
    fig = Figure(figsize=(10, 2.6 * nrows + 0.4), dpi=100, layout="constrained")
    axes = fig.subplots(nrows, cols, squeeze=False)
    for ax, s in zip(axes.flat, skews):
        ax.plot(s.ranks, _positive(s.cum_share), color="#337ab7", lw=1.4)
        if s.hot_rows:
            ax.axvline(s.hot_rows, color="#d9534f", ls="--", lw=1)
            if s.hot_coverage > 0:
                ax.plot([s.hot_rows], [s.hot_coverage], "o", color="#d9534f", ms=4)
        _loglog(ax, skews, "", "")
        ax.set_title(f"{s.name}: {s.vocab_size:,} rows, k_t {s.hot_rows:,}\n"
                     f"hot prefix takes {s.hot_coverage:.1%}", fontsize=9)
        ax.tick_params(labelsize=7)
    for ax in list(axes.flat)[len(skews):]:
        ax.set_visible(False)
    fig.suptitle(f"Largest {len(skews)} tables: cumulative share of accesses vs rows "
                 "(dashed = k_t)", fontsize=11)
    return fig


def _sweep_figure(m: Manifest, pts: Sequence[Mapping[str, Any]], knee: Any) -> Figure:
    x = np.array([float(p["budget_bytes"]) for p in pts])
    cov = np.array([_num(p.get("hot_access_coverage"), math.nan) for p in pts])
    hif = np.array([_num(p.get("hot_input_fraction"), math.nan) for p in pts])
    fig = Figure(figsize=(10, 4.4), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    ax.plot(x, cov, "-o", ms=3, color="#337ab7", label="hot access coverage")
    ax.plot(x, hif, "-o", ms=3, color="#d9534f", label="hot input fraction (sampled)")
    budget = float(m.params.get("budget_bytes", 0))
    if budget > 0:
        ax.axvline(budget, color="black", lw=1.2, label=f"chosen budget {_bytes(budget)}")
        st = m.stats
        for key, colour in (("hot_access_coverage", "#337ab7"), ("hot_input_fraction", "#d9534f")):
            if st.get(key) is not None:
                ax.plot([budget], [float(st[key])], "*", color=colour, ms=12, mec="black")
    if isinstance(knee, (int, float)) and knee > 0:
        ax.axvline(float(knee), color="#5cb85c", ls="--", lw=1.2, label=f"knee {_bytes(knee)}")
    ax.set_xscale("log")
    ax.set_ylim(-0.02, 1.02)
    marks = [v for v in (budget, _num(knee)) if v > 0]
    _budget_ticks(ax, min(x.min(), *marks), max(x.max(), *marks))
    ax.set_xlabel("GPU budget (log scale)")
    ax.set_ylabel("share")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    ax.set_title("What a budget buys (stars: this layout, measured)")
    return fig


def _rows_figure(keys: Sequence[str], by: Mapping[str, int]) -> Figure:
    fig = Figure(figsize=(10, 0.45 * len(keys) + 1.0), dpi=100, layout="constrained")
    ax = fig.add_subplot()
    y = np.arange(len(keys))[::-1]
    vals = [by[k] for k in keys]
    ax.barh(y, vals, color=[_KIND_COLOURS.get(k.rsplit("/", 1)[-1], "#8c8c8c") for k in keys])
    ax.set_yticks(y, keys)
    for yi, v in zip(y, vals):
        ax.text(v, yi, f" {v:,}", va="center", fontsize=8)
    ax.set_xlim(0, max(vals) * 1.15 if max(vals) else 1)
    ax.set_xlabel("rows")
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v:,.0f}"))
    return fig


def _loglog(ax: Any, skews: Sequence[TableSkew], xlabel: str, ylabel: str) -> None:
    """Log-log axes with one y range for all ``skews`` (so panels compare) in percent."""
    firsts = [float(y[y > 0][0]) for y in (s.cum_share for s in skews) if np.any(y > 0)]
    low = min(0.05, max(_MIN_SHARE, min(firsts, default=0.05)) / 1.5)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_ylim(low, 1.3)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _pos: f"{v * 100:.2g}%" if v < 0.01
                                               else f"{v:.0%}"))
    ax.minorticks_off()  # hundreds of log minor ticks make the layout slow and busy
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(True, which="major", alpha=0.3)


def _positive(y: np.ndarray) -> np.ndarray:
    """Zero shares cannot sit on a log axis: leave them out of the line."""
    return np.where(y > 0, y, np.nan)


def _budget_ticks(ax: Any, lo: float, hi: float) -> None:
    """Ticks at powers of two (1 KiB, 16 KiB, 1 MiB...) rather than 9.766 KiB."""
    first, last = math.floor(math.log2(lo)), math.ceil(math.log2(hi))
    step = max(1, math.ceil((last - first) / 10))
    ticks = [2.0**e for e in range(first, last + 1) if e % step == 0]
    ax.set_xticks(ticks, [_bytes(t) for t in ticks])
    ax.xaxis.set_minor_formatter(NullFormatter())


def _colours(n: int) -> list[Any]:
    from matplotlib import colormaps

    cmap = colormaps["tab20" if n <= 20 else "turbo"]
    return [cmap(i / max(n - 1, 1)) if n > 20 else cmap(i) for i in range(n)]


# --- values, shared with the page's text ---------------------------------------------


_bytes = format_bytes


def _num(value: Any, default: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return default
    return float(value)
