"""``fae layout``, ``plan``, ``report``, ``verify`` and ``clean``: the commands that build, read
or remove layouts.

The option aliases below are shared by ``layout`` and ``plan``, so the two commands take
the same layout parameters with the same help. Registered on the app in
:mod:`pipelines.cli`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from pipelines.cli_common import AsJson, Debug, Quiet, _emit, _guarded, _progress, err, out

# --- layout ---------------------------------------------------------------------------


@contextmanager
def _stage_bar(
    enabled: bool, name: str
) -> Iterator[tuple[Callable[[str], None], Callable[[str, int], None]]]:
    """One progress bar over a layout's stages: ``step`` names the stage now running,
    ``on_rows`` advances it by rows done (the callbacks of ``run_layout``)."""
    with _progress(enabled) as bar:
        task = bar.add_task(name, total=None, rate="") if bar is not None else None
        rows = {"n": 0}

        def step(message: str) -> None:
            rows["n"] = 0
            if bar is not None and task is not None:
                bar.update(task, description=message, completed=0, rate="")

        def on_rows(phase: str, n: int) -> None:
            rows["n"] += n
            if bar is not None and task is not None:
                bar.update(task, advance=n, rate=f"{rows['n']:,} rows")

        yield step, on_rows


Root = Annotated[str, typer.Option(help="Storage root (folder or s3:// URL).")]


def _layout_params(
    dataset: str, partition: list[str] | None, budget: str, dim: int, table_dim: list[str] | None,
    dtype: str, optimizer_slots: int, batch_size: int, sampling_rate: float, seed: int,
    min_count: int, max_rows: int | None, val: list[str] | None, test: list[str] | None,
    shard_mb: int, shard_compression: str = "lz4",
) -> Any:
    from fae_data.errors import InputError
    from pipelines.layout import LayoutParams

    dims = []
    for item in table_dim or []:
        name, _, value = item.partition("=")
        if not (value.isascii() and value.isdigit()):
            raise InputError(f"--table-dim {item!r}: expected TABLE=DIM, e.g. C3=32")
        dims.append((name, int(value)))
    return LayoutParams(
        dataset=dataset, partitions=tuple(partition or ()), budget=budget, embedding_dim=dim,
        table_dims=tuple(dims), dtype=dtype, optimizer_slots=optimizer_slots,
        batch_size=batch_size, sampling_rate=sampling_rate, seed=seed, min_count=min_count,
        max_rows=max_rows, val=tuple(val or ()), test=tuple(test or ()),
        shard_bytes=shard_mb << 20, shard_compression=shard_compression,
    )


DatasetOpt = Annotated[str, typer.Option(help="Dataset under ROOT/ingested/.")]
PartitionOpt = Annotated[list[str] | None, typer.Option(
    help="Partitions to use (default: all). They are ordered by name with numbers by "
    "value (day_2 before day_10); without --val/--test the last one is halved into "
    "validation and test.")]
BudgetOpt = Annotated[str, typer.Option(
    help="GPU memory for hot rows: bytes or with units (256MiB, 8GB).")]
DimOpt = Annotated[int, typer.Option(help="Embedding dimension of every table.")]
TableDimOpt = Annotated[list[str] | None, typer.Option(
    help="Per-table dimension TABLE=DIM (repeatable). The layout records it; fae-train's "
    "DLRM needs one dimension for all tables and refuses such a layout.")]
DtypeOpt = Annotated[str, typer.Option(help="Embedding dtype: float32, float16, bfloat16, float64.")]
SlotsOpt = Annotated[int, typer.Option(
    help="Optimizer state rows per embedding row (Adagrad 1, Adam 2).")]
BatchOpt = Annotated[int, typer.Option(help="Rows per minibatch (= per row group).")]
RateOpt = Annotated[float, typer.Option(
    help="Profile a seeded sample of this share of rows (1 = exact).")]
SeedOpt = Annotated[int, typer.Option(help="Seed of sampling and shuffling.")]
MinCountOpt = Annotated[int, typer.Option(help="Values seen fewer times map to id 0.")]
MaxRowsOpt = Annotated[int | None, typer.Option(
    help="Cap every vocabulary at this many rows (id 0 included).")]
ValOpt = Annotated[list[str] | None, typer.Option(help="Validation partitions.")]
TestOpt = Annotated[list[str] | None, typer.Option(help="Test partitions.")]
ShardOpt = Annotated[int, typer.Option(min=1, help="Target shard size in MiB.")]
ShardCodecOpt = Annotated[str, typer.Option(
    help="Parquet codec of the shards: lz4, none (about 2x faster to write, 1.3x larger), "
         "zstd or snappy.")]


def layout(
    root: Root = "fae-root",
    dataset: DatasetOpt = "criteo",
    partition: PartitionOpt = None,
    budget: BudgetOpt = "256MiB",
    dim: DimOpt = 16,
    table_dim: TableDimOpt = None,
    dtype: DtypeOpt = "float32",
    optimizer_slots: SlotsOpt = 0,
    batch_size: BatchOpt = 2048,
    sampling_rate: RateOpt = 1.0,
    seed: SeedOpt = 0,
    min_count: MinCountOpt = 1,
    max_rows: MaxRowsOpt = None,
    val: ValOpt = None,
    test: TestOpt = None,
    shard_mb: ShardOpt = 256,
    shard_compression: ShardCodecOpt = "lz4",
    force: Annotated[bool, typer.Option(help="Rebuild even if this layout exists.")] = False,
    quiet: Quiet = False,
    as_json: AsJson = False,
    debug: Debug = False,
) -> None:
    """Profile, plan and lay out training data: counts -> vocab -> plan -> shards -> publish.

    Without --val/--test the last partition (by name, numbers by value: day_10 after
    day_9) is halved into validation and test (the Criteo convention). A rerun with the same inputs and parameters does nothing.
    """
    from pipelines.layout import run_layout

    def go() -> Any:
        params = _layout_params(dataset, partition, budget, dim, table_dim, dtype,
                                optimizer_slots, batch_size, sampling_rate, seed, min_count,
                                max_rows, val, test, shard_mb, shard_compression)
        with _stage_bar(not quiet and not as_json, "layout") as (step, on_rows):
            return run_layout(root, params, step=step, progress=on_rows, force=force)

    result = _guarded(debug, go)

    def human() -> None:
        st = result.manifest.stats
        out.print(f"layout [bold]{result.layout_id}[/] {result.status}: {result.manifest_path}")
        sampling = st.get("sampling") or {}
        coverage = (f"{st['hot_access_coverage']:.1%}" if "estimated_access_coverage" not in
                    sampling else f"{sampling['estimated_access_coverage']:.1%} +- "
                    f"{100 * sampling['coverage_stderr']:.2f} pts (estimated over every "
                    f"training row; {st['hot_access_coverage']:.1%} on the sampled rows)")
        out.print(f"  hot input fraction {st['hot_input_fraction']:.1%}, access coverage "
                  f"{coverage}, budget used {st['budget_used_bytes']:,} B")
        if st.get("all_hot"):
            out.print("  [yellow]the budget holds every row of every table: all training "
                      "rows are hot and the cold split is empty[/]")
        out.print("  rows: " + ", ".join(f"{k} {v:,}" for k, v in st["rows_by_split_and_kind"].items()))
        if result.status == "unchanged":  # a new build logged them as warnings already
            for note in result.notes:
                out.print(f"  [yellow]note:[/] {escape(note)}", highlight=False)

    _emit(as_json, result.to_dict(), human)


def plan(
    root: Root = "fae-root",
    dataset: DatasetOpt = "criteo",
    partition: PartitionOpt = None,
    budget: BudgetOpt = "256MiB",
    dim: DimOpt = 16,
    table_dim: TableDimOpt = None,
    dtype: DtypeOpt = "float32",
    optimizer_slots: SlotsOpt = 0,
    sampling_rate: RateOpt = 1.0,
    seed: SeedOpt = 0,
    min_count: MinCountOpt = 1,
    max_rows: MaxRowsOpt = None,
    val: ValOpt = None,
    test: TestOpt = None,
    sweep: Annotated[bool, typer.Option(
        "--sweep", help="Chart coverage and hot-input fraction over a range of budgets.")] = False,
    as_json: AsJson = False,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Count, rank and plan hot rows for a budget (no shards written).

    With --sweep, print access coverage and the hot-input fraction for budgets from one
    row to every row, and mark the knee, to choose a budget from data.
    """
    from pipelines.layout import run_plan_only

    def go() -> Any:
        params = _layout_params(dataset, partition, budget, dim, table_dim, dtype,
                                optimizer_slots, 2048, sampling_rate, seed, min_count,
                                max_rows, val, test, 256)
        with _stage_bar(not quiet and not as_json, "plan") as (step, on_rows):
            return run_plan_only(root, params, sweep=sweep, step=step, progress=on_rows)

    outcome = _guarded(debug, go)
    payload = {"plan": outcome.plan, "predicted_hot_input_fraction":
               outcome.predicted_hot_input_fraction, "sample_rows": outcome.sample_rows,
               "sweep": outcome.sweep, "knee_budget_bytes": outcome.knee_budget_bytes,
               "sampling": outcome.sampling, "notes": outcome.notes}

    def human() -> None:
        from fae_data.plan_budget import format_bytes

        p = outcome.plan
        out.print(f"budget {p['budget_bytes']:,} B: {sum(p['hot_rows'].values()):,} hot rows, "
                  f"access coverage {p['hot_access_coverage']:.1%}, predicted hot-input "
                  f"fraction {outcome.predicted_hot_input_fraction:.1%} "
                  f"(from {outcome.sample_rows:,} sampled rows)")
        if "estimated_access_coverage" in outcome.sampling:
            s = outcome.sampling
            out.print(f"sampled profile (rate {s['rate']:g}): the coverage above is that of the "
                      f"counted rows; over every training row it is estimated at "
                      f"{s['estimated_access_coverage']:.2%} +- "
                      f"{100 * s['coverage_stderr']:.2f} pts (the sweep's coverage is the "
                      "counted rows' too)", highlight=False)
        if p.get("all_hot"):
            out.print("[yellow]every row of every table fits: the cold split will be empty[/]")
        if outcome.sweep:
            table = Table(title="budget sweep")
            for col in ("budget", "hot rows", "access coverage", "hot inputs", ""):
                table.add_column(col, justify="right")
            for pt in outcome.sweep:
                mark = "knee" if pt["budget_bytes"] == outcome.knee_budget_bytes else ""
                table.add_row(format_bytes(pt["budget_bytes"]),
                              f"{sum(pt['hot_rows'].values()):,}",
                              f"{pt['hot_access_coverage']:.1%}",
                              f"{(pt['hot_input_fraction'] or 0):.1%}", mark)
            out.print(table)
            if outcome.knee_budget_bytes is None:
                out.print("no knee: the hot-input fraction rises at least as fast per byte "
                          "as the budget grows (a straight or convex curve), so no budget "
                          "marks where more memory stops paying; read the table")

    _emit(as_json, payload, human)


