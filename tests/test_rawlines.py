"""Unit tests of fae_data.rawlines: block reading, line finding and screening.

Expected values come from plain ``bytes.split`` on the same input, not from numpy.
"""

from __future__ import annotations

import io

import numpy as np
import pytest

from fae_data.rawlines import count_lines, line_spans, read_blocks, screen_block, screen_reason

# Every awkward shape at once: CRLF, empty lines (LF and CRLF), a bare CR inside a line,
# a long line, and no final newline.
TEXT = (
    b"a\tb\tc\n"
    b"\n"
    b"d\te\tf\r\n"
    b"\r\n"
    b"g\th\ri\n"
    + b"x" * 50
    + b"\tlong\tline\n"
    b"j\tk\tl"
)


def naive_lines(data: bytes) -> list[bytes]:
    """Lines as the ingest promises them: split on LF, drop one trailing CR per line."""
    parts = data.split(b"\n")
    if parts and parts[-1] == b"":
        parts.pop()
    return [p[:-1] if p.endswith(b"\r") else p for p in parts]


def lines_of(block: bytes) -> list[bytes]:
    spans = line_spans(block)
    return [spans.raw(block, i) for i in range(spans.starts.size)]


# --- read_blocks ----------------------------------------------------------------------


@pytest.mark.parametrize("data", [TEXT, TEXT + b"\n", b"one line, no newline", b"\n\n\n"])
def test_read_blocks_every_read_size_gives_the_same_lines(data: bytes) -> None:
    expected = naive_lines(data)
    for block_bytes in range(1, len(data) + 2):
        blocks = list(read_blocks(io.BytesIO(data), block_bytes))
        assert b"".join(blocks) == data, block_bytes
        assert all(b.endswith(b"\n") for b in blocks[:-1]), block_bytes
        assert all(blocks), block_bytes  # never an empty block
        assert [ln for b in blocks for ln in lines_of(b)] == expected, block_bytes
        assert sum(count_lines(b) for b in blocks) == len(expected), block_bytes


def test_read_blocks_every_split_point_of_the_stream() -> None:
    """A stream that returns short reads (like a socket) at any single split point."""

    class TwoReads(io.RawIOBase):
        def __init__(self, data: bytes, cut: int) -> None:
            self.parts = [data[:cut], data[cut:]]

        def read(self, n: int = -1) -> bytes:
            while self.parts:
                part = self.parts.pop(0)
                if part:
                    return part
            return b""

    for cut in range(len(TEXT) + 1):
        blocks = list(read_blocks(TwoReads(TEXT, cut), 1 << 16))  # type: ignore[arg-type]
        assert b"".join(blocks) == TEXT
        assert [ln for b in blocks for ln in lines_of(b)] == naive_lines(TEXT), cut


def test_read_blocks_line_longer_than_block_is_carried_whole() -> None:
    data = b"a" * 1000 + b"\nb\n"
    blocks = list(read_blocks(io.BytesIO(data), 7))
    assert blocks[0] == b"a" * 1000 + b"\n"
    assert b"".join(blocks) == data


def test_read_blocks_empty_stream_yields_nothing() -> None:
    assert list(read_blocks(io.BytesIO(b""), 16)) == []


# --- count_lines / line_spans ---------------------------------------------------------


@pytest.mark.parametrize(
    ("block", "n"),
    [(b"", 0), (b"a", 1), (b"a\n", 1), (b"\n", 1), (b"a\nb", 2), (b"\n\n", 2), (b"a\r\n", 1)],
)
def test_count_lines(block: bytes, n: int) -> None:
    assert count_lines(block) == n
    assert count_lines(block) == len(naive_lines(block))


