"""One block of raw lines -> typed Arrow rows plus its rejects, for :mod:`fae_data.ingest`.

:func:`_process_block` is what an ingest worker runs on one newline-terminated block. It
lives apart from the reading and threading (:mod:`fae_data.block_reader`) and the writing
(:mod:`fae_data.ingest`) because it is where every line's verdict is decided, along one of
two paths:

- the fast path (:func:`_fast_typed`): a clean ASCII block that Arrow's CSV
  parser takes whole, one record per line, and types with no fault: no rejects at all;
- the checked path: the block's text is typed by the rules of :mod:`fae_data.parse`, each
  row getting its own verdict. A plain ASCII block is still parsed whole
  (:func:`_fast_text`); any other is first screened line by line
  (:mod:`fae_data.rawlines`) and only the good lines are parsed. Refused lines become
  rejects with their line number, reason and raw bytes.

A line's verdict does not depend on which other lines share its block.
"""

from __future__ import annotations

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.csv as pacsv

from fae_data import schema
from fae_data.errors import InputError
from fae_data.parse import finish_fast, parser_types, type_rows
from fae_data.rawlines import LineSpans, count_lines, line_spans, screen_block, screen_reason
from fae_data.schema import RawFormat

#: Bytes Arrow's CSV number conversion strips around a value.
_ARROW_TRIMS = (b" ", b"\t")
#: Arrow parses a block in chunks of this size: 1 MiB chunks stay in cache and take about
#: 20% less CPU than 8 MiB ones (measured on 16 MiB Criteo blocks). Lines are at most
#: rawlines.MAX_LINE_BYTES, far below it.
_PARSE_CHUNK_BYTES = 1 << 20
_PARSE = pacsv.ParseOptions
_READ = pacsv.ReadOptions


def _arrow_parse(buffer: bytes, fmt: RawFormat, types: dict[str, pa.DataType]) -> pa.Table:
    """Parse ASCII lines with Arrow's CSV parser (no quoting: raw logs have none, so a
    quote is just a character that will fail a value check).

    Single-threaded on purpose: ingest already parses two blocks at once on its own
    threads, which uses the cores with less overhead; and Arrow's threaded reader, torn
    down after a parse error (the fast path's way of saying "check this block line by
    line"), can deadlock a worker of Arrow's CPU pool (seen with pyarrow 22 as a hang at
    interpreter exit).
    """
    return pacsv.read_csv(
        pa.py_buffer(buffer),
        read_options=_READ(column_names=list(fmt.columns), block_size=_PARSE_CHUNK_BYTES,
                           use_threads=False),
        parse_options=_PARSE(
            delimiter=fmt.delimiter.decode(),
            quote_char=False,
            double_quote=False,
            escape_char=False,
            newlines_in_values=False,
            ignore_empty_lines=False,
        ),
        convert_options=pacsv.ConvertOptions(
            column_types=types,
            null_values=[""],
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
            check_utf8=False,  # only ASCII buffers are parsed
        ),
    )


def _text_types(fmt: RawFormat) -> dict[str, pa.DataType]:
    return {c: pa.string() for c in fmt.columns}


def _process_block(
    block: bytes, offset: int, source: str, fmt: RawFormat
) -> tuple[pa.Table, pa.Table, int]:
    """Parse, check and type one block. Returns (typed rows, rejects, lines in block).

    Reject line numbers count from 1 at the block's first line: the caller, which sees
    the blocks in file order, shifts them. Counting lines ahead of the parse would cost
    a pass over every block, and the fast path learns the count from the parser.
    ``offset`` (the block's first byte in the stream) only serves messages.
    """
    fast = _fast_typed(block, fmt)
    if fast is not None:
        return fast, schema.REJECTS_SCHEMA.empty_table(), fast.num_rows
    text = _fast_text(block, fmt)
    lines: list[int] = []
    reasons: list[str] = []
    raws: list[bytes] = []
    if text is not None:
        num_lines = text.height
        good_idx = None
        spans: LineSpans | None = None
    else:
        screened = screen_block(block, fmt.delimiter, fmt.num_fields)
        num_lines = screened.num_lines
        spans = screened.spans
        for i in np.flatnonzero(~screened.good).tolist():
            lines.append(1 + i)
            reasons.append(screen_reason(block, screened, i, fmt.delimiter, fmt.num_fields))
            raws.append(spans.raw(block, i))
        good_idx = np.flatnonzero(screened.good)
        text = (
            _as_polars(_arrow_parse(screened.parse_buffer, fmt, _text_types(fmt)))
            if good_idx.size
            else None
        )
        if text is not None and text.height != good_idx.size:
            raise InputError(
                f"{source}: block at byte {offset}: the CSV parser saw {text.height} "
                f"records in {good_idx.size} screened lines"
            )

    if text is not None:
        typed_df, faults = type_rows(text, fmt)
        if faults.height:
            spans = spans if spans is not None else line_spans(block)
            for row, reason in faults.iter_rows():
                i = int(good_idx[row]) if good_idx is not None else row
                lines.append(1 + i)
                reasons.append(reason)
                raws.append(spans.raw(block, i))
        typed = typed_df.to_arrow().cast(fmt.schema)
    else:
        typed = fmt.schema.empty_table()

    order = np.argsort(np.asarray(lines, dtype=np.int64), kind="stable")
    rejects = pa.table(
        {
            "source": pa.array([source] * len(lines), pa.string()),
            "line": pa.array(np.asarray(lines, dtype=np.int64)[order], pa.int64()),
            "reason": pa.array([reasons[k] for k in order], pa.string()),
            "raw": pa.array([raws[k] for k in order], pa.binary()),
        },
        schema=schema.REJECTS_SCHEMA,
    )
    return typed, rejects, num_lines


