"""Tests of the streaming ingest (fae_data.ingest) on real samples and a fault corpus.

Expected values come from ``ref_parse``, a deliberately naive plain-Python parser written
here from the data contract (split on LF, drop one CR, split on the delimiter, int() and
int(x, 16)); it shares no code with the ingest. Modified samples are written to tmp_path,
the real samples are read in place.
"""

from __future__ import annotations

import bisect
import gzip
import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fsspec
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fae_data import schema, synth
from fae_data.errors import InputError, StorageError
from fae_data.ingest import IngestParams, PartitionResult, ingest_source
from fae_data.partition import read_marker
from fae_data.storage import Storage

REPO = Path(__file__).resolve().parents[1]
KAGGLE = "criteo_kaggle_train_head1000.tsv"
TB1 = "criteo_1tb_day0_sample8324.tsv"
DEEPCTR = "criteo_deepctr_sample200.csv"
TAOBAO_TIME = "taobao_userbehavior_timeorder110k.csv"
TAOBAO_USER = "taobao_userbehavior_userorder84k.csv"
MARKER = "_partition.json"
SMALL_BLOCK = 1 << 16

# --- the naive reference parser -------------------------------------------------------

CRITEO_COLS = ["label"] + [f"I{i}" for i in range(1, 14)] + [f"C{i}" for i in range(1, 27)]
TAOBAO_COLS = ["user_id", "item_id", "category_id", "behavior_type", "timestamp"]
HEX = set(b"0123456789abcdefABCDEF")
DIGITS = set(b"0123456789")


def ref_int(text: bytes, lo: int, hi: int) -> int:
    """A decimal integer (optional sign, ASCII digits only) in [lo, hi], else ValueError."""
    body = text[1:] if text[:1] in (b"+", b"-") else text
    if not body or not set(body) <= DIGITS:
        raise ValueError(text)
    value = int(text)
    if not lo <= value <= hi:
        raise ValueError(text)
    return value


def ref_criteo(f: list[bytes]) -> tuple[Any, ...] | str:
    if f[0] not in (b"0", b"1"):
        return "label"
    row: list[Any] = [int(f[0])]
    for i in range(1, 14):
        if f[i] == b"":
            row.append(None)
            continue
        try:
            row.append(ref_int(f[i], -(2**31), 2**31 - 1))
        except ValueError:
            return f"I{i}"
    for i in range(14, 40):
        if f[i] == b"":
            row.append(None)
        elif len(f[i]) == 8 and set(f[i]) <= HEX:
            row.append(int(f[i], 16))
        else:
            return f"C{i - 13}"
    return tuple(row)


def ref_taobao(f: list[bytes]) -> tuple[Any, ...] | str:
    row: list[Any] = []
    for name, text in zip(TAOBAO_COLS[:3], f[:3], strict=True):
        try:
            row.append(ref_int(text, 0, 2**32 - 1))
        except ValueError:
            return name
    if f[3] not in (b"pv", b"buy", b"cart", b"fav"):
        return "behavior_type"
    row.append(f[3].decode())
    try:
        row.append(ref_int(f[4], -(2**63), 2**63 - 1))
    except ValueError:
        return "timestamp"
    return tuple(row)


def ref_parse(data: bytes, kind: str) -> tuple[list[tuple[Any, ...]], list[tuple[int, bytes, str]]]:
    """(good rows as tuples, rejects as (line, raw, reason class)), naively."""
    delim, width, typer_ = (b"\t", 40, ref_criteo) if kind == "criteo" else (b",", 5, ref_taobao)
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    rows, rejects = [], []
    for number, line in enumerate(lines, start=1):
        if line.endswith(b"\r"):
            line = line[:-1]
        verdict: tuple[Any, ...] | str
        if any(b >= 0x80 for b in line):
            try:
                line.decode("utf-8")
                verdict = "nonascii"
            except UnicodeDecodeError:
                verdict = "utf8"
        elif any(b < 0x20 and b != delim[0] for b in line):
            verdict = "control"
        else:
            fields = line.split(delim)
            verdict = f"fields:{len(fields)}" if len(fields) != width else typer_(fields)
        if isinstance(verdict, str):
            rejects.append((number, line, verdict))
        else:
            rows.append(verdict)
    return rows, rejects


def reason_class(reason: str) -> str:
    """The ingest's reason text mapped to the reference's reason classes."""
    if reason.startswith("invalid UTF-8 at column "):
        return "utf8"
    if reason.startswith("non-ASCII characters"):
        return "nonascii"
    if reason.startswith("control character 0x"):
        return "control"
    m = re.fullmatch(r"expected \d+ fields, found (\d+)", reason)
    if m:
        return f"fields:{m.group(1)}"
    m = re.match(r"(\w+) \(field \d+\): expected ", reason)
    assert m, reason
    return m.group(1)


# --- helpers --------------------------------------------------------------------------


def ingest(src: Path | str, root: Path, kind: str = "criteo", partition: str = "p",
           **params: Any) -> PartitionResult:
    return ingest_source(str(src), Storage(str(root)), kind, partition,
                         IngestParams(kind=kind, **params))


def part_dir(root: Path, kind: str = "criteo", partition: str = "p") -> Path:
    return root / "ingested" / kind / partition


def load(root: Path, kind: str = "criteo", partition: str = "p") -> tuple[dict[str, Any], pa.Table, pa.Table]:
    """(marker, data table, rejects table) of a committed partition."""
    folder = part_dir(root, kind, partition)
    marker = json.loads((folder / MARKER).read_text())
    return marker, pq.read_table(folder / marker["data"]), pq.read_table(folder / marker["rejects"])


def rows_of(table: pa.Table) -> list[tuple[Any, ...]]:
    return list(zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True))


def rejects_of(table: pa.Table) -> list[tuple[int, bytes, str]]:
    return [(r["line"], r["raw"], r["reason"]) for r in table.to_pylist()]


def assert_matches_reference(root: Path, data: bytes, kind: str, result: PartitionResult,
                             partition: str = "p") -> None:
    """Every value of every row and every reject equals the naive parser's verdict."""
    exp_rows, exp_rejects = ref_parse(data, kind)
    marker, table, rejects = load(root, kind, partition)
    expected_schema = schema.CRITEO_SCHEMA if kind == "criteo" else schema.TAOBAO_SCHEMA
    assert table.schema.remove_metadata().equals(expected_schema)
    assert rejects.schema.remove_metadata().equals(schema.REJECTS_SCHEMA)
    assert table.column_names == (CRITEO_COLS if kind == "criteo" else TAOBAO_COLS)
    assert rows_of(table) == exp_rows
    got = [(line, raw, reason_class(reason)) for line, raw, reason in rejects_of(rejects)]
    assert got == exp_rejects
    n_lines = len(exp_rows) + len(exp_rejects)
    assert (result.rows_in, result.rows_ok, result.rows_rejected) == (
        n_lines, len(exp_rows), len(exp_rejects))
    assert result.rows_in == result.rows_ok + result.rows_rejected
    assert marker["rows_in"] == marker["rows_ok"] + marker["rows_rejected"] == n_lines
    assert sum(marker["reject_reasons"].values()) == len(exp_rejects)
    assert set(rejects.column("source").to_pylist()) <= {result.source}


