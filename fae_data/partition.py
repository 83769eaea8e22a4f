"""Partition names and commit markers of ingested data.

A partition is a folder ``<root>/ingested/<dataset>/<name>/`` that exists only once its
``_partition.json`` marker is written; the marker names the data and rejects files it
commits, the source checksum and the row counts. Ingest writes partitions, and the layout
stages and the report read them, through the names and helpers here, so they agree on
where a partition lives and what makes it committed without importing the ingest
machinery.
"""

from __future__ import annotations

import posixpath
import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fae_data import __version__
from fae_data.errors import BackendError, InputError, StorageError
from fae_data.storage import Storage

if TYPE_CHECKING:
    from fae_data.ingest import IngestParams

PARTITION_FORMAT = "fae.partition/v1"
PARTITION_MARKER = "_partition.json"
INGESTED_DIR = "ingested"
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=-]*$")
#: The longest dataset or partition name. Files are named after them with a few dozen
#: characters added (``.<name>.lock``, ``.tmp-<32 hex>-<name>.parquet``), and a file
#: name may have at most 255 bytes on common filesystems (names here are ASCII).
MAX_NAME_LENGTH = 128


@dataclass(frozen=True)
class PartitionResult:
    """What one ingest did to one partition."""

    dataset: str
    partition: str
    source: str
    status: str  # "written" | "replaced" | "unchanged"
    rows_in: int
    rows_ok: int
    rows_rejected: int
    reject_reasons: dict[str, int] = field(default_factory=dict)
    sha256: str = ""
    path: str = ""


def partition_name(source: str) -> str:
    """Default partition name of a source: its file name without .gz/.tsv/.csv/.txt."""
    name = posixpath.basename(source.rstrip("/"))
    for suffix in (".gz", ".tsv", ".csv", ".txt"):
        if name.endswith(suffix):
            name = name[: -len(suffix)]
    return check_name(name, "partition")


def name_order(name: str) -> tuple[tuple[int, int | str], ...]:
    """Sort key of partition names with their numbers compared by value: ``day_2``
    before ``day_10`` (as text, ``day_10`` sorts first, and with 11 or more days the
    default split took ``day_9`` for the last day). Dates written ``2024-01-05`` sort as
    they read."""
    return tuple((0, int(part)) if part.isdigit() else (1, part)
                 for part in re.split(r"(\d+)", name) if part)


def check_name(name: str, what: str) -> str:
    """Refuse names that could escape the storage root, confuse listings, or make a file
    name longer than the filesystem allows (checked here, before anything is written)."""
    if not name:
        raise InputError(f"{what} name is empty: give a name of letters, digits and _ . = -")
    if len(name) > MAX_NAME_LENGTH:
        raise InputError(
            f"{what} name {name[:24]!r}... is {len(name)} characters long, more than the "
            f"{MAX_NAME_LENGTH} allowed (files are named after it, and a file name may "
            "have at most 255 bytes): give a shorter name"
        )
    if not _NAME_RE.match(name):
        raise InputError(
            f"{what} name {name!r} is not allowed: use letters, digits and _ . = - "
            "(starting with a letter or digit)"
        )
    return name


def partition_dir(dataset: str, partition: str) -> tuple[str, str, str]:
    return (INGESTED_DIR, dataset, partition)


def read_marker(storage: Storage, dataset: str, partition: str) -> dict[str, Any] | None:
    """The committed ``_partition.json`` of a partition, or None if it has none.

    Raises :class:`StorageError` naming the file when it is not a marker this version
    wrote (not JSON, or fields missing or inconsistent): rerunning ``fae ingest`` on the
    partition's source replaces it.
    """
    parts = (*partition_dir(dataset, partition), PARTITION_MARKER)
    if not storage.exists(*parts):
        return None
    try:
        marker = storage.read_json(*parts)
        problem = marker_problem(marker)
    except BackendError:
        raise  # the store cannot be reached: the marker may be fine
    except StorageError as exc:
        problem = str(exc).removeprefix(f"{storage.display(*parts)}: ")
    if problem is not None:
        raise StorageError(
            f"{storage.display(*parts)}: not a valid partition marker ({problem}); ingest the "
            f"partition's source again (`fae ingest SRC --partition {partition}`) to replace it"
        )
    return dict(marker)


