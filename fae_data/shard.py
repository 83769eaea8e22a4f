"""Training-ready shards: encode, classify hot/cold, shuffle with bounded memory, cut.

Pass 1 (:func:`spill_partition`, one input partition at a time) streams a partition in
chunks: raw ids become frequency ranks, dense features become float32
``log(1 + max(x, 0))`` (null -> 0), each training row is classified hot (every id of
every sparse column, list elements included, is below its table's k_t) or cold, and rows
are appended to spill files, one per (partition, split, kind, bucket), the bucket drawn at
random with a generator seeded by (seed, partition, chunk).

Pass 2 (:func:`cut_stream`, one (split, kind) stream at a time) reads one bucket at a
time (its files of every partition, in partition order), permutes it (seeded) and feeds a
cutter that writes Parquet shards whose row groups are exactly one minibatch of
``batch_size`` rows; only the very last batch of a stream may be short, and the manifest
records it. Random bucket assignment followed by an in-bucket permutation is a uniform
shuffle, and memory holds one bucket, not the data set. Validation and test rows keep
their order.

Because the bucket count and shard size come from the layout's total row count
(:func:`shard_geometry`) and every random draw from a fixed key, the partitions and the
streams can be processed by separate tasks, in any order, and give the same bytes as
:func:`write_shards`, which runs both passes in one process.
"""

from __future__ import annotations

import logging
import math
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fae_data.chunks import iter_chunks
from fae_data.errors import InputError, StorageError
from fae_data.schema import TAOBAO_HISTORY_LENGTH
from fae_data.spill import MemorySpill, MemoryWriter, Spill, SpilledPart, SpillFolder, SpillWriter
from fae_data.storage import Storage
from fae_data.vocab import Encoder

log = logging.getLogger(__name__)

SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
KIND_CODES = {"hot": 0, "cold": 1, "all": 2}
#: Every (split, kind) stream, in the order their shards are listed in a manifest.
STREAMS = ("train/hot", "train/cold", "val/all", "test/all")
_CHUNK_ROWS = 262_144
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


@dataclass(frozen=True)
class ShardParams:
    batch_size: int = 2048
    shard_bytes: int = 256 << 20  # target size of a shard file (uncompressed estimate)
    # What the shuffle may hold at once. Pass 2 cuts two streams at a time, each holding
    # a bucket and its permuted copy, plus the allocators' slack: a bucket gets an eighth
    # of it. A layout of at most half of it is shuffled in memory without spill files.
    shuffle_memory_bytes: int = 512 << 20
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


# --- geometry and schema: decided once per layout, so that separate tasks agree ---------


@dataclass(frozen=True)
class ShardGeometry:
    """How a layout's rows are bucketed and cut; every pass-1 and pass-2 task must use
    the same values, so they are derived once from the layout's total row count."""

    buckets: int  # shuffle buckets per (split, kind) stream
    rows_per_shard: int  # a whole number of minibatches


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


def check_stream(stream: str) -> tuple[str, str]:
    """``"train/hot"`` -> ``("train", "hot")``; anything but one of :data:`STREAMS` is an
    InputError."""
    if stream not in STREAMS:
        raise InputError(f"stream {stream!r} unknown: use one of {', '.join(STREAMS)}")
    split, kind = stream.split("/")
    return split, kind


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


# --- pass 2: shuffle and cut one stream -----------------------------------------------


@dataclass
class StreamResult:
    """The shards one (split, kind) stream was cut into."""

    stream: str
    rows: int
    shards: list[WrittenShard]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> StreamResult:
        return cls(raw["stream"], int(raw["rows"]), [WrittenShard(**s) for s in raw["shards"]])


def cut_stream(
    storage: Storage,
    layout_dir: tuple[str, ...],
    spill: Spill,
    spilled: Sequence[SpilledPart],
    stream: str,
    geometry: ShardGeometry,
    params: ShardParams,
    progress: ProgressFn | None = None,
) -> StreamResult:
    """Pass 2 for one stream: training rows bucket by bucket, each bucket's files of every
    partition in partition order (the rows a single spill file of the bucket would hold)
    permuted with a generator keyed by (seed, split, kind, bucket); validation and test
    rows in order, a chunk at a time. A cutter writes them to
    ``layout_dir/shards/<split>-<kind>-<n>.parquet``.

    ``spilled`` must hold the index of every input partition. Shard names are fixed, so
    a rerun overwrites what a crashed run left.
    """
    split, kind = check_stream(stream)
    parts = sorted(spilled, key=lambda s: s.part_index)
    cutter = _Cutter(storage, layout_dir, split, kind, params, geometry.rows_per_shard)
    feed = _feed_shuffled if split == "train" else _feed_in_order
    for rows in feed(spill, parts, stream, params):
        cutter.feed(rows)
        if progress is not None:
            progress("write shards", rows.num_rows)
    cutter.close()
    return StreamResult(stream, cutter.rows_total, cutter.written)


def _feed_shuffled(
    spill: Spill, parts: Sequence[SpilledPart], stream: str, params: ShardParams
) -> Iterator[pa.Table]:
    """Training rows: bucket by bucket, the bucket's files of every partition in partition
    order, permuted with a generator keyed by (seed, split, kind, bucket)."""
    split, kind = check_stream(stream)
    for bucket in sorted({b for s in parts for b in s.files.get(stream, ())}):
        pieces = [spill.read(spill.file_name(s.part_index, stream, bucket))
                  for s in parts if s.has(stream, bucket)]
        table = pieces[0] if len(pieces) == 1 else pa.concat_tables(pieces)
        del pieces
        rng = np.random.default_rng([params.seed, SPLIT_CODES[split], KIND_CODES[kind], bucket])
        permuted = table.take(pa.array(rng.permutation(table.num_rows)))
        del table  # not held while the cutter writes the permuted copy
        yield permuted


