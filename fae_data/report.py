"""A one-page HTML report of a published layout: what is hot, how skewed, what it costs.

:func:`build_report` turns a manifest (plus the layout's vocabularies and ``plan.json``,
and optionally the ingested partitions' markers) into ONE self-contained HTML page: inline
CSS, figures rendered to PNG and inlined as ``data:`` URIs, no external file or URL.
:func:`write_report` loads a layout, finds its partition markers and writes the page
atomically next to the manifest.

Definitions used on the page (``tests/test_report.py`` recomputes them naively):

* A table's rows are its ids ``0 .. vocab_size - 1``; ``counts[i]`` is the accesses of id
  ``i`` in the counted (sampled) training partitions, from ``vocab/<table>.parquet``. The
  vocabulary file does not store id 0 (null, unseen, rare values); its accesses are derived
  as ``table total - sum(counts[1:])`` when every table is looked up by exactly one scalar
  column (Criteo: every table then sees the same ``stats.accesses_total / tables``
  accesses). Otherwise id 0 is counted as 0 and the page says so.
* Top p% of rows: the ``ceil(p * vocab_size)`` rows (at least 1) with the most accesses;
  their share is their accesses over the table's accesses.
* Hot prefix coverage: accesses of ids ``< k_t`` over the table's accesses.

Figures are drawn on :class:`matplotlib.figure.Figure` objects and saved with the Agg
renderer; pyplot is never imported, so no global backend is switched under a caller and no
figure is registered anywhere that could leak.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
import posixpath
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow.parquet as pq
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, NullFormatter

from fae_data.errors import FaeError
from fae_data.ingest import read_marker
from fae_data.manifest import KINDS, LAYOUTS_DIR, SPLITS, Manifest, TableRef, load
from fae_data.plan import ALL_HOT_NOTE
from fae_data.storage import Storage

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"
PLAN_NAME = "plan.json"
#: Tables drawn as small multiples (the largest by vocabulary size).
SMALL_MULTIPLES = 8
#: Points per access curve: geometrically spaced ranks keep a 40M-row table cheap to draw.
_CURVE_POINTS = 400
_TOP_REASONS = 3
#: The lowest cumulative share an access curve's y axis shows.
_MIN_SHARE = 1e-4
_KIND_COLOURS = {"hot": "#d9534f", "cold": "#337ab7", "all": "#8c8c8c"}

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;
  margin:24px auto;max-width:1100px;color:#222;padding:0 16px}
h1{font-size:22px;margin:0 0 4px}h2{font-size:17px;margin:28px 0 6px;border-bottom:1px solid #ddd}
.sub{color:#666;margin-bottom:12px}.note{color:#666;font-size:13px}
.cards{display:flex;flex-wrap:wrap;gap:10px;margin:12px 0}
.card{border:1px solid #ddd;border-radius:6px;padding:8px 12px;min-width:190px}
.card b{display:block;font-size:20px}.card span{color:#666;font-size:12px}
.callout{border-left:5px solid #f0ad4e;background:#fcf8e3;padding:8px 12px;margin:10px 0}
.callout.bad{border-color:#d9534f;background:#f9ecec}
table{border-collapse:collapse;margin:6px 0;font-size:13px}
th,td{border:1px solid #ddd;padding:3px 8px;text-align:right}
th{background:#f5f5f5}td:first-child,th:first-child{text-align:left}
img{max-width:100%;display:block;margin:8px 0}
"""


@dataclass(frozen=True)
class TableSkew:
    """Skew figures of one table (see the module docstring for the definitions)."""

    name: str
    vocab_size: int
    hot_rows: int
    accesses: int
    top_0_1: float  # share of accesses taken by the top 0.1% of rows
    top_1: float  # ... by the top 1% of rows
    hottest: int  # accesses of the most accessed row
    hot_coverage: float  # share of accesses of ids < k_t
    ranks: np.ndarray  # prefix lengths 1..vocab_size (downsampled)
    cum_share: np.ndarray  # share of accesses of ids < rank