def folder_files(root: Path, kind: str = "criteo", partition: str = "p") -> list[str]:
    folder = part_dir(root, kind, partition)
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --- real samples ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "kind", "rows"),
    [(KAGGLE, "criteo", 1000), (TB1, "criteo", 8324), (TAOBAO_TIME, "taobao", 110300),
     (TAOBAO_USER, "taobao", 84475)],
)
def test_real_samples_match_reference(shared_data: Path, tmp_path: Path, name: str,
                                      kind: str, rows: int) -> None:
    src = shared_data / name
    result = ingest(src, tmp_path, kind)
    assert result.status == "written"
    assert result.rows_in == rows
    assert result.sha256 == hashlib.sha256(src.read_bytes()).hexdigest()
    assert_matches_reference(tmp_path, src.read_bytes(), kind, result)
    assert folder_files(tmp_path, kind) == sorted(
        [MARKER, load(tmp_path, kind)[0]["data"], load(tmp_path, kind)[0]["rejects"]])


def test_real_kaggle_spot_values(shared_data: Path, tmp_path: Path) -> None:
    """Line 1 as printed in the data README, typed: empty I12 is null, C hex is UInt32."""
    ingest(shared_data / KAGGLE, tmp_path)
    _, table, _ = load(tmp_path)
    first = table.slice(0, 1).to_pylist()[0]
    assert first["label"] == 0
    assert [first[f"I{i}"] for i in range(1, 14)] == [1, 1, 5, 0, 1382, 4, 15, 2, 181, 1, 2, None, 2]
    assert first["C1"] == 0x68FD1E64 and first["C26"] == 0x9727DD16
    assert first["C22"] is None
    assert sum(table.column("label").to_pylist()) == 205  # README: label mean 0.205


# --- one fault per case, on the real Kaggle sample ------------------------------------


def set_field(line: bytes, index: int, value: bytes) -> bytes:
    fields = line.split(b"\t")
    fields[index] = value
    return b"\t".join(fields)


def at_col(template: str, needle: bytes) -> Callable[[bytes], str]:
    """A reason naming the 1-based column of ``needle`` in the raw line."""
    return lambda raw: template.format(raw.index(needle) + 1)


Mutation = dict[int, Callable[[bytes], bytes]]

# (case, {0-based line index: mutation}, [(reason prefix or callable(raw) -> reason prefix)])
FAULTS: list[tuple[str, Mutation, list[str | Callable[[bytes], str]]]] = [
    ("too few fields", {9: lambda ln: ln.rsplit(b"\t", 1)[0]}, ["expected 40 fields, found 39"]),
    ("too many fields", {19: lambda ln: ln + b"\tx"}, ["expected 40 fields, found 41"]),
    ("non-hex C", {29: lambda ln: set_field(ln, 14, b"68fd1e6g")},
     ["C1 (field 15): expected 8 hex digits or empty, found '68fd1e6g'"]),
    ("9-char C", {39: lambda ln: set_field(ln, 15, b"80e26c9b0")},
     ["C2 (field 16): expected 8 hex digits or empty, found '80e26c9b0'"]),
    ("7-char C", {41: lambda ln: set_field(ln, 39, b"9727dd1")},
     ["C26 (field 40): expected 8 hex digits or empty, found '9727dd1'"]),
    ("non-integer I", {49: lambda ln: set_field(ln, 1, b"1.5")},
     ["I1 (field 2): expected an integer in the int32 range or empty, found '1.5'"]),
    ("I overflow", {59: lambda ln: set_field(ln, 2, b"2147483648")},
     ["I2 (field 3): expected an integer in the int32 range or empty, found '2147483648'"]),
    ("I underflow", {61: lambda ln: set_field(ln, 13, b"-2147483649")},
     ["I13 (field 14): expected an integer in the int32 range or empty, found '-2147483649'"]),
    ("label 2", {69: lambda ln: set_field(ln, 0, b"2")},
     ["label (field 1): expected 0 or 1, found '2'"]),
    ("label empty", {71: lambda ln: set_field(ln, 0, b"")},
     ["label (field 1): expected 0 or 1, found ''"]),
    ("invalid UTF-8", {79: lambda ln: set_field(ln, 16, b"ab\xff\xfe1234")},
     [at_col("invalid UTF-8 at column {}", b"\xff")]),
    ("valid UTF-8 but not ASCII", {81: lambda ln: set_field(ln, 16, "abcdéf12".encode())},
     ["non-ASCII characters (no field may hold them)"]),
    ("NUL", {89: lambda ln: set_field(ln, 3, b"1\x002")},
     [at_col("control character 0x00 at column {}", b"\x00")]),
    ("other control char", {91: lambda ln: set_field(ln, 20, b"\x1b[31m")},
     [at_col("control character 0x1b at column {}", b"\x1b")]),
    ("bare CR mid-line", {109: lambda ln: set_field(ln, 5, b"12\r3")},
     [at_col("control character 0x0d at column {}", b"\r")]),
    ("first line", {0: lambda ln: set_field(ln, 14, b"zzzzzzzz")},
     ["C1 (field 15): expected 8 hex digits or empty, found 'zzzzzzzz'"]),
    ("last line", {999: lambda ln: ln.rsplit(b"\t", 2)[0]}, ["expected 40 fields, found 38"]),
    ("three faults in order",
     {700: lambda ln: set_field(ln, 0, b"x"), 300: lambda ln: ln + b"\t",
      301: lambda ln: set_field(ln, 26, b"ABCDEFGZ")},
     ["expected 40 fields, found 41", "C13 (field 27): expected 8 hex digits",
      "label (field 1): expected 0 or 1, found 'x'"]),
]


@pytest.fixture(scope="module")
def kaggle_lines(shared_data: Path) -> list[bytes]:
    data = (shared_data / KAGGLE).read_bytes()
    assert data.endswith(b"\n")
    return data[:-1].split(b"\n")


@pytest.fixture(scope="module")
def kaggle_rows(shared_data: Path) -> list[tuple[Any, ...]]:
    rows, rejects = ref_parse((shared_data / KAGGLE).read_bytes(), "criteo")
    assert not rejects and len(rows) == 1000
    return rows


