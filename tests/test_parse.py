"""Unit tests of fae_data.parse: hex decoding and the checked, per-row typing path."""

from __future__ import annotations

import polars as pl
import pyarrow as pa
import pytest

from fae_data import schema
from fae_data.parse import decode_hex32, finish_fast, parser_types, rules_for, type_rows

# --- decode_hex32 ---------------------------------------------------------------------


def test_decode_hex32_valid_empty_and_uppercase() -> None:
    got = decode_hex32(pa.array(["68fd1e64", "", "FFFFFFFF", "00000000", "0a0B0c0D"]))
    assert got is not None
    assert got.type == pa.uint32()
    assert got.to_pylist() == [0x68FD1E64, None, 0xFFFFFFFF, 0, 0x0A0B0C0D]


@pytest.mark.parametrize(
    "bad",
    ["68fd1e6g", "68fd1e6", "68fd1e640", "68fd 1e6", "+8fd1e64", "0x8fd1e6", "68fd1e6\x00"],
)
def test_decode_hex32_refuses_malformed_values(bad: str) -> None:
    assert decode_hex32(pa.array(["68fd1e64", bad, ""])) is None


def test_decode_hex32_refuses_nulls() -> None:
    assert decode_hex32(pa.array(["68fd1e64", None])) is None


def test_decode_hex32_sliced_and_chunked_arrays() -> None:
    arr = pa.array(["zzzz", "00000001", "", "ffffffff", "zz"])
    got = decode_hex32(arr.slice(1, 3))
    assert got is not None and got.to_pylist() == [1, None, 0xFFFFFFFF]
    chunked = pa.chunked_array([pa.array(["00000002"]), pa.array(["", "00000003"])])
    got = decode_hex32(chunked)
    assert got is not None and got.to_pylist() == [2, None, 3]


def test_decode_hex32_all_empty_and_no_rows() -> None:
    got = decode_hex32(pa.array(["", ""]))
    assert got is not None and got.to_pylist() == [None, None]
    got = decode_hex32(pa.array([], pa.string()))
    assert got is not None and got.to_pylist() == []


# --- type_rows: Criteo ----------------------------------------------------------------

GOOD_CRITEO = ["1", *(["7"] * schema.CRITEO_NUM_DENSE), *(["0000000a"] * schema.CRITEO_NUM_SPARSE)]


def criteo_text(*overrides: dict[str, str]) -> pl.DataFrame:
    """One text row per override dict, every other field taken from GOOD_CRITEO."""
    rows = []
    for o in overrides:
        row = dict(zip(schema.CRITEO_COLUMNS, GOOD_CRITEO, strict=True))
        row.update(o)
        rows.append(row)
    return pl.DataFrame(rows, schema={c: pl.String for c in schema.CRITEO_COLUMNS})


def test_type_rows_criteo_good_values_and_nulls() -> None:
    text = criteo_text(
        {},
        {"label": "0", "I1": "", "I2": "-1", "I3": "+5", "I4": "007", "C1": "", "C2": "FFFFFFFF"},
        {"I5": "2147483647", "I6": "-2147483648"},
    )
    typed, faults = type_rows(text, schema.CRITEO)
    assert faults.height == 0
    assert typed.schema["label"] == pl.Int8
    assert typed.schema["I1"] == pl.Int32
    assert typed.schema["C1"] == pl.UInt32
    assert typed["label"].to_list() == [1, 0, 1]
    assert typed["I1"].to_list() == [7, None, 7]
    assert typed["I2"].to_list() == [7, -1, 7]
    assert typed["I3"].to_list() == [7, 5, 7]
    assert typed["I4"].to_list() == [7, 7, 7]
    assert typed["I5"].to_list() == [7, 7, 2**31 - 1]
    assert typed["I6"].to_list() == [7, 7, -(2**31)]
    assert typed["C1"].to_list() == [10, None, 10]
    assert typed["C2"].to_list() == [10, 0xFFFFFFFF, 10]


@pytest.mark.parametrize(
    ("override", "reason"),
    [
        ({"label": "2"}, "label (field 1): expected 0 or 1, found '2'"),
        ({"label": ""}, "label (field 1): expected 0 or 1, found ''"),
        ({"label": "00"}, "label (field 1): expected 0 or 1, found '00'"),
        ({"label": "-0"}, "label (field 1): expected 0 or 1, found '-0'"),
        ({"I1": "1.5"}, "I1 (field 2): expected an integer in the int32 range or empty, found '1.5'"),
        ({"I1": "abc"}, "I1 (field 2): expected an integer in the int32 range or empty, found 'abc'"),
        ({"I2": "2147483648"}, "I2 (field 3): expected an integer in the int32 range or empty"),
        ({"I13": "-2147483649"}, "I13 (field 14): expected an integer in the int32 range"),
        ({"I3": " 5"}, "I3 (field 4): expected an integer in the int32 range or empty, found ' 5'"),
        ({"I4": "99999999999999999999"}, "I4 (field 5): expected an integer"),
        ({"C1": "68fd1e6g"}, "C1 (field 15): expected 8 hex digits or empty, found '68fd1e6g'"),
        ({"C2": "68fd1e640"}, "C2 (field 16): expected 8 hex digits or empty, found '68fd1e640'"),
        ({"C26": "68fd1e6"}, "C26 (field 40): expected 8 hex digits or empty, found '68fd1e6'"),
        ({"C3": "0x8fd1e6"}, "C3 (field 17): expected 8 hex digits"),
        # the first bad column names the row
        ({"I1": "x", "C1": "y", "label": "3"}, "label (field 1): expected 0 or 1, found '3'"),
        ({"C5": "y", "I9": "x"}, "I9 (field 10): expected an integer"),
    ],
)
def test_type_rows_criteo_fault_reasons(override: dict[str, str], reason: str) -> None:
    text = criteo_text({}, override, {"label": "0"})
    typed, faults = type_rows(text, schema.CRITEO)
    assert typed["label"].to_list() == [1, 0]
    assert faults["row"].to_list() == [1]
    assert faults["reason"][0].startswith(reason)


