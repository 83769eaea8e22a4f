"""Synthetic Criteo and Taobao raw logs, for tests, demos and benchmarks.

The generators write the same raw formats the real datasets ship in (Criteo Kaggle TSV day
files, Taobao UserBehavior CSV), so every later stage runs unchanged on them. What makes
them useful for FAE is the *skew*: sparse values are drawn from a truncated power law
(Zipf), so a few percent of the embedding rows take most of the lookups, like in the real
logs. Criteo labels depend on the features, so a model trained on the output can learn.

Everything is vectorised over rows and generated in fixed-size chunks, so memory stays
bounded for tens of millions of rows. Each chunk draws from its own RNG seeded with
``SeedSequence([seed, day, chunk_index])``: the same arguments give the same bytes (plain
and gzip) on the same platform and numpy build.

The "world" (which raw value a rank maps to, how strongly a value moves the click rate,
which category an item belongs to) is fixed per column and does not depend on ``seed``;
the seed only picks the samples. Files written with different seeds are therefore draws
from one distribution and can be mixed (for example more training days later).

This module holds the public functions, their argument checks and the chunked, atomic
file writer that both formats share; each dataset's world and chunk generator live in
:mod:`fae_data.synth_criteo` and :mod:`fae_data.synth_taobao`, the numerics they share
in :mod:`fae_data.synth_numerics`.
"""

from __future__ import annotations

import contextlib
import gzip as gzip_module
import io
import logging
import math
import os
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv

from fae_data.errors import InputError
from fae_data.schema import (
    CRITEO_DENSE,
    CRITEO_KAGGLE_CARDINALITIES,
    CRITEO_LABEL,
    CRITEO_SPARSE,
    TAOBAO_COLUMNS,
)
from fae_data.synth_criteo import _criteo_chunk
from fae_data.synth_taobao import (
    TAOBAO_NUM_CATEGORIES,
    TAOBAO_NUM_ITEMS,
    TAOBAO_NUM_USERS,
    _taobao_chunk,
)

# Generator parameters, re-exported for the callers that import them from here.
from fae_data.synth_criteo import CRITEO_POSITIVE_RATE  # noqa: F401
from fae_data.synth_taobao import (  # noqa: F401
    SECONDS_PER_DAY,
    TAOBAO_BEHAVIOR_PROBS,
    TAOBAO_START_TIMESTAMP,
)

logger = logging.getLogger(__name__)

#: Rows generated and written at a time: bounds memory (a Criteo chunk is ~75 MB of text).
CHUNK_ROWS = 262_144

_CRITEO_WRITE_OPTIONS = pa_csv.WriteOptions(
    include_header=False, delimiter="\t", quoting_style="none"
)
_TAOBAO_WRITE_OPTIONS = pa_csv.WriteOptions(
    include_header=False, delimiter=",", quoting_style="none"
)


# --- public API -------------------------------------------------------------------------


def criteo_cardinalities(scale: float) -> tuple[int, ...]:
    """Distinct values of C1..C26 at ``scale``: ``max(1, ceil(kaggle_cardinality * scale))``.

    Raises:
        InputError: ``scale`` is not in (0, 1].
    """
    _check_scale(scale)
    return tuple(max(1, math.ceil(c * scale)) for c in CRITEO_KAGGLE_CARDINALITIES)


