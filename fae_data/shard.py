"""Training-ready shards: encode, classify hot/cold, shuffle with bounded memory, cut.

Pass 1 streams every input partition in chunks: raw ids become frequency ranks, dense
features become float32 ``log(1 + max(x, 0))`` (null -> 0), each training row is
classified hot (every id of every sparse column, list elements included, is below its
table's k_t) or cold, and rows are appended to spill files, one per (split, kind,
bucket), the bucket drawn at random with a seeded generator.

Pass 2 reads one bucket at a time, permutes it (seeded) and feeds a cutter that writes
Parquet shards whose row groups are exactly one minibatch of ``batch_size`` rows; only the
very last batch of a (split, kind) stream may be short, and the manifest records it.
Random bucket assignment followed by an in-bucket permutation is a uniform shuffle, and
memory holds one bucket, not the data set. Validation and test rows keep their order.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fae_data.errors import InputError
from fae_data.storage import Storage
from fae_data.vocab import Encoder

log = logging.getLogger(__name__)

SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
KIND_CODES = {"hot": 0, "cold": 1, "all": 2}
_CHUNK_ROWS = 262_144
_POOL = ThreadPoolExecutor(max_workers=2, thread_name_prefix="fae-encode")
#: Spill files are local and short-lived: fastest settings.
_SPILL_OPTIONS = {"compression": "none", "use_dictionary": False, "write_statistics": False}


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


@dataclass(frozen=True)
class ShardParams:
    batch_size: int = 2048
    shard_bytes: int = 256 << 20  # target size of a shard file (uncompressed estimate)
    shuffle_memory_bytes: int = 256 << 20  # rows of one bucket held in memory at once
    seed: int = 0
    # lz4 without dictionaries or statistics: one row group per minibatch means thousands
    # of small row groups, where per-chunk overheads dominate and the trainer wants cheap
    # decoding more than the last 30% of size.
    compression: str = "lz4"

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise InputError(f"batch_size ({self.batch_size}) must be at least 1")
        if self.shard_bytes < 1:
            raise InputError(f"shard_bytes ({self.shard_bytes}) must be positive")


@dataclass
class WrittenShard:
    path: str  # relative to the layout folder
    split: str
    kind: str
    rows: int
    batches: int
    bytes: int
    sha256: str
    last_batch_rows: int


@dataclass
class ShardResult:
    shards: list[WrittenShard] = field(default_factory=list)
    rows_by_split_and_kind: dict[str, int] = field(default_factory=dict)
    schema: pa.Schema | None = None


ProgressFn = Callable[[str, int], None]  # (phase, rows done in this phase)


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
    hot = np.ones(batch.num_rows, dtype=bool)
    # Columns are independent and numpy's lookups release the GIL: encode them in parallel.
    for name, ids_array, row_hot in _POOL.map(
        lambda item: _encode_column(batch, item[0], encoders[item[1]], hot_rows[item[1]]),
        cols.sparse.items(),
    ):
        arrays[name] = ids_array
        hot &= row_hot
    return pa.table(arrays), hot


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
) -> ShardResult:
    """Run both passes and write every shard under ``layout_dir/shards/``."""
    total_rows = sum(p.rows for p in parts)
    row_bytes = _row_bytes(cols)
    buckets = max(1, math.ceil(total_rows * row_bytes / params.shuffle_memory_bytes))
    tmp = Path(tempfile.mkdtemp(prefix="fae-shuffle-", dir=spill_dir))
    try:
        spills = _spill(storage, parts, cols, encoders, hot_rows, params, buckets, tmp, progress)
        result = ShardResult()
        rows_per_shard = max(1, params.shard_bytes // (row_bytes * params.batch_size)) * params.batch_size
        streams = sorted(
            spills.files.items(), key=lambda kv: (SPLIT_CODES[kv[0][0]], KIND_CODES[kv[0][1]])
        )

        def write_stream(item: tuple[tuple[str, str], list[str | None]]) -> _Cutter:
            (split, kind), files = item
            cutter = _Cutter(storage, layout_dir, split, kind, params, rows_per_shard, spills.schema)
            for bucket, path in enumerate(files):
                if path is None:
                    continue
                table = pq.read_table(path)
                if split == "train":
                    rng = np.random.default_rng(
                        [params.seed, SPLIT_CODES[split], KIND_CODES[kind], bucket]
                    )
                    table = table.take(pa.array(rng.permutation(table.num_rows)))
                cutter.feed(table)
                if progress is not None:
                    progress("write shards", table.num_rows)
            cutter.close()
            return cutter

        # The (split, kind) streams are independent; two at a time overlap one stream's
        # Parquet encoding with another's reading and permuting (Arrow releases the GIL).
        # Results are collected in stream order, so the manifest does not depend on timing.
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="fae-shards") as pool:
            for cutter in pool.map(write_stream, streams):
                result.shards.extend(cutter.written)
                result.rows_by_split_and_kind[f"{cutter.split}/{cutter.kind}"] = cutter.rows_total
        result.schema = spills.schema
        return result
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _row_bytes(cols: LayoutColumns) -> int:
    # label + float32 dense + uint32 ids (list columns counted at ~20 elements)
    return 1 + 4 * len(cols.dense) + 4 * len(cols.sparse) * 4


@dataclass
class _Spills:
    files: dict[tuple[str, str], list[str | None]]
    schema: pa.Schema | None


def _spill(
    storage: Storage,
    parts: Sequence[InputPart],
    cols: LayoutColumns,
    encoders: Mapping[str, Encoder],
    hot_rows: Mapping[str, int],
    params: ShardParams,
    buckets: int,
    tmp: Path,
    progress: ProgressFn | None,
) -> _Spills:
    writers: dict[tuple[str, str, int], pq.ParquetWriter] = {}
    paths: dict[tuple[str, str], list[str | None]] = {}
    schema: pa.Schema | None = None
    try:
        for part_index, part in enumerate(parts):
            row0 = 0
            for chunk_index, chunk in enumerate(_read_chunks(storage, part)):
                table, hot = encode_chunk(chunk, cols, encoders, hot_rows)
                schema = table.schema
                rows = np.arange(row0, row0 + table.num_rows)
                row0 += table.num_rows
                for split, lo, hi in part.ranges:
                    in_range = (rows >= lo) & (rows < hi)
                    if not in_range.any():
                        continue
                    if split == "train":
                        # One stable sort by (kind, bucket), then contiguous slices.
                        rng = np.random.default_rng([params.seed, part_index, chunk_index])
                        key = rng.integers(0, buckets, table.num_rows) + np.where(hot, 0, buckets)
                        idx = np.flatnonzero(in_range)
                        idx = idx[np.argsort(key[idx], kind="stable")]
                        ordered = table.take(pa.array(idx))
                        skeys = key[idx]
                        for k in np.unique(skeys).tolist():
                            lo_i, hi_i = np.searchsorted(skeys, [k, k + 1])
                            kind = "hot" if k < buckets else "cold"
                            _append(writers, paths, tmp, (split, kind, k % buckets), buckets,
                                    ordered.slice(int(lo_i), int(hi_i - lo_i)))
                    else:
                        _append(writers, paths, tmp, (split, "all", 0), 1,
                                table.filter(pa.array(in_range)))
                if progress is not None:
                    progress("encode", table.num_rows)
            if row0 != part.rows:
                raise InputError(
                    f"partition {part.name}: read {row0} rows, its marker says {part.rows}; "
                    "the partition changed during the layout, rerun"
                )
    finally:
        for w in writers.values():
            w.close()
    return _Spills(paths, schema)


def _append(
    writers: dict[tuple[str, str, int], pq.ParquetWriter],
    paths: dict[tuple[str, str], list[str | None]],
    tmp: Path,
    key: tuple[str, str, int],
    buckets: int,
    table: pa.Table,
) -> None:
    split, kind, bucket = key
    if key not in writers:
        path = tmp / f"{split}-{kind}-{bucket:05d}.parquet"
        writers[key] = pq.ParquetWriter(path, table.schema, **_SPILL_OPTIONS)
        paths.setdefault((split, kind), [None] * buckets)[bucket] = str(path)
    writers[key].write_table(table)


def _read_chunks(storage: Storage, part: InputPart) -> Iterator[pa.RecordBatch]:
    with storage.fs.open(storage.path(part.path), "rb") as f:
        pf = pq.ParquetFile(f)
        yield from pf.iter_batches(batch_size=_CHUNK_ROWS)


class _Cutter:
    """Writes a stream of rows as shards of whole minibatches (one row group each)."""

    def __init__(
        self,
        storage: Storage,
        layout_dir: tuple[str, ...],
        split: str,
        kind: str,
        params: ShardParams,
        rows_per_shard: int,
        schema: pa.Schema | None,
    ) -> None:
        self.storage = storage
        self.layout_dir = layout_dir
        self.split = split
        self.kind = kind
        self.params = params
        self.rows_per_shard = rows_per_shard
        self.schema = schema
        self.pending: list[pa.Table] = []
        self.pending_rows = 0
        self.rows_total = 0
        self.written: list[WrittenShard] = []

    def feed(self, table: pa.Table) -> None:
        self.pending.append(table)
        self.pending_rows += table.num_rows
        self.rows_total += table.num_rows
        while self.pending_rows >= self.rows_per_shard:
            self._flush(self.rows_per_shard)

    def close(self) -> list[WrittenShard]:
        if self.pending_rows:
            self._flush(self.pending_rows)
        return self.written

    def _flush(self, rows: int) -> None:
        data = pa.concat_tables(self.pending).combine_chunks() if len(self.pending) > 1 else self.pending[0]
        head, tail = data.slice(0, rows), data.slice(rows)
        self.pending = [tail] if tail.num_rows else []
        self.pending_rows = tail.num_rows
        name = f"{self.split}-{self.kind}-{len(self.written):05d}.parquet"
        rel = f"shards/{name}"
        batch = self.params.batch_size
        with self.storage.open_write(*self.layout_dir, "shards", name) as f:
            with pq.ParquetWriter(
                f, head.schema, compression=self.params.compression, use_dictionary=False,
                write_statistics=False,
            ) as writer:
                writer.write_table(head, row_group_size=batch)
        batches = math.ceil(rows / batch)
        last = rows - (batches - 1) * batch
        self.written.append(
            WrittenShard(
                path=rel,
                split=self.split,
                kind=self.kind,
                rows=rows,
                batches=batches,
                bytes=int(self.storage.fs.size(self.storage.path(*self.layout_dir, rel))),
                sha256=self.storage.sha256(*self.layout_dir, rel),
                last_batch_rows=last,
            )
        )
