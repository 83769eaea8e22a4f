"""The ``fae`` command line: the embedded default, no Airflow and no server needed.

Each command parses its options, calls one ``pipelines.run_*`` function and prints a
summary (``--json`` for machines). Library errors become one red line and exit code 1;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, TypeVar

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from fae_data import __version__
from fae_data.errors import FaeError
from fae_data.ingest import IngestParams

app = typer.Typer(
    name="fae",
    help="fae-data: hot-embedding-aware data preparation for recommendation training.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

T = TypeVar("T")

Quiet = Annotated[bool, typer.Option("--quiet", "-q", help="No progress bars.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print a machine-readable JSON summary.")]
Debug = Annotated[bool, typer.Option("--debug", help="Show tracebacks of errors.")]


def main() -> None:
    """Console-script entry point."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    app()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option("--version", help="Print the version and exit.")] = False,
) -> None:
    if version:
        out.print(f"fae-data {__version__}")
        raise typer.Exit()


def _guarded(debug: bool, fn: Callable[[], T]) -> T:
    """Run ``fn``; turn a library error into one red line and exit code 1."""
    try:
        return fn()
    except FaeError as exc:
        if debug:
            raise
        err.print(f"[bold red]error:[/] {escape(str(exc))}", highlight=False, soft_wrap=True)
        raise typer.Exit(1) from None
    except KeyboardInterrupt:
        err.print("[bold red]interrupted[/]: committed results are intact; rerun to finish")
        raise typer.Exit(130) from None


@contextmanager
def _progress(enabled: bool) -> Iterator[Progress | None]:
    if not enabled or not err.is_terminal:
        yield None
        return
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TaskProgressColumn(),
        MofNCompleteColumn(),
        TextColumn("{task.fields[rate]}"),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    ) as bar:
        yield bar


def _emit(as_json: bool, payload: dict[str, Any], human: Callable[[], None]) -> None:
    if as_json:
        sys.stdout.write(json.dumps(payload, indent=2, default=str) + "\n")
    else:
        human()


# --- synth ----------------------------------------------------------------------------


@app.command()
def synth(
    kind: Annotated[str, typer.Argument(help="criteo (Kaggle TSV) or taobao (UserBehavior CSV).")],
    out_dir: Annotated[Path, typer.Option("--out", "-o", help="Folder for the day files.")] = Path(
        "raw"
    ),
    rows: Annotated[int, typer.Option(help="Rows per day file.")] = 100_000,
    days: Annotated[int, typer.Option(help="Number of day files (day_0, day_1, ...).")] = 1,
    seed: Annotated[int, typer.Option(help="Random seed; the same seed gives the same bytes.")] = 0,
    zipf: Annotated[float, typer.Option(help="Skew exponent of the id distributions.")] = 1.1,
    scale: Annotated[
        float, typer.Option(help="Shrink the Kaggle cardinalities by this factor (0, 1].")
    ] = 1.0,
    gzip: Annotated[bool, typer.Option("--gzip", help="Write .gz files.")] = False,
    quiet: Quiet = False,
    as_json: AsJson = False,
    debug: Debug = False,
) -> None:
    """Generate synthetic click logs with realistic skew and learnable labels."""
    from pipelines.synth import run_synth

    with _progress(not quiet and not as_json) as bar:
        task = None
        if bar is not None:
            task = bar.add_task(f"synth {kind}", total=rows * days, rate="")

        def advance(n: int) -> None:
            if bar is not None and task is not None:
                bar.advance(task, n)

        result = _guarded(
            debug,
            lambda: run_synth(kind, out_dir, rows=rows, days=days, seed=seed, zipf=zipf,
                              scale=scale, gzip=gzip, progress=advance),
        )
    _emit(
        as_json,
        result.to_dict(),
        lambda: out.print(f"wrote {len(result.files)} file(s) of {rows:,} rows: "
                          + ", ".join(result.files)),
    )


# --- ingest ---------------------------------------------------------------------------