def build_report(
    manifest: Manifest,
    store: Storage,
    partition_markers: Sequence[Mapping[str, Any]] = (),
    *,
    notes: Sequence[str] = (),
) -> str:
    """The report of ``manifest`` as one self-contained HTML page.

    ``store`` is rooted at the layout folder (vocabulary paths and ``plan.json`` resolve
    against it). ``partition_markers`` are ingest markers (``_partition.json`` contents);
    without them the rejects section says "not available". ``notes`` are extra lines shown
    at the top (e.g. markers that could not be found). A missing vocabulary or
    ``plan.json`` is reported in the page, not raised.
    """
    problems = list(notes)
    skews = _table_skews(manifest, store, problems)
    plan, plan_problem = _read_plan(store)
    body = [
        _header(manifest, problems),
        _access_section(manifest, skews),
        _sweep_section(manifest, plan, plan_problem),
        _rows_section(manifest),
        _rejects_section(manifest, partition_markers),
    ]
    title = f"fae layout {manifest.layout_id}"
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{_e(title)}</title><style>{_CSS}</style></head><body>\n"
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def write_report(manifest_target: str, out_path: str | None = None) -> str:
    """Build the report of a layout and write it atomically; returns the path written.

    ``manifest_target`` is what :func:`fae_data.manifest.load` accepts (a manifest.json
    path, a layout folder or a storage root). Partition markers are read from the storage
    root two levels above the layout folder; a missing one is skipped with a note. The
    default ``out_path`` is ``report.html`` inside the layout folder.

    Raises:
        ManifestError: the target holds no valid manifest.
        StorageError: the page cannot be written.
    """
    manifest, store = load(manifest_target)
    markers, notes = _partition_markers(manifest, store)
    data = build_report(manifest, store, markers, notes=notes).encode("utf-8")
    if out_path is None:
        store.write_bytes_atomic(data, REPORT_NAME)
        written = store.display(REPORT_NAME)
    else:
        folder, name = posixpath.split(out_path)
        Storage(folder or ".").write_bytes_atomic(data, name)
        written = out_path
    log.info("report of layout %s written to %s", manifest.layout_id, written)
    return written


# --- inputs -----------------------------------------------------------------------------


def _partition_markers(
    manifest: Manifest, store: Storage
) -> tuple[list[dict[str, Any]], list[str]]:
    layouts = posixpath.dirname(store.root.rstrip("/"))
    if posixpath.basename(layouts) != LAYOUTS_DIR:
        note = (f"{store.display()} is not inside a '{LAYOUTS_DIR}' folder; partition markers "
                "were not looked up")
        log.warning(note)
        return [], [note]
    root_path = posixpath.dirname(layouts)
    root = Storage(root_path if store.is_local else store.fs.unstrip_protocol(root_path))
    markers, notes = [], []
    for p in manifest.dataset.partitions:
        try:
            marker = read_marker(root, manifest.dataset.name, p.name)
        except FaeError as exc:
            marker, why = None, str(exc)
        else:
            why = "no _partition.json"
        if marker is None:
            note = f"partition {p.name}: marker skipped ({why})"
            log.warning(note)
            notes.append(note)
            continue
        marker.setdefault("partition", p.name)
        markers.append(marker)
    return markers, notes


def _read_plan(store: Storage) -> tuple[dict[str, Any] | None, str | None]:
    try:
        if not store.exists(PLAN_NAME):
            return None, f"{PLAN_NAME} is missing from the layout folder"
        plan = store.read_json(PLAN_NAME)
    except (FaeError, OSError) as exc:
        return None, f"{PLAN_NAME} could not be read ({exc})"
    if not isinstance(plan, dict) or not isinstance(plan.get("sweep"), list):
        return None, f"{PLAN_NAME} has no 'sweep' list"
    return plan, None