def marker_problem(marker: Any) -> str | None:
    """What makes ``marker`` unusable as a partition marker, or None when it is one."""
    if not isinstance(marker, dict):
        return f"a JSON {type(marker).__name__}, expected an object"
    for key in ("data", "rejects", "kind"):
        value = marker.get(key)
        if not isinstance(value, str) or not value or "/" in value:
            return f"{key!r} is {value!r}, expected a file name"
    counts = {}
    for key in ("rows_in", "rows_ok", "rows_rejected"):
        value = marker.get(key)
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            return f"{key!r} is {value!r}, expected a count"
        counts[key] = value
    if counts["rows_in"] != counts["rows_ok"] + counts["rows_rejected"]:
        return "rows_in is not rows_ok + rows_rejected"
    source = marker.get("source")
    if not isinstance(source, dict) or not isinstance(source.get("url"), str) or not \
            isinstance(source.get("sha256"), str):
        return "'source' lacks its url or sha256"
    return None


def _parser_tag(params: IngestParams) -> str:
    return f"{PARTITION_FORMAT}|{params.kind}|{params.compression}"


def _marker(written: dict[str, Any], params: IngestParams, sha: str, size: int) -> dict[str, Any]:
    return {
        "format": PARTITION_FORMAT,
        "parser": _parser_tag(params),
        "producer": {"name": "fae-data", "version": __version__},
        "kind": params.kind,
        **{k: v for k, v in written.items() if k != "source"},
        "source": {"url": written["source"], "sha256": sha, "bytes": size},
    }


def _result_from_marker(
    marker: dict[str, Any], source: str, status: str, storage: Storage
) -> PartitionResult:
    return PartitionResult(
        dataset=marker["dataset"],
        partition=marker["partition"],
        source=source,
        status=status,
        rows_in=marker["rows_in"],
        rows_ok=marker["rows_ok"],
        rows_rejected=marker["rows_rejected"],
        reject_reasons=dict(marker["reject_reasons"]),
        sha256=marker["source"]["sha256"],
        path=storage.display(*partition_dir(marker["dataset"], marker["partition"])),
    )


def partition_damage(
    storage: Storage, folder: tuple[str, ...], marker: dict[str, Any]
) -> str | None:
    """Why a committed partition's files disagree with its marker (a file missing, not
    Parquet, or holding another number of rows), or None when they agree.

    Reads only the two Parquet footers: cheap enough to run on every "unchanged" re-ingest,
    so that rerunning ``fae ingest`` repairs a partition whose files were damaged since.
    """
    for name_key, rows_key in (("data", "rows_ok"), ("rejects", "rows_rejected")):
        try:
            meta = storage.parquet_metadata(*folder, marker[name_key])
        except BackendError:
            raise  # the store cannot be reached: the files may be fine
        except StorageError as exc:
            return str(exc)
        if meta.num_rows != int(marker[rows_key]):
            return (f"{storage.display(*folder, marker[name_key])}: {meta.num_rows} rows, "
                    f"its marker says {marker[rows_key]}")
    return None


def _remove_unreferenced(
    storage: Storage, folder: tuple[str, ...], marker: dict[str, Any] | None
) -> None:
    """Delete files the committed marker does not name: leftovers of killed or replaced runs.

    Only one ingest may run per partition at a time (Airflow maps one task per partition).
    """
    keep = {PARTITION_MARKER}
    if marker is not None:
        keep |= {marker["data"], marker["rejects"]}
    for name in storage.listdir(*folder):
        if name not in keep:
            storage.remove(*folder, name)