@app.command()
def ingest(
    sources: Annotated[
        list[str], typer.Argument(help="Raw files: paths or fsspec URLs (s3://...), .gz ok.")
    ],
    kind: Annotated[str, typer.Option(help="criteo or taobao.")] = "criteo",
    root: Annotated[str, typer.Option(help="Storage root (folder or s3:// URL).")] = "fae-root",
    dataset: Annotated[
        str | None, typer.Option(help="Dataset name under the root (default: the kind).")
    ] = None,
    partition: Annotated[
        list[str] | None,
        typer.Option(help="Partition name per source (default: file name without extensions)."),
    ] = None,
    max_reject_fraction: Annotated[
        float, typer.Option(help="Fail a partition when more than this share of lines is bad.")
    ] = 0.01,
    compression: Annotated[
        str, typer.Option(help="Parquet codec of the partitions: lz4 (fast), zstd (smaller), "
                               "snappy or none.")
    ] = "lz4",
    quiet: Quiet = False,
    as_json: AsJson = False,
    debug: Debug = False,
) -> None:
    """Ingest raw logs into typed Parquet partitions, quarantining malformed lines.

    Re-ingesting an unchanged source (same sha256) does nothing; a changed source
    replaces its partition atomically.
    """
    from pipelines.ingest import run_ingest

    with _progress(not quiet and not as_json) as bar:
        tasks: dict[str, Any] = {}

        def on_progress(source: str, nbytes: int, nrows: int) -> None:
            if bar is None:
                return
            if source not in tasks:
                tasks[source] = (bar.add_task(f"ingest {Path(source).name}",
                                              total=_size_or_none(source), rate=""),
                                 bar.get_time())
            task, start = tasks[source]
            elapsed = max(bar.get_time() - start, 1e-9)
            bar.update(task, completed=nbytes, rate=f"{nrows:,} rows {nrows / elapsed:,.0f} rows/s")

        result = _guarded(
            debug,
            lambda: run_ingest(
                sources,
                root,
                IngestParams(kind=kind, max_reject_fraction=max_reject_fraction,
                             compression=compression),
                dataset=dataset,
                partitions=partition,
                progress=on_progress,
            ),
        )

    def human() -> None:
        table = Table(title=f"ingested into {result.root}")
        for col in ("partition", "status", "rows in", "ok", "rejected", "top reject reason"):
            table.add_column(col, justify="right" if col in ("rows in", "ok", "rejected") else "left")
        for p in result.partitions:
            top = max(p.reject_reasons.items(), key=lambda kv: kv[1])[0] if p.reject_reasons else ""
            table.add_row(p.partition, p.status, f"{p.rows_in:,}", f"{p.rows_ok:,}",
                          f"{p.rows_rejected:,}", top)
        out.print(table)

    _emit(as_json, result.to_dict(), human)


def _size_or_none(source: str) -> int | None:
    try:
        import fsspec

        fs, path = fsspec.core.url_to_fs(source)
        return int(fs.size(path))
    except Exception:  # a progress total is a nicety; the ingest reports real errors
        return None


# --- layout ---------------------------------------------------------------------------

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
        if not value.isdigit():
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
    help="Partitions to use (default: all, sorted by name).")]
BudgetOpt = Annotated[str, typer.Option(
    help="GPU memory for hot rows: bytes or with units (256MiB, 8GB).")]
DimOpt = Annotated[int, typer.Option(help="Embedding dimension of every table.")]
TableDimOpt = Annotated[list[str] | None, typer.Option(
    help="Per-table dimension TABLE=DIM (repeatable).")]
DtypeOpt = Annotated[str, typer.Option(help="Embedding dtype: float32, float16, bfloat16.")]
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
ShardOpt = Annotated[int, typer.Option(help="Target shard size in MiB.")]
ShardCodecOpt = Annotated[str, typer.Option(
    help="Parquet codec of the shards: lz4, none (about 2x faster to write, 1.3x larger), "
         "zstd or snappy.")]


