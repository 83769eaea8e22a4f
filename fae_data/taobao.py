"""Taobao UserBehavior events -> TBSM-style training samples.

Input: the ingested Taobao log (:data:`fae_data.schema.TAOBAO_SCHEMA`: ``user_id``,
``item_id``, ``category_id``, ``behavior_type``, ``timestamp`` in Unix seconds), as one
LazyFrame, possibly several partitions concatenated. Output: one row per sample with the
columns of :data:`fae_data.schema.TAOBAO_SAMPLE_COLUMNS`.

The rule
--------
1. **Interactions.** Every event is an interaction, whatever its ``behavior_type``
   (pv, cart, fav and buy alike), as in TBSM's ``taobao_prepare.py``, whose samples do
   not carry the behaviour either. ``behavior_type`` is not read.
2. **Order.** Each user's events are ordered by ``timestamp``, ties broken by their order in
   the input (a stable sort; for concatenated partitions, the concatenation order). The
   event at position ``p`` (0-based) of that sequence has ``p`` earlier events.
3. **Positives.** Every event with ``p >= min_history`` gives one sample with ``label`` 1:
   ``item_id``/``category_id`` are the event's own (the *target*), ``timestamp`` is its time,
   and ``hist_item_id``/``hist_category_id`` are the items and categories of the user's
   ``min(p, history_length)`` events just before it, oldest first (so the last element is
   the immediately preceding event). Histories are not padded; with ``min_history = 0``
   the first event of each user yields an empty history. Repeated items are kept.
4. **Negatives.** Each positive gets ``negatives`` samples with ``label`` 0, the same
   ``user_id``, history and ``timestamp``, and a target drawn at random from the *events*
   of the whole log (with ``train`` given: a training positive's from the events of the
   training partitions only, see :func:`build_samples`), i.e. by item popularity, excluding every event whose item is the
   positive's item (the draw is exact, not a redraw loop: it is uniform over the other
   events). The target's ``category_id`` is the drawn event's category, so an
   (item, category) pair of a negative always occurs in the log. A negative may repeat an
   item of the history or another negative of the same positive.
5. **Determinism.** Draws come from ``numpy.random.default_rng(seed)``, in an order fixed by
   sorting: positives by (user, position), the event pool by (item, category). The result
   depends only on the events, their order within each user, and the parameters, not on
   the Polars thread count or on how users are interleaved across input rows.
6. **Output order.** Rows are sorted by (``timestamp``, ``user_id``, ``label`` descending,
   ``item_id``), then by the positive's position and the draw number, a total order.

How: one lazy plan (collected with ``collect_all``, one scan of the source) sorts the events
by (user, timestamp, input row) and numbers them per user, and counts the (item, category)
pool. Positives and negatives are then small scalar key rows (event row, target, label),
sorted into output order; the history lists are built last, directly in that order, as
offsets plus one flat numpy gather of the ordered events (``[row - min(p, L), row)``),
because moving list columns around costs far more than building them once. The work is
O(events + samples x L) with no Python loop; memory is the ordered events plus the output.

Differences from TBSM's own ``taobao_prepare.py`` (from MIMN): that script emits one sample
per *user* (the last event as target, history padded with zeros to 200, a coin flip making
it positive or negative, negatives uniform over item ids rather than popularity) and splits
train/test by each user's last event time. Here every event is a target, which gives far
more samples from the same log, and the time split is left to the caller (``timestamp``).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa

from fae_data.errors import InputError
from fae_data.schema import (
    TAOBAO_CATEGORY,
    TAOBAO_HIST_CATEGORY,
    TAOBAO_HIST_ITEM,
    TAOBAO_HISTORY_LENGTH,
    TAOBAO_ITEM,
    TAOBAO_LABEL,
    TAOBAO_SAMPLE_SCHEMA,
    TAOBAO_TIMESTAMP,
    TAOBAO_USER,
)

log = logging.getLogger(__name__)

# Internal helper columns, dropped before returning.
_ROW = "_row"  # a row number: input order (the tie-break), then row of the ordered events
_POS = "_pos"  # the event's 0-based position in its user's sequence
_DRAW = "_draw"  # 0 for a positive, 1..negatives for its negatives
_COUNT = "_count"

_INPUT_TYPES: dict[str, pl.DataType] = {
    TAOBAO_USER: pl.UInt32(),
    TAOBAO_ITEM: pl.UInt32(),
    TAOBAO_CATEGORY: pl.UInt32(),
    TAOBAO_TIMESTAMP: pl.Int64(),
}
_SAMPLE_SCHEMA = pl.Schema(pl.from_arrow(TAOBAO_SAMPLE_SCHEMA.empty_table()).schema)


@dataclass(frozen=True)
class SampleParams:
    """Parameters of :func:`build_samples`.

    ``history_length``: at most this many earlier events form a history (TBSM's L).
    ``negatives``: negative samples per positive (0 gives positives only).
    ``min_history``: an event becomes a positive only with at least this many earlier
    events of its user (0 also turns each user's first event into a sample).
    ``seed``: seed of the negative draws.
    """

    history_length: int = TAOBAO_HISTORY_LENGTH
    negatives: int = 1
    min_history: int = 1
    seed: int = 0

    def __post_init__(self) -> None:
        _check_int("history_length", self.history_length, 1)
        _check_int("negatives", self.negatives, 0)
        _check_int("min_history", self.min_history, 0)
        _check_int("seed", self.seed, 0)


def _check_int(name: str, value: object, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise InputError(
            f"SampleParams.{name} must be an integer >= {minimum}, got {value!r} "
            f"({type(value).__name__})"
        )
    if value < minimum:
        raise InputError(
            f"SampleParams.{name} ({value}) is out of range: it must be >= {minimum}"
        )


def build_samples(
    events: pl.LazyFrame, params: SampleParams, carry: str | None = None,
    train: Sequence[int] | None = None,
) -> pl.DataFrame:
    """Turn a Taobao event log into labelled samples with histories (see the module doc).

    ``events`` needs integer columns ``user_id``, ``item_id``, ``category_id`` and
    ``timestamp`` (Unix seconds) without nulls; other columns are ignored. Returns a
    DataFrame typed as :data:`fae_data.schema.TAOBAO_SAMPLE_SCHEMA` with
    ``positives * (1 + negatives)`` rows, sorted as the module doc says.

    ``carry`` names an extra column of ``events`` (e.g. the source partition) that each
    sample takes from its target event and keeps as its last column. ``train`` lists the
    ``carry`` values of the training partitions: the negatives of their positives are
    drawn from their events only. Drawn from the whole log, a training sample's negative
    could be an item first seen in validation or test, which then got a training count and
    a vocabulary id, leaking which items the future holds into training.

    Raises :class:`InputError` if a column is missing, not an integer or has nulls, or if
    negatives are asked for but the log has a single distinct item (nothing to draw).
    """
    typed = _typed_events(events, carry)
    ordered_plan = typed.pipe(_in_user_order)
    # The pool is the log's events, grouped by (item, category) with their counts and
    # sorted, so the draws do not depend on input order or on the thread count.
    pool_plan = _pool(typed)
    train_pool_plan = (_pool(typed.filter(pl.col(carry).is_in(list(train))))
                       if carry is not None and train is not None else pool_plan)
    nulls_plan = typed.select(pl.all().null_count())
    # One pass over the source for all of them (collect_all shares the common scan).
    ordered, pool, train_pool, nulls = pl.collect_all(
        [ordered_plan, pool_plan, train_pool_plan, nulls_plan])
    _check_no_nulls(nulls)

    # Samples are built as small scalar "key" rows first (which event, which target) and
    # sorted; the history lists are materialised once, directly in output order, because
    # moving list columns around (gather, sort) costs far more than building them.
    positives = (
        ordered.with_row_index(_ROW)
        .filter(pl.col(_POS) >= params.min_history)
        .with_columns(pl.lit(1, pl.Int8).alias(TAOBAO_LABEL), pl.lit(0, pl.UInt32).alias(_DRAW))
    )
    if carry is not None and train is not None:
        in_train = pl.col(carry).is_in(list(train))
        negatives = pl.concat([
            _negatives(positives.filter(in_train), train_pool, params, stream=1,
                       where="the training partitions"),
            _negatives(positives.filter(~in_train), pool, params, stream=2),
        ], how="vertical")
    else:
        negatives = _negatives(positives, pool, params)
    keys = pl.concat([positives, negatives], how="vertical").sort(
        [TAOBAO_TIMESTAMP, TAOBAO_USER, TAOBAO_LABEL, TAOBAO_ITEM, _POS, _DRAW],
        descending=[False, False, True, False, False, False],
    )
    lengths = np.minimum(keys[_POS].to_numpy(), params.history_length).astype(np.int64)
    offsets, rows = _history_index(keys[_ROW].to_numpy(), lengths)
    samples = keys.with_columns(
        _lists(ordered[TAOBAO_ITEM], offsets, rows).alias(TAOBAO_HIST_ITEM),
        _lists(ordered[TAOBAO_CATEGORY], offsets, rows).alias(TAOBAO_HIST_CATEGORY),
    ).select(
        *(pl.col(name).cast(dtype) for name, dtype in _SAMPLE_SCHEMA.items()),
        *([pl.col(carry)] if carry else []),
    )
    log.debug(
        "taobao samples: %d positives, %d negatives from %d events",
        positives.height,
        negatives.height,
        ordered.height,
    )
    return samples


def _typed_events(events: pl.LazyFrame, carry: str | None = None) -> pl.LazyFrame:
    """Project the columns the rule needs, checked and cast to the ingested types."""
    found = events.collect_schema()
    for name, dtype in _INPUT_TYPES.items():
        if name not in found:
            raise InputError(
                f"Taobao events have no column {name!r}: expected {dtype} "
                f"(found columns: {', '.join(found.names()) or 'none'})"
            )
        if not found[name].is_integer():
            raise InputError(
                f"Taobao events column {name!r} has type {found[name]}: expected {dtype}; "
                "ingest the log first"
            )
    if carry is not None and carry not in found:
        raise InputError(f"Taobao events have no column {carry!r} to carry into the samples")
    return events.select(
        *(pl.col(name).cast(dtype) for name, dtype in _INPUT_TYPES.items()),
        *([pl.col(carry)] if carry else []),
    )


def _check_no_nulls(nulls: pl.DataFrame) -> None:
    for name in nulls.columns:
        count = nulls[name][0]
        if count:
            raise InputError(
                f"Taobao events column {name!r} has {count} null value(s): expected none; "
                "ingest the log first (ingest quarantines incomplete lines)"
            )


def _in_user_order(events: pl.LazyFrame) -> pl.LazyFrame:
    """Sort by (user, timestamp, input order) and number each user's events from 0."""
    row = pl.int_range(pl.len(), dtype=pl.Int64)
    # Sorted by user, so a user's events are one run of rows; its position is the distance
    # to the run's first row (much cheaper than a window over user).
    starts_run = (pl.col(TAOBAO_USER) != pl.col(TAOBAO_USER).shift(1)).fill_null(True)
    run_start = pl.when(starts_run).then(row).forward_fill()
    return (
        events.with_row_index(_ROW)
        .sort(TAOBAO_USER, TAOBAO_TIMESTAMP, _ROW)
        .with_columns((row - run_start).cast(pl.UInt32).alias(_POS))
        .drop(_ROW)
    )


def _history_index(ends: np.ndarray, lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """List offsets and flat source rows of histories ``[ends[i] - lengths[i], ends[i])``.

    The rows index the user-ordered events, so for a sample of the event at row ``r`` with
    position ``p`` the range ``[r - min(p, L), r)`` is exactly the user's last ``min(p, L)``
    events before it, oldest first. Built from a (samples x L) window and a mask, in 32-bit
    indices where they fit (several times faster than 64-bit on large logs).
    """
    width = int(lengths.max(initial=0))
    index_type = np.int32 if int(ends.max(initial=0)) < np.iinfo(np.int32).max else np.int64
    columns = np.arange(width, dtype=index_type)
    window = (ends.astype(index_type) - width)[:, None] + columns
    keep = columns >= (width - lengths).astype(index_type)[:, None]
    offsets = np.zeros(len(lengths) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return offsets, window[keep]


def _lists(source: pl.Series, offsets: np.ndarray, rows: np.ndarray) -> pl.Series:
    """``source[rows]`` cut into lists at ``offsets`` (Arrow's list layout, no copy back)."""
    values = pa.array(source.to_numpy()[rows])
    return pl.Series(source.name, pa.LargeListArray.from_arrays(pa.array(offsets), values))


def _pool(events: pl.LazyFrame) -> pl.LazyFrame:
    """The events grouped by (item, category) with their counts, sorted, so that the
    draws depend neither on input order nor on the thread count."""
    return (events.group_by(TAOBAO_ITEM, TAOBAO_CATEGORY).agg(pl.len().alias(_COUNT))
            .sort(TAOBAO_ITEM, TAOBAO_CATEGORY))


def _negatives(positives: pl.DataFrame, pool: pl.DataFrame, params: SampleParams,
               stream: int = 0, where: str = "the log") -> pl.DataFrame:
    """``params.negatives`` rows per positive, targets drawn from the pool's events.

    ``positives`` must be in (user, position) order and ``pool`` sorted by (item,
    category); both fix the order in which random numbers are used. ``stream`` separates
    the random numbers of positives drawn from different pools (0: the seed alone).
    Every positive's item must be in ``pool``.
    """
    per_positive = params.negatives
    if per_positive == 0 or positives.height == 0:
        return positives.clear()
    counts = pool[_COUNT].to_numpy().astype(np.int64)
    pool_items = pool[TAOBAO_ITEM].to_numpy()
    pool_categories = pool[TAOBAO_CATEGORY].to_numpy()
    ends = np.cumsum(counts)  # pair j covers events [ends[j] - counts[j], ends[j])
    total = int(ends[-1])

    # The events of the positive's item are one contiguous run [lo, lo + width) of the
    # pool (it is sorted by item). Drawing r uniformly from the other total - width events
    # and stepping over that run gives an exact popularity draw without redraw loops.
    target = positives[TAOBAO_ITEM].to_numpy()
    first = np.searchsorted(pool_items, target, side="left")
    last = np.searchsorted(pool_items, target, side="right") - 1
    lo = ends[first] - counts[first]
    width = ends[last] - lo
    others = total - width
    if (others == 0).any():
        raise InputError(
            f"cannot draw negatives: every event of {where} has item "
            f"{int(target[(others == 0).argmax()])}; need at least 2 distinct items there, "
            "other partitions, or negatives 0"
        )

    rng = np.random.default_rng([params.seed, stream] if stream else params.seed)
    shape = (positives.height, per_positive)
    draws = rng.integers(0, others[:, None], size=shape, dtype=np.int64)
    draws += np.where(draws >= lo[:, None], width[:, None], 0)
    picked = np.searchsorted(ends, draws, side="right").ravel()

    source = pl.Series(np.repeat(np.arange(positives.height, dtype=np.int64), per_positive))
    return positives.select(pl.all().gather(source)).with_columns(
        pl.Series(TAOBAO_ITEM, pool_items[picked], pl.UInt32),
        pl.Series(TAOBAO_CATEGORY, pool_categories[picked], pl.UInt32),
        pl.lit(0, pl.Int8).alias(TAOBAO_LABEL),
        pl.Series(_DRAW, np.tile(np.arange(1, per_positive + 1), positives.height), pl.UInt32),
    )


__all__ = ["SampleParams", "build_samples"]
