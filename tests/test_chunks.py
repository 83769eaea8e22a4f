"""Chunked Parquet reading: exact chunk sizes, the same on local disk and object storage."""

from __future__ import annotations

from pathlib import Path

import fsspec
import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fae_data.chunks import iter_chunks, iter_frames
from fae_data.storage import Storage


def write(path_or_file, n: int) -> pa.Table:
    table = pa.table({"a": np.arange(n, dtype=np.uint32), "b": np.arange(n) * 2.0})
    writer = pq.ParquetWriter(path_or_file, table.schema)
    for lo, hi in ((0, 7), (7, 30), (30, 31), (31, n)):  # irregular row groups
        writer.write_table(table.slice(lo, hi - lo))
    writer.close()
    return table


@pytest.mark.parametrize("rows", [1, 5, 10, 64, 1000])
def test_local_and_remote_chunks_are_exact_and_equal(tmp_path: Path, rows: int) -> None:
    n = 64
    table = write(str(tmp_path / "t.parquet"), n)
    mem = fsspec.filesystem("memory")
    with mem.open("/fae-chunks/t.parquet", "wb") as f:
        write(f, n)
    try:
        local = list(iter_chunks(Storage(str(tmp_path)), "t.parquet", rows))
        remote = list(iter_chunks(Storage("memory://fae-chunks"), "t.parquet", rows))
        remote_frames = list(iter_frames(Storage("memory://fae-chunks"), "t.parquet", rows))
    finally:
        mem.rm("/fae-chunks", recursive=True)
    sizes = [c.num_rows for c in local]
    assert sizes == [rows] * (n // rows) + ([n % rows] if n % rows else [])
    assert [c.num_rows for c in remote] == sizes
    assert pa.concat_tables(local).equals(table)
    assert pa.concat_tables(remote).equals(table)
    # Polars frames: the same chunks, from either storage
    local_frames = list(iter_frames(Storage(str(tmp_path)), "t.parquet", rows))
    for frames in (local_frames, remote_frames):
        assert all(isinstance(f, pl.DataFrame) for f in frames)
        assert [f.height for f in frames] == sizes
        assert pl.concat(frames).to_arrow().equals(table)
    only_a = list(iter_chunks(Storage(str(tmp_path)), "t.parquet", rows, columns=["a"]))
    assert only_a[0].column_names == ["a"]
    with pytest.raises(ValueError, match="at least 1"):
        list(iter_chunks(Storage(str(tmp_path)), "t.parquet", 0))