@pytest.mark.parametrize(("case", "mutation", "reasons"), FAULTS, ids=[f[0] for f in FAULTS])
def test_fault_corpus(tmp_path: Path, kaggle_lines: list[bytes], kaggle_rows: list[tuple[Any, ...]],
                      case: str, mutation: Mutation, reasons: list[Any]) -> None:
    lines = list(kaggle_lines)
    for i, fn in mutation.items():
        lines[i] = fn(lines[i])
    data = b"\n".join(lines) + b"\n"
    src = tmp_path / "faulty.tsv"
    src.write_bytes(data)
    result = ingest(src, tmp_path / "root")
    bad = sorted(mutation)
    assert (result.rows_in, result.rows_ok, result.rows_rejected) == (1000, 1000 - len(bad), len(bad))
    _, table, rejects = load(tmp_path / "root")
    got = rejects_of(rejects)
    assert [line for line, _, _ in got] == [i + 1 for i in bad]
    for (line, raw, reason), expected in zip(got, reasons, strict=True):
        assert raw == lines[line - 1]
        want = expected(raw) if callable(expected) else expected
        assert reason.startswith(want), (reason, want)
    assert rejects.column("source").to_pylist() == [str(src)] * len(bad)
    # the good rows are exactly the clean sample's rows minus the faulty lines
    assert rows_of(table) == [r for i, r in enumerate(kaggle_rows) if i not in mutation]
    assert_matches_reference(tmp_path / "root", data, "criteo", result)


def test_empty_lines_are_rejected(tmp_path: Path, kaggle_lines: list[bytes],
                                  kaggle_rows: list[tuple[Any, ...]]) -> None:
    lines = kaggle_lines[:100] + [b""] + kaggle_lines[100:] + [b""]
    data = b"\n".join(lines) + b"\n"
    src = tmp_path / "empty_lines.tsv"
    src.write_bytes(data)
    result = ingest(src, tmp_path / "root")
    assert (result.rows_in, result.rows_ok, result.rows_rejected) == (1002, 1000, 2)
    _, table, rejects = load(tmp_path / "root")
    assert rejects_of(rejects) == [(101, b"", "expected 40 fields, found 1"),
                                   (1002, b"", "expected 40 fields, found 1")]
    assert rows_of(table) == kaggle_rows


@pytest.mark.parametrize(
    "shape",
    ["crlf", "no final newline", "crlf and no final newline", "crlf last line only"],
)
def test_line_endings_are_fine(tmp_path: Path, kaggle_lines: list[bytes],
                               kaggle_rows: list[tuple[Any, ...]], shape: str) -> None:
    if shape == "crlf":
        data = b"\r\n".join(kaggle_lines) + b"\r\n"
    elif shape == "no final newline":
        data = b"\n".join(kaggle_lines)
    elif shape == "crlf and no final newline":
        data = b"\r\n".join(kaggle_lines)
    else:
        data = b"\n".join(kaggle_lines) + b"\r\n"
    src = tmp_path / "endings.tsv"
    src.write_bytes(data)
    result = ingest(src, tmp_path / "root")
    assert (result.rows_in, result.rows_ok, result.rows_rejected) == (1000, 1000, 0)
    assert rows_of(load(tmp_path / "root")[1]) == kaggle_rows


def test_crlf_reject_raw_has_no_line_ending(tmp_path: Path, kaggle_lines: list[bytes]) -> None:
    lines = list(kaggle_lines)
    lines[500] = set_field(lines[500], 0, b"7")
    src = tmp_path / "crlf_bad.tsv"
    src.write_bytes(b"\r\n".join(lines))
    result = ingest(src, tmp_path / "root")
    assert result.rows_rejected == 1
    assert rejects_of(load(tmp_path / "root")[2]) == [
        (501, lines[500], "label (field 1): expected 0 or 1, found '7'")]


@pytest.mark.parametrize(
    ("field", "value"),
    [(0, b"00"), (0, b"-0"), (0, b" 1"), (0, b"1 "), (1, b" 5"), (1, b"5 "), (1, b"+5"),
     (1, b"05"), (1, b"-0"), (14, b"68FD1E64"), (14, b" 8fd1e64"), (2, b"\x0b5"), (2, b"5\x7f"),
     (1, b"0x10"), (2, b"0XFFFFFFFF"), (14, b"0x8fd1e6")],
)
def test_verdict_does_not_depend_on_neighbours(tmp_path: Path, kaggle_lines: list[bytes],
                                               field: int, value: bytes) -> None:
    """A line gets the same verdict alone in a clean block or beside a broken line.

    (Clean blocks take Arrow's fast path, the others the checked path; both must agree.)
    """
    lines = list(kaggle_lines)
    lines[500] = set_field(lines[500], field, value)
    outcomes = []
    for neighbour in (False, True):
        variant = list(lines)
        if neighbour:
            variant[600] = variant[600] + b"\t"
        src = tmp_path / f"n{neighbour}.tsv"
        src.write_bytes(b"\n".join(variant) + b"\n")
        root = tmp_path / f"root{neighbour}"
        ingest(src, root)
        _, table, rejects = load(root)
        rejected = {line: reason for line, _, reason in rejects_of(rejects) if line == 501}
        ok = rows_of(table)
        outcomes.append((rejected, ok[500] if not rejected else None))
    assert outcomes[0] == outcomes[1]


def test_taobao_faults(shared_data: Path, tmp_path: Path) -> None:
    lines = (shared_data / TAOBAO_USER).read_bytes()[:-1].split(b"\n")[:2000]
    lines[10] = b"-1,2,3,pv,1511658000"
    lines[11] = b"1,4294967296,3,pv,1511658000"
    lines[12] = b"1,2,3,click,1511658000"
    lines[13] = b"1,2,3,pv,2017-11-26"
    lines[14] = b"1,2,3,pv"
    lines[15] = b"1,2,3\t,pv,1511658000"
    data = b"\n".join(lines) + b"\n"
    src = tmp_path / "tb.csv"
    src.write_bytes(data)
    result = ingest(src, tmp_path / "root", "taobao", max_reject_fraction=0.01)
    assert (result.rows_in, result.rows_ok, result.rows_rejected) == (2000, 1994, 6)
    reasons = [r for _, _, r in rejects_of(load(tmp_path / "root", "taobao")[2])]
    assert reasons == [
        "user_id (field 1): expected an id in 0..4294967295, found '-1'",
        "item_id (field 2): expected an id in 0..4294967295, found '4294967296'",
        "behavior_type (field 4): expected one of pv/buy/cart/fav, found 'click'",
        "timestamp (field 5): expected an integer (unix seconds), found '2017-11-26'",
        "expected 5 fields, found 4",
        "control character 0x09 at column 6",
    ]
    assert_matches_reference(tmp_path / "root", data, "taobao", result)


