"""Dataset facts: column names, types and constants of Criteo and Taobao logs.

This is the only module that knows how many dense and sparse features Criteo has or what
a Taobao behaviour line looks like; everything else imports the names from here.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyarrow as pa

# --- Criteo (Kaggle Display Advertising Challenge and Terabyte click logs) -------------

CRITEO_NUM_DENSE = 13
CRITEO_NUM_SPARSE = 26
CRITEO_LABEL = "label"
CRITEO_DENSE = tuple(f"I{i}" for i in range(1, CRITEO_NUM_DENSE + 1))
CRITEO_SPARSE = tuple(f"C{i}" for i in range(1, CRITEO_NUM_SPARSE + 1))
CRITEO_COLUMNS = (CRITEO_LABEL, *CRITEO_DENSE, *CRITEO_SPARSE)
CRITEO_HEX_DIGITS = 8

#: Distinct values per categorical column in Criteo Kaggle (C1..C26), as published with
#: DLRM's Kaggle preprocessing. The synthetic generator reproduces these cardinalities.
CRITEO_KAGGLE_CARDINALITIES = (
    1460, 583, 10131227, 2202608, 305, 24, 12517, 633, 3, 93145, 5683, 8351593, 3194,
    27, 14992, 5461306, 10, 5652, 2173, 4, 7046547, 18, 15, 286181, 105, 142572,
)

CRITEO_SCHEMA = pa.schema(
    [pa.field(CRITEO_LABEL, pa.int8(), nullable=False)]
    + [pa.field(c, pa.int32()) for c in CRITEO_DENSE]
    + [pa.field(c, pa.uint32()) for c in CRITEO_SPARSE]
)

# --- Taobao UserBehavior (Tianchi dataset 649) -----------------------------------------

TAOBAO_USER = "user_id"
TAOBAO_ITEM = "item_id"
TAOBAO_CATEGORY = "category_id"
TAOBAO_BEHAVIOR = "behavior_type"
TAOBAO_TIMESTAMP = "timestamp"
TAOBAO_COLUMNS = (TAOBAO_USER, TAOBAO_ITEM, TAOBAO_CATEGORY, TAOBAO_BEHAVIOR, TAOBAO_TIMESTAMP)
TAOBAO_BEHAVIORS = ("pv", "buy", "cart", "fav")
#: TBSM's history length (the last L items and categories before the target event).
TAOBAO_HISTORY_LENGTH = 20

TAOBAO_SCHEMA = pa.schema(
    [
        pa.field(TAOBAO_USER, pa.uint32(), nullable=False),
        pa.field(TAOBAO_ITEM, pa.uint32(), nullable=False),
        pa.field(TAOBAO_CATEGORY, pa.uint32(), nullable=False),
        pa.field(TAOBAO_BEHAVIOR, pa.string(), nullable=False),
        pa.field(TAOBAO_TIMESTAMP, pa.int64(), nullable=False),
    ]
)

# --- Rejects (quarantined lines) -------------------------------------------------------

REJECTS_SCHEMA = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),
        pa.field("line", pa.int64(), nullable=False),
        pa.field("reason", pa.string(), nullable=False),
        # Raw bytes, not text: a rejected line may not even be valid UTF-8.
        pa.field("raw", pa.binary(), nullable=False),
    ]
)


@dataclass(frozen=True)
class RawFormat:
    """How one kind of raw log is laid out on disk."""

    kind: str
    delimiter: bytes
    columns: tuple[str, ...]
    schema: pa.Schema
    #: Columns whose values are embedding lookups (the profiled, hot/cold-split ones).
    sparse: tuple[str, ...]

    @property
    def num_fields(self) -> int:
        return len(self.columns)


CRITEO = RawFormat("criteo", b"\t", CRITEO_COLUMNS, CRITEO_SCHEMA, CRITEO_SPARSE)
TAOBAO = RawFormat(
    "taobao", b",", TAOBAO_COLUMNS, TAOBAO_SCHEMA, (TAOBAO_USER, TAOBAO_ITEM, TAOBAO_CATEGORY)
)
FORMATS = {f.kind: f for f in (CRITEO, TAOBAO)}


def raw_format(kind: str) -> RawFormat:
    """The :class:`RawFormat` of ``kind`` ("criteo" or "taobao")."""
    try:
        return FORMATS[kind]
    except KeyError:
        from fae_data.errors import InputError

        raise InputError(
            f"unknown dataset kind {kind!r}: expected one of {', '.join(sorted(FORMATS))}"
        ) from None


# --- Taobao samples (TBSM-style training rows built by fae_data.taobao) ----------------

TAOBAO_LABEL = "label"
TAOBAO_HIST_ITEM = "hist_item_id"
TAOBAO_HIST_CATEGORY = "hist_category_id"
#: Sample columns in order: the target event's item/category, the user's previous
#: (at most TAOBAO_HISTORY_LENGTH) items and categories oldest first, and the target's time.
TAOBAO_SAMPLE_COLUMNS = (
    TAOBAO_LABEL,
    TAOBAO_USER,
    TAOBAO_ITEM,
    TAOBAO_CATEGORY,
    TAOBAO_HIST_ITEM,
    TAOBAO_HIST_CATEGORY,
    TAOBAO_TIMESTAMP,
)
TAOBAO_SAMPLE_SCHEMA = pa.schema(
    [
        pa.field(TAOBAO_LABEL, pa.int8(), nullable=False),
        pa.field(TAOBAO_USER, pa.uint32(), nullable=False),
        pa.field(TAOBAO_ITEM, pa.uint32(), nullable=False),
        pa.field(TAOBAO_CATEGORY, pa.uint32(), nullable=False),
        pa.field(TAOBAO_HIST_ITEM, pa.list_(pa.uint32()), nullable=False),
        pa.field(TAOBAO_HIST_CATEGORY, pa.list_(pa.uint32()), nullable=False),
        pa.field(TAOBAO_TIMESTAMP, pa.int64(), nullable=False),
    ]
)
