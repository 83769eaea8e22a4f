"""Stage: raw log files -> typed Parquet partitions (see :mod:`fae_data.ingest`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass

from fae_data.errors import InputError
from fae_data.ingest import IngestParams, ingest_source
from fae_data.partition import PartitionResult, check_name, partition_name
from fae_data.storage import Storage

SourceProgress = Callable[[str, int, int], None]  # (source, raw bytes read, rows so far)


@dataclass(frozen=True)
class IngestResult:
    """What :func:`run_ingest` did, one entry per source."""

    root: str
    partitions: tuple[PartitionResult, ...]

    @property
    def rows_in(self) -> int:
        return sum(p.rows_in for p in self.partitions)

    @property
    def rows_ok(self) -> int:
        return sum(p.rows_ok for p in self.partitions)

    @property
    def rows_rejected(self) -> int:
        return sum(p.rows_rejected for p in self.partitions)

    def to_dict(self) -> dict[str, object]:
        return {
            "root": self.root,
            "rows_in": self.rows_in,
            "rows_ok": self.rows_ok,
            "rows_rejected": self.rows_rejected,
            "partitions": [asdict(p) for p in self.partitions],
        }


def run_ingest(
    sources: Sequence[str],
    root: str,
    params: IngestParams,
    *,
    dataset: str | None = None,
    partitions: Sequence[str] | None = None,
    progress: SourceProgress | None = None,
) -> IngestResult:
    """Ingest each source into its own partition of ``<root>/ingested/<dataset>/``.

    ``dataset`` defaults to the kind; partition names default to the source file names
    without extensions (``day_3.tsv.gz`` -> ``day_3``). Sources are ingested in order; the
    first failure raises (partitions already committed stay committed, and a rerun skips
    them because their checksums match).
    """
    if not sources:
        raise InputError("no source files given")
    names = list(partitions) if partitions else [partition_name(s) for s in sources]
    if len(names) != len(sources):
        raise InputError(
            f"{len(names)} partition names for {len(sources)} sources: give one per source"
        )
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise InputError(
            f"two sources map to the same partition {duplicates[0]!r}: rename a file or "
            "pass explicit partition names"
        )
    # Only a missing dataset defaults to the kind; an empty one is refused by name.
    ds = check_name(params.kind if dataset is None else dataset, "dataset")
    storage = Storage(root)
    results = []
    for source, name in zip(sources, names, strict=True):
        cb = None
        if progress is not None:
            cb = _bind(progress, source)
        results.append(ingest_source(source, storage, ds, name, params, cb))
    return IngestResult(root=root, partitions=tuple(results))


def _bind(progress: SourceProgress, source: str) -> Callable[[int, int], None]:
    return lambda nbytes, rows: progress(source, nbytes, rows)
