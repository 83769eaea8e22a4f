"""A one-page HTML report of a published layout: what is hot, how skewed, what it costs.

:func:`build_report` turns a manifest (plus the layout's vocabularies and ``plan.json``,
and optionally the ingested partitions' markers) into ONE self-contained HTML page: inline
CSS, figures rendered to PNG and inlined as ``data:`` URIs, no external file or URL.
:func:`write_report` loads a layout, finds its partition markers and writes the page
atomically next to the manifest.

This module holds the page: its inputs, its HTML sections and their formatting. The skew
numbers and their definitions are :mod:`fae_data.skew`; the figures are drawn by
:mod:`fae_data.report_figures`.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import posixpath
from collections.abc import Mapping, Sequence
from typing import Any

from matplotlib.figure import Figure

from fae_data.errors import FaeError
from fae_data.manifest import KINDS, LAYOUTS_DIR, SPLITS, Manifest, load
from fae_data.partition import read_marker
from fae_data.plan import ALL_HOT_NOTE
from fae_data.plan_budget import format_bytes
from fae_data.report_figures import (
    _bytes,
    _cdf_combined,
    _cdf_multiples,
    _num,
    _rows_figure,
    _sweep_figure,
)
from fae_data.skew import TableSkew, _read_counts, _skew, _table_totals
from fae_data.storage import Storage

log = logging.getLogger(__name__)

REPORT_NAME = "report.html"
PLAN_NAME = "plan.json"
#: Tables drawn as small multiples (the largest by vocabulary size).
SMALL_MULTIPLES = 8
_TOP_REASONS = 3

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
        ("budget", f"{format_bytes(budget)} ({budget:,} B)"),
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
        _coverage_card(st),
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


def _coverage_card(st: dict) -> tuple[str, str, str]:
    """The hot access coverage: counted, or under sampling the estimate over every
    training row (the counted sample chose the hot rows, so its own figure flatters)."""
    sampling = st.get("sampling") or {}
    estimate = sampling.get("estimated_access_coverage")
    if estimate is None:
        return (_pct(st.get("hot_access_coverage")), "hot access coverage",
                "lookups served by hot rows")
    return (_pct(estimate), "hot access coverage (estimated)",
            f"\u00b1 {100 * float(sampling.get('coverage_stderr', 0)):.2f} pts over all "
            f"training rows; {_pct(st.get('hot_access_coverage'))} on the sampled rows")


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
    rate = m.params.get("sampling_rate", 1.0)
    sampled = isinstance(rate, (int, float)) and rate < 1.0
    head = ["table", "vocab size", "k_t", "k_t / vocab", "top 0.1% rows", "top 1% rows",
            "hottest row's accesses", "hot prefix coverage",
            f"accesses (sampled rows, rate {rate:g})" if sampled else "accesses"]
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
    elif knee is None and len(pts) >= 3:
        line += ("; no knee: the hot-input curve is straight or convex over the budgets swept "
                 "(each further byte buys at least as much as the last), so read the chart")
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


def _ratio(a: float, b: float) -> float:
    return a / b if b else 0.0




def _int(value: Any) -> int:
    return int(_num(value))


def _reasons(raw: Any) -> dict[str, int]:
    if not isinstance(raw, Mapping):
        return {}
    return {str(k): _int(v) for k, v in raw.items() if _int(v) > 0}


def _top_reasons(reasons: Mapping[str, int]) -> str:
    top = sorted(reasons.items(), key=lambda kv: (-kv[1], kv[0]))[:_TOP_REASONS]
    return "; ".join(f"{k} ({v:,})" for k, v in top) or "none"
