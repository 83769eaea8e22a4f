"""Training-ready shards: encode, classify hot/cold, shuffle with bounded memory, cut.

Pass 1 (:func:`spill_partition`, one input partition at a time) streams a partition in
chunks: raw ids become frequency ranks, dense features become float32
``log(1 + max(x, 0))`` (null -> 0), each training row is classified hot (every id of
every sparse column, list elements included, is below its table's k_t) or cold, and rows
are appended to spill files, one per (partition, split, kind, bucket), the bucket drawn at
random with a generator seeded by (seed, partition, chunk).

Pass 2 (:func:`cut_stream`, one (split, kind) stream at a time, in
:mod:`fae_data.cutter`) permutes one bucket at a time and cuts the stream into Parquet
shards of whole minibatches; validation and test rows keep their order.

Because the bucket count and shard size come from the layout's total row count
(:func:`shard_geometry`) and every random draw from a fixed key, the partitions and the
streams can be processed by separate tasks, in any order, and give the same bytes as
:func:`write_shards`, which runs both passes in one process.

This module holds the encoding, the geometry and schema, pass 1 and :func:`write_shards`.
The definitions both passes share are in :mod:`fae_data.shard_types`; this module
re-exports them and pass 2's functions, so ``fae_data.shard`` stays the one import for
callers.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fae_data.chunks import iter_chunks
from fae_data.cutter import StreamResult, collect_streams, cut_stream
from fae_data.errors import InputError, StorageError
from fae_data.schema import TAOBAO_HISTORY_LENGTH
from fae_data.shard_types import (
    _CHUNK_ROWS,
    SHARD_DIR,
    STREAMS,
    ProgressFn,
    ShardGeometry,
    ShardParams,
    ShardResult,
)
from fae_data.spill import MemorySpill, MemoryWriter, Spill, SpilledPart, SpillFolder, SpillWriter
from fae_data.storage import Storage
from fae_data.vocab import Encoder

# Shared definitions, re-exported for the callers that import them from here.
from fae_data.shard_types import KIND_CODES, SPLIT_CODES, WrittenShard, check_stream  # noqa: F401

log = logging.getLogger(__name__)

_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="fae-encode")


@dataclass(frozen=True)
class LayoutColumns:
    """Which input columns are the label, the dense features and the sparse lookups."""

    label: str
    dense: tuple[str, ...]
    sparse: Mapping[str, str]  # column -> embedding table


@dataclass(frozen=True)
class InputPart:
    """One input file and how its rows split: [(split, first_row, end_row), ...]."""

    name: str
    path: str  # inside the storage
    rows: int
    ranges: tuple[tuple[str, int, int], ...]


def encode_chunk(
    batch: pa.RecordBatch | pa.Table,
    cols: LayoutColumns,
    encoders: Mapping[str, Encoder],
    hot_rows: Mapping[str, int],
) -> tuple[pa.Table, np.ndarray]:
    """Encode one chunk of raw rows. Returns the shard-ready table and the hot mask."""
    arrays: dict[str, pa.Array] = {}
    label = batch.column(cols.label)
    arrays[cols.label] = pa.array(_to_numpy(label, 0).astype(np.int8))
    for name in cols.dense:
        x = _to_numpy(batch.column(name), 0).astype(np.float64)
        arrays[name] = pa.array(np.log1p(np.maximum(x, 0.0)).astype(np.float32))
    ids, hot = encode_ids(batch, cols.sparse, encoders, hot_rows)
    arrays.update(ids)
    return pa.table(arrays), hot


def encode_ids(
    batch: pa.RecordBatch | pa.Table,
    sparse: Mapping[str, str],
    encoders: Mapping[str, Encoder],
    hot_rows: Mapping[str, int],
) -> tuple[dict[str, pa.Array], np.ndarray]:
    """The sparse columns of a chunk as ids (column -> array, in ``sparse`` order) and
    the hot mask: a row is hot iff every id of every column is below its table's k_t."""
    arrays: dict[str, pa.Array] = {}
    hot = np.ones(batch.num_rows, dtype=bool)
    # Columns are independent and numpy's lookups release the GIL: encode them in parallel.
    for name, ids_array, row_hot in _POOL.map(
        lambda item: _encode_column(batch, item[0], encoders[item[1]], hot_rows[item[1]]),
        sparse.items(),
    ):
        arrays[name] = ids_array
        hot &= row_hot
    return arrays, hot


def _encode_column(
    batch: pa.RecordBatch | pa.Table, name: str, encoder: Encoder, k: int
) -> tuple[str, pa.Array, np.ndarray]:
    col = batch.column(name)
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    if pa.types.is_list(col.type) or pa.types.is_large_list(col.type):
        flat = col.flatten()
        ids = encoder.encode(_to_numpy(flat, 0).astype(np.uint32), _valid(flat))
        offsets = np.asarray(col.offsets)
        cold_elem = np.concatenate(([0], np.cumsum(ids >= k)))
        row_hot = (cold_elem[offsets[1:]] - cold_elem[offsets[:-1]]) == 0
        out = pa.ListArray.from_arrays(
            pa.array(offsets - offsets[0], pa.int32()), pa.array(ids, pa.uint32())
        )
        return name, out, row_hot
    ids = encoder.encode(_to_numpy(col, 0).astype(np.uint32), _valid(col))
    return name, pa.array(ids, pa.uint32()), ids < k