def write_criteo(
    out_dir: str | Path,
    *,
    rows: int,
    days: int = 1,
    seed: int = 0,
    zipf: float = 1.1,
    scale: float = 1.0,
    gzip: bool = False,
    empty_fraction: float | None = None,
    progress: Callable[[int], None] | None = None,
) -> list[Path]:
    """Write ``days`` Criteo Kaggle-format day files of ``rows`` rows each.

    Files are ``day_0.tsv``, ``day_1.tsv``, ... (``.tsv.gz`` with ``gzip``) in ``out_dir``
    (created if missing); each is written to a temporary name and renamed into place.
    Lines have 40 tab-separated fields, no header: label, I1..I13, C1..C26 (8 hex chars).

    Args:
        rows: rows per day file.
        seed: non-negative RNG seed; same arguments give the same bytes.
        zipf: power-law exponent of sparse value popularity (larger = more skewed).
        scale: fraction of the Kaggle cardinalities, in (0, 1] (see criteo_cardinalities).
        empty_fraction: if given, every I and C column is empty at this rate in [0, 1]
            instead of the Kaggle-like per-column rates.
        progress: called with the number of rows just written, after each chunk.

    Returns:
        The written files, in day order.

    Raises:
        InputError: an argument is out of range, or ``out_dir`` cannot be created.
    """
    _check_common(rows=rows, days=days, seed=seed, zipf=zipf, scale=scale)
    if empty_fraction is not None and not (
        _is_real(empty_fraction) and 0.0 <= empty_fraction <= 1.0
    ):
        raise InputError(f"empty_fraction ({empty_fraction!r}) must be between 0 and 1")
    cards = criteo_cardinalities(scale)
    suffix = ".tsv.gz" if gzip else ".tsv"
    schema = pa.schema(
        [pa.field(CRITEO_LABEL, pa.int8())]
        + [pa.field(c, pa.int32()) for c in CRITEO_DENSE]
        + [pa.field(c, pa.string()) for c in CRITEO_SPARSE]
    )

    def chunks(day: int) -> Iterator[pa.Table]:
        for index, n in _chunk_sizes(rows):
            rng = _chunk_rng(seed, day, index)
            yield _criteo_chunk(rng, n, cards, zipf, empty_fraction, schema)

    return _write_days(out_dir, "tsv", suffix, days, gzip, _CRITEO_WRITE_OPTIONS, chunks, progress)


def write_taobao(
    out_dir: str | Path,
    *,
    rows: int,
    days: int = 1,
    seed: int = 0,
    zipf: float = 1.1,
    scale: float = 1.0,
    gzip: bool = False,
    progress: Callable[[int], None] | None = None,
) -> list[Path]:
    """Write ``days`` Taobao UserBehavior-format CSV files of ``rows`` rows each.

    Files are ``day_0.csv``, ... (``.csv.gz`` with ``gzip``) in ``out_dir``, written
    atomically. Lines are ``user_id,item_id,category_id,behavior_type,timestamp``, no
    header, sorted by timestamp (unix seconds) within day d, which starts at 2017-11-25
    00:00 +08:00 plus d days. Users and items are Zipf-skewed with exponent ``zipf``; each
    item has one fixed (skewed) category.

    Args:
        rows: rows per day file.
        seed: non-negative RNG seed; same arguments give the same bytes.
        zipf: power-law exponent of user and item popularity.
        scale: fraction of the real user/item/category counts, in (0, 1].
        progress: called with the number of rows just written, after each chunk.

    Returns:
        The written files, in day order.

    Raises:
        InputError: an argument is out of range, or ``out_dir`` cannot be created.
    """
    _check_common(rows=rows, days=days, seed=seed, zipf=zipf, scale=scale)
    users, items, categories = (
        max(1, round(n * scale))
        for n in (TAOBAO_NUM_USERS, TAOBAO_NUM_ITEMS, TAOBAO_NUM_CATEGORIES)
    )
    schema = pa.schema(
        [pa.field(c, pa.uint32()) for c in TAOBAO_COLUMNS[:3]]
        + [pa.field(TAOBAO_COLUMNS[3], pa.string()), pa.field(TAOBAO_COLUMNS[4], pa.int64())]
    )

    def chunks(day: int) -> Iterator[pa.Table]:
        start = 0
        for index, n in _chunk_sizes(rows):
            rng = _chunk_rng(seed, day, index)
            yield _taobao_chunk(rng, n, start, rows, day, users, items, categories, zipf, schema)
            start += n

    suffix = ".csv.gz" if gzip else ".csv"
    return _write_days(out_dir, "csv", suffix, days, gzip, _TAOBAO_WRITE_OPTIONS, chunks, progress)


