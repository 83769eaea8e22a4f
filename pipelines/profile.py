"""Profiling a layout's training partitions: counts -> vocabularies -> plan.

Partial counts are cached per partition, keyed by its checksum, input file, sampling
parameters and counted columns; vocabularies rank the merged counts; the planner picks
the hot rows k_t under the budget and predicts the hot-input fraction on a row sample.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import polars as pl
import pyarrow as pa

from fae_data.chunks import iter_chunks, iter_frames
from fae_data.counts import (
    COUNT_SCHEMA,
    TableCounts,
    count_tables,
    from_frame,
    is_count_frame,
    merge_tables,
    sample_mask,
    sample_seed,
    to_frame,
)
from fae_data.errors import InputError, StorageError
from fae_data.plan import (
    PlanParams,
    TableSpec,
    default_sweep_budgets,
    knee_index,
    no_hot_rows_reason,
    plan_hot_rows,
    sweep_budgets,
)
from fae_data.shard import InputPart, encode_ids
from fae_data.storage import Storage
from fae_data.vocab import Encoder, VocabParams, id_counts, rank_values
from pipelines.inputs import (
    DTYPE_BYTES,
    Inputs,
    LayoutParams,
    Step,
    _key,
    resolve_inputs,
)

log = logging.getLogger(__name__)

COUNTS_DIR = "counts"
#: Rows sampled to predict the hot-input fraction of a budget: its standard error is at
#: most 0.5/sqrt(n), 0.22 percentage points here, well below what a budget choice needs.
_PLAN_SAMPLE_ROWS = 50_000
#: Training rows a sampled profile should see: the standard error of a share measured on
#: them (access coverage, the hot set) is then at most 0.5/sqrt(n), half a percentage point.
#: A rate expected to sample fewer draws a warning; one that samples no access is refused.
_MIN_SAMPLED_ROWS = 10_000
_COUNT_CHUNK_ROWS = 1_000_000
#: How sampled counts draw their rows (part of their cache key). 2: independently per
#: partition (1 hashed positions with the seed alone: every partition kept the same ones).
_SAMPLING_SCHEME = 2
_PLAN_CHUNK_ROWS = 262_144


def counts_path(
    inputs: Inputs, part: InputPart, sampling_rate: float, seed: int
) -> tuple[str, ...]:
    """Where the partial counts of ``part`` live: keyed by its checksum, input file, rows,
    sampling parameters and the counted columns."""
    ref = next(r for r in inputs.refs if r.name == part.name)
    # Exact counts do not depend on the seed; sampled ones on how rows are drawn too.
    sampling: tuple[Any, ...] = ((sampling_rate, seed, _SAMPLING_SCHEME) if sampling_rate < 1.0
                                 else (1.0, 0))
    key = _key(ref.sha256, part.path, part.rows, *sampling, dict(inputs.columns.sparse))
    return (COUNTS_DIR, ref.path.split("/")[1], part.name, f"counts-{key}.parquet")


def _partition_seed(inputs: Inputs, part: InputPart, seed: int, purpose: str) -> int:
    """The hash seed of ``purpose``'s sample of ``part``: independent across partitions
    and purposes (see :func:`fae_data.counts.sample_seed`)."""
    ref = next(r for r in inputs.refs if r.name == part.name)
    return sample_seed(seed, purpose, ref.name, ref.sha256)  # the name: copies differ too


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
    part_seed = _partition_seed(inputs, part, seed, "count")
    for chunk in iter_frames(storage, part.path, _COUNT_CHUNK_ROWS, columns):
        mask = sample_mask(chunk.height, offset, sampling_rate, part_seed)
        offset += chunk.height
        partials.append(count_tables(chunk, inputs.columns.sparse, mask))
        if len(partials) >= 4:  # keep memory at about one vocabulary's worth of counts
            partials = [merge_tables(partials)]
    counted = to_frame(merge_tables(partials), enum_tables=True)
    with storage.open_atomic(*rel) as f:
        # lz4 without statistics: a partial is read whole by one merge, never filtered
        counted.write_parquet(f, compression="lz4", statistics=False)
    return "/".join(rel)


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
        if not is_count_frame(frame):
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
    _encoders: dict[str, Encoder] | None = field(default=None, init=False, repr=False)

    def encoders(self) -> dict[str, Encoder]:
        """One :class:`Encoder` per table, built once: the plan sample and the shard pass
        both encode with them, and building one sorts the whole vocabulary."""
        if self._encoders is None:
            self._encoders = {t: Encoder(self.frames[t]) for t in self.tables}
        return self._encoders


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


@dataclass
class PlanSample:
    """A seeded sample of training rows, independent of the counting sample: per table the
    largest id of every row (:attr:`maxima`), and, when hot rows were given (a sampled
    profile's), every row's lookups and hot lookups (:attr:`lookups`, :attr:`hot_lookups`;
    empty otherwise)."""

    maxima: dict[str, np.ndarray]
    lookups: np.ndarray
    hot_lookups: np.ndarray
    population: int  # the training rows it was drawn from

    @property
    def rows(self) -> int:
        return len(next(iter(self.maxima.values()))) if self.maxima else 0


def plan_sample(storage: Storage, inputs: Inputs, vocabs: Vocabs, seed: int,
                hot_rows: Mapping[str, int] | None = None) -> PlanSample:
    """Sample about :data:`_PLAN_SAMPLE_ROWS` training rows (all of them when fewer).

    A row is hot under k iff, for every table, its largest id is below k_t; the planner
    evaluates the hot-input fraction of any budget on this sample. Its rows are drawn
    independently of a sampled profile's (another salt), so the access coverage of the
    hot rows ``hot_rows`` measured on them is not flattered by the hot set having been
    chosen on the profile's rows. Partitions are read a chunk at a time (on every
    storage), and rows are drawn by position, so the sample does not depend on chunking.
    """
    parts = inputs.train_parts
    total = sum(p.rows for p in parts)
    rate = min(1.0, _PLAN_SAMPLE_ROWS / max(total, 1))
    encoders = vocabs.encoders()
    zero_k = {t: 0 for t in vocabs.tables}
    maxima: dict[str, list[np.ndarray]] = {t: [] for t in vocabs.tables}
    lookups: list[np.ndarray] = []
    hot_lookups: list[np.ndarray] = []
    sparse = inputs.columns.sparse
    for part in parts:
        offset = 0
        part_seed = _partition_seed(inputs, part, seed, "plan")
        for chunk in iter_chunks(storage, part.path, _PLAN_CHUNK_ROWS, list(sparse)):
            keep = sample_mask(chunk.num_rows, offset, rate, part_seed)
            offset += chunk.num_rows
            sampled = chunk if keep is None else chunk.filter(keep.to_arrow())
            if sampled.num_rows == 0:
                continue
            ids, _ = encode_ids(sampled, sparse, encoders, zero_k)
            for t, row_max in _row_maxima(ids, sparse).items():
                maxima[t].append(row_max)
            if hot_rows is not None:
                n, hot = _row_lookups(ids, sparse, hot_rows)
                lookups.append(n)
                hot_lookups.append(hot)

    def cat(arrays: list[np.ndarray], dtype: type) -> np.ndarray:
        return np.concatenate(arrays) if arrays else np.zeros(0, dtype)

    return PlanSample({t: cat(v, np.uint32) for t, v in maxima.items()},
                      cat(lookups, np.int64), cat(hot_lookups, np.int64), total)


def _row_lookups(ids: Mapping[str, pa.Array], sparse: Mapping[str, str],
                 hot_rows: Mapping[str, int]) -> tuple[np.ndarray, np.ndarray]:
    """Every row's embedding lookups (a scalar column: one, id 0 included; a list: its
    length) and how many of them hit a hot row."""
    n = hot = None
    for col, t in sparse.items():
        arr = ids[col]
        if pa.types.is_list(arr.type):
            offs = np.asarray(arr.offsets, dtype=np.int64)
            flat = arr.flatten().to_numpy()
            cum = np.concatenate([[0], np.cumsum(flat < hot_rows[t])])
            col_n, col_hot = np.diff(offs), cum[offs[1:]] - cum[offs[:-1]]
        else:
            col_n = np.ones(len(arr), np.int64)
            col_hot = (arr.to_numpy(zero_copy_only=False) < hot_rows[t]).astype(np.int64)
        n = col_n if n is None else n + col_n
        hot = col_hot if hot is None else hot + col_hot
    assert n is not None and hot is not None  # a layout has sparse columns
    return n, hot


def estimated_coverage(sample: PlanSample) -> tuple[float, float]:
    """The hot rows' access coverage over all training rows, estimated on ``sample``, and
    its standard error.

    A ratio estimator over rows (hot lookups / lookups): rows, not lookups, are what is
    drawn, and a row's lookups hit hot rows together, so a binomial error over lookups
    would be several times too small. With a finite-population correction: a sample of
    every row has no error.
    """
    n = len(sample.lookups)
    total = float(sample.lookups.sum())
    if n == 0 or total == 0:
        return 0.0, 0.0
    cov = float(sample.hot_lookups.sum()) / total
    if n < 2:
        return cov, 0.0
    resid = sample.hot_lookups - cov * sample.lookups
    mean = total / n
    fpc = max(0.0, 1.0 - n / max(sample.population, n))
    return cov, float(np.sqrt(fpc * float(resid @ resid) / (n * (n - 1))) / mean)


def _row_maxima(ids: Mapping[str, pa.Array], sparse: Mapping[str, str]) -> dict[str, np.ndarray]:
    """The largest id of every row, per table (list columns: their largest element)."""
    per_table: dict[str, np.ndarray] = {}
    for col, t in sparse.items():
        arr = ids[col]
        if pa.types.is_list(arr.type):
            flat = arr.flatten().to_numpy()
            offs = np.asarray(arr.offsets)
            row_max = np.zeros(len(arr), dtype=np.uint32)
            nonempty = offs[1:] > offs[:-1]
            if flat.size:
                row_max[nonempty] = np.maximum.reduceat(flat, offs[:-1][nonempty])
        else:
            row_max = arr.to_numpy()
        per_table[t] = np.maximum(per_table.get(t, row_max), row_max)
    return per_table


def hot_fraction(sample: PlanSample, hot_rows: Mapping[str, int]) -> float:
    """The share of ``sample``'s rows whose every lookup is below ``hot_rows``."""
    if sample.rows == 0:
        return 0.0
    hot = np.ones(sample.rows, dtype=bool)
    for t, row_max in sample.maxima.items():
        hot &= row_max < hot_rows[t]
    return float(hot.mean())