def _to_numpy(arr: pa.Array | pa.ChunkedArray, fill: int) -> np.ndarray:
    if isinstance(arr, pa.ChunkedArray):
        arr = arr.combine_chunks()
    if arr.null_count:
        arr = arr.fill_null(fill)
    return arr.to_numpy(zero_copy_only=False)


def _valid(arr: pa.Array) -> np.ndarray | None:
    if not arr.null_count:
        return None
    return np.asarray(arr.is_valid())


# --- geometry and schema: decided once per layout, so that separate tasks agree ---------


def shard_geometry(total_rows: int, schema: pa.Schema, params: ShardParams) -> ShardGeometry:
    """Buckets of at most an eighth of ``shuffle_memory_bytes``, and shards of about
    ``shard_bytes`` (both by the in-memory size of a row of ``schema``, the shard schema,
    as :func:`row_bytes` estimates it)."""
    size = row_bytes(schema)
    buckets = max(1, math.ceil(total_rows * size * 8 / params.shuffle_memory_bytes))
    batches_per_shard = max(1, params.shard_bytes // (size * params.batch_size))
    return ShardGeometry(buckets, batches_per_shard * params.batch_size)


def fits_in_memory(total_rows: int, schema: pa.Schema, params: ShardParams) -> bool:
    """True when the rows and one permuted copy of them fit ``shuffle_memory_bytes``."""
    return 2 * total_rows * row_bytes(schema) <= params.shuffle_memory_bytes


#: Elements a list column is assumed to hold per row when sizing buckets and shards
#: (Taobao histories hold up to this many; most hold fewer, so this errs on the safe side).
_LIST_ELEMENTS = TAOBAO_HISTORY_LENGTH


def row_bytes(schema: pa.Schema) -> int:
    """Bytes one encoded row takes in Arrow memory: fixed-width values at their width, a
    list column at :data:`_LIST_ELEMENTS` elements plus its offset."""
    total = 0
    for f in schema:
        if pa.types.is_list(f.type) or pa.types.is_large_list(f.type):
            total += _LIST_ELEMENTS * f.type.value_type.bit_width // 8 + 4
        else:
            total += f.type.bit_width // 8
    return max(total, 1)


def shard_schema(cols: LayoutColumns, source: pa.Schema) -> pa.Schema:
    """The schema :func:`encode_chunk` gives rows of ``source`` (an input partition's
    schema): int8 label, float32 dense features, uint32 ids, a list of uint32 ids for a
    list column. Lets a publish step describe the shards without encoding anything.

    Raises:
        InputError: a column the layout needs is missing from ``source``.
    """
    fields = [pa.field(cols.label, pa.int8())]
    fields += [pa.field(name, pa.float32()) for name in cols.dense]
    for name in cols.sparse:
        if source.get_field_index(name) < 0:
            raise InputError(f"input column {name!r} is missing; the partition has "
                             f"{', '.join(source.names)}")
        kind = source.field(name).type
        is_list = pa.types.is_list(kind) or pa.types.is_large_list(kind)
        fields.append(pa.field(name, pa.list_(pa.uint32()) if is_list else pa.uint32()))
    return pa.schema(fields)


def layout_schema(storage: Storage, parts: Sequence[InputPart], cols: LayoutColumns) -> pa.Schema:
    """:func:`shard_schema` of the first input partition (read from its Parquet footer;
    the partitions of a layout share one schema)."""
    with storage.fs.open(storage.path(parts[0].path), "rb") as f:
        return shard_schema(cols, pq.read_schema(f))


def streams_of(parts: Sequence[InputPart]) -> list[str]:
    """The (split, kind) streams the parts' ranges can produce, in :data:`STREAMS` order."""
    splits = {split for p in parts for split, _, _ in p.ranges}
    return [s for s in STREAMS if s.split("/")[0] in splits]


# --- pass 1: encode and spill one partition -------------------------------------------


def spill_partition(
    spill: Spill,
    storage: Storage,
    part_index: int,
    part: InputPart,
    cols: LayoutColumns,
    encoders: Mapping[str, Encoder],
    hot_rows: Mapping[str, int],
    params: ShardParams,
    buckets: int,
    progress: ProgressFn | None = None,
) -> SpilledPart:
    """Pass 1 for one input partition: encode it chunk by chunk, classify training rows
    hot or cold, and append them to spill files of randomly drawn buckets.

    Buckets are drawn with a generator keyed by ``(seed, part_index, chunk_index)``, so
    partitions can be spilled in any order, or at once, with the same result. A partition
    whose index is already there is not spilled again.

    Raises:
        InputError: the partition holds another number of rows than its marker says.
        StorageError: the index found was written for another partition or bucket count.
    """
    done = spill.read_index(part_index)
    if done is not None:
        if (done.name, done.rows, done.buckets) != (part.name, part.rows, buckets):
            raise StorageError(
                f"{spill.where(spill.index_name(part_index))}: "
                f"spilled partition {done.name!r} ({done.rows} rows, {done.buckets} buckets), "
                f"expected {part.name!r} ({part.rows} rows, {buckets} buckets); remove the "
                "spill folder and rerun"
            )
        return done
    writers: dict[tuple[str, int], SpillWriter | MemoryWriter] = {}
    row0 = 0
    try:
        for chunk_index, chunk in enumerate(iter_chunks(storage, part.path, _CHUNK_ROWS)):
            table, hot = encode_chunk(chunk, cols, encoders, hot_rows)
            rows = np.arange(row0, row0 + table.num_rows)
            row0 += table.num_rows
            for split, lo, hi in part.ranges:
                in_range = (rows >= lo) & (rows < hi)
                if not in_range.any():
                    continue
                if split == "train":
                    rng = np.random.default_rng([params.seed, part_index, chunk_index])
                    pieces = _bucketed(table, hot, in_range, rng, buckets)
                else:
                    pieces = [(f"{split}/all", 0, table.filter(pa.array(in_range)))]
                for stream, bucket, piece in pieces:
                    if (stream, bucket) not in writers:
                        name = spill.file_name(part_index, stream, bucket)
                        writers[stream, bucket] = spill.writer(name, piece.schema)
                    writers[stream, bucket].write(piece)
            if progress is not None:
                progress("encode", table.num_rows)
    finally:
        for w in writers.values():
            w.close()
    if row0 != part.rows:
        raise InputError(
            f"partition {part.name}: read {row0} rows, its marker says {part.rows}; "
            "the partition changed during the layout, rerun"
        )
    files: dict[str, list[int]] = {}
    for stream, bucket in sorted(writers):
        files.setdefault(stream, []).append(bucket)
    spilled = SpilledPart(part_index, part.name, row0, buckets, files)
    spill.write_index(spilled)
    return spilled


def _bucketed(
    table: pa.Table, hot: np.ndarray, in_range: np.ndarray, rng: np.random.Generator,
    buckets: int,
) -> Iterator[tuple[str, int, pa.Table]]:
    """The training rows of a chunk as (stream, bucket, rows) pieces, in bucket order."""
    # One stable sort by (kind, bucket), then contiguous slices.
    key = rng.integers(0, buckets, table.num_rows) + np.where(hot, 0, buckets)
    idx = np.flatnonzero(in_range)
    idx = idx[np.argsort(key[idx], kind="stable")]
    ordered = table.take(pa.array(idx))
    skeys = key[idx]
    for k in np.unique(skeys).tolist():
        lo_i, hi_i = np.searchsorted(skeys, [k, k + 1])
        stream = "train/hot" if k < buckets else "train/cold"
        yield stream, k % buckets, ordered.slice(int(lo_i), int(hi_i - lo_i))


# --- both passes in one process ---------------------------------------------------------


def write_shards(
    storage: Storage,
    layout_dir: tuple[str, ...],
    parts: Sequence[InputPart],
    cols: LayoutColumns,
    encoders: Mapping[str, Encoder],
    hot_rows: Mapping[str, int],
    params: ShardParams,
    spill_dir: str | None = None,
    progress: ProgressFn | None = None,
    shard_dir: str = SHARD_DIR,
) -> ShardResult:
    """Run both passes and write every shard under ``layout_dir/<shard_dir>/``. Pass 1's rows
    stay in memory when they fit the shuffle memory, else they spill into a temporary
    local folder (under ``spill_dir``) that is removed afterwards."""
    schema = layout_schema(storage, parts, cols)
    total_rows = sum(p.rows for p in parts)
    geometry = shard_geometry(total_rows, schema, params)
    tmp = None
    spill: Spill
    if fits_in_memory(total_rows, schema, params):
        # Keep pass 1's rows in memory instead of writing and re-reading them.
        spill = MemorySpill()
    else:
        tmp = tempfile.mkdtemp(prefix="fae-shuffle-", dir=spill_dir)
        spill = SpillFolder(Storage(tmp))
    try:
        spilled = [
            spill_partition(spill, storage, i, part, cols, encoders, hot_rows, params,
                            geometry.buckets, progress)
            for i, part in enumerate(parts)
        ]

        def cut(stream: str) -> StreamResult:
            return cut_stream(storage, layout_dir, spill, spilled, stream, geometry, params,
                              progress, shard_dir)

        # The (split, kind) streams are independent; two at a time overlap one stream's
        # Parquet encoding with another's reading and permuting (Arrow releases the GIL).
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="fae-shards") as pool:
            results = list(pool.map(cut, streams_of(parts)))
        return collect_streams(results, schema)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
