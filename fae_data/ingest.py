"""Streaming ingest of raw click logs into typed Parquet partitions.

One source file becomes one partition folder under ``<root>/ingested/<dataset>/<name>/``:

- ``data-<token>.parquet``: the accepted rows, typed as :mod:`fae_data.schema` says;
- ``rejects-<token>.parquet``: every refused line with source, line number, reason and the
  raw bytes (the quarantine);
- ``_partition.json``: the commit marker, written last. A partition without it does not
  exist. It records the source checksum, so re-ingesting an unchanged source is a no-op.

The source is read in blocks that end at a newline, so memory is bounded by the block size
whatever the file size (Criteo Terabyte day files are ~45 GB). For every partition
``rows_in == rows_ok + rows_rejected``.

This module holds the parameters, the Parquet writers and the reject accounting.
Partition names and commit markers are :mod:`fae_data.partition` (re-exported here), the
reader thread and worker pool :mod:`fae_data.block_reader`, and parsing and typing one
block :mod:`fae_data.blocks`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO, Any

import fsspec
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from fsspec.implementations.local import LocalFileSystem

from fae_data import schema
from fae_data.block_reader import _decompressed, _HashingReader, _processed_blocks
from fae_data.errors import BackendError, InputError, StorageError
from fae_data.partition import (
    INGESTED_DIR,
    PARTITION_FORMAT,
    PARTITION_MARKER,
    PartitionResult,
    _marker,
    _parser_tag,
    _remove_unreferenced,
    _result_from_marker,
    partition_damage,
    check_name,
    partition_dir,
    partition_name,
    read_marker,
)
from fae_data.schema import RawFormat
from fae_data.storage import Storage, backend_errors, file_sha256, filesystem

__all__ = [
    "COMPRESSIONS",
    "INGESTED_DIR",
    "PARTITION_FORMAT",
    "PARTITION_MARKER",
    "IngestParams",
    "PartitionResult",
    "ProgressFn",
    "check_name",
    "ingest_source",
    "partition_dir",
    "partition_name",
    "read_marker",
]

log = logging.getLogger(__name__)

#: A refused first field that looks like a column name ("label", "user_id") marks a header.
_HEADER_NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
#: When the first block of a file is mostly refused, the file is not of this kind at all.
_JUNK_FRACTION = 0.5
#: Dictionary-encode a column when a sample of its first block has at most this many
#: distinct values per row (Criteo's small tables, labels, Taobao behaviours).
_DICTIONARY_MAX_DISTINCT = 0.01
_DICTIONARY_SAMPLE_ROWS = 10_000

ProgressFn = Callable[[int, int], None]  # (raw bytes read so far, rows so far)
COMPRESSIONS = ("lz4", "zstd", "snappy", "none")


@dataclass(frozen=True)
class IngestParams:
    """Parameters of one ingest; the CLI and DAG Params are built from these fields."""

    kind: str
    max_reject_fraction: float = 0.01
    # 16 MiB blocks: enough rows for Arrow's parser to use every core, small enough
    # that parsing the next blocks overlaps writing this one.
    block_bytes: int = 16 << 20
    # lz4 rather than zstd: ingest is CPU-bound and partitions are re-read by every
    # layout; lz4 writes and reads faster for ~1.5x the size (still ~3x smaller than the
    # raw text). Pass "zstd" for archival partitions.
    compression: str = "lz4"

    def __post_init__(self) -> None:
        schema.raw_format(self.kind)
        if not 0.0 <= self.max_reject_fraction <= 1.0:
            raise InputError(
                f"max_reject_fraction ({self.max_reject_fraction}) must be between 0 and 1"
            )
        if self.compression not in COMPRESSIONS:
            raise InputError(
                f"compression {self.compression!r} unknown: use one of {', '.join(COMPRESSIONS)}"
            )
        if self.block_bytes < 1 << 16:
            raise InputError(f"block_bytes ({self.block_bytes}) must be at least 65536")


def ingest_source(
    source: str,
    storage: Storage,
    dataset: str,
    partition: str,
    params: IngestParams,
    progress: ProgressFn | None = None,
) -> PartitionResult:
    """Ingest one raw file (local path or fsspec URL, plain or gzip) into a partition.

    Raises :class:`InputError` naming the file when the source is missing, empty, not of
    ``params.kind`` at all, a corrupt gzip stream, or has more refused lines than
    ``params.max_reject_fraction``; in every such case no partition is (re)written.

    On a local root a second ingest of the same partition waits for the first (a file
    lock beside the partition folder): each removes the files the committed marker does
    not name, which would include the other's files in progress. On an object store one
    ingest per partition at a time is the scheduler's job (Airflow maps one task each).
    """
    check_name(dataset, "dataset")
    check_name(partition, "partition")
    with storage.lock(INGESTED_DIR, dataset, f".{partition}.lock",
                      what=f"partition {dataset}/{partition}"):
        try:
            return _ingest(source, storage, dataset, partition, params, progress)
        except BaseException:
            _drop_empty_folder(storage, partition_dir(dataset, partition))
            raise


def _drop_empty_folder(storage: Storage, folder: tuple[str, ...]) -> None:
    """Remove a partition folder a failed first ingest left empty: layouts list every
    folder of a dataset as a partition, and an empty one would stop them."""
    if storage.is_local and not storage.listdir(*folder):
        with contextlib.suppress(OSError):
            os.rmdir(storage.path(*folder))


def _ingest(
    source: str,
    storage: Storage,
    dataset: str,
    partition: str,
    params: IngestParams,
    progress: ProgressFn | None,
) -> PartitionResult:
    fmt = schema.raw_format(params.kind)
    folder = partition_dir(dataset, partition)
    try:
        fs, src_path = filesystem(source, "source")
        with backend_errors(source):
            size = fs.size(src_path)
            is_folder = fs.isdir(src_path)
    except FileNotFoundError:
        raise InputError(f"{source}: no such file") from None
    except (OSError, ValueError) as exc:
        raise InputError(f"{source}: cannot open ({exc})") from None
    if is_folder:
        raise InputError(f"{source}: is a folder, expected one {fmt.kind} file")
    if size == 0:
        raise InputError(f"{source}: empty file, expected {fmt.kind} records")

    try:
        old = read_marker(storage, dataset, partition)
    except BackendError:  # the store cannot be reached: not a damaged marker
        raise
    except StorageError as exc:  # a damaged marker: this run replaces it
        log.warning("%s; ingesting it again", exc)
        old, replacing = None, True
    else:
        replacing = old is not None
    if old is not None and old.get("parser") == _parser_tag(params):
        with backend_errors(source):
            digest = file_sha256(fs, src_path)
        if old.get("source", {}).get("sha256") == digest:
            damage = partition_damage(storage, folder, old)
            if damage is None:
                log.info("%s: unchanged (sha256 %s), partition kept", source, digest[:12])
                # A run killed after its commit may have left the replaced files behind.
                _remove_unreferenced(storage, folder, old)
                _check_reject_fraction(source, int(old["rows_in"]), int(old["rows_rejected"]),
                                       Counter(old.get("reject_reasons", {})), params,
                                       "The committed partition was kept as it is.")
                return _result_from_marker(old, source, "unchanged", storage)
            log.warning("%s: unchanged, but its committed partition is damaged (%s); "
                        "ingesting it again", source, damage)

    _remove_unreferenced(storage, folder, old)
    try:
        with backend_errors(source):
            source_file = fs.open(src_path, "rb")
    except OSError as exc:  # unreadable (permissions): a user problem, not a crash
        raise InputError(f"{source}: cannot open ({exc})") from None
    with source_file as raw:
        hashing = _HashingReader(raw)
        stream = _decompressed(raw, hashing)
        result = _write_partition(stream, hashing, source, storage, dataset, partition, fmt,
                                  params, progress)
    status = "replaced" if replacing else "written"
    marker = _marker({**result, "source": _recorded_source(source, fs)}, params,
                     hashing.hash.hexdigest(), size)
    storage.write_json_atomic(marker, *folder, PARTITION_MARKER)
    _remove_unreferenced(storage, folder, marker)
    return _result_from_marker(marker, source, status, storage)


def _recorded_source(source: str, fs: fsspec.AbstractFileSystem) -> str:
    """The source as the marker records it: a local path made absolute (symlinks
    resolved), so that a later reader knows which file it was whatever folder the ingest
    ran in; a URL as given, since it already names the file wherever it is read."""
    if "://" in source or not isinstance(fs, LocalFileSystem):
        return source
    return os.path.realpath(source)


def _write_partition(
    stream: IO[bytes],
    hashing: _HashingReader,
    source: str,
    storage: Storage,
    dataset: str,
    partition: str,
    fmt: RawFormat,
    params: IngestParams,
    progress: ProgressFn | None,
) -> dict[str, Any]:
    folder = partition_dir(dataset, partition)
    # Fresh names per run: nothing refers to them until the marker is replaced, so a
    # crash at any point leaves the previous partition (or none) intact.
    token = uuid.uuid4().hex[:16]
    data_name = f"data-{token}.parquet"
    rejects_name = f"rejects-{token}.parquet"
    rows_in = rows_ok = rows_rejected = 0
    reasons: Counter[str] = Counter()
    first_line = 1
    try:
        with storage.open_write(*folder, data_name) as data_f, storage.open_write(
            *folder, rejects_name
        ) as rej_f:
            data_w: pq.ParquetWriter | None = None
            rej_w = pq.ParquetWriter(rej_f, schema.REJECTS_SCHEMA, compression=params.compression)
            try:
                for typed, rejects, num_lines in _processed_blocks(stream, source, fmt, params):
                    if first_line == 1:
                        _refuse_foreign(source, fmt, num_lines, rejects)
                    elif rejects.num_rows:
                        rejects = _shift_lines(rejects, first_line - 1)
                    rows_in += num_lines
                    rows_ok += typed.num_rows
                    rows_rejected += rejects.num_rows
                    reasons.update(_reason_codes(rejects))
                    if data_w is None:
                        data_w = pq.ParquetWriter(
                            data_f,
                            fmt.schema,
                            compression=params.compression,
                            use_dictionary=_dictionary_columns(typed),
                            # Min/max of hashed ids prune nothing; labels, counts and
                            # timestamps keep theirs (~8% of the write time saved).
                            write_statistics=[c for c in fmt.columns if c not in fmt.sparse],
                        )
                    if typed.num_rows:
                        data_w.write_table(typed)
                    if rejects.num_rows:
                        rej_w.write_table(rejects)
                    first_line += num_lines
                    if progress is not None:
                        progress(hashing.count, rows_in)
            finally:
                if data_w is None:  # no block at all: still leave a valid empty file
                    data_w = pq.ParquetWriter(data_f, fmt.schema)
                data_w.close()
                rej_w.close()
        if rows_in == 0:
            raise InputError(f"{source}: no records found, expected {fmt.kind} lines")
        if rows_in != rows_ok + rows_rejected:  # an internal invariant, never user input
            raise RuntimeError(f"{source}: row accounting broke ({rows_in} != "
                               f"{rows_ok} + {rows_rejected})")
        _check_reject_fraction(source, rows_in, rows_rejected, reasons, params,
                               "Nothing was written for this partition.")
    except BaseException as exc:
        storage.remove(*folder, data_name)
        storage.remove(*folder, rejects_name)
        if isinstance(exc, OSError) and exc.filename is None:
            # Writes fail at a flush or close (a full disk), where the error names no file.
            raise StorageError(f"{storage.display(*folder)}: cannot write partition "
                               f"{partition!r} of {source} ({exc.strerror or exc}); nothing "
                               "was written for it") from None
        raise
    return {
        "dataset": dataset,
        "partition": partition,
        "source": source,
        "data": data_name,
        "rejects": rejects_name,
        "rows_in": rows_in,
        "rows_ok": rows_ok,
        "rows_rejected": rows_rejected,
        "reject_reasons": dict(sorted(reasons.items())),
    }


def _shift_lines(rejects: pa.Table, by: int) -> pa.Table:
    """Block-relative reject line numbers -> file line numbers."""
    i = rejects.schema.get_field_index("line")
    shifted = pc.add(rejects.column(i), pa.scalar(by, pa.int64()))
    return rejects.set_column(i, rejects.schema.field(i), shifted)


def _dictionary_columns(first: pa.Table) -> list[str]:
    """Columns worth Parquet dictionary encoding, judged on a sample of the first block.

    Dictionary-encoding a column of mostly distinct ids costs time and gains nothing
    (the writer falls back to plain encoding after filling its dictionary page); a
    column of few values (labels, small tables) shrinks a lot. A sample is enough to
    tell the two apart.
    """
    sample = first.slice(0, _DICTIONARY_SAMPLE_ROWS)
    if sample.num_rows < 1000:
        return list(first.column_names)
    limit = _DICTIONARY_MAX_DISTINCT * sample.num_rows
    return [
        name
        for name in sample.column_names
        if pc.count_distinct(sample.column(name)).as_py() <= limit
    ]


def _refuse_foreign(source: str, fmt: RawFormat, num_lines: int, rejects: pa.Table) -> None:
    """Fail fast on a file that is not of this kind at all (header, binary, other format)."""
    if rejects.num_rows == 0:
        return
    first = rejects.slice(0, 1).to_pylist()[0]
    if first["line"] == 1:
        head = first["raw"].split(fmt.delimiter)[0].decode("utf-8", "replace")
        if _HEADER_NAME_RE.match(head.strip()):
            raise InputError(
                f"{source}:1: looks like a header row ({head!r}...); {fmt.kind} files have "
                "no header. Remove the first line and ingest again."
            )
    if rejects.num_rows > _JUNK_FRACTION * num_lines:
        raise InputError(
            f"{source}: not a {fmt.kind} file: {rejects.num_rows} of the first "
            f"{num_lines} lines are malformed (line {first['line']}: "
            f"{first['reason']})"
        )


def _reason_codes(rejects: pa.Table) -> Counter[str]:
    """Group reasons by their kind ("C3 (field 17): expected ..." -> "C3: bad value")."""
    codes: Counter[str] = Counter()
    for reason in rejects.column("reason").to_pylist():
        if reason.startswith("expected ") and "fields" in reason:
            codes["field count"] += 1
        elif reason.startswith("line of ") and "longer than any record" in reason:
            codes["line too long"] += 1
        elif "(field " in reason:
            codes[reason.split(" (field ", 1)[0] + ": bad value"] += 1
        else:
            codes[reason.split(" at column", 1)[0]] += 1
    return codes


def _check_reject_fraction(
    source: str, rows_in: int, rows_rejected: int, reasons: Counter[str],
    params: IngestParams, outcome: str,
) -> None:
    """Fail when more lines were refused than ``--max-reject-fraction`` allows; also for
    an unchanged source, whose partition was committed under a looser limit."""
    fraction = rows_rejected / rows_in if rows_in else 0.0
    if fraction > params.max_reject_fraction:
        raise InputError(
            f"{source}: {rows_rejected} of {rows_in} lines refused "
            f"({fraction:.2%}), above the allowed {params.max_reject_fraction:.2%} "
            f"(--max-reject-fraction); most common: {_top_reasons(reasons)}. {outcome}"
        )


def _top_reasons(reasons: Counter[str], n: int = 3) -> str:
    return ", ".join(f"{code} x{count}" for code, count in reasons.most_common(n))