def _feed_in_order(
    spill: Spill, parts: Sequence[SpilledPart], stream: str, params: ShardParams
) -> Iterator[pa.Table]:
    """Validation and test rows keep their order and need no bucket in memory: a chunk at
    a time, so memory does not grow with the split's size."""
    for s in parts:
        if s.has(stream, 0):
            yield from spill.chunks(spill.file_name(s.part_index, stream, 0), _CHUNK_ROWS)


def collect_streams(results: Iterable[StreamResult], schema: pa.Schema) -> ShardResult:
    """The layout's shards from its streams' results, in :data:`STREAMS` order whatever
    order they finished in, so the manifest does not depend on timing. Empty streams
    write no shards and are left out of the row counts."""
    out = ShardResult(schema=schema)
    for r in sorted(results, key=lambda r: STREAMS.index(r.stream)):
        if r.rows:
            out.shards.extend(r.shards)
            out.rows_by_split_and_kind[r.stream] = r.rows
    return out


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
) -> ShardResult:
    """Run both passes and write every shard under ``layout_dir/shards/``, spilling into
    a temporary local folder (under ``spill_dir``) that is removed afterwards."""
    schema = layout_schema(storage, parts, cols)
    geometry = shard_geometry(sum(p.rows for p in parts), schema, params)
    tmp = None
    spill: Spill
    if fits_in_memory(sum(p.rows for p in parts), schema, params):
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
                              progress)

        # The (split, kind) streams are independent; two at a time overlap one stream's
        # Parquet encoding with another's reading and permuting (Arrow releases the GIL).
        with ThreadPoolExecutor(max_workers=2, thread_name_prefix="fae-shards") as pool:
            results = list(pool.map(cut, streams_of(parts)))
        return collect_streams(results, schema)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


class _Cutter:
    """Writes a stream of rows as shards of whole minibatches (one row group each).

    Row groups are written as soon as a whole minibatch is there, so memory holds less
    than one minibatch of pending rows besides the table being fed, whatever the shard
    size. Only the stream's very last minibatch may be short.
    """

    def __init__(
        self,
        storage: Storage,
        layout_dir: tuple[str, ...],
        split: str,
        kind: str,
        params: ShardParams,
        rows_per_shard: int,
    ) -> None:
        self.storage = storage
        self.layout_dir = layout_dir
        self.split = split
        self.kind = kind
        self.params = params
        self.rows_per_shard = rows_per_shard
        self.pending: pa.Table | None = None  # fewer rows than one minibatch
        self.rows_total = 0
        self.written: list[WrittenShard] = []
        self._file: Any = None
        self._writer: pq.ParquetWriter | None = None
        self._shard_rows = 0

    def feed(self, table: pa.Table) -> None:
        self.rows_total += table.num_rows
        data = table if self.pending is None else pa.concat_tables([self.pending, table])
        batch = self.params.batch_size
        offset = 0
        while data.num_rows - offset >= batch:
            room = self.rows_per_shard - self._shard_rows
            rows = min(room, (data.num_rows - offset) // batch * batch)
            self._write(data.slice(offset, rows))
            offset += rows
        self.pending = data.slice(offset) if offset < data.num_rows else None

    def close(self) -> list[WrittenShard]:
        if self.pending is not None:
            self._write(self.pending)  # the stream's last, short minibatch
            self.pending = None
        if self._writer is not None:
            self._finish_shard()
        return self.written

    def _name(self) -> str:
        return f"{self.split}-{self.kind}-{len(self.written):05d}.parquet"

    def _write(self, rows: pa.Table) -> None:
        if self._writer is None:
            # A plain write: shards are committed by the manifest, not one by one.
            self._file = self.storage.open_write(*self.layout_dir, "shards", self._name())
            self._writer = pq.ParquetWriter(
                self._file, rows.schema, compression=self.params.compression,
                use_dictionary=False, write_statistics=False,
            )
        try:
            self._writer.write_table(rows, row_group_size=self.params.batch_size)
        except BaseException:
            self._close_file()
            raise
        self._shard_rows += rows.num_rows
        if self._shard_rows >= self.rows_per_shard:
            self._finish_shard()

    def _close_file(self) -> None:
        writer, f = self._writer, self._file
        self._writer = self._file = None
        try:
            if writer is not None:
                writer.close()
        finally:
            f.close()

    def _finish_shard(self) -> None:
        self._close_file()
        rows, self._shard_rows = self._shard_rows, 0
        rel = f"shards/{self._name()}"
        batch = self.params.batch_size
        batches = math.ceil(rows / batch)
        self.written.append(
            WrittenShard(
                path=rel,
                split=self.split,
                kind=self.kind,
                rows=rows,
                batches=batches,
                bytes=int(self.storage.fs.size(self.storage.path(*self.layout_dir, rel))),
                sha256=self.storage.sha256(*self.layout_dir, rel),
                last_batch_rows=rows - (batches - 1) * batch,
            )
        )
