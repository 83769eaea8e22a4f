"""Typing raw text fields: string columns in, typed columns and per-row faults out.

Each column has a rule: how to convert its text and how to tell a bad value. Rules are
Polars expressions, so a whole block of rows is checked and converted at once; reasons
(strings) are only built for the few rows that fail.
"""

from __future__ import annotations

import binascii
from dataclasses import dataclass

import numpy as np
import polars as pl
import pyarrow as pa

from fae_data import schema
from fae_data.schema import RawFormat

_INT32_MIN, _INT32_MAX = -(2**31), 2**31 - 1
_UINT32_MAX = 2**32 - 1
_HEX_RE = rf"^[0-9a-fA-F]{{{schema.CRITEO_HEX_DIGITS}}}$"


@dataclass(frozen=True)
class ColumnRule:
    """How one raw column is typed and validated."""

    name: str
    value: pl.Expr  # typed value (rows that are bad may hold anything)
    bad: pl.Expr  # True where the text is not acceptable
    expected: str  # what a good value looks like, for messages


def _label(c: str) -> ColumnRule:
    col = pl.col(c)
    return ColumnRule(c, col.cast(pl.Int8, strict=False), ~col.is_in(["0", "1"]), "0 or 1")


def _optional_int32(c: str) -> ColumnRule:
    col = pl.col(c)
    as_int = col.cast(pl.Int64, strict=False)
    empty = col == ""
    bad = ~empty & (as_int.is_null() | (as_int < _INT32_MIN) | (as_int > _INT32_MAX))
    value = pl.when(empty).then(None).otherwise(as_int).cast(pl.Int32, strict=False)
    return ColumnRule(c, value, bad, "an integer in the int32 range or empty")


def _optional_hex32(c: str) -> ColumnRule:
    col = pl.col(c)
    empty = col == ""
    bad = ~empty & ~col.str.contains(_HEX_RE)
    value = (
        pl.when(empty)
        .then(None)
        .otherwise(col.str.to_integer(base=16, strict=False))
        .cast(pl.UInt32, strict=False)
    )
    return ColumnRule(c, value, bad, f"{schema.CRITEO_HEX_DIGITS} hex digits or empty")


def _required_uint32(c: str) -> ColumnRule:
    col = pl.col(c)
    as_int = col.cast(pl.Int64, strict=False)
    bad = as_int.is_null() | (as_int < 0) | (as_int > _UINT32_MAX)
    return ColumnRule(c, as_int.cast(pl.UInt32, strict=False), bad, "an id in 0..4294967295")


def _required_int64(c: str) -> ColumnRule:
    col = pl.col(c)
    as_int = col.cast(pl.Int64, strict=False)
    return ColumnRule(c, as_int, as_int.is_null(), "an integer (unix seconds)")


def _enum(c: str, allowed: tuple[str, ...]) -> ColumnRule:
    col = pl.col(c)
    return ColumnRule(c, col, ~col.is_in(list(allowed)), "one of " + "/".join(allowed))


def rules_for(fmt: RawFormat) -> tuple[ColumnRule, ...]:
    """The column rules of a raw format, in column order."""
    if fmt.kind == "criteo":
        return (
            _label(schema.CRITEO_LABEL),
            *(_optional_int32(c) for c in schema.CRITEO_DENSE),
            *(_optional_hex32(c) for c in schema.CRITEO_SPARSE),
        )
    if fmt.kind == "taobao":
        return (
            _required_uint32(schema.TAOBAO_USER),
            _required_uint32(schema.TAOBAO_ITEM),
            _required_uint32(schema.TAOBAO_CATEGORY),
            _enum(schema.TAOBAO_BEHAVIOR, schema.TAOBAO_BEHAVIORS),
            _required_int64(schema.TAOBAO_TIMESTAMP),
        )
    raise ValueError(f"no column rules for kind {fmt.kind!r}")


_BAD = "__bad_"


def type_rows(text: pl.DataFrame, fmt: RawFormat) -> tuple[pl.DataFrame, pl.DataFrame]:
    """Type a frame of raw text columns.

    Returns ``(typed, faults)``: ``typed`` holds the rows whose every field is acceptable,
    converted to ``fmt.schema``; ``faults`` has one row per refused input row with its
    position in ``text`` (``row``) and a ``reason`` naming the first bad column, its
    field number, what was expected and what was found.
    """
    rules = rules_for(fmt)
    checked = text.with_row_index("__row").select(
        pl.col("__row"),
        *(r.value.alias(r.name) for r in rules),
        *(r.bad.alias(_BAD + r.name) for r in rules),
    )
    any_bad = pl.any_horizontal(pl.col(f"{_BAD}{r.name}") for r in rules)
    checked = checked.with_columns(any_bad.alias("__any_bad"))
    typed = checked.filter(~pl.col("__any_bad")).select(r.name for r in rules)
    if typed.height != checked.height:
        bad_rows = checked.filter(pl.col("__any_bad")).get_column("__row")
        faults = _fault_reasons(text[bad_rows], bad_rows, rules, checked.filter(pl.col("__any_bad")))
    else:
        faults = pl.DataFrame(schema={"row": pl.UInt32, "reason": pl.String})
    return typed.cast(dict(zip(fmt.columns, _polars_types(fmt), strict=True))), faults