def _table_totals(manifest: Manifest) -> dict[str, int] | None:
    """Accesses per table, id 0 included: recorded per table since manifests carry
    ``tables[].accesses``; for older ones derived from ``stats.accesses_total``."""
    if manifest.tables and all(t.accesses > 0 for t in manifest.tables):
        return {t.name: t.accesses for t in manifest.tables}
    total = manifest.stats.get("accesses_total")
    n = len(manifest.tables)
    lookups: dict[str, list[str]] = {t.name: [] for t in manifest.tables}
    for c in manifest.columns:
        if c.role == "sparse" and c.table in lookups:
            lookups[c.table].append(c.type)
    one_scalar = all(len(v) == 1 and not v[0].startswith(("list", "large_list"))
                     for v in lookups.values())
    if not isinstance(total, int) or n == 0 or total % n or not one_scalar:
        return None
    return {t.name: total // n for t in manifest.tables}


def _read_counts(store: Storage, t: TableRef) -> np.ndarray:
    """Accesses per id (index = id) with id 0 left at 0."""
    with store.fs.open(store.path(t.vocab_path), "rb") as f:
        table = pq.read_table(f, columns=["id", "count"])
    ids = table.column("id").to_numpy().astype(np.int64)
    cnt = table.column("count").to_numpy().astype(np.int64)
    counts = np.zeros(t.vocab_size, dtype=np.int64)
    if ids.size and (ids.min() < 1 or ids.max() >= t.vocab_size):
        raise ValueError(f"ids {ids.min()}..{ids.max()} outside 1..{t.vocab_size - 1}")
    counts[ids] = cnt
    return counts


def _table_skews(manifest: Manifest, store: Storage, problems: list[str]) -> list[TableSkew]:
    totals = _table_totals(manifest)
    if totals is None:
        problems.append("accesses of id 0 (null/unseen/rare values) are not recorded for these "
                        "tables; shares below count id 0 as 0 accesses")
    skews = []
    for t in manifest.tables:
        try:
            counts = _read_counts(store, t)
        except (OSError, ValueError, FaeError) as exc:
            note = f"table {t.name}: vocabulary {t.vocab_path} unreadable ({exc})"
            log.warning(note)
            problems.append(note)
            continue
        if totals is not None:
            zero = totals[t.name] - int(counts.sum())
            if zero >= 0:
                counts[0] = zero
            else:
                problems.append(f"table {t.name}: vocabulary counts exceed the table's accesses; "
                                "id 0 counted as 0")
        skews.append(_skew(t, counts))
    return skews


def _skew(t: TableRef, counts: np.ndarray) -> TableSkew:
    total = int(counts.sum())
    v = t.vocab_size

    def share(accesses: Any) -> Any:
        return accesses / total if total else 0.0 * accesses

    cum = np.cumsum(counts)
    ranks = np.unique(np.geomspace(1, v, min(v, _CURVE_POINTS)).astype(np.int64))
    ranks[-1] = v
    return TableSkew(
        name=t.name, vocab_size=v, hot_rows=t.hot_rows, accesses=total,
        top_0_1=float(share(_top_sum(counts, max(1, -(-v // 1000))))),
        top_1=float(share(_top_sum(counts, max(1, -(-v // 100))))),
        hottest=int(counts.max()),
        hot_coverage=float(share(cum[t.hot_rows - 1])) if t.hot_rows else 0.0,
        ranks=ranks, cum_share=np.asarray(share(cum[ranks - 1]), dtype=np.float64),
    )


def _top_sum(counts: np.ndarray, n: int) -> int:
    """Accesses of the ``n`` most accessed rows, without sorting a frequency-ranked table."""
    rest = counts[1:]
    if rest.size > 1 and np.any(np.diff(rest) > 0):  # not ranked after all: sort it
        return int(np.sort(counts)[::-1][:n].sum())
    if np.count_nonzero(rest > counts[0]) >= n:  # id 0 is not among the top n
        return int(rest[:n].sum())
    return int(counts[0] + rest[: n - 1].sum())


# --- sections ---------------------------------------------------------------------------


def _header(m: Manifest, problems: Sequence[str]) -> str:
    p, st = m.params, m.stats
    budget = int(p.get("budget_bytes", 0))
    used = int(st.get("budget_used_bytes", 0))
    hot_rows = sum(t.hot_rows for t in m.tables)
    all_rows = sum(t.vocab_size for t in m.tables)
    hif = st.get("hot_input_fraction")
    pred = st.get("predicted_hot_input_fraction")
    params = [
        ("budget", f"{budget / 2**20:,.2f} MiB ({budget:,} B)"),
        ("embedding dim", p.get("embedding_dim")),
        ("dtype", p.get("dtype")),
        ("optimizer slots", p.get("optimizer_slots")),
        ("batch size", f"{m.batch_size:,}"),
        ("sampling rate", p.get("sampling_rate")),
        ("seed", p.get("seed")),
        ("min_count", p.get("min_count")),
    ]
    if p.get("table_dims"):
        params.append(("per-table dims", p["table_dims"]))
    cards = [
        (_pct(hif), "hot input fraction (train rows)",
         f"predicted {_pct(pred)}" if pred is not None else "no prediction recorded"),
        (_pct(st.get("hot_access_coverage")), "hot access coverage",
         "lookups served by hot rows"),
        (_bytes(used), "budget used", f"of {_bytes(budget)} ({_pct(_ratio(used, budget))})"),
        (f"{hot_rows:,}", "hot rows", f"of {all_rows:,} rows ({_pct(_ratio(hot_rows, all_rows))})"),
    ]
    out = [
        f"<h1>Layout {_e(m.layout_id)}</h1>",
        f"<div class=\"sub\">dataset <b>{_e(m.dataset.name)}</b> ({_e(m.dataset.kind)}), "
        f"{len(m.dataset.partitions)} partitions, {len(m.tables)} tables &middot; created "
        f"{_e(m.created_at)} by {_e(m.producer.get('name', '?'))} "
        f"{_e(m.producer.get('version', ''))} &middot; format {_e(m.format)}</div>",
        "<div class=\"cards\">" + "".join(
            f"<div class=\"card\"><span>{_e(label)}</span><b>{_e(value)}</b>"
            f"<span>{_e(sub)}</span></div>" for value, label, sub in cards) + "</div>",
    ]
    if st.get("all_hot"):
        out.append(f"<div class=\"callout\"><b>All hot.</b> {_e(ALL_HOT_NOTE)}; training runs "
                   "entirely on the GPU and the cold path is unused.</div>")
    if hif is not None and float(hif) == 0.0:
        out.append("<div class=\"callout bad\"><b>No hot inputs.</b> Not a single training row "
                   "has all its ids among the hot rows, so every minibatch takes the cold path "
                   "and the GPU hot table is never used on its own; raise the budget (see the "
                   "budget sweep below).</div>")
    out.append(_table(["parameter", "value"], [[k, v] for k, v in params], "params"))
    out += [f"<p class=\"note\">{_e(n)}</p>" for n in problems]
    return "\n".join(out)


def _access_section(m: Manifest, skews: Sequence[TableSkew]) -> str:
    out = ["<h2>Access skew per table</h2>",
           "<p class=\"note\">Cumulative share of a table's accesses taken by its first N rows "
           "(ids are frequency ranked, so the first N rows are the N hottest, id 0 first). "
           "Dots and dashed lines mark k<sub>t</sub>, the hot prefix. In the table, the top p% "
           "of rows are the ceil(p &times; vocab size) most accessed rows.</p>"]
    if not skews:
        return "\n".join(out + ["<p>No vocabulary could be read.</p>"])
    out.append(_img(_cdf_combined(skews), "access CDF of every table"))
    largest = sorted(skews, key=lambda s: (-s.vocab_size, s.name))[:SMALL_MULTIPLES]
    out.append(_img(_cdf_multiples(largest), "access CDF of the largest tables"))
    rows = [[s.name, f"{s.vocab_size:,}", f"{s.hot_rows:,}",
             _pct(_ratio(s.hot_rows, s.vocab_size)), _pct(s.top_0_1),
             _pct(s.top_1), f"{s.hottest:,}", _pct(s.hot_coverage), f"{s.accesses:,}"]
            for s in skews]
    head = ["table", "vocab size", "k_t", "k_t / vocab", "top 0.1% rows", "top 1% rows",
            "hottest row", "hot prefix coverage", "accesses"]
    out.append(_table(head, rows, "skew"))
    return "\n".join(out)


def _sweep_section(m: Manifest, plan: dict[str, Any] | None, problem: str | None) -> str:
    out = ["<h2>Coverage and hot inputs vs budget</h2>"]
    if plan is None:
        why = f"Budget sweep not available: {problem}."
        return "\n".join(out + [f"<p class=\"callout\">{_e(why)}</p>"])
    pts = [p for p in plan["sweep"] if isinstance(p, dict) and _num(p.get("budget_bytes")) > 0]
    if not pts:
        return "\n".join(out + ["<p class=\"callout\">The budget sweep in plan.json is empty.</p>"])
    pts.sort(key=lambda p: p["budget_bytes"])
    knee = plan.get("knee_budget_bytes")
    out.append(_img(_sweep_figure(m, pts, knee), "coverage and hot input fraction vs budget"))
    budget = int(m.params.get("budget_bytes", 0))
    line = f"Chosen budget {_bytes(budget)}"
    if isinstance(knee, (int, float)) and knee > 0:
        line += f"; knee of the hot-input curve at {_bytes(knee)}"
        if knee == pts[0]["budget_bytes"]:
            line += (" (the smallest budget swept: the curve has no concave knee, so read the "
                     "chart rather than this number)")
    out.append(f"<p class=\"note\">{_e(line)}. Lines: share of lookups served by hot rows, and "
               "share of sampled training rows whose ids are all hot, at each budget.</p>")
    return "\n".join(out)


def _rows_section(m: Manifest) -> str:
    by = {str(k): int(v) for k, v in m.stats.get("rows_by_split_and_kind", {}).items()}
    order = [f"{s}/{k}" for s in SPLITS for k in KINDS]
    keys = [k for k in order if k in by] + sorted(k for k in by if k not in order)
    out = ["<h2>Rows per split and kind</h2>"]
    if not keys:
        return "\n".join(out + ["<p>No row counts recorded.</p>"])
    total = sum(by.values())
    out.append(_img(_rows_figure(keys, by), "rows per split and kind"))
    rows = [[k, f"{by[k]:,}", _pct(_ratio(by[k], total))] for k in keys]
    rows.append(["total", f"{total:,}", _pct(_ratio(total, total))])
    out.append(_table(["split/kind", "rows", "share"], rows, "rows"))
    return "\n".join(out)


def _rejects_section(m: Manifest, markers: Sequence[Mapping[str, Any]]) -> str:
    st = m.stats
    out = ["<h2>Ingest rejects</h2>",
           f"<p class=\"note\">Manifest: {_int(st.get('rows_in')):,} rows read, "
           f"{_int(st.get('rows_rejected')):,} rejected.</p>"]
    if not markers:
        return "\n".join(out + ["<p>Per-partition rejects: not available.</p>"])
    rows, reasons_all = [], {}
    tin = tok = trej = 0
    for mk in markers:
        r_in, ok, rej = (_int(mk.get(k)) for k in ("rows_in", "rows_ok", "rows_rejected"))
        tin, tok, trej = tin + r_in, tok + ok, trej + rej
        reasons = _reasons(mk.get("reject_reasons"))
        for k, v in reasons.items():
            reasons_all[k] = reasons_all.get(k, 0) + v
        rows.append([mk.get("partition", "?"), f"{r_in:,}", f"{ok:,}", f"{rej:,}",
                     _pct(_ratio(rej, r_in)), _top_reasons(reasons)])
    rows.append(["total", f"{tin:,}", f"{tok:,}", f"{trej:,}", _pct(_ratio(trej, tin)),
                 _top_reasons(reasons_all)])
    out.append(_table(["partition", "rows in", "ok", "rejected", "rejected %", "top reasons"],
                      rows, "rejects"))
    return "\n".join(out)


# --- figures ----------------------------------------------------------------------------


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


def _img(fig: Figure, alt: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})  # no URL in the page
    fig.clear()  # a Figure without pyplot is freed with its last reference; clear it early
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    return f"<img alt=\"{_e(alt)}\" src=\"data:image/png;base64,{data}\">"


# --- formatting -------------------------------------------------------------------------


def _e(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _table(head: Sequence[str], rows: Sequence[Sequence[Any]], table_id: str) -> str:
    th = "".join(f"<th>{_e(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{_e(c)}</td>" for c in r) + "</tr>" for r in rows)
    return f"<table id=\"{_e(table_id)}\"><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _pct(x: Any) -> str:
    return "n/a" if x is None else f"{float(x):.2%}"


def _bytes(n: float) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= size:
            return f"{n / size:,.4g} {unit}"
    return f"{n:,.0f} B"


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0


def _num(value: Any, default: float = 0.0) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return default
    return float(value)


def _int(value: Any) -> int:
    return int(_num(value))


def _reasons(raw: Any) -> dict[str, int]:
    if not isinstance(raw, Mapping):
        return {}
    return {str(k): _int(v) for k, v in raw.items() if _int(v) > 0}


def _top_reasons(reasons: Mapping[str, int]) -> str:
    top = sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))[:_TOP_REASONS]
    return "; ".join(f"{k} ({v:,})" for k, v in top) or "none"