# --- validation -------------------------------------------------------------------------


def _is_int(value: object) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool)


def _is_real(value: object) -> bool:
    return (
        isinstance(value, (int, float, np.integer, np.floating))
        and not isinstance(value, bool)
        and math.isfinite(value)
    )


def _check_scale(scale: float) -> None:
    if not (_is_real(scale) and 0.0 < scale <= 1.0):
        raise InputError(f"scale ({scale!r}) must be in (0, 1]: a fraction of the real sizes")


def _check_common(*, rows: int, days: int, seed: int, zipf: float, scale: float) -> None:
    # Everything is checked before the first byte is written.
    if not (_is_int(rows) and rows >= 1):
        raise InputError(f"rows ({rows!r}) must be an integer >= 1 (rows per day file)")
    if not (_is_int(days) and days >= 1):
        raise InputError(f"days ({days!r}) must be an integer >= 1")
    if not (_is_int(seed) and seed >= 0):
        raise InputError(f"seed ({seed!r}) must be an integer >= 0")
    if not (_is_real(zipf) and zipf > 0.0):
        raise InputError(f"zipf ({zipf!r}) must be a finite number > 0")
    _check_scale(scale)


# --- writing ----------------------------------------------------------------------------


def _chunk_sizes(rows: int) -> Iterator[tuple[int, int]]:
    for index, start in enumerate(range(0, rows, CHUNK_ROWS)):
        yield index, min(CHUNK_ROWS, rows - start)


def _chunk_rng(seed: int, day: int, chunk_index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed, day, chunk_index]))


def _write_days(
    out_dir: str | Path,
    kind: str,
    suffix: str,
    days: int,
    gzip: bool,
    options: pa_csv.WriteOptions,
    chunks: Callable[[int], Iterator[pa.Table]],
    progress: Callable[[int], None] | None,
) -> list[Path]:
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise InputError(f"cannot create output folder {str(out)!r}: {exc}") from exc
    paths = []
    for day in range(days):
        path = out / f"day_{day}{suffix}"
        # Generation (numpy, holds the GIL) overlaps with writing and gzip compression
        # (zlib releases the GIL) on a second thread; at most one chunk's text waits.
        with _atomic_sink(path, gzip) as sink, ThreadPoolExecutor(1) as pool:
            pending: tuple[Future[object], int] | None = None
            for table in chunks(day):
                text = pa.BufferOutputStream()
                pa_csv.write_csv(table, text, options)
                if pending is not None:
                    _finish(pending, progress)
                pending = (pool.submit(sink.write, text.getvalue()), table.num_rows)
            if pending is not None:
                _finish(pending, progress)
        logger.debug("wrote synthetic %s file %s", kind, path)
        paths.append(path)
    return paths


def _finish(pending: tuple[Future[object], int], progress: Callable[[int], None] | None) -> None:
    future, rows = pending
    future.result()
    if progress is not None:
        progress(rows)


@contextlib.contextmanager
def _atomic_sink(path: Path, gzip: bool) -> Iterator[io.BufferedIOBase]:
    """A binary sink for ``path`` that appears under its name only if the body succeeds."""
    # A unique name in the same folder (same file system, so the rename is atomic); open()
    # rather than mkstemp so the file gets the usual umask permissions, not 0600.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex}.tmp")
    try:
        with open(tmp, "xb") as raw:
            if gzip:
                # mtime=0 and no file name in the header: same seed, same compressed bytes.
                with gzip_module.GzipFile(
                    fileobj=raw, mode="wb", mtime=0, filename="", compresslevel=1
                ) as gz:
                    yield gz
            else:
                yield raw
        # No fsync: these are reproducible test data, not records to keep through a crash;
        # the rename still guarantees readers never see a half-written file.
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
