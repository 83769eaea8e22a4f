"""Stages of a layout: counts -> vocab -> plan -> shards -> publish (and all in one go).

Every stage is idempotent and keyed by content: partial counts by the partition checksum
and sampling parameters, vocabularies by the counts they merge and their parameters, the
layout by :func:`fae_data.manifest.layout_id`. A rerun with the same inputs finds the
finished product and returns it; a crash leaves only unreferenced temporary files, which
the rerun removes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from fae_data import __version__, schema
from fae_data import manifest as mf
from fae_data.chunks import iter_chunks
from fae_data.counts import (
    COUNT_SCHEMA,
    TableCounts,
    count_tables,
    from_frame,
    merge_tables,
    sample_mask,
    sample_rows,
    to_frame,
)
from fae_data.errors import InputError, StorageError
from fae_data.ingest import INGESTED_DIR, partition_dir, read_marker
from fae_data.plan import (
    PlanParams,
    TableSpec,
    default_sweep_budgets,
    knee_index,
    parse_budget,
    plan_hot_rows,
    sweep_budgets,
)
from fae_data.shard import (
    InputPart,
    LayoutColumns,
    ShardParams,
    ShardResult,
    encode_chunk,
    write_shards,
)
from fae_data.storage import Storage
from fae_data.taobao import SampleParams, build_samples
from fae_data.vocab import Encoder, VocabParams, id_counts, rank_values

log = logging.getLogger(__name__)

COUNTS_DIR = "counts"
VOCAB_DIR = "vocab"
DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2, "float64": 8}
SHARD_COMPRESSIONS = ("lz4", "none", "zstd", "snappy")
#: Rows sampled to predict the hot-input fraction of a budget: its standard error is at
#: most 0.5/sqrt(n), 0.22 percentage points here, well below what a budget choice needs.
_PLAN_SAMPLE_ROWS = 50_000
_COUNT_CHUNK_ROWS = 1_000_000

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
        if self.embedding_dim < 1 or any(d < 1 for _, d in self.table_dims):
            raise InputError(f"embedding dims must be >= 1, found {self.embedding_dim}")
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


@dataclass
class LayoutResult:
    layout_id: str
    status: str  # "published" | "unchanged"
    manifest_path: str
    manifest: mf.Manifest

    def to_dict(self) -> dict[str, Any]:
        return {
            "layout_id": self.layout_id,
            "status": self.status,
            "manifest": self.manifest_path,
            "stats": self.manifest.stats,
            "tables": [asdict(t) for t in self.manifest.tables],
            "shards": len(self.manifest.shards),
        }


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


def resolve_inputs(storage: Storage, params: LayoutParams) -> Inputs:
    """Find the committed partitions and decide the train/val/test split."""
    names = list(params.partitions) or storage.listdir(INGESTED_DIR, params.dataset)
    names = [n for n in names if not n.startswith(".")]
    if not names:
        raise InputError(
            f"{storage.display(INGESTED_DIR, params.dataset)}: no ingested partitions; run "
            "`fae ingest` first"
        )
    markers = {}
    for n in names:
        marker = read_marker(storage, params.dataset, n)
        if marker is None:
            raise InputError(
                f"partition {n!r} of dataset {params.dataset!r} is missing or incomplete "
                f"(no {storage.display(*partition_dir(params.dataset, n), '_partition.json')})"
            )
        markers[n] = marker
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
    if kind == "taobao":
        parts = _taobao_samples(storage, params, parts, refs)
    if sum(p.rows for p in parts) == 0:
        raise InputError(f"dataset {params.dataset!r}: the selected partitions hold zero rows")
    return Inputs(
        kind, layout_columns(kind), tuple(parts), tuple(refs), split,
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
    key = _key([r.sha256 for r in refs], asdict(sp))
    folder = (SAMPLES_DIR, params.dataset, key)
    marker = (*folder, "_samples.json")
    if not storage.exists(*marker):
        frames = [
            _scan(storage, p).with_columns(pl.lit(i, pl.UInt16).alias(_PART_COLUMN))
            for i, p in enumerate(parts)
        ]
        samples = build_samples(pl.concat(frames), sp, carry=_PART_COLUMN)
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
                  tuple(_ranges(p.name, int(rows[p.name]), _split([q.name for q in parts], params))))
        for p in parts
    ]


def _split(names: list[str], params: LayoutParams) -> dict[str, Any]:
    if params.val or params.test:
        unknown = sorted(set(params.val) | set(params.test) - set(names))
        if unknown:
            raise InputError(f"val/test partitions {unknown} are not among {names}")
        train = [n for n in names if n not in params.val and n not in params.test]
        if not train:
            raise InputError("no training partitions left after taking val and test")
        return {"mode": "explicit", "train": train, "val": list(params.val),
                "test": list(params.test)}
    if len(names) < 2:
        raise InputError(
            f"the Criteo split needs at least 2 partitions (train days + a last day halved "
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


# --- counts ---------------------------------------------------------------------------


def _key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:16]


def counts_path(
    inputs: Inputs, part: InputPart, sampling_rate: float, seed: int
) -> tuple[str, ...]:
    """Where the partial counts of ``part`` live: keyed by its checksum, input file, rows,
    sampling parameters and the counted columns."""
    ref = next(r for r in inputs.refs if r.name == part.name)
    key = _key(ref.sha256, part.path, part.rows, sampling_rate, seed, dict(inputs.columns.sparse))
    return (COUNTS_DIR, ref.path.split("/")[1], part.name, f"counts-{key}.parquet")


def run_counts(
    storage: Storage, inputs: Inputs, part: InputPart, sampling_rate: float, seed: int
) -> str:
    """Partial counts of one partition (skipped when already there). Returns its path."""
    rel = counts_path(inputs, part, sampling_rate, seed)
    if storage.exists(*rel):
        return "/".join(rel)
    partials: list[TableCounts] = []
    offset = 0
    columns = list(inputs.columns.sparse)
    for chunk in iter_chunks(storage, part.path, _COUNT_CHUNK_ROWS, columns):
        mask = sample_mask(chunk.num_rows, offset, sampling_rate, seed)
        offset += chunk.num_rows
        partials.append(count_tables(chunk, inputs.columns.sparse, mask))
        if len(partials) >= 4:  # keep memory at about one vocabulary's worth of counts
            partials = [merge_tables(partials)]
    counted = to_frame(merge_tables(partials))
    with storage.open_atomic(*rel) as f:
        counted.write_parquet(f)
    return "/".join(rel)


def _scan(storage: Storage, part: InputPart) -> pl.LazyFrame:
    if storage.is_local:
        return pl.scan_parquet(storage.path(part.path))
    with storage.fs.open(storage.path(part.path), "rb") as f:
        return pl.read_parquet(f).lazy()


def load_counts(storage: Storage, paths: Sequence[str]) -> TableCounts:
    """Read and merge partial count files (per table, so the merge key is one uint32).

    Files are merged one at a time into the running total, so memory holds the total and
    one file, not every file at once.
    """
    merged: TableCounts = {}
    for p in paths:
        try:
            with storage.fs.open(storage.path(p), "rb") as f:
                frame = pl.read_parquet(f)
        except Exception as exc:  # noqa: BLE001 - any decode failure means a corrupt file
            raise StorageError(
                f"{storage.display(p)}: corrupt partial count file ({exc}); delete it and rerun"
            ) from None
        if frame.schema != pl.Schema(COUNT_SCHEMA):
            raise StorageError(
                f"{storage.display(p)}: partial counts have schema {frame.schema}, expected "
                f"{COUNT_SCHEMA}; delete the file and rerun"
            )
        partial = from_frame(frame)
        del frame
        merged = merge_tables([merged, partial]) if merged else partial
    return merged


# --- vocab ----------------------------------------------------------------------------


@dataclass
class Vocabs:
    tables: list[str]
    frames: dict[str, pl.DataFrame]
    counts: dict[str, np.ndarray]  # accesses per id (index = id)

    def encoders(self) -> dict[str, Encoder]:
        return {t: Encoder(self.frames[t]) for t in self.tables}


def run_vocab(
    storage: Storage, inputs: Inputs, count_paths: Sequence[str], params: LayoutParams
) -> Vocabs:
    merged = load_counts(storage, count_paths)
    vp = VocabParams(params.min_count, params.max_rows, params.sampling_rate)
    tables = list(dict.fromkeys(inputs.columns.sparse.values()))
    frames, counts = {}, {}
    for t in tables:
        table_counts = merged.get(t, pl.DataFrame(schema={"value": pl.UInt32, "count": pl.UInt64}))
        frames[t] = rank_values(table_counts, vp)
        counts[t] = id_counts(int(table_counts.get_column("count").sum() or 0), frames[t])
    return Vocabs(tables, frames, counts)


# --- plan -----------------------------------------------------------------------------


def table_specs(vocabs: Vocabs, params: LayoutParams) -> list[TableSpec]:
    return [TableSpec(t, vocabs.counts[t], params.dim_of(t)) for t in vocabs.tables]


def plan_sample(storage: Storage, inputs: Inputs, vocabs: Vocabs, seed: int) -> dict[str, np.ndarray]:
    """Row-wise largest id per table for a seeded sample of training rows.

    A row is hot under k iff, for every table, its largest id is below k_t; the planner
    evaluates the hot-input fraction of any budget on this sample.
    """
    parts = inputs.train_parts
    total = sum(p.rows for p in parts)
    rate = min(1.0, _PLAN_SAMPLE_ROWS / max(total, 1))
    encoders = vocabs.encoders()
    zero_k = {t: 0 for t in vocabs.tables}
    maxima: dict[str, list[np.ndarray]] = {t: [] for t in vocabs.tables}
    for part in parts:
        # streaming: the sampled rows are kept, not the whole partition first
        frame = sample_rows(_scan(storage, part), rate, seed).collect(engine="streaming")
        if frame.height == 0:
            continue
        table, _ = encode_chunk(frame.to_arrow(), inputs.columns, encoders, zero_k)
        per_table: dict[str, np.ndarray] = {}
        for col, t in inputs.columns.sparse.items():
            arr = table.column(col).combine_chunks()
            if pa.types.is_list(arr.type):  # lists: the largest element per row
                flat = arr.flatten().to_numpy()
                offs = np.asarray(arr.offsets)
                row_max = np.zeros(len(arr), dtype=np.uint32)
                nonempty = offs[1:] > offs[:-1]
                if flat.size:
                    row_max[nonempty] = np.maximum.reduceat(flat, offs[:-1][nonempty])
            else:
                row_max = arr.to_numpy()
            per_table[t] = np.maximum(per_table.get(t, row_max), row_max)
        for t in vocabs.tables:
            maxima[t].append(per_table[t])
    return {t: np.concatenate(v) if v else np.zeros(0, np.uint32) for t, v in maxima.items()}


def hot_fraction(sample: Mapping[str, np.ndarray], hot_rows: Mapping[str, int]) -> float:
    n = len(next(iter(sample.values()))) if sample else 0
    if n == 0:
        return 0.0
    hot = np.ones(n, dtype=bool)
    for t, row_max in sample.items():
        hot &= row_max < hot_rows[t]
    return float(hot.mean())


@dataclass
class PlanOutcome:
    plan: dict[str, Any]  # fae_data.plan.Plan.to_dict()
    sweep: list[dict[str, Any]]
    knee_budget_bytes: int | None
    predicted_hot_input_fraction: float
    sample_rows: int
    sampling: dict[str, Any] = field(default_factory=dict)


def run_plan(
    storage: Storage, inputs: Inputs, vocabs: Vocabs, params: LayoutParams, sweep: bool = True
) -> PlanOutcome:
    """Choose k_t under the budget, and (with ``sweep``) chart coverage over budgets."""
    specs = table_specs(vocabs, params)
    dtype_bytes = DTYPE_BYTES[params.dtype]
    pp = PlanParams(params.budget_bytes, dtype_bytes, params.optimizer_slots)
    plan = plan_hot_rows(specs, pp)
    sample = plan_sample(storage, inputs, vocabs, params.seed)
    n = len(next(iter(sample.values()))) if sample else 0
    predicted = hot_fraction(sample, plan.hot_rows)
    points: list[dict[str, Any]] = []
    knee = None
    if sweep:
        budgets = default_sweep_budgets(specs, dtype_bytes, params.optimizer_slots)
        swept = sweep_budgets(specs, pp, budgets, lambda k: hot_fraction(sample, k))
        points = [asdict(p) for p in swept]
        if len(swept) >= 3:
            # Hot-input fraction against the budget in bytes (linear): it saturates, and
            # the knee is where another byte starts to buy little.
            xs = [float(p.budget_bytes) for p in swept]
            ys = [p.hot_input_fraction or 0.0 for p in swept]
            knee = swept[knee_index(xs, ys, log_x=False)].budget_bytes
    return PlanOutcome(plan.to_dict(), points, knee, predicted, n,
                       _sampling_error(storage, inputs, vocabs, params, plan))


def _sampling_error(
    storage: Storage, inputs: Inputs, vocabs: Vocabs, params: LayoutParams, plan: Any
) -> dict[str, Any]:
    """How far a sampled profile may be from the exact one.

    With exact counts at hand (an earlier exact run over the same partitions), the two hot
    sets are compared value by value; otherwise the binomial standard error of the
    sampled access coverage is given.
    """
    if params.sampling_rate >= 1.0:
        return {"rate": 1.0, "exact": True}
    accesses = sum(int(c.sum()) for c in vocabs.counts.values())
    cov = plan.hot_access_coverage
    out: dict[str, Any] = {
        "rate": params.sampling_rate,
        "exact": False,
        "sampled_accesses": accesses,
        "coverage_stderr": float(np.sqrt(cov * (1 - cov) / max(accesses, 1))),
    }
    exact_paths = []
    for part in inputs.train_parts:
        rel = counts_path(inputs, part, 1.0, params.seed)
        if not storage.exists(*rel):
            return out
        exact_paths.append("/".join(rel))
    exact = run_vocab(storage, inputs, exact_paths, replace(params, sampling_rate=1.0))
    dtype_bytes = DTYPE_BYTES[params.dtype]
    exact_plan = plan_hot_rows(table_specs(exact, params),
                               PlanParams(params.budget_bytes, dtype_bytes, params.optimizer_slots))
    same = total = 0
    for t in vocabs.tables:
        sampled_hot = set(vocabs.frames[t].head(max(plan.hot_rows[t] - 1, 0))["value"].to_list())
        exact_hot = set(exact.frames[t].head(max(exact_plan.hot_rows[t] - 1, 0))["value"].to_list())
        same += len(sampled_hot & exact_hot)
        total += len(exact_hot)
    out.update({
        "exact_hot_access_coverage": exact_plan.hot_access_coverage,
        "hot_set_overlap": same / total if total else 1.0,
    })
    return out


# --- shards and publish ---------------------------------------------------------------


def manifest_params(params: LayoutParams, split: dict[str, Any]) -> dict[str, Any]:
    return {
        "budget_bytes": params.budget_bytes,
        "embedding_dim": params.embedding_dim,
        "table_dims": dict(params.table_dims),
        "dtype": params.dtype,
        "optimizer_slots": params.optimizer_slots,
        "batch_size": params.batch_size,
        "sampling_rate": params.sampling_rate,
        "seed": params.seed,
        "min_count": params.min_count,
        "max_rows": params.max_rows,
        "shard_bytes": params.shard_bytes,
        "shard_compression": params.shard_compression,
        "history_length": params.history_length,
        "negatives": params.negatives,
        "split": split,
    }


def compute_layout_id(inputs: Inputs, params: LayoutParams) -> str:
    return mf.layout_id(
        [f"{r.name}:{r.sha256}:{r.rows}" for r in inputs.refs],
        {**manifest_params(params, inputs.split), "dataset": params.dataset, "kind": inputs.kind},
    )


def existing_layout(storage: Storage, lid: str) -> mf.Manifest | None:
    if not storage.exists(*mf.layout_folder(lid), mf.MANIFEST):
        return None
    manifest, _ = mf.load(storage.url.rstrip("/") + f"/{mf.LAYOUTS_DIR}/{lid}/{mf.MANIFEST}")
    return manifest


def profile_layout(
    storage: Storage,
    inputs: Inputs,
    params: LayoutParams,
    *,
    sweep: bool = True,
    step: Step = lambda _m: None,
    progress: Callable[[str, int], None] | None = None,
) -> tuple[Vocabs, PlanOutcome]:
    """counts (cached per partition) -> vocab -> plan: what every way of running a layout
    does before its shards."""
    step("counting accesses")
    count_paths = []
    for part in inputs.train_parts:
        count_paths.append(run_counts(storage, inputs, part, params.sampling_rate, params.seed))
        if progress is not None:
            progress("count", part.rows)
    step("building vocabularies")
    vocabs = run_vocab(storage, inputs, count_paths, params)
    step("planning hot rows")
    return vocabs, run_plan(storage, inputs, vocabs, params, sweep=sweep)


def run_plan_only(root: str, params: LayoutParams, sweep: bool = True) -> PlanOutcome:
    """counts -> vocab -> plan without writing shards (``fae plan``)."""
    storage = Storage(root)
    return profile_layout(storage, resolve_inputs(storage, params), params, sweep=sweep)[1]


def shard_params(params: LayoutParams) -> ShardParams:
    """The shard pass's parameters of a layout (the in-process and the staged run must
    agree on them to write the same bytes)."""
    return ShardParams(params.batch_size, params.shard_bytes, seed=params.seed,
                       compression=params.shard_compression)


def run_layout(
    root: str,
    params: LayoutParams,
    *,
    step: Step = lambda _m: None,
    progress: Callable[[str, int], None] | None = None,
    spill_dir: str | None = None,
    force: bool = False,
    fail_after_shards: bool = False,
) -> LayoutResult:
    """counts -> vocab -> plan -> shards -> publish in this process, skipping all of it
    when the layout with the same content hash is already published (unless ``force``).

    The shuffle spills into a local temporary folder (under ``spill_dir``); the same
    stages as separate, resumable tasks are :mod:`pipelines.layout_stages`.
    """
    storage = Storage(root)
    step("resolving partitions")
    inputs = resolve_inputs(storage, params)
    lid = compute_layout_id(inputs, params)
    folder = mf.layout_folder(lid)
    done = existing_layout(storage, lid)
    if done is not None and not force:
        return LayoutResult(lid, "unchanged", storage.display(*folder, mf.MANIFEST), done)

    vocabs, planned = profile_layout(storage, inputs, params, step=step, progress=progress)
    hot_rows = planned.plan["hot_rows"]
    step("writing shards")
    storage.remove(*folder, recursive=True)  # leftovers of an interrupted run
    written = write_shards(storage, folder, inputs.parts, inputs.columns, vocabs.encoders(),
                           hot_rows, shard_params(params), spill_dir=spill_dir,
                           progress=progress)
    tables = write_vocabs(storage, folder, vocabs, hot_rows, params)
    if fail_after_shards:  # test hook: a crash between shards and publish
        raise StorageError("injected failure after writing shards")

    step("publishing")
    manifest = build_manifest(lid, inputs, params, tables, written, planned)
    return LayoutResult(lid, "published", commit_layout(storage, manifest, planned), manifest)


def write_vocabs(
    storage: Storage, folder: tuple[str, str], vocabs: Vocabs, hot_rows: Mapping[str, int],
    params: LayoutParams,
) -> list[mf.TableRef]:
    """Write ``vocab/<table>.parquet`` (value, count, id) into the layout folder; returns
    the manifest's table entries."""
    refs = []
    for t in vocabs.tables:
        rel = f"vocab/{t}.parquet"
        with storage.open_atomic(*folder, "vocab", f"{t}.parquet") as f:
            vocabs.frames[t].write_parquet(f)
        refs.append(mf.TableRef(t, vocabs.frames[t].height + 1, int(hot_rows[t]),
                                params.dim_of(t), rel, int(vocabs.counts[t].sum())))
    return refs


