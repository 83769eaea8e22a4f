"""Reading a raw source as newline-terminated blocks, parsed on a small thread pool.

Ingest reads a source once, and that one pass must checksum it, decompress it and feed
the parser while the previous blocks are being written, in memory bounded by the block
size whatever the file size. This module holds that reading side: the hashing stream
wrapper, gzip detection, and the reader thread and worker pool that yield processed
blocks in file order. What a block becomes is :mod:`fae_data.blocks`; where it is written,
:mod:`fae_data.ingest`.
"""

from __future__ import annotations

import gzip
import hashlib
import threading
import zlib
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from queue import Full, Queue
from typing import IO, TYPE_CHECKING

import pyarrow as pa

from fae_data.blocks import _process_block
from fae_data.errors import InputError
from fae_data.rawlines import read_blocks
from fae_data.schema import RawFormat
from fae_data.storage import backend_errors

if TYPE_CHECKING:
    from fae_data.ingest import IngestParams

_GZIP_MAGIC = b"\x1f\x8b"
#: Blocks being parsed at once (the machine this targets has 2 cores).
_IN_FLIGHT = 2


class _HashingReader:
    """A read-only stream wrapper that hashes and counts the bytes passing through."""

    def __init__(self, raw: IO[bytes]) -> None:
        self._raw = raw
        self.hash = hashlib.sha256()
        self.count = 0

    def read(self, n: int = -1) -> bytes:
        data = self._raw.read(n)
        self.hash.update(data)
        self.count += len(data)
        return data

    def readable(self) -> bool:
        return True


def _decompressed(raw: IO[bytes], hashing: _HashingReader) -> IO[bytes]:
    """The text stream of a source: gzip is recognised by its magic bytes, not its name."""
    head = raw.read(2)
    raw.seek(0)
    if head == _GZIP_MAGIC:
        return gzip.GzipFile(fileobj=hashing, mode="rb")  # type: ignore[arg-type]
    return hashing  # type: ignore[return-value]


def _processed_blocks(
    stream: IO[bytes], source: str, fmt: RawFormat, params: IngestParams
) -> Iterator[tuple[pa.Table, pa.Table, int]]:
    """Process blocks on a small thread pool, yielding results in file order.

    A reader thread reads (and, through the hashing wrapper, checksums) the source while
    the pool parses and types earlier blocks and the caller writes finished ones. Arrow,
    numpy, hashlib and file I/O release the GIL, so the stages overlap. At most about
    ``2 * _IN_FLIGHT`` blocks are held at once, which bounds memory whatever the file size.
    """
    blocks: Queue[tuple[bytes, int] | BaseException | None] = Queue(maxsize=_IN_FLIGHT)
    stop = threading.Event()

    def put(item: tuple[bytes, int] | BaseException | None) -> bool:
        # Every put gives up once the consumer has stopped: a blocking put of the end
        # marker into a full queue nobody drains would hang the consumer's join forever.
        while not stop.is_set():
            try:
                blocks.put(item, timeout=0.1)
                return True
            except Full:
                continue
        return False

    def read() -> None:
        offset = 0
        try:
            for block in _blocks(stream, source, params.block_bytes):
                item = (block, offset)
                offset += len(block)
                if not put(item):
                    return
            put(None)
        except BaseException as exc:  # handed to the consuming thread
            put(exc)

    reader = threading.Thread(target=read, name="fae-ingest-read", daemon=True)
    reader.start()
    pending: deque[Future[tuple[pa.Table, pa.Table, int]]] = deque()
    try:
        with ThreadPoolExecutor(_IN_FLIGHT, thread_name_prefix="fae-ingest") as pool:
            try:
                while (item := blocks.get()) is not None:
                    if isinstance(item, BaseException):
                        raise item
                    pending.append(pool.submit(_process_block, *item, source, fmt))
                    if len(pending) >= _IN_FLIGHT:
                        yield pending.popleft().result()
                while pending:
                    yield pending.popleft().result()
            finally:
                for fut in pending:
                    fut.cancel()
    finally:
        stop.set()
        reader.join()


def _blocks(stream: IO[bytes], source: str, block_bytes: int) -> Iterator[bytes]:
    """The newline-ended blocks of the decompressed source, a leading UTF-8 BOM dropped
    (else the first record is refused for its non-ASCII bytes, and a header line goes
    unrecognised); read errors as messages naming the source."""
    try:
        with backend_errors(source):
            yield from read_blocks(stream, block_bytes, skip_bom=True)
    except (EOFError, gzip.BadGzipFile, zlib.error) as exc:
        raise InputError(
            f"{source}: corrupt or truncated gzip stream ({exc}); re-copy the file. "
            "Nothing was written for this partition."
        ) from None