def test_hex_integers_are_refused_in_a_clean_block(shared_data: Path, tmp_path: Path) -> None:
    """Arrow's integer parser reads "0x10" as 16; a line with one is refused even when
    every other line of its block is clean (once stored 0xFFFFFFFF as -1)."""
    lines = (shared_data / TAOBAO_USER).read_bytes()[:-1].split(b"\n")[:500]
    lines[7] = b"0x10,0xFF,3,pv,1511658000"
    src = tmp_path / "tb.csv"
    src.write_bytes(b"\n".join(lines) + b"\n")
    result = ingest(src, tmp_path / "root", "taobao", max_reject_fraction=0.01)
    assert (result.rows_ok, result.rows_rejected) == (499, 1)
    [(line, _, reason)] = rejects_of(load(tmp_path / "root", "taobao")[2])
    assert (line, reason) == (8, "user_id (field 1): expected an id in 0..4294967295, found '0x10'")


# --- whole-file failures --------------------------------------------------------------


def _header(tmp: Path, shared: Path) -> Path:
    p = tmp / "with_header.tsv"
    p.write_bytes(b"\t".join(c.encode() for c in CRITEO_COLS) + b"\n" + (shared / KAGGLE).read_bytes())
    return p


def _junk(tmp: Path, shared: Path) -> Path:
    p = tmp / "junk.bin"
    p.write_bytes(random.Random(0).randbytes(200_000))
    return p


def _empty(tmp: Path, shared: Path) -> Path:
    p = tmp / "empty.tsv"
    p.write_bytes(b"")
    return p


def _empty_gzip(tmp: Path, shared: Path) -> Path:
    p = tmp / "empty.tsv.gz"
    p.write_bytes(gzip.compress(b""))
    return p