@dataclass
class PlanOutcome:
    plan: dict[str, Any]  # fae_data.plan.Plan.to_dict()
    sweep: list[dict[str, Any]]
    knee_budget_bytes: int | None  # None: no sweep, or a curve without a knee
    predicted_hot_input_fraction: float
    sample_rows: int
    sampling: dict[str, Any] = field(default_factory=dict)
    #: Warnings a caller shows beside the plan (a sparse sample, a budget that buys nothing).
    notes: list[str] = field(default_factory=list)


def check_sample(inputs: Inputs, vocabs: Vocabs, sampling_rate: float) -> str | None:
    """Refuse a profile sampled so sparsely that it counted no access; warn of a thin one.

    Returns a warning when the rate is expected to sample fewer than
    :data:`_MIN_SAMPLED_ROWS` training rows (None otherwise, and for exact counts).

    Raises:
        InputError: the sample counted no access at all: every id would rank by raw value
            and every plan would be empty. The message gives the accesses sampled, the
            training rows and the rate that would sample enough of them.
    """
    if sampling_rate >= 1.0:
        return None
    accesses = sum(int(c.sum()) for c in vocabs.counts.values())
    rows = sum(p.rows for p in inputs.train_parts)
    expected = sampling_rate * rows
    needed = min(1.0, _MIN_SAMPLED_ROWS / max(rows, 1))
    advice = (f"use a sampling rate of at least {needed:.3g} (about "
              f"{min(_MIN_SAMPLED_ROWS, rows):,} sampled rows)" if needed < 1.0 else
              f"use sampling rate 1 (exact counts; there are only {rows:,} training rows)")
    what = (f"sampling rate {sampling_rate:g} sampled {accesses:,} accesses from {rows:,} "
            f"training rows (about {expected:,.4g} rows expected)")
    if accesses == 0:
        raise InputError(f"{what}: there is nothing to rank ids or plan hot rows by; {advice}")
    if expected < _MIN_SAMPLED_ROWS:
        return f"{what}: the plan may be far from the exact one; {advice}"
    return None


