"""Adapters of the ingest DAG: find a day's landing files and ingest them.

The ingest DAG waits for a day's raw files to land, then ingests them as that day's
partitions; these functions translate its arguments for :mod:`pipelines.ingest`.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fae_data.errors import InputError

log = logging.getLogger(__name__)


def landing_url(pattern: str, *, dataset: str, ds: str) -> str:
    """Fill ``{ds}`` (2024-01-31), ``{ds_nodash}`` (20240131) and ``{dataset}``."""
    try:
        return pattern.format(ds=ds, ds_nodash=ds.replace("-", ""), dataset=dataset)
    except (KeyError, IndexError, ValueError) as exc:
        raise InputError(f"landing URL pattern {pattern!r}: {exc!r}; the placeholders are "
                         "{ds}, {ds_nodash} and {dataset}") from None


def find_landing(pattern: str, *, dataset: str, ds: str) -> list[str]:
    """The raw files of one day, or ``[]`` while none has arrived (the sensor pokes again).

    The pattern may hold glob characters (``raw/{ds_nodash}/part-*.tsv.gz``); the matches
    are returned sorted. A file still being written should be uploaded under a temporary
    name and renamed, as object stores and ``mv`` do, so that a match is complete.
    """
    import fsspec

    url = landing_url(pattern, dataset=dataset, ds=ds)
    fs, path = fsspec.core.url_to_fs(url)
    if any(ch in path for ch in "*?["):
        found = sorted(fs.glob(path))
    else:
        found = [path] if fs.exists(path) else []
    files = [fs.unstrip_protocol(p) if "://" in url else p for p in found
             if not fs.isdir(p)]
    log.info("landing %s: %d file(s)", url, len(files))
    return files


def day_partitions(sources: Sequence[str], ds: str) -> list[str]:
    """Partition names of a day's files: ``ds`` for one file, ``ds_<file>`` for several,
    so that partitions sort by day."""
    from fae_data.partition import partition_name

    if len(sources) == 1:
        return [ds]
    return [f"{ds}_{partition_name(s)}" for s in sources]


def ingest_day(
    sources: Sequence[str], *, root: str, dataset: str, kind: str, ds: str,
    max_reject_fraction: float = 0.01,
) -> dict[str, Any]:
    """Ingest one day's files into ``<root>/ingested/<dataset>/<ds>...`` (idempotent:
    an unchanged source is skipped). Returns the record the Asset event carries."""
    from fae_data.ingest import IngestParams
    from pipelines.ingest import run_ingest

    if not sources:
        raise InputError(f"no landing files for dataset {dataset!r} on {ds}")
    names = day_partitions(sources, ds)
    result = run_ingest(list(sources), root, IngestParams(kind, max_reject_fraction),
                        dataset=dataset, partitions=names)
    return {
        "dataset": dataset,
        "kind": kind,
        "ds": ds,
        "partitions": [p.partition for p in result.partitions],
        "status": {p.partition: p.status for p in result.partitions},
        "rows_ok": result.rows_ok,
        "rows_rejected": result.rows_rejected,
        "sources": list(sources),
    }