def test_type_rows_all_bad() -> None:
    typed, faults = type_rows(criteo_text({"label": "x"}, {"C1": "?"}), schema.CRITEO)
    assert typed.height == 0
    assert typed.columns == list(schema.CRITEO_COLUMNS)
    assert faults["row"].to_list() == [0, 1]


def test_type_rows_multi_chunk_frames() -> None:
    """Arrow hands over several record batches per block; all-bad and mixed chunks work."""
    for overrides in (
        [{"label": "x"}, {"label": "y"}],  # every row bad (polars once panicked here)
        [{"C1": "?"}, {}, {"I1": "z"}],
        [{}, {}],
    ):
        parts = [criteo_text(o) for o in overrides]
        text = pl.concat(parts, rechunk=False)
        assert text.n_chunks() == len(parts)
        typed, faults = type_rows(text, schema.CRITEO)
        bad = [i for i, o in enumerate(overrides) if o]
        assert faults["row"].to_list() == bad
        assert typed.height == len(overrides) - len(bad)


# --- type_rows: Taobao ----------------------------------------------------------------


def taobao_text(rows: list[list[str]]) -> pl.DataFrame:
    return pl.DataFrame(
        rows, schema={c: pl.String for c in schema.TAOBAO_COLUMNS}, orient="row"
    )


def test_type_rows_taobao() -> None:
    text = taobao_text(
        [
            ["1", "2", "3", "pv", "1511658000"],
            ["-1", "2", "3", "pv", "1511658000"],
            ["4294967296", "2", "3", "pv", "1511658000"],
            ["4294967295", "0", "3", "fav", "-5"],
            ["1", "", "3", "pv", "1511658000"],
            ["1", "2", "3", "click", "1511658000"],
            ["1", "2", "3", "PV", "1511658000"],
            ["1", "2", "3", "buy", "2017-11-26"],
        ]
    )
    typed, faults = type_rows(text, schema.TAOBAO)
    assert typed.rows() == [(1, 2, 3, "pv", 1511658000), (4294967295, 0, 3, "fav", -5)]
    assert typed.schema["user_id"] == pl.UInt32
    assert typed.schema["timestamp"] == pl.Int64
    assert faults["row"].to_list() == [1, 2, 4, 5, 6, 7]
    reasons = faults["reason"].to_list()
    assert reasons[0] == "user_id (field 1): expected an id in 0..4294967295, found '-1'"
    assert reasons[1].startswith("user_id (field 1):")
    assert reasons[2] == "item_id (field 2): expected an id in 0..4294967295, found ''"
    assert reasons[3] == "behavior_type (field 4): expected one of pv/buy/cart/fav, found 'click'"
    assert reasons[4].startswith("behavior_type (field 4):")
    assert reasons[5] == "timestamp (field 5): expected an integer (unix seconds), found '2017-11-26'"


def test_rules_follow_column_order() -> None:
    assert tuple(r.name for r in rules_for(schema.CRITEO)) == schema.CRITEO_COLUMNS
    assert tuple(r.name for r in rules_for(schema.TAOBAO)) == schema.TAOBAO_COLUMNS


# --- the fast path agrees with the checked path ---------------------------------------


def test_finish_fast_refuses_what_the_checked_path_refuses() -> None:
    """Labels are compared as text on the fast path too ("00" is not a label)."""
    types = parser_types(schema.CRITEO)
    assert types["label"] == pa.string()
    assert types["C1"] == pa.string()
    assert types["I1"] == pa.int32()

    def table(label: str) -> pa.Table:
        cols = {c: pa.array([v]).cast(types[c]) for c, v in zip(schema.CRITEO_COLUMNS, GOOD_CRITEO, strict=True)}
        cols["label"] = pa.array([label])
        return pa.table(cols)

    ok = finish_fast(table("1"), schema.CRITEO)
    assert ok is not None and ok.schema == schema.CRITEO_SCHEMA
    assert ok.column("label").to_pylist() == [1]
    assert ok.column("C1").to_pylist() == [10]
    for bad in ("00", "2", "", "-0"):
        assert finish_fast(table(bad), schema.CRITEO) is None, bad