def build_manifest(
    lid: str, inputs: Inputs, params: LayoutParams, tables: Sequence[mf.TableRef],
    written: ShardResult, planned: PlanOutcome,
) -> mf.Manifest:
    """The manifest of a layout whose vocabularies and shards are written."""
    by = written.rows_by_split_and_kind
    train_hot = by.get("train/hot", 0)
    train_rows = train_hot + by.get("train/cold", 0)
    assert written.schema is not None  # write_shards and collect_streams always set it
    columns = [mf.ColumnRef(f.name, mf.type_name(f.type), _role(f.name, inputs.columns),
                            inputs.columns.sparse.get(f.name)) for f in written.schema]
    return mf.Manifest(
        layout_id=lid,
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        producer={"name": "fae-data", "version": __version__},
        dataset=mf.DatasetRef(params.dataset, inputs.kind, inputs.refs),
        params=manifest_params(params, inputs.split),
        tables=tuple(tables),
        stats={
            "rows_in": inputs.rows_in,
            "rows_rejected": inputs.rows_rejected,
            "rows_by_split_and_kind": by,
            "hot_input_fraction": train_hot / train_rows if train_rows else 0.0,
            "predicted_hot_input_fraction": planned.predicted_hot_input_fraction,
            "hot_access_coverage": planned.plan["hot_access_coverage"],
            "budget_used_bytes": planned.plan["budget_used_bytes"],
            "accesses_total": sum(t.accesses for t in tables),
            "knee_budget_bytes": planned.knee_budget_bytes,
            "all_hot": planned.plan["all_hot"],
            "sampling": planned.sampling,
        },
        shards=tuple(mf.ShardRef(**asdict(s)) for s in written.shards),
        columns=tuple(columns),
    )


def commit_layout(storage: Storage, manifest: mf.Manifest, planned: PlanOutcome) -> str:
    """Publish a layout whose files are all written: ``plan.json`` (the budget sweep),
    then ``manifest.json`` (the commit marker), then ``LATEST``. Returns the manifest's
    path. A crash before the manifest leaves the layout invisible and LATEST as it was."""
    storage.write_json_atomic(
        {"sweep": planned.sweep, "knee_budget_bytes": planned.knee_budget_bytes},
        *mf.layout_folder(manifest.layout_id), "plan.json",
    )
    path = mf.write_manifest(storage, manifest)
    mf.set_latest(storage, manifest.layout_id)
    return path


def _role(name: str, cols: LayoutColumns) -> str:
    if name == cols.label:
        return "label"
    return "sparse" if name in cols.sparse else "dense"
