"""The embedded end-to-end run behind ``fae demo`` and the README's first command."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fae_data.errors import FaeError

from fae_data.ingest import IngestParams
from fae_data.manifest import load
from fae_data.plan_budget import format_bytes
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
    training: dict[str, Any] | None  # fae-train's JSON summary, None when skipped

    def to_dict(self) -> dict[str, object]:
        return {"workdir": self.workdir, "synth": self.synth.to_dict(),
                "ingest": self.ingest.to_dict(), "layout": self.layout.to_dict(),
                "verify": {c.name: c.ok for c in self.checks}, "train": self.training}

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
            f"          budget {format_bytes(budget)} holds {hot_rows:,} of {all_rows:,} "
            f"embedding rows ({hot_rows / max(all_rows, 1):.1%})",
            f"          they take {st['hot_access_coverage']:.1%} of all lookups; "
            f"{st['hot_input_fraction']:.1%} of training rows are hot "
            f"(predicted {st['predicted_hot_input_fraction']:.1%})",
            "          rows: " + ", ".join(
                f"{k} {v:,}" for k, v in sorted(st["rows_by_split_and_kind"].items())),
            "  verify: " + ", ".join(
                f"{c.name} {'ok' if c.ok else 'FAILED'}" for c in self.checks),
        ]
        t = self.training
        if t is None:
            lines.append("  train : skipped")
        else:
            sec = t["seconds"]
            lines += [
                f"  train : {t['steps']} steps of DLRM, placement {t['placement']} on "
                f"{t['device']}, {t['samples']:,} samples at {t['samples_per_s']:,.0f}/s "
                f"(hot {sec['hot']:.1f}s, cold {sec['cold']:.1f}s, sync {sec['sync']:.2f}s, "
                f"{t['switches']} hot/cold switches)",
                f"          test AUC {t['test']['auc']:.3f}, logloss {t['test']['logloss']:.3f} "
                f"(val AUC {t['val']['auc']:.3f})",
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
    train_steps: int = 100,
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
    training = None
    if train_steps > 0:
        step(f"training DLRM for {train_steps} steps on the CPU (placement fae)")
        training = run_short_training(layout.manifest_path, train_steps, seed)
    return DemoResult(str(work), synth, ingest, layout, checks, training)


def run_short_training(manifest: str, steps: int, seed: int) -> dict[str, Any]:
    """A short CPU run of the separate trainer (``trainer.cli``) on a layout.

    The trainer runs as its own process, as it does in production: the pipeline never
    imports torch.
    """
    cmd = [sys.executable, "-m", "trainer.cli", manifest, "--max-steps", str(steps),
           "--device", "cpu", "--placement", "fae", "--bottom-mlp", "64-16",
           "--top-mlp", "64-1", "--lr", "0.2", "--eval-batches", "20", "--seed", str(seed),
           "--json", "--quiet"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-3:]
        raise FaeError("training failed: " + " | ".join(tail))
    return dict(json.loads(done.stdout))
