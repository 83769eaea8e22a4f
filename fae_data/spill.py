"""Where the shuffle's pass 1 leaves its rows, and how pass 2 finds them again.

A spill folder holds one Parquet file per (input partition, split, kind, bucket) and one
small JSON index per partition. The index is written last, atomically: it commits the
partition's files, so a partition is either spilled (index present, every file it names
complete) or not, and a crashed attempt's files are overwritten by the rerun (the names
are fixed). The folder is a local temporary one for an in-process layout, or a folder
under the storage root (possibly ``s3://``) that separate tasks share.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import IO, Protocol

import pyarrow as pa
import pyarrow.parquet as pq

from fae_data.chunks import iter_chunks
from fae_data.storage import Storage

#: Spill files are short-lived and read once: fastest settings.
_SPILL_OPTIONS = {"compression": "none", "use_dictionary": False, "write_statistics": False}
#: Upload part size of an object-store spill file: a partition keeps one file per
#: (kind, bucket) open, and each buffers up to this much (s3's smallest part is 5 MiB).
_REMOTE_BLOCK_BYTES = 8 << 20


@dataclass(frozen=True)
class SpilledPart:
    """What pass 1 left for one partition: its index file, written last."""

    part_index: int
    name: str
    rows: int
    buckets: int  # the layout's bucket count, to catch a spill of another geometry
    files: dict[str, list[int]]  # stream -> buckets with a file, ascending

    def has(self, stream: str, bucket: int) -> bool:
        return bucket in self.files.get(stream, ())


@dataclass(frozen=True)
class SpillFolder:
    """A spill folder: ``folder`` under ``storage`` (``()`` for the storage root itself)."""

    storage: Storage
    folder: tuple[str, ...] = ()

    @staticmethod
    def file_name(part_index: int, stream: str, bucket: int) -> str:
        split, kind = stream.split("/")
        return f"{part_index:05d}-{split}-{kind}-{bucket:05d}.parquet"

    @staticmethod
    def index_name(part_index: int) -> str:
        return f"{part_index:05d}.json"

    def where(self, name: str) -> str:
        """``name`` in this folder, as a message shows it."""
        return self.storage.display(*self.folder, name)

    def read_index(self, part_index: int) -> SpilledPart | None:
        """The index of a finished partition, or None while it is not spilled."""
        name = self.index_name(part_index)
        if not self.storage.exists(*self.folder, name):
            return None
        raw = self.storage.read_json(*self.folder, name)
        return SpilledPart(**raw)

    def write_index(self, spilled: SpilledPart) -> None:
        self.storage.write_json_atomic(asdict(spilled), *self.folder,
                                       self.index_name(spilled.part_index))

    def writer(self, name: str, schema: pa.Schema) -> SpillWriter:
        """A Parquet writer of one spill file (committed later, by the index)."""
        if self.storage.is_local:  # a native path: no Python file object in between
            self.storage.makedirs(*self.folder)
            return SpillWriter(pq.ParquetWriter(self.storage.path(*self.folder, name), schema,
                                                **_SPILL_OPTIONS), None)
        f = self.storage.open_write(*self.folder, name, block_size=_REMOTE_BLOCK_BYTES)
        return SpillWriter(pq.ParquetWriter(f, schema, **_SPILL_OPTIONS), f)

    def read(self, name: str) -> pa.Table:
        return self.storage.read_table(*self.folder, name)

    def chunks(self, name: str, rows: int) -> Iterator[pa.Table]:
        """The rows of one spill file, ``rows`` at a time (bounded memory)."""
        yield from iter_chunks(self.storage, "/".join((*self.folder, name)), rows)


@dataclass
class SpillWriter:
    writer: pq.ParquetWriter
    file: IO[bytes] | None  # the object-store file under the writer, closed after it

    def write(self, table: pa.Table) -> None:
        self.writer.write_table(table)

    def close(self) -> None:
        self.writer.close()
        if self.file is not None:
            self.file.close()


class Spill(Protocol):
    """Where pass 1 leaves rows for pass 2: a :class:`SpillFolder` or a :class:`MemorySpill`."""

    def file_name(self, part_index: int, stream: str, bucket: int) -> str: ...
    def index_name(self, part_index: int) -> str: ...
    def where(self, name: str) -> str: ...
    def read_index(self, part_index: int) -> SpilledPart | None: ...
    def write_index(self, spilled: SpilledPart) -> None: ...
    def writer(self, name: str, schema: pa.Schema) -> SpillWriter | MemoryWriter: ...
    def read(self, name: str) -> pa.Table: ...
    def chunks(self, name: str, rows: int) -> Iterator[pa.Table]: ...


@dataclass
class MemorySpill:
    """A spill kept in memory, for a layout small enough that all its rows fit the
    shuffle memory (one bucket): the same contract as :class:`SpillFolder` without the
    write and re-read. ``read`` hands a file's rows over and forgets them, so memory is
    released stream by stream."""

    tables: dict[str, list[pa.Table]] = field(default_factory=dict)
    indexes: dict[int, SpilledPart] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    file_name = staticmethod(SpillFolder.file_name)
    index_name = staticmethod(SpillFolder.index_name)

    def where(self, name: str) -> str:
        return f"<memory>/{name}"

    def read_index(self, part_index: int) -> SpilledPart | None:
        return self.indexes.get(part_index)

    def write_index(self, spilled: SpilledPart) -> None:
        self.indexes[spilled.part_index] = spilled

    def writer(self, name: str, schema: pa.Schema) -> MemoryWriter:
        with self._lock:
            pieces = self.tables.setdefault(name, [])
        return MemoryWriter(pieces)

    def read(self, name: str) -> pa.Table:
        with self._lock:
            pieces = self.tables.pop(name)
        return pa.concat_tables(pieces)

    def chunks(self, name: str, rows: int) -> Iterator[pa.Table]:
        table = self.read(name)
        for offset in range(0, table.num_rows, rows):
            yield table.slice(offset, rows)


@dataclass
class MemoryWriter:
    pieces: list[pa.Table]

    def write(self, table: pa.Table) -> None:
        self.pieces.append(table)

    def close(self) -> None:
        pass