@app.command()
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

    Without --val/--test the last partition is halved into validation and test (the
    Criteo convention). A rerun with the same inputs and parameters does nothing.
    """
    from pipelines.layout import run_layout

    def go() -> Any:
        params = _layout_params(dataset, partition, budget, dim, table_dim, dtype,
                                optimizer_slots, batch_size, sampling_rate, seed, min_count,
                                max_rows, val, test, shard_mb, shard_compression)
        with _progress(not quiet and not as_json) as bar:
            task = bar.add_task("layout", total=None, rate="") if bar is not None else None
            rows = {"n": 0}

            def step(message: str) -> None:
                rows["n"] = 0
                if bar is not None and task is not None:
                    bar.update(task, description=message, completed=0, rate="")

            def on_rows(phase: str, n: int) -> None:
                rows["n"] += n
                if bar is not None and task is not None:
                    bar.update(task, advance=n, rate=f"{rows['n']:,} rows")

            return run_layout(root, params, step=step, progress=on_rows, force=force)

    result = _guarded(debug, go)

    def human() -> None:
        st = result.manifest.stats
        out.print(f"layout [bold]{result.layout_id}[/] {result.status}: {result.manifest_path}")
        out.print(f"  hot input fraction {st['hot_input_fraction']:.1%}, access coverage "
                  f"{st['hot_access_coverage']:.1%}, budget used {st['budget_used_bytes']:,} B")
        if st.get("all_hot"):
            out.print("  [yellow]the budget holds every row of every table: all training "
                      "rows are hot and the cold split is empty[/]")
        out.print("  rows: " + ", ".join(f"{k} {v:,}" for k, v in st["rows_by_split_and_kind"].items()))

    _emit(as_json, result.to_dict(), human)


@app.command()
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
        return run_plan_only(root, params, sweep=sweep)

    outcome = _guarded(debug, go)
    payload = {"plan": outcome.plan, "predicted_hot_input_fraction":
               outcome.predicted_hot_input_fraction, "sample_rows": outcome.sample_rows,
               "sweep": outcome.sweep, "knee_budget_bytes": outcome.knee_budget_bytes}

    def human() -> None:
        p = outcome.plan
        out.print(f"budget {p['budget_bytes']:,} B: {sum(p['hot_rows'].values()):,} hot rows, "
                  f"access coverage {p['hot_access_coverage']:.1%}, predicted hot-input "
                  f"fraction {outcome.predicted_hot_input_fraction:.1%} "
                  f"(from {outcome.sample_rows:,} sampled rows)")
        if p.get("all_hot"):
            out.print("[yellow]every row of every table fits: the cold split will be empty[/]")
        if outcome.sweep:
            table = Table(title="budget sweep")
            for col in ("budget", "hot rows", "access coverage", "hot inputs", ""):
                table.add_column(col, justify="right")
            for pt in outcome.sweep:
                mark = "knee" if pt["budget_bytes"] == outcome.knee_budget_bytes else ""
                table.add_row(_bytes(pt["budget_bytes"]), f"{sum(pt['hot_rows'].values()):,}",
                              f"{pt['hot_access_coverage']:.1%}",
                              f"{(pt['hot_input_fraction'] or 0):.1%}", mark)
            out.print(table)

    _emit(as_json, payload, human)


def _bytes(n: int) -> str:
    for unit, size in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{n} B"


@app.command()
def report(
    manifest: Annotated[str, typer.Argument(help="manifest.json, a layout folder or a storage root.")],
    out_path: Annotated[str | None, typer.Option(
        "--out", help="Where to write the HTML (default: report.html in the layout folder).")] = None,
    as_json: AsJson = False,
    debug: Debug = False,
) -> None:
    """Write a self-contained HTML report of a layout (skew, coverage vs budget, splits)."""
    from fae_data.report import write_report

    path = _guarded(debug, lambda: write_report(manifest, out_path))
    _emit(as_json, {"report": path}, lambda: out.print(f"wrote {path}"))


@app.command()
def verify(
    manifest: Annotated[str, typer.Argument(help="manifest.json, a layout folder or a storage root.")],
    shallow: Annotated[bool, typer.Option(help="Skip reading ids (no hot-invariant check).")] = False,
    as_json: AsJson = False,
    debug: Debug = False,
) -> None:
    """Re-check a layout: checksums, row counts, minibatch alignment, the hot invariant."""
    from fae_data.manifest import load
    from fae_data.verify import verify_layout

    def go() -> Any:
        m, store = load(manifest)
        return m, verify_layout(m, store, deep=not shallow)

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
        raise typer.Exit(1)


# --- demo -----------------------------------------------------------------------------


@app.command()
def demo(
    workdir: Annotated[Path, typer.Option(help="Where raw files and the storage root go.")] = Path(
        "fae-demo"
    ),
    rows: Annotated[int, typer.Option(help="Synthetic Criteo rows per day.")] = 200_000,
    days: Annotated[int, typer.Option(help="Synthetic days (the last one is val/test).")] = 3,
    seed: Annotated[int, typer.Option(help="Random seed.")] = 0,
    scale: Annotated[float, typer.Option(help="Cardinality scale of the synthetic data.")] = 0.01,
    budget: Annotated[str, typer.Option(help="GPU budget for hot rows.")] = "1MiB",
    train_steps: Annotated[int, typer.Option(
        help="Steps of the short CPU training at the end (0 skips it).")] = 100,
    quiet: Quiet = False,
    as_json: AsJson = False,
    debug: Debug = False,
) -> None:
    """Run the whole pipeline on synthetic Criteo data: synth -> ingest -> layout -> verify
    -> a short CPU training of the separate trainer."""
    from pipelines.demo import run_demo

    with _progress(not quiet and not as_json) as bar:
        task = bar.add_task("demo", total=None, rate="") if bar is not None else None

        def step(message: str) -> None:
            if bar is not None and task is not None:
                bar.update(task, description=message)
            elif not quiet and not as_json:
                err.print(f"[dim]{message}[/]")

        result = _guarded(
            debug,
            lambda: run_demo(workdir, rows=rows, days=days, seed=seed, scale=scale,
                             budget=budget, train_steps=train_steps, step=step),
        )
    _emit(as_json, result.to_dict(), lambda: out.print(result.summary()))


if __name__ == "__main__":
    main()