@pytest.mark.parametrize(
    "block",
    [
        TEXT,
        TEXT + b"\n",
        b"a\r\nb\r\n",
        b"a\r\nb\r",  # a last line ending in CR and no LF: the CR is its line end
        b"\n",
        b"\r\n",
        b"\r\r\n",  # one CR is the ending, the other stays in the line
        b"\n\n\na",
        b"a",
    ],
)
def test_line_spans_matches_naive_split(block: bytes) -> None:
    spans = line_spans(block)
    assert lines_of(block) == naive_lines(block)
    # seg_ends tile the block exactly: each line's segment starts where the last ended.
    assert spans.seg_ends[-1] == len(block)
    assert np.array_equal(spans.starts[1:], spans.seg_ends[:-1])
    expected_cr = [p.endswith(b"\r") for p in block.split(b"\n")[: spans.starts.size]]
    assert spans.has_cr.tolist() == expected_cr


def test_line_spans_crlf_and_empty_lines() -> None:
    block = b"ab\r\n\ncd\r\n\r\nef"
    spans = line_spans(block)
    assert lines_of(block) == [b"ab", b"", b"cd", b"", b"ef"]
    assert spans.has_cr.tolist() == [True, False, True, True, False]
    assert spans.starts.tolist() == [0, 4, 5, 9, 11]


def test_line_spans_empty_block() -> None:
    spans = line_spans(b"")
    assert spans.starts.size == spans.ends.size == 0


# --- screen_block / screen_reason -----------------------------------------------------


def screen(block: bytes, delimiter: bytes = b"\t", num_fields: int = 3) -> list[str | None]:
    """Per line: None if the line is good, else its reason."""
    s = screen_block(block, delimiter, num_fields)
    return [
        None if s.good[i] else screen_reason(block, s, i, delimiter, num_fields)
        for i in range(s.num_lines)
    ]


def test_screen_block_reasons() -> None:
    block = (
        b"a\tb\tc\n"  # 1 good
        b"a\tb\n"  # 2 too few
        b"a\tb\tc\td\n"  # 3 too many
        b"\n"  # 4 empty
        b"a\t\xff\xfe\tc\n"  # 5 invalid UTF-8 (column 3)
        b"a\t\xc3\xa9\tc\n"  # 6 valid UTF-8, but not ASCII
        b"a\tb\x00\tc\n"  # 7 NUL at column 4
        b"a\tb\rx\tc\n"  # 8 bare CR at column 4
        b"a\tb\tc\r\n"  # 9 CRLF is fine
        b"a\tb\tc"  # 10 good, no final newline
    )
    assert screen(block) == [
        None,
        "expected 3 fields, found 2",
        "expected 3 fields, found 4",
        "expected 3 fields, found 1",
        "invalid UTF-8 at column 3",
        "non-ASCII characters (no field may hold them)",
        "control character 0x00 at column 4",
        "control character 0x0d at column 4",
        None,
        None,
    ]


def test_screen_block_bytes_beat_field_count() -> None:
    """A line with both problems is named by its bytes (they make it unreadable)."""
    assert screen(b"a\t\xff\n") == ["invalid UTF-8 at column 3"]
    assert screen(b"a\x01\n") == ["control character 0x01 at column 2"]


def test_screen_block_tab_is_a_control_character_when_not_the_delimiter() -> None:
    assert screen(b"1,2,3\n1,2\t,3\n", b",", 3) == [None, "control character 0x09 at column 4"]


def test_screen_block_parse_buffer_keeps_good_lines_with_their_endings() -> None:
    block = b"a\tb\tc\r\nbad\nd\te\tf\n\ng\th\ti"
    s = screen_block(block, b"\t", 3)
    assert s.good.tolist() == [True, False, True, False, True]
    assert s.parse_buffer == b"a\tb\tc\r\nd\te\tf\ng\th\ti"
    assert s.fields.tolist() == [3, 1, 3, 1, 3]


def test_screen_block_all_good_and_all_bad() -> None:
    good = b"a\tb\tc\nd\te\tf\n"
    assert screen_block(good, b"\t", 3).parse_buffer == good
    assert screen_block(b"x\ny\n", b"\t", 3).parse_buffer == b""


def test_screen_block_empty_block_has_no_lines() -> None:
    s = screen_block(b"", b"\t", 3)
    assert s.num_lines == 0
    assert s.parse_buffer == b""
