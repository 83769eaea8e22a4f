"""Pass 2 of the shard stage: shuffle one (split, kind) stream and cut it into shards.

:func:`cut_stream` reads one bucket at a time (its files of every partition, in partition
order), permutes it (seeded) and feeds a cutter that writes Parquet shards whose row groups
are exactly one minibatch of ``batch_size`` rows; only the very last batch of a stream may
be short, and the manifest records it. Random bucket assignment (pass 1,
:func:`fae_data.shard.spill_partition`) followed by an in-bucket permutation is a uniform
shuffle, and memory holds one bucket, not the data set. Validation and test rows keep
their order. :func:`collect_streams` gathers the streams' results in a fixed order.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fae_data.shard_types import (
    _CHUNK_ROWS,
    KIND_CODES,
    SHARD_DIR,
    SPLIT_CODES,
    STREAMS,
    ProgressFn,
    ShardGeometry,
    ShardParams,
    ShardResult,
    WrittenShard,
    check_stream,
)
from fae_data.spill import Spill, SpilledPart
from fae_data.storage import Storage


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
    shard_dir: str = SHARD_DIR,
) -> StreamResult:
    """Pass 2 for one stream: training rows bucket by bucket, each bucket's files of every
    partition in partition order (the rows a single spill file of the bucket would hold)
    permuted with a generator keyed by (seed, split, kind, bucket); validation and test
    rows in order, a chunk at a time. A cutter writes them to
    ``layout_dir/<shard_dir>/<split>-<kind>-<n>.parquet``.

    ``spilled`` must hold the index of every input partition. Shard names are fixed, so
    a rerun overwrites what a crashed run left. A rebuild of a published layout passes
    its own ``shard_dir``, so that the published shards stay readable until its manifest
    replaces theirs.
    """
    split, kind = check_stream(stream)
    parts = sorted(spilled, key=lambda s: s.part_index)
    cutter = _Cutter(storage, layout_dir, split, kind, params, geometry.rows_per_shard,
                     shard_dir)
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
        shard_dir: str = SHARD_DIR,
    ) -> None:
        self.storage = storage
        self.layout_dir = layout_dir
        self.shard_dir = shard_dir
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
            options = {"compression": self.params.compression, "use_dictionary": False,
                       "write_statistics": False}
            if self.storage.is_local:
                # A native path: Arrow writes without calling back into a Python file
                # object for every page (and without taking the GIL for it).
                self.storage.makedirs(*self.layout_dir, self.shard_dir)
                where = self.storage.path(*self.layout_dir, self.shard_dir, self._name())
                self._writer = pq.ParquetWriter(where, rows.schema, **options)
            else:
                self._file = self.storage.open_write(*self.layout_dir, self.shard_dir,
                                                     self._name())
                self._writer = pq.ParquetWriter(self._file, rows.schema, **options)
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
            if f is not None:
                f.close()

    def _finish_shard(self) -> None:
        self._close_file()
        rows, self._shard_rows = self._shard_rows, 0
        rel = f"{self.shard_dir}/{self._name()}"
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
