"""The embedded end-to-end run behind ``fae demo`` and the README's first command."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fae_data.ingest import IngestParams
from fae_data.manifest import load
from fae_data.verify import Check, verify_layout
from pipelines.ingest import IngestResult, run_ingest
from pipelines.layout import LayoutParams, LayoutResult, run_layout
from pipelines.synth import SynthResult, run_synth


@dataclass(frozen=True)
class DemoResult:
    workdir: str
    synth: SynthResult
    ingest: IngestResult
    layout: LayoutResult
    checks: list[Check]

    def to_dict(self) -> dict[str, object]:
        return {"workdir": self.workdir, "synth": self.synth.to_dict(),
                "ingest": self.ingest.to_dict(), "layout": self.layout.to_dict(),
                "verify": {c.name: c.ok for c in self.checks}}

    def summary(self) -> str:
        ing = self.ingest
        lines = [
            f"fae demo in {self.workdir}",
            f"  synth : {len(self.synth.files)} Criteo day files x {self.synth.rows_per_file:,} rows",
            f"  ingest: {ing.rows_in:,} rows in, {ing.rows_ok:,} ok, {ing.rows_rejected:,} rejected "
            f"-> {ing.root}/ingested/criteo/",
        ]
        for p in ing.partitions:
            lines.append(f"          {p.partition}: {p.status}, {p.rows_ok:,} rows")
        m = self.layout.manifest
        st = m.stats
        budget = m.params["budget_bytes"]
        hot_rows = sum(t.hot_rows for t in m.tables)
        all_rows = sum(t.vocab_size for t in m.tables)
        lines += [
            f"  layout: {self.layout.layout_id} ({self.layout.status}) -> {self.layout.manifest_path}",
            f"          budget {budget / 2**20:.1f} MiB holds {hot_rows:,} of {all_rows:,} "
            f"embedding rows ({hot_rows / max(all_rows, 1):.1%})",
            f"          they take {st['hot_access_coverage']:.1%} of all lookups; "
            f"{st['hot_input_fraction']:.1%} of training rows are hot "
            f"(predicted {st['predicted_hot_input_fraction']:.1%})",
            "          rows: " + ", ".join(
                f"{k} {v:,}" for k, v in sorted(st["rows_by_split_and_kind"].items())),
            "  verify: " + ", ".join(
                f"{c.name} {'ok' if c.ok else 'FAILED'}" for c in self.checks),
        ]
        return "\n".join(lines)


def run_demo(
    workdir: str | Path,
    *,
    rows: int = 200_000,
    days: int = 3,
    seed: int = 0,
    scale: float = 0.01,
    budget: str = "1MiB",
    step: Callable[[str], None] = lambda _msg: None,
) -> DemoResult:
    """Synthesise ``days`` Criteo day files and run every landed stage over them."""
    work = Path(workdir)
    step("generating synthetic Criteo logs")
    synth = run_synth("criteo", work / "raw", rows=rows, days=days, seed=seed, scale=scale)
    step("ingesting into Parquet")
    root = str(work / "root")
    ingest = run_ingest(list(synth.files), root, IngestParams(kind="criteo"))
    layout = run_layout(root, LayoutParams(dataset="criteo", budget=budget, seed=seed),
                        step=lambda m: step(f"layout: {m}"))
    step("verifying the layout")
    manifest, store = load(layout.manifest_path)
    checks = verify_layout(manifest, store)
    return DemoResult(str(work), synth, ingest, layout, checks)