def run_plan(
    storage: Storage, inputs: Inputs, vocabs: Vocabs, params: LayoutParams, sweep: bool = True
) -> PlanOutcome:
    """Choose k_t under the budget, and (with ``sweep``) chart coverage over budgets.

    Raises:
        InputError: the sampled profile counted no access (see :func:`check_sample`).
        BudgetError: the budget is below one embedding row.
    """
    notes = [n for n in [check_sample(inputs, vocabs, params.sampling_rate)] if n]
    specs = table_specs(vocabs, params)
    dtype_bytes = DTYPE_BYTES[params.dtype]
    pp = PlanParams(params.budget_bytes, dtype_bytes, params.optimizer_slots)
    plan = plan_hot_rows(specs, pp)
    if plan.accesses_covered == 0 and (why := no_hot_rows_reason(specs, pp)):
        notes.append(why)
    for note in notes:
        log.warning("%s", note)
    # Lookups per row only for a sampled profile: they estimate its coverage.
    sample = plan_sample(storage, inputs, vocabs, params.seed,
                         plan.hot_rows if params.sampling_rate < 1.0 else None)
    n = sample.rows
    predicted = hot_fraction(sample, plan.hot_rows)
    points: list[dict[str, Any]] = []
    knee = None
    if sweep:
        budgets = default_sweep_budgets(specs, dtype_bytes, params.optimizer_slots)
        swept = sweep_budgets(specs, pp, budgets, lambda k: hot_fraction(sample, k))
        points = [asdict(p) for p in swept]
        if len(swept) >= 3:
            # Hot-input fraction against the budget in bytes (linear): where it saturates,
            # the knee is where another byte starts to buy little; a curve that only
            # steepens (convex) has none, and no budget is marked.
            xs = [float(p.budget_bytes) for p in swept]
            ys = [p.hot_input_fraction or 0.0 for p in swept]
            at = knee_index(xs, ys, log_x=False)
            knee = None if at is None else swept[at].budget_bytes
    return PlanOutcome(plan.to_dict(), points, knee, predicted, n,
                       _sampling_error(storage, inputs, vocabs, params, plan, sample), notes)