def report(
    manifest: Annotated[str, typer.Argument(help="manifest.json, a layout folder or a storage root.")],
    out_path: Annotated[str | None, typer.Option(
        "--out", "-o", help="Where to write the HTML (default: report.html in the layout folder).")] = None,
    as_json: AsJson = False,
    quiet: Quiet = False,  # accepted like every command's; the report draws no bar
    debug: Debug = False,
) -> None:
    """Write a self-contained HTML report of a layout (skew, coverage vs budget, splits)."""
    from fae_data.report import write_report

    path = _guarded(debug, lambda: write_report(manifest, out_path))
    _emit(as_json, {"report": path}, lambda: out.print(f"wrote {path}"))


def verify(
    manifest: Annotated[str, typer.Argument(help="manifest.json, a layout folder or a storage root.")],
    shallow: Annotated[bool, typer.Option(help="Skip reading ids (no hot-invariant check).")] = False,
    as_json: AsJson = False,
    quiet: Quiet = False,
    debug: Debug = False,
) -> None:
    """Re-check a layout: checksums, row counts, minibatch alignment, the hot invariant."""
    from fae_data.manifest import load
    from fae_data.verify import verify_layout

    with _progress(not quiet and not as_json) as bar:
        task = bar.add_task("verify", total=None, rate="") if bar is not None else None

        def on_shard(check: str, done: int, total: int) -> None:
            if bar is not None and task is not None:
                bar.update(task, description=check, completed=done, total=total,
                           rate="shards")

        def go() -> Any:
            m, store = load(manifest)
            return m, verify_layout(m, store, deep=not shallow, progress=on_shard)

        m, checks = _guarded(debug, go)
    ok = all(c.ok for c in checks)
    _emit(
        as_json,
        {"layout_id": m.layout_id, "ok": ok,
         "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in checks]},
        lambda: [out.print(("[green]PASS[/] " if c.ok else "[red]FAIL[/] ") + f"{c.name}: {c.detail}",
                           highlight=False) for c in checks],
    )
    if not ok:
        # One error line too, on stderr: what a scheduler running `fae verify` as its
        # check (the default FAE_TRAIN_COMMAND) takes for a refusal, not a crash to retry.
        failed = ", ".join(c.name for c in checks if not c.ok)
        err.print(f"[bold red]error:[/] layout {escape(m.layout_id)} failed verification: "
                  f"{escape(failed)}",
                  highlight=False)
        raise typer.Exit(1)


def clean(
    root: Root,
    keep: Annotated[int | None, typer.Option(
        min=1, help="Published layouts to keep per dataset, newest first (LATEST's always "
        "stays). Default: every published layout stays.")] = None,
    stale_after: Annotated[str, typer.Option(
        help="Remove an abandoned build once untouched this long (e.g. 48h, 2d).")] = "48h",
    dry_run: Annotated[bool, typer.Option(help="Only list what would be removed.")] = False,
    as_json: AsJson = False,
    quiet: Quiet = False,  # accepted like every command's; clean draws no bar
    debug: Debug = False,
) -> None:
    """Remove old published layouts (--keep) and abandoned builds from a storage root."""
    from fae_data.plan_budget import format_bytes
    from pipelines.clean import parse_age, run_clean

    result = _guarded(debug, lambda: run_clean(root, keep=keep,
                                               stale_after_s=parse_age(stale_after),
                                               dry_run=dry_run))

    def show() -> None:
        verb = "would remove" if dry_run else "removed"
        for r in result.removed:
            out.print(f"{verb} {escape(r.path)} ({format_bytes(r.bytes)}): "
                      f"{escape(r.reason)}", highlight=False)
        for note in result.notes:
            out.print(f"[yellow]note[/] {escape(note)}", highlight=False)
        out.print(f"{verb} {len(result.removed)} folder(s), "
                  f"{format_bytes(result.bytes_freed)}; kept {len(result.kept)} "
                  "published layout(s)", highlight=False)

    _emit(as_json, result.to_dict(), show)
