"""Splitting raw log bytes into lines and screening them, vectorised with numpy.

Raw files are read in blocks that end at a newline. The common case (an ASCII block whose
lines all have the right field count) goes to Arrow's CSV parser in one piece. Otherwise
the block is screened: every line is found, its delimiters counted and bytes no field may
hold (non-ASCII, control characters) flagged, all without a Python loop over lines. Lines
that pass go to the parser; the others become rejects with line number and raw bytes.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO

import numpy as np

_NL = 10
_CR = 13
#: The UTF-8 byte order mark some editors and exporters (Excel, Notepad) put first.
UTF8_BOM = b"\xef\xbb\xbf"


def read_blocks(
    stream: IO[bytes], block_bytes: int, *, skip_bom: bool = False
) -> Iterator[bytes]:
    """Yield consecutive chunks of ``stream`` that each end right after a newline.

    The last chunk may lack a final newline. Memory stays bounded by about two blocks
    plus the longest line. ``skip_bom``: drop a UTF-8 byte order mark at the very start
    of the stream (only there: one further in is data, and refused as such).
    """
    carry = _after_bom(stream) if skip_bom else b""
    while True:
        chunk = stream.read(block_bytes)
        if not chunk:
            if carry:
                yield carry
            return
        cut = chunk.rfind(b"\n")
        if cut < 0:
            carry += chunk
            continue
        # One copy per block: the previous tail plus this chunk up to its last newline.
        yield b"".join((carry, memoryview(chunk)[: cut + 1])) if carry else chunk[: cut + 1]
        carry = chunk[cut + 1 :]


def _after_bom(stream: IO[bytes]) -> bytes:
    """Read the first bytes of ``stream``: empty when they are a UTF-8 BOM (dropped),
    else those bytes, which the caller keeps as the start of the first block."""
    head = b""
    while len(head) < len(UTF8_BOM):  # a stream may return fewer bytes than asked for
        more = stream.read(len(UTF8_BOM) - len(head))
        if not more:
            break
        head += more
    return b"" if head == UTF8_BOM else head


def count_lines(block: bytes) -> int:
    """Number of lines in ``block`` (a last line without newline counts)."""
    return block.count(b"\n") + (1 if block and not block.endswith(b"\n") else 0)


@dataclass(frozen=True)
class LineSpans:
    """Where each line of a block starts and where its content ends."""

    starts: np.ndarray  # int64 offset of each line
    ends: np.ndarray  # int64 offset one past the content (before CR/LF)
    seg_ends: np.ndarray  # int64 offset one past the line's LF (or the block end)
    has_cr: np.ndarray  # bool, the line ended in CRLF

    def raw(self, block: bytes, i: int) -> bytes:
        return block[int(self.starts[i]) : int(self.ends[i])]


#: The longest line a record may be. Criteo and Taobao records are a few hundred bytes at
#: most; a longer line is refused as such (and the CSV parser, which works in 1 MiB
#: chunks, never sees it).
MAX_LINE_BYTES = 64 << 10


def line_spans(block: bytes) -> LineSpans:
    """Find every line of ``block``, vectorised."""
    arr = np.frombuffer(block, dtype=np.uint8)
    seg_ends = np.flatnonzero(arr == _NL).astype(np.int64) + 1
    if arr.size and arr[-1] != _NL:
        seg_ends = np.append(seg_ends, arr.size)  # last line without newline
    # An empty block has no line (count_lines agrees), so no start either.
    starts = np.concatenate((np.zeros(min(seg_ends.size, 1), np.int64), seg_ends[:-1]))
    ends = seg_ends - (arr[seg_ends - 1] == _NL) if seg_ends.size else seg_ends.copy()
    has_cr = np.zeros(ends.size, dtype=bool)
    nonempty = ends > starts
    has_cr[nonempty] = arr[ends[nonempty] - 1] == _CR
    return LineSpans(starts, ends - has_cr, seg_ends, has_cr)


@dataclass(frozen=True)
class ScreenedBlock:
    """The lines of one block after screening, and which of them may be parsed."""

    spans: LineSpans
    fields: np.ndarray  # int32 number of fields
    bad_bytes: np.ndarray  # int32 number of non-ASCII bytes
    control: np.ndarray  # int32 number of control characters (not the line end)
    good: np.ndarray  # bool, the line may be parsed
    parse_buffer: bytes  # the good lines, in order, ready for the CSV parser

    @property
    def num_lines(self) -> int:
        return int(self.spans.starts.shape[0])


def screen_block(block: bytes, delimiter: bytes, num_fields: int) -> ScreenedBlock:
    """Screen each line of ``block`` for field count and forbidden bytes."""
    arr = np.frombuffer(block, dtype=np.uint8)
    spans = line_spans(block)
    # Each segment includes its LF, so none is empty and reduceat sums exactly the line.
    seg = spans.starts
    delim = delimiter[0]
    fields = np.add.reduceat((arr == delim).view(np.uint8), seg, dtype=np.int32) + 1
    bad_bytes = np.add.reduceat((arr >= 0x80).view(np.uint8), seg, dtype=np.int32)
    ctrl_mask = (arr < 0x20) & (arr != _NL) & (arr != delim)
    control = np.add.reduceat(ctrl_mask.view(np.uint8), seg, dtype=np.int32)
    control -= spans.has_cr.astype(np.int32)  # the CR of a CRLF ending is fine
    good = (fields == num_fields) & (bad_bytes == 0) & (control == 0)
    good &= (spans.ends - spans.starts) <= MAX_LINE_BYTES
    if good.all():
        buffer = block
    elif not good.any():
        buffer = b""
    else:
        keep = np.repeat(good, spans.seg_ends - spans.starts)
        buffer = arr[keep].tobytes()
    return ScreenedBlock(spans, fields, bad_bytes, control, good, buffer)


def screen_reason(
    block: bytes, screened: ScreenedBlock, i: int, delimiter: bytes, num_fields: int
) -> str:
    """Why line ``i`` of a screened block was refused, in words."""
    raw = screened.spans.raw(block, i)
    if screened.bad_bytes[i]:
        try:
            raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            return f"invalid UTF-8 at column {exc.start + 1}"
        return "non-ASCII characters (no field may hold them)"
    if screened.control[i]:
        pos = next(j for j, b in enumerate(raw) if b < 0x20 and b != delimiter[0])
        return f"control character 0x{raw[pos]:02x} at column {pos + 1}"
    if int(screened.fields[i]) != num_fields:
        return f"expected {num_fields} fields, found {int(screened.fields[i])}"
    return (f"line of {len(raw)} bytes, longer than any record ({MAX_LINE_BYTES} bytes "
            "at most)")
