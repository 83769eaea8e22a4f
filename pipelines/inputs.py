"""What a layout is made of: its parameters, its input partitions and their split.

:class:`LayoutParams` is the one definition of a layout's parameters (the CLI options,
the DAG Params and the manifest's ``params`` come from it); :func:`resolve_inputs` finds
the committed partitions, decides train/val/test and, for Taobao, builds the TBSM samples.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import polars as pl

from fae_data import manifest as mf
from fae_data import schema
from fae_data.errors import BackendError, InputError, StorageError
from fae_data.partition import (
    INGESTED_DIR,
    check_name,
    name_order,
    partition_damage,
    partition_dir,
    read_marker,
)
from fae_data.plan import parse_budget
from fae_data.plan_budget import DTYPE_BYTES
from fae_data.shard import InputPart, LayoutColumns
from fae_data.storage import Storage
from fae_data.taobao import SampleParams, build_samples
from fae_data.vocab import VocabParams

log = logging.getLogger(__name__)

SHARD_COMPRESSIONS = ("lz4", "none", "zstd", "snappy")

Step = Callable[[str], None]


@dataclass(frozen=True)
class LayoutParams:
    """Every parameter of a layout; the CLI options, the DAG Params and the manifest's
    ``params`` are all produced from this one definition."""

    dataset: str = "criteo"
    partitions: tuple[str, ...] = ()  # empty: every ingested partition, sorted by name
    budget: str = "256MiB"
    embedding_dim: int = 16
    table_dims: tuple[tuple[str, int], ...] = ()  # per-table overrides of embedding_dim
    dtype: str = "float32"
    optimizer_slots: int = 0
    batch_size: int = 2048
    sampling_rate: float = 1.0
    seed: int = 0
    min_count: int = 1
    max_rows: int | None = None
    val: tuple[str, ...] = ()  # explicit val partitions (default: first half of the last)
    test: tuple[str, ...] = ()  # explicit test partitions (default: second half of the last)
    shard_bytes: int = 256 << 20
    shard_compression: str = "lz4"  # Parquet codec of the shards
    history_length: int = schema.TAOBAO_HISTORY_LENGTH  # Taobao samples only
    negatives: int = 1  # Taobao: negative samples per positive

    def __post_init__(self) -> None:
        if self.dtype not in DTYPE_BYTES:
            raise InputError(f"dtype {self.dtype!r} unknown: use one of {', '.join(DTYPE_BYTES)}")
        check_name(self.dataset, "dataset")
        for what, names in (("partition", self.partitions), ("val partition", self.val),
                            ("test partition", self.test)):
            for n in names:
                check_name(n, what)
            twice = sorted({n for n in names if names.count(n) > 1})
            if twice:  # a partition listed twice would have its rows laid out twice
                raise InputError(f"{what} {twice[0]!r} is given more than once")
        if self.embedding_dim < 1:
            raise InputError(f"embedding dims must be >= 1, found {self.embedding_dim}")
        for table, dim in self.table_dims:
            if not table:
                raise InputError(f"per-table dim {table}={dim}: the table name is missing")
            if dim < 1:
                raise InputError(f"embedding dims must be >= 1, found {dim} for table {table}")
        tables = [t for t, _ in self.table_dims]
        if len(set(tables)) != len(tables):
            raise InputError(f"per-table dims name a table twice: {', '.join(tables)}")
        if not 0 <= self.seed < 2**63:
            raise InputError(f"seed ({self.seed}) must be in [0, 2**63)")
        if self.optimizer_slots < 0:
            raise InputError(f"optimizer_slots ({self.optimizer_slots}) must be >= 0")
        if self.batch_size < 1:
            raise InputError(f"batch_size ({self.batch_size}) must be >= 1")
        if not 0.0 < self.sampling_rate <= 1.0:
            raise InputError(f"sampling_rate ({self.sampling_rate}) must be in (0, 1]")
        if self.shard_compression not in SHARD_COMPRESSIONS:
            raise InputError(f"shard compression {self.shard_compression!r} unknown: use one "
                             f"of {', '.join(SHARD_COMPRESSIONS)}")
        VocabParams(self.min_count, self.max_rows)
        parse_budget(self.budget)

    @property
    def budget_bytes(self) -> int:
        return parse_budget(self.budget)

    def dim_of(self, table: str) -> int:
        return dict(self.table_dims).get(table, self.embedding_dim)


@dataclass(frozen=True)
class Inputs:
    """The resolved input partitions of a layout and how they split."""

    kind: str
    columns: LayoutColumns
    parts: tuple[InputPart, ...]
    refs: tuple[mf.PartitionRef, ...]
    split: dict[str, Any]
    rows_in: int  # lines read by ingest, rejects included
    rows_rejected: int

    @property
    def train_parts(self) -> list[InputPart]:
        return [p for p in self.parts if any(s == "train" for s, _, _ in p.ranges)]


# --- inputs ---------------------------------------------------------------------------


def layout_columns(kind: str) -> LayoutColumns:
    if kind == "criteo":
        return LayoutColumns(
            schema.CRITEO_LABEL, schema.CRITEO_DENSE, {c: c for c in schema.CRITEO_SPARSE}
        )
    if kind == "taobao":
        # TBSM: the target item and the history items look up one item table, the target
        # category and the history categories one category table.
        return LayoutColumns(
            schema.TAOBAO_LABEL,
            (),
            {
                schema.TAOBAO_USER: schema.TAOBAO_USER,
                schema.TAOBAO_ITEM: schema.TAOBAO_ITEM,
                schema.TAOBAO_CATEGORY: schema.TAOBAO_CATEGORY,
                schema.TAOBAO_HIST_ITEM: schema.TAOBAO_ITEM,
                schema.TAOBAO_HIST_CATEGORY: schema.TAOBAO_CATEGORY,
            },
        )
    raise InputError(f"layouts of kind {kind!r} are not supported")


def newest_uncommitted(storage: Storage, dataset: str, names: Sequence[str]
                       ) -> tuple[list[str], list[str]]:
    """Split ``names``, in partition order, into those to lay out and the newest ones
    without ``_partition.json``: days being ingested now, or whose first ingest was
    killed. They do not exist yet, and leaving them out lays out what was there before
    they arrived (the same split). A partition without its marker *before* a committed
    one is not left out: that is damage, and the layout refuses it with the remedy."""
    names = sorted(names, key=lambda n: (name_order(n), n))  # day_2 before day_10
    trailing: list[str] = []
    while names and read_marker(storage, dataset, names[-1]) is None:
        trailing.insert(0, names.pop())
    for n in trailing:
        log.warning("partition %r of dataset %r has no _partition.json yet (an ingest "
                    "running now, or a first ingest that was interrupted): left out; rerun "
                    "`fae ingest` on its source or remove the folder", n, dataset)
    return names, trailing


def resolve_inputs(storage: Storage, params: LayoutParams) -> Inputs:
    """Find the committed partitions and decide the train/val/test split."""
    names = list(params.partitions) or [  # folders only: a stray file is no partition
        n for n in storage.listdir(INGESTED_DIR, params.dataset)
        if storage.fs.isdir(storage.path(INGESTED_DIR, params.dataset, n))]
    # Numbers by value (day_2 before day_10), whatever order --partition gave: the
    # default split's last partition is the last day.
    names = sorted((n for n in names if not n.startswith(".")),
                   key=lambda n: (name_order(n), n))  # d_2 and d_02: by text after value
    if not names:
        others = [d for d in storage.listdir(INGESTED_DIR) if not d.startswith(".")
                  and d != params.dataset]
        hint = (f"; the root holds dataset(s) {', '.join(others)}: pass --dataset "
                f"{others[0]}" if others else "; run `fae ingest` first")
        raise InputError(
            f"{storage.display(INGESTED_DIR, params.dataset)}: no ingested partitions{hint}")
    if not params.partitions:
        names, _ = newest_uncommitted(storage, params.dataset, names)
    markers = {}
    for n in names:
        marker = read_marker(storage, params.dataset, n)
        if marker is None:
            raise InputError(
                f"partition {n!r} of dataset {params.dataset!r} is missing or incomplete "
                f"(no {storage.display(*partition_dir(params.dataset, n), '_partition.json')}: "
                "never ingested, or its ingest was interrupted; run `fae ingest` on its "
                "source, or remove the folder)"
            )
        damage = partition_damage(storage, partition_dir(params.dataset, n), marker)
        if damage is not None:
            raise InputError(
                f"partition {n!r} of dataset {params.dataset!r} is damaged ({damage}); run "
                f"`fae ingest` on its source ({marker['source']['url']}) again to repair it"
            )
        markers[n] = marker
    if not names:
        raise InputError(
            f"{storage.display(INGESTED_DIR, params.dataset)}: no committed partitions (every "
            "folder lacks its _partition.json); run `fae ingest` first")
    kinds = {m["kind"] for m in markers.values()}
    if len(kinds) != 1:
        raise InputError(f"partitions of dataset {params.dataset!r} mix kinds {sorted(kinds)}")
    kind = kinds.pop()
    split = _split(names, params)
    parts, refs = [], []
    for n in names:
        m = markers[n]
        rows = int(m["rows_ok"])
        ranges = _ranges(n, rows, split)
        path = "/".join((*partition_dir(params.dataset, n), m["data"]))
        parts.append(InputPart(n, path, rows, tuple(ranges)))
        refs.append(mf.PartitionRef(n, path, rows, m["source"]["sha256"]))
    columns = layout_columns(kind)
    unknown = sorted(set(dict(params.table_dims)) - set(columns.sparse.values()))
    if unknown:
        raise InputError(f"per-table dim for {unknown[0]!r}: dataset {params.dataset!r} has no "
                         f"such table (its tables: {', '.join(sorted(set(columns.sparse.values())))})")
    if kind == "taobao":
        parts = _taobao_samples(storage, params, parts, refs)
    if sum(p.rows for p in parts) == 0:
        raise InputError(f"dataset {params.dataset!r}: the selected partitions hold zero rows")
    if not any(s == "train" and end > start for p in parts for s, start, end in p.ranges):
        raise InputError(f"dataset {params.dataset!r}: no training rows in "
                         f"{', '.join(split['train']) or 'the training partitions'} (the "
                         "vocabularies are built from them)")
    return Inputs(
        kind, columns, tuple(parts), tuple(refs), split,
        rows_in=sum(int(m["rows_in"]) for m in markers.values()),
        rows_rejected=sum(int(m["rows_rejected"]) for m in markers.values()),
    )


SAMPLES_DIR = "samples"
_PART_COLUMN = "__partition"


def _taobao_samples(
    storage: Storage, params: LayoutParams, parts: list[InputPart], refs: list[mf.PartitionRef]
) -> list[InputPart]:
    """Build TBSM samples from the behaviour log, one sample file per source partition.

    A sample belongs to the partition of its target event (so the split by partition
    means the same as for Criteo), but its history may reach into earlier partitions,
    which is why all selected partitions are read together. The whole selected log is
    held in memory here (100M events of the full Taobao log need ~10 GB).
    """
    sp = SampleParams(history_length=params.history_length, negatives=params.negatives,
                      seed=params.seed)
    names = [p.name for p in parts]
    split = _split(names, params)
    train = [i for i, name in enumerate(names) if name in split["train"]]
    # Training negatives come from the training partitions (the key says which).
    key = _key([r.sha256 for r in refs], {**asdict(sp), "negative_pool": split["train"]})
    folder = (SAMPLES_DIR, params.dataset, key)
    marker = (*folder, "_samples.json")
    if storage.exists(*marker) and (damage := _samples_damage(storage, folder, parts)):
        log.warning("%s: %s; building the samples again", storage.display(*folder), damage)
        storage.remove(*marker)
    if not storage.exists(*marker):
        frames = [
            _scan(storage, p).with_columns(pl.lit(i, pl.UInt16).alias(_PART_COLUMN))
            for i, p in enumerate(parts)
        ]
        samples = build_samples(pl.concat(frames), sp, carry=_PART_COLUMN, train=train)
        rows = {}
        for i, p in enumerate(parts):
            mine = samples.filter(pl.col(_PART_COLUMN) == i).drop(_PART_COLUMN)
            with storage.open_atomic(*folder, f"{p.name}.parquet") as f:
                mine.write_parquet(f)
            rows[p.name] = mine.height
        storage.write_json_atomic({"params": asdict(sp), "rows": rows}, *marker)
    rows = storage.read_json(*marker)["rows"]
    return [
        InputPart(p.name, "/".join((*folder, f"{p.name}.parquet")), int(rows[p.name]),
                  tuple(_ranges(p.name, int(rows[p.name]), split)))
        for p in parts
    ]


def _samples_damage(storage: Storage, folder: tuple[str, ...], parts: list[InputPart]
                    ) -> str | None:
    """Why the cached samples in ``folder`` cannot be used (an unreadable marker, a sample
    file missing, unreadable or of another row count than the marker says), or None.
    Footers only: the same check ingest makes of a committed partition."""
    try:
        rows = storage.read_json(*folder, "_samples.json")["rows"]
        for p in parts:
            meta = storage.parquet_metadata(*folder, f"{p.name}.parquet")
            if meta.num_rows != int(rows[p.name]):
                return f"{p.name}.parquet holds {meta.num_rows} rows, the marker says {rows[p.name]}"
    except BackendError:
        raise  # the store cannot be reached: the cache may be fine
    except (StorageError, KeyError, TypeError, ValueError) as exc:
        return str(exc) or type(exc).__name__
    return None


def _split(names: list[str], params: LayoutParams) -> dict[str, Any]:
    if params.val or params.test:
        unknown = sorted((set(params.val) | set(params.test)) - set(names))
        if unknown:
            raise InputError(f"val/test partitions {unknown} are not among {names}")
        both = sorted(set(params.val) & set(params.test))
        if both:
            raise InputError(f"partitions {both} are given as both validation and test; "
                             "a partition belongs to one split")
        train = [n for n in names if n not in params.val and n not in params.test]
        if not train:
            raise InputError("no training partitions left after taking val and test")
        return {"mode": "explicit", "train": train, "val": list(params.val),
                "test": list(params.test)}
    if len(names) < 2:
        raise InputError(
            f"the default split needs at least 2 partitions (train days + a last day halved "
            f"into val/test), found {len(names)}; add partitions or pass --val/--test"
        )
    return {"mode": "last-day-halves", "train": names[:-1], "val": [names[-1]],
            "test": [names[-1]]}


def _ranges(name: str, rows: int, split: dict[str, Any]) -> list[tuple[str, int, int]]:
    if split["mode"] == "last-day-halves" and name in split["val"]:
        half = rows // 2
        return [("val", 0, half), ("test", half, rows)]
    for s in ("train", "val", "test"):
        if name in split[s]:
            return [(s, 0, rows)]
    return []


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _scan(storage: Storage, part: InputPart) -> pl.LazyFrame:
    if storage.is_local:
        return pl.scan_parquet(storage.path(part.path))
    with storage.fs.open(storage.path(part.path), "rb") as f:
        return pl.read_parquet(f).lazy()