def _sampling_error(
    storage: Storage, inputs: Inputs, vocabs: Vocabs, params: LayoutParams, plan: Any,
    sample: PlanSample,
) -> dict[str, Any]:
    """How far a sampled profile may be from the exact one.

    The plan's ``hot_access_coverage`` is measured on the counted sample, which also chose
    the hot set: it is optimistic. The coverage of that hot set over all training rows is
    estimated on the plan's row sample (drawn independently), with its standard error.
    With exact counts at hand (an earlier exact run over the same partitions), the two hot
    sets are also compared value by value.
    """
    if params.sampling_rate >= 1.0:
        return {"rate": 1.0, "exact": True}
    accesses = sum(int(c.sum()) for c in vocabs.counts.values())
    estimate, stderr = estimated_coverage(sample)
    out: dict[str, Any] = {
        "rate": params.sampling_rate,
        "exact": False,
        "sampled_accesses": accesses,
        "estimated_access_coverage": estimate,
        "coverage_stderr": stderr,
        "estimate_rows": sample.rows,
    }
    exact_paths = []
    for part in inputs.train_parts:
        rel = counts_path(inputs, part, 1.0, 0)
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


def run_plan_only(
    root: str,
    params: LayoutParams,
    sweep: bool = True,
    step: Step = lambda _m: None,
    progress: Callable[[str, int], None] | None = None,
) -> PlanOutcome:
    """counts -> vocab -> plan without writing shards (``fae plan``)."""
    storage = Storage(root)
    step("resolving partitions")
    inputs = resolve_inputs(storage, params)
    return profile_layout(storage, inputs, params, sweep=sweep, step=step, progress=progress)[1]


