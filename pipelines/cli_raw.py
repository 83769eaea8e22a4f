"""``fae synth`` and ``fae ingest``: the commands that write and read raw logs.

Registered on the app in :mod:`pipelines.cli`.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from pipelines.cli_common import AsJson, Debug, Quiet, _emit, _guarded, _progress, out

if TYPE_CHECKING:
    from pipelines.ingest import IngestResult

# --- synth ----------------------------------------------------------------------------


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

        def run() -> IngestResult:
            # Imported here, inside the guard: loading pyarrow and polars takes a while,
            # and a Ctrl-C meanwhile should be the same one line as one during the run.
            from fae_data.ingest import IngestParams
            from pipelines.ingest import run_ingest

            return run_ingest(
                sources,
                root,
                IngestParams(kind=kind, max_reject_fraction=max_reject_fraction,
                             compression=compression),
                dataset=dataset,
                partitions=partition,
                progress=on_progress,
            )

        result = _guarded(debug, run)

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