def _fast_typed(block: bytes, fmt: RawFormat) -> pa.Table | None:
    """The common case: a clean ASCII block, typed by Arrow's parser with no row faults.

    Returns None when any line or value needs a per-row verdict.
    """
    # Arrow's number parser trims spaces and tabs around a value, which the checked path
    # refuses: such blocks go there, so a verdict never depends on the rest of the block.
    if not block.isascii() or any(c in block for c in _ARROW_TRIMS if c != fmt.delimiter):
        return None
    # Arrow's integer parser also reads "0x1F" as hex; no valid Criteo or Taobao line holds
    # an x (ids are bare hex digits), so such a block goes where "0x1F" is refused.
    if b"x" in block or b"X" in block:
        return None
    table = _parse_whole(block, fmt, parser_types(fmt))
    return finish_fast(table, fmt) if table is not None else None


def _fast_text(block: bytes, fmt: RawFormat) -> pl.DataFrame | None:
    """The common case: an ASCII block the CSV parser takes whole, one record per line.

    Returns None when the block needs line-by-line screening (non-ASCII bytes, a wrong
    field count somewhere, or stray carriage returns that split records).
    """
    if not _plain_ascii(block, fmt):
        return None
    table = _parse_whole(block, fmt, _text_types(fmt))
    return _as_polars(table) if table is not None else None


def _parse_whole(block: bytes, fmt: RawFormat, types: dict[str, pa.DataType]) -> pa.Table | None:
    """Arrow's parse of the whole block when it makes exactly one record of every line;
    None when it refuses the block or splits lines differently.

    With quoting off, Arrow ends a record at LF, CR or CRLF. Without a CR in the block
    (one memchr pass, far cheaper than counting LFs) records and lines are the same
    thing: an empty line would have been a record of one field, which the parser
    refuses. With CRs, the counts are compared.
    """
    try:
        table = _arrow_parse(block, fmt, types)
    except pa.ArrowInvalid:
        return None
    if b"\r" in block and table.num_rows != count_lines(block):
        return None
    return table


def _plain_ascii(block: bytes, fmt: RawFormat) -> bool:
    """True when ``block`` is ASCII with no empty line and no control byte but its
    delimiters, LFs and the CRs of CRLF endings.

    Other blocks are screened, so a line with a control character or an empty line gets
    the same reason ("control character ...", "expected N fields, found 1") whichever
    other lines share its block. (Arrow reads an empty line as a record of empty fields;
    on the fast typed path that record fails the required label or id, so it ends here.)
    """
    if not block.isascii():
        return False
    if block.startswith((b"\n", b"\r\n")) or b"\n\n" in block or b"\n\r\n" in block:
        return False
    arr = np.frombuffer(block, dtype=np.uint8)
    allowed = block.count(b"\n") + block.count(b"\r\n")
    if fmt.delimiter[0] < 0x20:
        allowed += block.count(fmt.delimiter)
    return int(np.count_nonzero(arr < 0x20)) == allowed


def _as_polars(table: pa.Table) -> pl.DataFrame:
    df = pl.from_arrow(table)
    assert isinstance(df, pl.DataFrame)
    return df