def _fault_reasons(
    bad_text: pl.DataFrame, rows: pl.Series, rules: tuple[ColumnRule, ...], flags: pl.DataFrame
) -> pl.DataFrame:
    reason = pl.coalesce(
        pl.when(pl.col(f"{_BAD}{r.name}")).then(
            pl.format(
                f"{r.name} (field {i + 1}): expected {r.expected}, found '{{}}'",
                pl.col(f"__text_{r.name}"),
            )
        )
        for i, r in enumerate(rules)
    )
    both = pl.concat(
        [
            bad_text.rename({c: f"__text_{c}" for c in bad_text.columns}),
            flags.select(pl.col(f"{_BAD}{r.name}") for r in rules),
        ],
        how="horizontal",
    ).rechunk()  # polars 1.35 panics formatting some multi-chunk string columns
    return pl.DataFrame({"row": rows, "reason": both.select(reason).to_series()})


def _polars_types(fmt: RawFormat) -> list[pl.DataType]:
    return [_arrow_to_polars(f.type) for f in fmt.schema]


def _arrow_to_polars(t: pa.DataType) -> pl.DataType:
    mapping: dict[pa.DataType, pl.DataType] = {
        pa.int8(): pl.Int8(),
        pa.int32(): pl.Int32(),
        pa.int64(): pl.Int64(),
        pa.uint32(): pl.UInt32(),
        pa.string(): pl.String(),
    }
    return mapping[t]


# --- the fast path: let Arrow's parser type what it can -------------------------------

_HEX_COLUMNS = frozenset(schema.CRITEO_SPARSE)
_TEXT_COLUMNS = _HEX_COLUMNS | {schema.CRITEO_LABEL}
_ENUMS = {schema.TAOBAO_BEHAVIOR: schema.TAOBAO_BEHAVIORS}


def parser_types(fmt: RawFormat) -> dict[str, pa.DataType]:
    """Column types for Arrow's CSV parser on the fast path.

    Integer columns are parsed by Arrow directly (it refuses non-integers and overflow,
    which sends the block down the checked path); hex ids stay text for :func:`finish_fast`,
    and so does the Criteo label: Arrow would read "00" or "-0" as 0, which the checked
    path refuses (only "0" and "1" are labels).
    """
    return {
        f.name: pa.string() if f.name in _TEXT_COLUMNS else f.type for f in fmt.schema
    }


def finish_fast(table: pa.Table, fmt: RawFormat) -> pa.Table | None:
    """Complete a fast-path parse: check labels and enums, decode hex ids.

    Returns the typed table, or None when any value needs a per-row verdict (the caller
    then takes the checked path, which names every bad row).
    """
    import pyarrow.compute as pc

    for name in table.column_names:
        col = table.column(name)
        if name == schema.CRITEO_LABEL and fmt.kind == "criteo":
            if col.null_count or not pc.all(pc.is_in(col, pa.array(["0", "1"]))).as_py():
                return None
        elif name in _ENUMS:
            allowed = pa.array(list(_ENUMS[name]))
            if col.null_count or not pc.all(pc.is_in(col, allowed)).as_py():
                return None
        elif fmt.schema.field(name).nullable is False and col.null_count:
            return None
    for i, name in enumerate(table.column_names):
        if name in _HEX_COLUMNS:
            decoded = decode_hex32(table.column(name))
            if decoded is None:
                return None
            table = table.set_column(i, name, decoded)
    return table.cast(fmt.schema)


def decode_hex32(column: pa.ChunkedArray | pa.Array) -> pa.Array | None:
    """Decode a text column of 8-hex-digit ids (or empty = null) to uint32, in C speed.

    The values' bytes sit back to back in Arrow's data buffer, so when every value is
    empty or exactly 8 characters the whole buffer is one hex string that
    ``binascii.a2b_hex`` decodes at once (refusing any non-hex character). Returns None
    when any value is malformed; the caller then takes the checked per-row path.
    """
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if arr.null_count:
        return None
    n = len(arr)
    offsets = np.frombuffer(arr.buffers()[1], dtype=np.int32)[arr.offset : arr.offset + n + 1]
    lengths = np.diff(offsets)
    present = lengths == schema.CRITEO_HEX_DIGITS
    nulls = n - int(np.count_nonzero(present))
    if nulls and not np.all(present | (lengths == 0)):
        return None
    data = arr.buffers()[2]
    hex_bytes = data[int(offsets[0]) : int(offsets[-1])] if data is not None else b""
    try:
        raw = np.frombuffer(binascii.a2b_hex(memoryview(hex_bytes)), dtype=">u4")
    except (binascii.Error, ValueError):
        return None
    if not nulls:
        return pa.array(raw.astype(np.uint32), type=pa.uint32())
    # Scatter by index and pack the validity bits directly: a boolean-mask assignment
    # and pa.array(mask=...) take about twice as long on a 16 MiB block.
    values = np.zeros(n, dtype=np.uint32)
    values[np.flatnonzero(present)] = raw
    validity = pa.py_buffer(np.packbits(present, bitorder="little"))
    return pa.Array.from_buffers(
        pa.uint32(), n, [validity, pa.py_buffer(values)], null_count=nulls
    )
