"""The layout report: one self-contained HTML page with the numbers a person needs.

The layout is built once per module by the public demo pipeline; the skew figures the page
shows are recomputed here naively from the vocabulary Parquet files.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import math
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from fae_data.errors import ManifestError
from fae_data.manifest import Manifest, load
from fae_data.report import build_report, write_report
from fae_data.storage import Storage
from pipelines.demo import run_demo

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
VOID = {"meta", "img", "br", "hr", "link", "input", "col", "wbr", "source"}


class Page(HTMLParser):
    """Checks tags are balanced and collects images and the cells of every <table id=...>."""

    def __init__(self, text: str) -> None:
        super().__init__(convert_charrefs=True)
        self.stack: list[str] = []
        self.images: list[str] = []
        self.tables: dict[str, list[list[str]]] = {}
        self._table: str | None = None
        self._cell: list[str] | None = None
        self.feed(text)
        self.close()
        assert self.stack == [], f"unclosed tags {self.stack}"

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "img":
            self.images.append(a.get("src") or "")
        if tag == "table":
            self._table = a.get("id") or ""
            self.tables[self._table] = []
        if tag == "tr" and self._table is not None:
            self.tables[self._table].append([])
        if tag in ("td", "th"):
            self._cell = []
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag: str) -> None:
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes {self.stack[-1:]}"
        self.stack.pop()
        if tag in ("td", "th") and self._cell is not None and self._table is not None:
            self.tables[self._table][-1].append("".join(self._cell).strip())
            self._cell = None
        if tag == "table":
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)

    def rows(self, table: str) -> dict[str, list[str]]:
        """Body rows of a table keyed by their first cell."""
        return {r[0]: r for r in self.tables[table][1:]}


@dataclasses.dataclass
class Built:
    root: Path
    layout: Path
    manifest: Manifest
    store: Storage
    html: str
    page: Page


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    work = tmp_path_factory.mktemp("report")
    demo = run_demo(work, rows=20_000, days=2, scale=0.01, budget="64KiB")
    root = work / "root"
    written = write_report(str(root))  # a storage root: the layout LATEST names
    manifest, store = load(str(root))
    layout = root / "layouts" / manifest.layout_id
    assert Path(written) == layout / "report.html"
    assert manifest.layout_id == demo.layout.layout_id
    text = Path(written).read_text("utf-8")
    return Built(root, layout, manifest, store, text, Page(text))


def naive_skew(built: Built, table: str) -> dict[str, float]:
    """Top-share figures of one table, straight from its vocabulary file."""
    t = built.manifest.table(table)
    vocab = pq.read_table(built.layout / t.vocab_path).to_pydict()
    stats = built.manifest.stats["rows_by_split_and_kind"]
    # Criteo: one lookup per table per training row (sampling_rate 1), id 0 takes the rest
    total = stats.get("train/hot", 0) + stats.get("train/cold", 0)
    by_id = np.zeros(t.vocab_size, dtype=np.int64)
    for i, c in zip(vocab["id"], vocab["count"]):
        by_id[int(i)] = int(c)
    by_id[0] = total - by_id.sum()
    ranked = np.sort(by_id)[::-1]
    n = len(by_id)
    return {
        "top_0_1": ranked[: max(1, math.ceil(n / 1000))].sum() / total,
        "top_1": ranked[: max(1, math.ceil(n / 100))].sum() / total,
        "hottest": int(ranked[0]),
        "coverage": by_id[: t.hot_rows].sum() / total,
    }


def test_page_is_one_balanced_html_document_with_the_layout_id(built: Built) -> None:
    assert built.html.startswith("<!DOCTYPE html>")
    assert built.manifest.layout_id in built.html
    assert "criteo" in built.html


def test_figures_are_inline_pngs_that_decode(built: Built) -> None:
    images = built.page.images
    assert len(images) >= 3
    for src in images:
        assert src.startswith("data:image/png;base64,")
        assert base64.b64decode(src.split(",", 1)[1], validate=True).startswith(PNG_MAGIC)


def test_page_references_nothing_outside_itself(built: Built) -> None:
    assert not re.search(r"https?://", built.html)
    assert "href=" not in built.html
    assert all(src.startswith("data:") for src in built.page.images)


def test_every_table_is_listed_with_its_k_t(built: Built) -> None:
    rows = built.page.rows("skew")
    assert set(rows) == {t.name for t in built.manifest.tables}
    for t in built.manifest.tables:
        assert rows[t.name][1:3] == [f"{t.vocab_size:,}", f"{t.hot_rows:,}"]


def test_skew_numbers_match_a_naive_computation(built: Built) -> None:
    head = built.page.tables["skew"][0]
    rows = built.page.rows("skew")
    largest = max(built.manifest.tables, key=lambda t: t.vocab_size)
    assert 0 < largest.hot_rows < largest.vocab_size  # the budget cuts into this table
    want = naive_skew(built, largest.name)
    got = dict(zip(head, rows[largest.name]))
    assert got["top 0.1% rows"] == f"{want['top_0_1']:.2%}"
    assert got["top 1% rows"] == f"{want['top_1']:.2%}"
    assert got["hottest row's accesses"] == f"{want['hottest']:,}"
    assert got["hot prefix coverage"] == f"{want['coverage']:.2%}"


def test_header_shows_the_headline_numbers(built: Built) -> None:
    st = built.manifest.stats
    for key in ("hot_input_fraction", "predicted_hot_input_fraction", "hot_access_coverage"):
        assert f"{st[key]:.2%}" in built.html
    hot = sum(t.hot_rows for t in built.manifest.tables)
    total = sum(t.vocab_size for t in built.manifest.tables)
    assert f"{hot:,}" in built.html and f"{total:,}" in built.html
    params = built.page.rows("params")
    assert params["batch size"][1] == f"{built.manifest.batch_size:,}"
    assert "All hot." not in built.html and "No hot inputs." not in built.html


def test_rows_per_split_and_kind_are_tabulated(built: Built) -> None:
    rows = built.page.rows("rows")
    by = built.manifest.stats["rows_by_split_and_kind"]
    shown = {k: r[1] for k, r in rows.items() if k != "total"}
    assert shown == {k: f"{v:,}" for k, v in by.items()}
    assert rows["total"][1] == f"{sum(by.values()):,}"


def test_rejects_come_from_the_partition_markers(built: Built) -> None:
    rows = built.page.rows("rejects")
    assert set(rows) == {p.name for p in built.manifest.dataset.partitions} | {"total"}
    assert rows["total"][1] == f"{built.manifest.stats['rows_in']:,}"


def test_missing_plan_and_marker_are_reported_not_raised(built: Built, tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(built.root, root)
    layout = root / "layouts" / built.manifest.layout_id
    (layout / "plan.json").unlink()
    (layout / "report.html").unlink()  # the fixture's page; this one goes to out_path
    first = built.manifest.dataset.partitions[0].name
    (root / "ingested" / built.manifest.dataset.name / first / "_partition.json").unlink()
    out = tmp_path / "out" / "page.html"
    assert write_report(str(layout / "manifest.json"), str(out)) == str(out)
    text = out.read_text("utf-8")
    page = Page(text)
    assert "Budget sweep not available: plan.json is missing" in text
    assert f"partition {first}: marker skipped" in text
    assert first not in page.rows("rejects")
    assert len(page.images) >= 3  # the other figures are still drawn
    assert not (layout / "report.html").exists()


def test_all_hot_zero_hot_and_rejects_are_called_out_and_escaped(built: Built) -> None:
    stats = {**built.manifest.stats, "all_hot": True, "hot_input_fraction": 0.0}
    manifest = dataclasses.replace(built.manifest, stats=stats)
    markers = [
        {"partition": "day_<0>", "rows_in": 10, "rows_ok": 7, "rows_rejected": 3,
         "reject_reasons": {"bad <hex>": 2, "too few fields": 1}},
        {"partition": "day_1", "rows_in": 5, "rows_ok": 4, "rows_rejected": 1,
         "reject_reasons": {"too few fields": 1}},
    ]
    text = build_report(manifest, built.store, markers)
    page = Page(text)
    assert "All hot." in text and "No hot inputs." in text
    assert "<hex>" not in text and "day_<0>" not in text
    rows = page.rows("rejects")
    assert rows["day_<0>"][1:5] == ["10", "7", "3", "30.00%"]
    assert rows["day_<0>"][5] == "bad <hex> (2); too few fields (1)"
    assert rows["total"][1:6] == ["15", "11", "4", "26.67%", "bad <hex> (2); too few fields (2)"]


def test_no_markers_means_not_available(built: Built) -> None:
    # id 0 accesses unknown: an older manifest without tables[].accesses or a total
    stats = {**built.manifest.stats, "accesses_total": None}
    tables = tuple(dataclasses.replace(t, accesses=0) for t in built.manifest.tables)
    text = build_report(dataclasses.replace(built.manifest, stats=stats, tables=tables),
                        built.store)
    assert "Per-partition rejects: not available." in text
    assert "accesses of id 0" in text


def test_write_report_refuses_a_folder_without_a_layout(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="neither a manifest"):
        write_report(str(tmp_path))


def test_a_sweep_without_a_knee_says_so(built: Built, tmp_path: Path) -> None:
    root = tmp_path / "root"
    shutil.copytree(built.root, root)
    layout = root / "layouts" / built.manifest.layout_id
    plan = json.loads((layout / "plan.json").read_text())
    assert len(plan["sweep"]) >= 3
    (layout / "plan.json").write_text(json.dumps({**plan, "knee_budget_bytes": None}))
    out = tmp_path / "page.html"
    write_report(str(layout / "manifest.json"), str(out))
    text = " ".join(out.read_text("utf-8").split())
    assert "no knee: the hot-input curve is straight or convex over the budgets swept" in text
