"""What the two shard passes share: parameters, geometry, stream names, written shards.

Pass 1 (:mod:`fae_data.shard`) and pass 2 (:mod:`fae_data.cutter`) both import these
from here, so that :mod:`fae_data.shard` can import pass 2 (and re-export it with these)
without an import cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import pyarrow as pa

from fae_data.errors import InputError

SPLIT_CODES = {"train": 0, "val": 1, "test": 2}
KIND_CODES = {"hot": 0, "cold": 1, "all": 2}
#: Every (split, kind) stream, in the order their shards are listed in a manifest.
STREAMS = ("train/hot", "train/cold", "val/all", "test/all")
_CHUNK_ROWS = 262_144
#: The folder (inside the layout folder) that a layout's first build writes its shards to.
SHARD_DIR = "shards"


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


@dataclass(frozen=True)
class ShardGeometry:
    """How a layout's rows are bucketed and cut; every pass-1 and pass-2 task must use
    the same values, so they are derived once from the layout's total row count."""

    buckets: int  # shuffle buckets per (split, kind) stream
    rows_per_shard: int  # a whole number of minibatches


def check_stream(stream: str) -> tuple[str, str]:
    """``"train/hot"`` -> ``("train", "hot")``; anything but one of :data:`STREAMS` is an
    InputError."""
    if stream not in STREAMS:
        raise InputError(f"stream {stream!r} unknown: use one of {', '.join(STREAMS)}")
    split, kind = stream.split("/")
    return split, kind