def _truncated_gzip(tmp: Path, shared: Path) -> Path:
    whole = gzip.compress((shared / KAGGLE).read_bytes())
    p = tmp / "truncated.tsv.gz"
    p.write_bytes(whole[: len(whole) // 2])
    return p


def _corrupt_gzip(tmp: Path, shared: Path) -> Path:
    whole = bytearray(gzip.compress((shared / KAGGLE).read_bytes()))
    whole[-8] ^= 0xFF  # the CRC32 of the trailer
    p = tmp / "bad_crc.tsv.gz"
    p.write_bytes(bytes(whole))
    return p


def _missing(tmp: Path, shared: Path) -> Path:
    return tmp / "no_such_file.tsv"


def _folder(tmp: Path, shared: Path) -> Path:
    p = tmp / "day_0.tsv"
    p.mkdir()
    (p / "part-0").write_bytes((shared / KAGGLE).read_bytes())
    return p


def _too_many_rejects(tmp: Path, shared: Path) -> Path:
    lines = (shared / KAGGLE).read_bytes()[:-1].split(b"\n")
    for i in range(100, 1000, 90):  # 10 lines: 1.0% is still allowed ...
        lines[i] = set_field(lines[i], 0, b"9")
    lines[5] = lines[5] + b"\t"  # ... the 11th is not
    p = tmp / "too_many.tsv"
    p.write_bytes(b"\n".join(lines) + b"\n")
    return p


def _deepctr(tmp: Path, shared: Path) -> Path:
    return shared / DEEPCTR  # real file, CSV with a header: not the raw format


def _taobao_as_criteo(tmp: Path, shared: Path) -> Path:
    return shared / TAOBAO_USER


WHOLE_FILE_FAILURES = [
    ("header row", _header, "criteo", r"looks like a header row \('label'"),
    ("binary junk", _junk, "criteo", r"not a criteo file: \d+ of the first \d+ lines are malformed"),
    ("empty file", _empty, "criteo", r"empty file"),
    ("empty gzip", _empty_gzip, "criteo", r"no records found"),
    ("truncated gzip", _truncated_gzip, "criteo", r"corrupt or truncated gzip stream"),
    ("corrupt gzip", _corrupt_gzip, "criteo", r"corrupt or truncated gzip stream"),
    ("missing file", _missing, "criteo", r"no such file"),
    ("folder", _folder, "criteo", r"is a folder, expected one criteo file"),
    ("too many rejects", _too_many_rejects, "criteo",
     r"11 of 1000 lines refused \(1\.10%\), above the allowed 1\.00%"),
    ("deepctr csv", _deepctr, "criteo", r"looks like a header row|not a criteo file"),
    ("taobao as criteo", _taobao_as_criteo, "criteo", r"not a criteo file"),
]


@pytest.mark.parametrize(("case", "make", "kind", "message"), WHOLE_FILE_FAILURES,
                         ids=[c[0] for c in WHOLE_FILE_FAILURES])
def test_whole_file_failures(shared_data: Path, tmp_path: Path, case: str,
                             make: Callable[[Path, Path], Path], kind: str, message: str) -> None:
    src = make(tmp_path, shared_data)
    root = tmp_path / "root"
    with pytest.raises(InputError, match=re.escape(str(src)) + r".*(" + message + ")"):
        ingest(src, root, kind)
    assert folder_files(root, kind) == []  # no marker, no data, no rejects, no temp file


def test_taobao_header_row(shared_data: Path, tmp_path: Path) -> None:
    src = tmp_path / "tb_header.csv"
    src.write_bytes(b"user_id,item_id,category_id,behavior_type,timestamp\n"
                    + (shared_data / TAOBAO_USER).read_bytes())
    with pytest.raises(InputError, match=re.escape(str(src)) + r":1: looks like a header row"):
        ingest(src, tmp_path / "root", "taobao")
    assert folder_files(tmp_path / "root", "taobao") == []


def test_header_with_small_blocks_does_not_hang(shared_data: Path, tmp_path: Path) -> None:
    """A failure on the first block while the reader has already queued the last one.

    (The reader once blocked forever putting its end marker into the full queue.) The
    ingest runs in a daemon thread so a hang fails this test instead of the whole run.
    """
    errors: list[BaseException] = []

    def run() -> None:
        for name in (KAGGLE, TB1):
            src = tmp_path / f"hdr_{name}"
            src.write_bytes(b"label\tI1\n" + (shared_data / name).read_bytes())
            for _ in range(3):
                try:
                    ingest(src, tmp_path / "root", block_bytes=SMALL_BLOCK)
                except BaseException as exc:  # noqa: BLE001 - checked below
                    errors.append(exc)

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), "ingest hung after a first-block failure"
    assert len(errors) == 6
    for exc in errors:
        assert isinstance(exc, InputError) and "looks like a header row" in str(exc)
    assert folder_files(tmp_path / "root") == []


def test_reject_fraction_boundary_and_option(shared_data: Path, tmp_path: Path) -> None:
    lines = (shared_data / KAGGLE).read_bytes()[:-1].split(b"\n")
    for i in range(100, 1000, 90):
        lines[i] = set_field(lines[i], 0, b"9")
    src = tmp_path / "ten_bad.tsv"
    src.write_bytes(b"\n".join(lines) + b"\n")
    result = ingest(src, tmp_path / "root")  # exactly 1.0%: allowed
    assert (result.rows_ok, result.rows_rejected) == (990, 10)
    assert result.reject_reasons == {"label: bad value": 10}
    with pytest.raises(InputError, match=re.escape(str(src)) + r".*10 of 1000 lines refused"):
        ingest(src, tmp_path / "strict", max_reject_fraction=0.005)
    assert folder_files(tmp_path / "strict") == []
    assert ingest(src, tmp_path / "loose", max_reject_fraction=0.5).rows_rejected == 10


def test_failed_replacement_keeps_the_old_partition(shared_data: Path, tmp_path: Path) -> None:
    src = tmp_path / "day.tsv"
    src.write_bytes((shared_data / KAGGLE).read_bytes())
    root = tmp_path / "root"
    ingest(src, root)
    before = {name: (part_dir(root) / name).read_bytes() for name in folder_files(root)}
    src.write_bytes(random.Random(1).randbytes(50_000))
    with pytest.raises(InputError, match=re.escape(str(src)) + ".*not a criteo file"):
        ingest(src, root)
    assert {name: (part_dir(root) / name).read_bytes() for name in folder_files(root)} == before


@pytest.mark.parametrize(
    ("params", "message"),
    [({"kind": "avazu"}, "unknown dataset kind 'avazu'"),
     ({"kind": "criteo", "block_bytes": 1000}, r"block_bytes \(1000\) must be at least 65536"),
     ({"kind": "criteo", "max_reject_fraction": 1.5}, r"max_reject_fraction \(1.5\)")],
)
def test_bad_params(params: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError, match=message):
        IngestParams(**params)


@pytest.mark.parametrize(("dataset", "partition"), [("../x", "p"), ("criteo", "a/b"), ("criteo", ".hidden")])
def test_bad_names(shared_data: Path, tmp_path: Path, dataset: str, partition: str) -> None:
    with pytest.raises(InputError, match="name .* is not allowed"):
        ingest_source(str(shared_data / KAGGLE), Storage(str(tmp_path)), dataset, partition,
                      IngestParams("criteo"))
    assert list(tmp_path.iterdir()) == []


# --- block boundaries, gzip, URLs -----------------------------------------------------


@pytest.fixture(scope="module")
def boundary_file(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, bytes]:
    """The 1TB sample with faults and CRLFs at every 64 KiB offset of the original."""
    data = (shared_data / TB1).read_bytes()
    lines = data[:-1].split(b"\n")
    starts = [0]
    for ln in lines[:-1]:
        starts.append(starts[-1] + len(ln) + 1)
    crlf: set[int] = set()
    for k in range(1, len(data) // SMALL_BLOCK + 1):
        i = bisect.bisect_right(starts, k * SMALL_BLOCK) - 1  # the line holding the offset
        if k % 4 == 0:
            lines[i] = set_field(lines[i], 20, b"nothex!!")
        elif k % 4 == 1:
            lines[i + 1] = lines[i + 1].rsplit(b"\t", 1)[0]
        elif k % 4 == 2:
            crlf |= {i - 1, i, i + 1}
        else:
            lines[i - 1] = set_field(lines[i - 1], 0, b"3")
            lines[i] = set_field(lines[i], 7, b"99999999999")
    out = b"".join(ln + (b"\r\n" if j in crlf else b"\n") for j, ln in enumerate(lines))
    path = tmp_path_factory.mktemp("boundary") / "boundary.tsv"
    path.write_bytes(out)
    return path, out


def test_block_boundaries_give_identical_output(boundary_file: tuple[Path, bytes],
                                                tmp_path: Path) -> None:
    src, data = boundary_file
    small = ingest(src, tmp_path / "small", block_bytes=SMALL_BLOCK)
    odd = ingest(src, tmp_path / "odd", block_bytes=SMALL_BLOCK + 12345)
    big = ingest(src, tmp_path / "big")
    assert small.rows_rejected > 20
    for root, result in ((tmp_path / "small", small), (tmp_path / "odd", odd), (tmp_path / "big", big)):
        assert_matches_reference(root, data, "criteo", result)
    _, t_small, r_small = load(tmp_path / "small")
    _, t_big, r_big = load(tmp_path / "big")
    assert t_small.equals(t_big)
    assert r_small.equals(r_big)
    assert small.reject_reasons == big.reject_reasons


def test_gzip_gives_identical_data(boundary_file: tuple[Path, bytes], shared_data: Path,
                                   tmp_path: Path) -> None:
    src, data = boundary_file
    gz = tmp_path / "boundary.tsv.gz"
    gz.write_bytes(gzip.compress(data, mtime=0))
    # gzip is found by its magic bytes, not its name, and plain text named .gz is plain
    disguised = tmp_path / "gzipped_but_named.tsv"
    disguised.write_bytes(gz.read_bytes())
    plain_named_gz = tmp_path / "plain.tsv.gz"
    plain_named_gz.write_bytes(data)
    ingest(src, tmp_path / "plain")
    _, t_plain, r_plain = load(tmp_path / "plain")
    for i, (path, block) in enumerate([(gz, SMALL_BLOCK), (gz, 32 << 20), (disguised, 32 << 20),
                                       (plain_named_gz, 32 << 20)]):
        root = tmp_path / f"r{i}"
        result = ingest(path, root, block_bytes=block)
        marker, table, rejects = load(root)
        assert table.equals(t_plain)
        assert rejects.drop_columns(["source"]).equals(r_plain.drop_columns(["source"]))
        assert marker["source"]["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
        assert marker["source"]["bytes"] == path.stat().st_size
        assert ingest(path, root, block_bytes=block).status == "unchanged"
        assert result.rows_in == 8324


def test_fsspec_url_sources(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / KAGGLE
    ingest(src, tmp_path / "local")
    _, expected, _ = load(tmp_path / "local")

    url = "file://" + str(src)
    result = ingest(url, tmp_path / "file")
    assert result.source == url
    assert load(tmp_path / "file")[1].equals(expected)

    mem = fsspec.filesystem("memory")
    mem.pipe("/fae-tests/kaggle.tsv.gz", gzip.compress(src.read_bytes()))
    try:
        result = ingest("memory://fae-tests/kaggle.tsv.gz", tmp_path / "mem")
        assert result.rows_ok == 1000
        assert load(tmp_path / "mem")[1].equals(expected)
        assert ingest("memory://fae-tests/kaggle.tsv.gz", tmp_path / "mem").status == "unchanged"
        with pytest.raises(InputError, match="memory://fae-tests/nope.tsv: no such file"):
            ingest("memory://fae-tests/nope.tsv", tmp_path / "mem2")
    finally:
        mem.rm("/fae-tests", recursive=True)


def test_progress_reports_bytes_and_rows(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / TB1
    calls: list[tuple[int, int]] = []
    ingest_source(str(src), Storage(str(tmp_path)), "criteo", "p",
                  IngestParams("criteo", block_bytes=SMALL_BLOCK),
                  progress=lambda nbytes, rows: calls.append((nbytes, rows)))
    assert len(calls) > 10
    assert calls == sorted(calls)
    assert calls[-1][1] == 8324
    assert calls[-1][0] <= src.stat().st_size


# --- idempotency, replacement, crashes ------------------------------------------------


def test_rerun_unchanged_and_replaced(shared_data: Path, tmp_path: Path) -> None:
    src = tmp_path / "day_0.tsv"
    src.write_bytes((shared_data / KAGGLE).read_bytes())
    root = tmp_path / "root"
    first = ingest(src, root)
    assert first.status == "written"
    marker, _, _ = load(root)
    data_file = part_dir(root) / marker["data"]
    stat, content = data_file.stat(), data_file.read_bytes()
    files = folder_files(root)
    marker_bytes = (part_dir(root) / MARKER).read_bytes()

    time.sleep(0.01)
    second = ingest(src, root)
    assert second.status == "unchanged"
    assert (second.rows_in, second.rows_ok, second.sha256) == (first.rows_in, first.rows_ok, first.sha256)
    assert data_file.stat().st_mtime_ns == stat.st_mtime_ns
    assert data_file.read_bytes() == content
    assert folder_files(root) == files
    assert (part_dir(root) / MARKER).read_bytes() == marker_bytes

    lines = src.read_bytes()[:-1].split(b"\n")
    src.write_bytes(b"\n".join(lines[:990]) + b"\n")
    third = ingest(src, root)
    assert third.status == "replaced"
    assert (third.rows_in, third.rows_ok) == (990, 990)
    assert not data_file.exists()
    assert not (part_dir(root) / marker["rejects"]).exists()
    new_marker, table, _ = load(root)
    assert folder_files(root) == sorted([MARKER, new_marker["data"], new_marker["rejects"]])
    assert new_marker["source"]["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    assert table.num_rows == 990


def test_an_overlong_line_is_refused_not_a_crash(tmp_path: Path) -> None:
    """A multi-megabyte line (right field count) is quarantined with its own reason; the
    CSV parser, which works in 1 MiB chunks, never sees it."""
    from fae_data.rawlines import MAX_LINE_BYTES

    good = b"1\t" + b"\t".join([b"1"] * 13) + b"\t" + b"\t".join([b"0000000a"] * 26) + b"\n"
    long = (b"1\t" + b"9" * (3 << 20) + b"\t" + b"\t".join([b"1"] * 12) + b"\t"
            + b"\t".join([b"0000000a"] * 26) + b"\n")
    src = tmp_path / "day_0.tsv"
    src.write_bytes(good * 500 + long + good * 500)
    root = tmp_path / "root"
    result = ingest(src, root)
    assert (result.rows_in, result.rows_ok, result.rows_rejected) == (1001, 1000, 1)
    assert result.reject_reasons == {"line too long": 1}
    _, _, rejects = load(root)
    assert rejects.column("line").to_pylist() == [501]
    assert rejects.column("reason").to_pylist() == [
        f"line of {len(long) - 1} bytes, longer than any record ({MAX_LINE_BYTES} bytes at most)"]
    assert rejects.column("raw").to_pylist() == [long[:-1]]


def test_unchanged_source_is_held_to_a_stricter_reject_limit(tmp_path: Path) -> None:
    """A partition committed under a loose limit is not passed silently under a strict one."""
    good = b"1\t" + b"\t".join([b"1"] * 13) + b"\t" + b"\t".join([b"0000000a"] * 26) + b"\n"
    src = tmp_path / "day_0.tsv"
    src.write_bytes(good * 95 + b"not a record\n" * 5)
    root = tmp_path / "root"
    assert ingest(src, root, max_reject_fraction=0.1).rows_rejected == 5
    marker_bytes = (part_dir(root) / MARKER).read_bytes()
    with pytest.raises(InputError, match=r"5 of 100 lines refused \(5.00%\).*kept as it is"):
        ingest(src, root, max_reject_fraction=0.01)
    assert (part_dir(root) / MARKER).read_bytes() == marker_bytes
    assert ingest(src, root, max_reject_fraction=0.05).status == "unchanged"


def test_rerun_cleans_leftovers_of_a_run_killed_after_commit(shared_data: Path, tmp_path: Path) -> None:
    src = shared_data / KAGGLE
    root = tmp_path / "root"
    ingest(src, root)
    files = folder_files(root)
    # what a run killed between writing the marker and removing replaced files leaves
    (part_dir(root) / "data-0123456789abcdef.parquet").write_bytes(b"old")
    (part_dir(root) / "rejects-0123456789abcdef.parquet").write_bytes(b"old")
    (part_dir(root) / ".tmp-abc-_partition.json").write_bytes(b"{")
    assert ingest(src, root).status == "unchanged"
    assert folder_files(root) == files


def test_a_second_ingest_of_a_partition_waits_for_the_first(shared_data: Path,
                                                             tmp_path: Path) -> None:
    """Each ingest removes the files its partition's marker does not name; two at once
    would remove each other's. On a local root the second waits on a lock file kept
    outside the partition folder (which that clean-up empties)."""
    root = tmp_path / "root"
    storage = Storage(str(root))
    results: list[PartitionResult] = []
    with storage.lock("ingested", "criteo", ".p.lock", what="partition criteo/p"):
        worker = threading.Thread(target=lambda: results.append(ingest(shared_data / KAGGLE,
                                                                       root)))
        worker.start()
        worker.join(timeout=0.5)
        assert worker.is_alive() and not results, "the second ingest waits for the lock"
    worker.join(timeout=120)
    assert [r.status for r in results] == ["written"]
    assert folder_files(root) == sorted([MARKER, *(load(root)[0][k] for k in ("data", "rejects"))])
    assert (root / "ingested" / "criteo" / ".p.lock").exists()


@pytest.mark.parametrize("damage", ["junk data", "no data", "no rejects", "other rows"])
def test_rerun_repairs_a_damaged_partition(shared_data: Path, tmp_path: Path, damage: str) -> None:
    """An unchanged source whose committed files were damaged since is ingested again
    (the footers are checked against the marker), giving what a clean run gives."""
    src = shared_data / KAGGLE
    root = tmp_path / "root"
    ingest(src, root)
    marker, table, rejects = load(root)
    data, rej = part_dir(root) / marker["data"], part_dir(root) / marker["rejects"]
    if damage == "junk data":
        data.write_bytes(b"not parquet")
    elif damage == "no data":
        data.unlink()
    elif damage == "no rejects":
        rej.unlink()
    else:  # a readable file of another length, e.g. copied from elsewhere
        pq.write_table(table.slice(0, 10), data)
    again = ingest(src, root)
    assert again.status == "replaced"
    new_marker, new_table, new_rejects = load(root)
    assert new_table.equals(table) and new_rejects.equals(rejects)
    assert folder_files(root) == sorted([MARKER, new_marker["data"], new_marker["rejects"]])
    assert ingest(src, root).status == "unchanged"


@pytest.mark.parametrize("marker_text", ["{}", "[]", "{bad", "rows"])
def test_rerun_replaces_a_damaged_marker(shared_data: Path, tmp_path: Path,
                                         marker_text: str) -> None:
    """A _partition.json that is not a marker (edited, truncated, or of some other tool)
    is refused by layouts with its name and the remedy, and a rerun of ingest replaces it
    (it once crashed with a KeyError, or refused forever)."""
    src = shared_data / KAGGLE
    root = tmp_path / "root"
    ingest(src, root)
    marker, table, _ = load(root)
    path = part_dir(root) / MARKER
    if marker_text == "rows":
        path.write_text(json.dumps({**marker, "rows_in": "abc"}))
    else:
        path.write_text(marker_text)
    with pytest.raises(StorageError, match=r"_partition.json: not a valid partition marker .*"
                                           r"fae ingest SRC --partition p"):
        read_marker(Storage(str(root)), "criteo", "p")
    again = ingest(src, root)
    assert again.status == "replaced"
    new_marker, new_table, _ = load(root)
    assert new_table.equals(table)
    assert folder_files(root) == sorted([MARKER, new_marker["data"], new_marker["rejects"]])


def test_a_failed_first_ingest_leaves_no_partition_folder(shared_data: Path,
                                                          tmp_path: Path) -> None:
    """Layouts list every folder of a dataset as a partition: an empty one left by a
    failed first ingest (here a truncated gzip) stopped them until removed by hand."""
    import gzip

    root = tmp_path / "root"
    ingest(shared_data / KAGGLE, root, partition="good")
    bad = tmp_path / "bad.tsv.gz"
    bad.write_bytes(gzip.compress((shared_data / KAGGLE).read_bytes())[:5000])
    with pytest.raises(InputError, match="gzip"):
        ingest(bad, root, partition="bad")
    assert sorted(p.name for p in (root / "ingested" / "criteo").iterdir()) == [".bad.lock",
                                                                              ".good.lock", "good"]


@pytest.fixture(scope="module")
def big_synthetic(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("synthetic")
    (path,) = synth.write_criteo(folder, rows=300_000, scale=0.01, seed=3)
    return path


@pytest.fixture(scope="module")
def clean_synthetic_run(big_synthetic: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("clean")
    result = ingest(big_synthetic, root, partition="day_0")
    assert result.rows_in == 300_000
    return root


def _kill_mid_ingest(src: Path, root: Path, min_bytes: int) -> None:
    """Start an ingest in a subprocess and SIGKILL it once its data file has min_bytes."""
    code = (
        "from fae_data.ingest import IngestParams, ingest_source\n"
        "from fae_data.storage import Storage\n"
        f"ingest_source({str(src)!r}, Storage({str(root)!r}), 'criteo', 'day_0',"
        f" IngestParams('criteo', block_bytes={SMALL_BLOCK}))\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-c", code], env=env, cwd=REPO)
    folder = part_dir(root, "criteo", "day_0")
    deadline = time.monotonic() + 60
    try:
        while proc.poll() is None and time.monotonic() < deadline:
            data = list(folder.glob("data-*.parquet")) if folder.exists() else []
            if any(p.stat().st_size >= min_bytes for p in data if p.exists()):
                break
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the ingest finished before it could be killed"


@pytest.mark.parametrize(("min_bytes", "preexisting"), [(0, False), (2 << 20, True)])
def test_kill_and_rerun_equals_clean_run(big_synthetic: Path, clean_synthetic_run: Path,
                                         shared_data: Path, tmp_path: Path, min_bytes: int,
                                         preexisting: bool) -> None:
    root = tmp_path / "root"
    if preexisting:  # an older version of the partition is being replaced when the kill hits
        ingest(shared_data / KAGGLE, root, partition="day_0")
        old = load(root, partition="day_0")[0]
    _kill_mid_ingest(big_synthetic, root, min_bytes)
    leftovers = folder_files(root, partition="day_0")
    assert any(n.startswith("data-") for n in leftovers)
    if preexisting:
        assert load(root, partition="day_0")[0] == old  # the old commit is still intact
    else:
        assert MARKER not in leftovers

    result = ingest(big_synthetic, root, partition="day_0")
    assert result.status == ("replaced" if preexisting else "written")
    assert result.rows_in == result.rows_ok + result.rows_rejected == 300_000
    marker, _, _ = load(root, partition="day_0")
    clean_marker, _, _ = load(clean_synthetic_run, partition="day_0")
    folder, clean_folder = part_dir(root, partition="day_0"), part_dir(clean_synthetic_run, partition="day_0")
    got = pl.read_parquet(folder / marker["data"])
    want = pl.read_parquet(clean_folder / clean_marker["data"])
    assert got.equals(want)
    assert pl.read_parquet(folder / marker["rejects"]).equals(
        pl.read_parquet(clean_folder / clean_marker["rejects"]))
    for key in ("rows_in", "rows_ok", "rows_rejected", "reject_reasons", "source"):
        assert marker[key] == clean_marker[key]
    assert folder_files(root, partition="day_0") == sorted([MARKER, marker["data"], marker["rejects"]])


def test_object_store_root(shared_data: Path, tmp_path: Path) -> None:
    """A non-local storage root (fsspec memory) commits and cleans up the same way."""
    storage = Storage("memory://fae-tests-root")
    try:
        result = ingest_source(str(shared_data / KAGGLE), storage, "criteo", "p",
                               IngestParams("criteo"))
        assert (result.status, result.rows_ok) == ("written", 1000)
        names = storage.listdir("ingested", "criteo", "p")
        assert len(names) == 3 and MARKER in names
        junk = tmp_path / "junk.tsv"
        junk.write_bytes(random.Random(2).randbytes(10_000))
        with pytest.raises(InputError, match=re.escape(str(junk)) + ".*not a criteo file"):
            ingest_source(str(junk), storage, "criteo", "q", IngestParams("criteo"))
        assert storage.listdir("ingested", "criteo", "q") == []
    finally:
        storage.remove("", recursive=True)


# --- byte order marks, names, the recorded source ----------------------------------------

BOM = b"\xef\xbb\xbf"


@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gzip"])
@pytest.mark.parametrize(("name", "kind"), [(KAGGLE, "criteo"), (TAOBAO_USER, "taobao")])
def test_a_leading_bom_is_dropped(shared_data: Path, tmp_path: Path, name: str, kind: str,
                                  gz: bool) -> None:
    """A UTF-8 BOM before the first record (Excel, Notepad) is not part of the data: the
    rows are those of the same file without it, and the first line is not refused."""
    data = (shared_data / name).read_bytes()
    src = tmp_path / ("bom.txt.gz" if gz else "bom.txt")
    src.write_bytes(gzip.compress(BOM + data) if gz else BOM + data)
    result = ingest(src, tmp_path / "root", kind)
    assert_matches_reference(tmp_path / "root", data, kind, result)  # the file without BOM
    assert result.rows_rejected == 0
    assert result.rows_in == result.rows_ok + result.rows_rejected == data.count(b"\n")
    # the checksum is of the file as stored, BOM included
    marker = load(tmp_path / "root", kind)[0]
    assert marker["source"]["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()


@pytest.mark.parametrize(("kind", "header", "sample"), [
    ("criteo", b"\t".join(c.encode() for c in CRITEO_COLS), KAGGLE),
    ("taobao", b"user_id,item_id,category_id,behavior_type,timestamp", TAOBAO_USER),
])
def test_a_header_after_a_bom_is_still_a_header(shared_data: Path, tmp_path: Path, kind: str,
                                                header: bytes, sample: str) -> None:
    src = tmp_path / "bom_header.txt"
    src.write_bytes(BOM + header + b"\n" + (shared_data / sample).read_bytes())
    with pytest.raises(InputError, match=re.escape(str(src)) + r":1: looks like a header row"):
        ingest(src, tmp_path / "root", kind)
    assert folder_files(tmp_path / "root", kind) == []


def test_a_bom_after_the_start_is_data(shared_data: Path, tmp_path: Path) -> None:
    """Only the file's first bytes may be a BOM; one further in (two files concatenated)
    is a malformed record like any other."""
    lines = (shared_data / KAGGLE).read_bytes().split(b"\n")
    lines[1] = BOM + lines[1]
    data = b"\n".join(lines)
    src = tmp_path / "mid_bom.tsv"
    src.write_bytes(data)
    result = ingest(src, tmp_path / "root")
    assert_matches_reference(tmp_path / "root", data, "criteo", result)
    assert result.rows_rejected == 1


@pytest.mark.parametrize("what", ["dataset", "partition"])
def test_overlong_names_are_refused_up_front(shared_data: Path, tmp_path: Path,
                                            what: str) -> None:
    """A name is part of file names (``.<partition>.lock``), which have at most 255 bytes:
    refused by the name check, with the limit, before anything is written."""
    long = "d" * 250
    names = {"dataset": "criteo", "partition": "p", what: long}
    with pytest.raises(InputError, match=rf"{what} name 'd+'\.\.\. is 250 characters long, "
                                         r"more than the 128 allowed"):
        ingest_source(str(shared_data / KAGGLE), Storage(str(tmp_path)), names["dataset"],
                      names["partition"], IngestParams("criteo"))
    assert list(tmp_path.iterdir()) == []
    names[what] = "d" * 128  # the longest allowed name works end to end
    result = ingest_source(str(shared_data / KAGGLE), Storage(str(tmp_path)),
                           names["dataset"], names["partition"], IngestParams("criteo"))
    assert result.rows_ok == 1000


def test_an_empty_dataset_name_is_refused(shared_data: Path, tmp_path: Path) -> None:
    from pipelines.ingest import run_ingest

    with pytest.raises(InputError, match="dataset name is empty"):
        run_ingest([str(shared_data / KAGGLE)], str(tmp_path), IngestParams("criteo"),
                   dataset="")
    assert list(tmp_path.iterdir()) == []


def test_an_empty_root_is_refused(shared_data: Path, tmp_path: Path,
                                  monkeypatch: pytest.MonkeyPatch) -> None:
    from pipelines.ingest import run_ingest

    monkeypatch.chdir(tmp_path)  # an empty root used to mean the current folder
    with pytest.raises(InputError, match=r"storage root '' is empty"):
        run_ingest([str(shared_data / KAGGLE)], "", IngestParams("criteo"))
    assert list(tmp_path.iterdir()) == []


def test_the_marker_records_the_absolute_source(shared_data: Path, tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """A relative path means nothing to a later reader: the marker records the file's
    absolute path (links resolved); a URL is recorded as given."""
    real = tmp_path / "landing" / "day_3.tsv"
    real.parent.mkdir()
    real.write_bytes((shared_data / KAGGLE).read_bytes())
    (tmp_path / "latest.tsv").symlink_to(real)
    monkeypatch.chdir(tmp_path)
    for given, partition in (("landing/day_3.tsv", "a"), ("latest.tsv", "b"),
                             ("./landing/../landing/day_3.tsv", "c")):
        result = ingest(given, tmp_path / "root", partition=partition)
        assert result.source == given  # the summary shows what the user typed
        assert load(tmp_path / "root", partition=partition)[0]["source"]["url"] == \
            str(real.resolve())

    mem = fsspec.filesystem("memory")
    mem.pipe("/fae-tests-url/day.tsv", real.read_bytes())
    try:
        ingest("memory://fae-tests-url/day.tsv", tmp_path / "root", partition="m")
    finally:
        mem.rm("/fae-tests-url", recursive=True)
    assert load(tmp_path / "root", partition="m")[0]["source"]["url"] == \
        "memory://fae-tests-url/day.tsv"


def test_a_full_disk_names_the_partition(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that fails at a flush (a full disk) raised an OSError without a file name:
    the CLI printed 'error: No space left on device' alone."""
    from fae_data.synth import write_criteo

    src = write_criteo(tmp_path / "raw", rows=500, days=1, scale=0.001, seed=0)[0]

    def full(self, table, row_group_size=None):  # type: ignore[no-untyped-def]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pq.ParquetWriter, "write_table", full)
    with pytest.raises(StorageError, match=r"ingested/criteo/day_0: cannot write partition "
                       r"'day_0' of .*day_0.tsv \(No space left on device\)"):
        ingest_source(str(src), Storage(str(tmp_path / "root")), "criteo", "day_0",
                      IngestParams("criteo"))
    assert not list((tmp_path / "root" / "ingested" / "criteo" / "day_0").glob("*.parquet"))
