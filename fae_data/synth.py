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
"""

from __future__ import annotations

import contextlib
import gzip as gzip_module
import io
import logging
import math
import os
import uuid
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from fae_data.errors import InputError
from fae_data.schema import (
    CRITEO_DENSE,
    CRITEO_HEX_DIGITS,
    CRITEO_KAGGLE_CARDINALITIES,
    CRITEO_LABEL,
    CRITEO_SPARSE,
    TAOBAO_BEHAVIORS,
    TAOBAO_COLUMNS,
)

logger = logging.getLogger(__name__)

#: Rows generated and written at a time: bounds memory (a Criteo chunk is ~75 MB of text).
CHUNK_ROWS = 262_144

# --- Criteo generator parameters --------------------------------------------------------

#: Dense columns: (median, lognormal sigma, missing rate), roughly Criteo Kaggle's marginals.
#: Values are floor(lognormal), so small medians give many zeros and a heavy tail.
_CRITEO_DENSE_PARAMS: dict[str, tuple[float, float, float]] = {
    "I1": (1.0, 1.4, 0.45),
    "I2": (3.0, 2.0, 0.0),
    "I3": (6.0, 1.5, 0.21),
    "I4": (4.0, 1.0, 0.22),
    "I5": (2800.0, 1.8, 0.03),
    "I6": (30.0, 1.7, 0.22),
    "I7": (3.0, 1.6, 0.04),
    "I8": (8.0, 1.0, 0.001),
    "I9": (40.0, 1.3, 0.04),
    "I10": (0.6, 0.8, 0.45),
    "I11": (1.0, 1.2, 0.04),
    "I12": (0.3, 1.5, 0.77),
    "I13": (5.0, 1.1, 0.22),
}
#: Column whose non-missing values are -1 at this rate, as in the real I2.
_CRITEO_NEGATIVE_COLUMN = "I2"
_CRITEO_NEGATIVE_RATE = 0.05
#: Sparse missing rates (Kaggle-like); columns not listed are never empty.
_CRITEO_SPARSE_MISSING: dict[str, float] = {
    "C3": 0.034,
    "C4": 0.034,
    "C6": 0.12,
    "C10": 0.034,
    "C12": 0.034,
    "C16": 0.034,
    "C19": 0.44,
    "C20": 0.44,
    "C21": 0.034,
    "C22": 0.76,
    "C24": 0.034,
    "C25": 0.44,
    "C26": 0.44,
}
#: Sparse columns that move the click logit, with the standard deviation of their
#: per-value effect (logit units). Mid-cardinality columns, so values repeat enough to learn.
_CRITEO_LABEL_EFFECTS: dict[str, float] = {
    "C1": 0.6,
    "C2": 0.6,
    "C5": 0.5,
    "C6": 0.5,
    "C8": 0.5,
    "C17": 0.4,
}
#: Dense columns that move the click logit: logit += weight * log1p(max(x, 0)), null -> 0.
_CRITEO_DENSE_EFFECTS: dict[str, float] = {"I1": 0.35, "I3": -0.2, "I7": 0.15}
CRITEO_POSITIVE_RATE = 0.25

# --- Taobao generator parameters --------------------------------------------------------

#: Distinct users, items and categories in Taobao UserBehavior at scale 1.0.
TAOBAO_NUM_USERS = 987_994
TAOBAO_NUM_ITEMS = 4_162_024
TAOBAO_NUM_CATEGORIES = 9_439
#: Behaviour probabilities, in the order of ``TAOBAO_BEHAVIORS`` (pv, buy, cart, fav).
TAOBAO_BEHAVIOR_PROBS = (0.89, 0.02, 0.055, 0.035)
#: 2017-11-25 00:00 +08:00, the first day of the public dataset (unix seconds).
TAOBAO_START_TIMESTAMP = 1_511_539_200
SECONDS_PER_DAY = 86_400

_CRITEO_WRITE_OPTIONS = pa_csv.WriteOptions(
    include_header=False, delimiter="\t", quoting_style="none"
)
_TAOBAO_WRITE_OPTIONS = pa_csv.WriteOptions(
    include_header=False, delimiter=",", quoting_style="none"
)
#: Byte b -> its two lowercase hex characters, as one uint16 whose memory is those chars.
_HEX_PAIRS = np.frombuffer(b"".join(f"{b:02x}".encode() for b in range(256)), dtype=np.uint16)


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


# --- shared numerics ---------------------------------------------------------------------


def _mix32(x: np.ndarray, salt: int) -> np.ndarray:
    """A bijection of uint32 (salted add, then lowbias32): distinct in, distinct out."""
    x = x.astype(np.uint32) + np.uint32(salt & 0xFFFFFFFF)
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x7FEB352D)
    x ^= x >> np.uint32(15)
    x *= np.uint32(0x846CA68B)
    x ^= x >> np.uint32(16)
    return x


def _salt(*parts: str) -> int:
    return zlib.crc32(":".join(parts).encode())


def _power_law_ranks(u: np.ndarray, n: int, exponent: float) -> np.ndarray:
    """Ranks in [0, n) from uniforms ``u``: inverse CDF of x^-exponent on [1, n + 1).

    The continuous Pareto approximation of a truncated Zipf law, floored; rank 0 is the
    most frequent. expm1/log1p keep it accurate for exponents near 1.
    """
    log_top = math.log(n + 1.0)
    a = 1.0 - exponent
    if abs(a) < 1e-9:
        log_x = u * log_top
    else:
        log_x = np.log1p(u * math.expm1(a * log_top)) / a
    ranks = np.exp(log_x).astype(np.int64) - 1
    np.clip(ranks, 0, n - 1, out=ranks)
    return ranks


def _gaussianish(h: np.ndarray) -> np.ndarray:
    """Roughly N(0, 1) values from uint32 hashes: the sum of their 4 bytes as uniforms."""
    s = np.zeros(h.shape)
    for k in range(4):
        s += (h >> np.uint32(8 * k)) & np.uint32(0xFF)
    # Irwin-Hall of 4 uniforms (each (b + 0.5) / 256): mean 2, variance 1/3.
    return (s / 256.0 + 4 * 0.5 / 256.0 - 2.0) * math.sqrt(3.0)


def _validity(mask_valid: np.ndarray) -> tuple[pa.Buffer | None, int]:
    nulls = int(mask_valid.size - np.count_nonzero(mask_valid))
    if nulls == 0:
        return None, 0
    return pa.py_buffer(np.packbits(mask_valid, bitorder="little")), nulls


def _hex_strings(values: np.ndarray, valid: np.ndarray) -> pa.Array:
    """uint32 values -> Arrow strings of exactly 8 lowercase hex chars (null where invalid)."""
    n = values.size
    # Big-endian bytes, each replaced by its two hex chars: an (n, 8) uint8 text matrix.
    digits = _HEX_PAIRS[values.astype(">u4").view(np.uint8)].view(np.uint8)
    offsets = np.arange(0, (n + 1) * CRITEO_HEX_DIGITS, CRITEO_HEX_DIGITS, dtype=np.int32)
    bitmap, nulls = _validity(valid)
    return pa.StringArray.from_buffers(
        n, pa.py_buffer(offsets), pa.py_buffer(digits), bitmap, nulls
    )


# --- Criteo -----------------------------------------------------------------------------


def _criteo_chunk(
    rng: np.random.Generator,
    n: int,
    cards: tuple[int, ...],
    zipf: float,
    empty_fraction: float | None,
    schema: pa.Schema,
) -> pa.Table:
    logit = np.zeros(n)
    dense = []
    for name in CRITEO_DENSE:
        median, sigma, missing = _CRITEO_DENSE_PARAMS[name]
        rate = missing if empty_fraction is None else empty_fraction
        x = np.floor(rng.lognormal(math.log(median + 0.5), sigma, n))
        np.minimum(x, np.iinfo(np.int32).max, out=x)
        values = x.astype(np.int32)
        if name == _CRITEO_NEGATIVE_COLUMN:
            values[rng.random(n) < _CRITEO_NEGATIVE_RATE] = -1
        valid = rng.random(n) >= rate
        if name in _CRITEO_DENSE_EFFECTS:
            logit += _CRITEO_DENSE_EFFECTS[name] * np.where(
                valid, np.log1p(np.maximum(values, 0)), 0.0
            )
        bitmap, nulls = _validity(valid)
        dense.append(pa.Array.from_buffers(pa.int32(), n, [bitmap, pa.py_buffer(values)], nulls))

    sparse = []
    for name, card in zip(CRITEO_SPARSE, cards, strict=True):
        rate = _CRITEO_SPARSE_MISSING.get(name, 0.0) if empty_fraction is None else empty_fraction
        ranks = _power_law_ranks(rng.random(n), card, zipf)
        valid = rng.random(n) >= rate
        if name in _CRITEO_LABEL_EFFECTS:
            effect = _gaussianish(_mix32(ranks, _salt("criteo-effect", name)))
            logit += np.where(valid, _CRITEO_LABEL_EFFECTS[name] * effect, 0.0)
        sparse.append(_hex_strings(_mix32(ranks, _salt("criteo-value", name)), valid))

    p = _sigmoid(logit + _intercept(logit, CRITEO_POSITIVE_RATE))
    labels = (rng.random(n) < p).astype(np.int8)
    arrays = [pa.array(labels, pa.int8()), *dense, *sparse]
    return pa.Table.from_arrays(arrays, schema=schema)


def _sigmoid(z: np.ndarray) -> np.ndarray:
    p: np.ndarray = 1.0 / (1.0 + np.exp(-z))
    return p


def _intercept(logit: np.ndarray, target: float) -> float:
    """The b with mean(sigmoid(logit + b)) == target, by bisection (monotone in b)."""
    lo, hi = -40.0, 40.0
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        if float(np.mean(_sigmoid(logit + mid))) < target:
            lo = mid
        else:
            hi = mid
    return 0.5 * (lo + hi)


# --- Taobao -----------------------------------------------------------------------------


def _affine_permutation(ranks: np.ndarray, n: int, salt: str) -> np.ndarray:
    """Ranks in [0, n) -> ids in [1, n], bijectively, so popular ids look scattered."""
    h = zlib.crc32(salt.encode())
    a = (h | 1) % n if n > 1 else 1
    while math.gcd(a, n) != 1:
        a += 1
    b = zlib.crc32((salt + ":offset").encode()) % n
    return ((ranks * a + b) % n + 1).astype(np.uint32)


def _taobao_chunk(
    rng: np.random.Generator,
    n: int,
    start: int,
    rows: int,
    day: int,
    users: int,
    items: int,
    categories: int,
    zipf: float,
    schema: pa.Schema,
) -> pa.Table:
    user_rank = _power_law_ranks(rng.random(n), users, zipf)
    item_rank = _power_law_ranks(rng.random(n), items, zipf)
    # The item's category comes from a hash of the item alone, so it is a function of it.
    item_u = (_mix32(item_rank, _salt("taobao-category")).astype(np.float64) + 0.5) / 2.0**32
    category_rank = _power_law_ranks(item_u, categories, zipf)
    behavior = np.searchsorted(np.cumsum(TAOBAO_BEHAVIOR_PROBS)[:-1], rng.random(n), side="right")
    # Stratified times: row i falls in [i, i + 1) / rows of the day, so rows come out
    # sorted across chunks without a global sort.
    position = np.arange(start, start + n, dtype=np.float64) + rng.random(n)
    seconds = np.floor(position * (SECONDS_PER_DAY / rows)).astype(np.int64)
    np.minimum(seconds, SECONDS_PER_DAY - 1, out=seconds)
    timestamp = TAOBAO_START_TIMESTAMP + day * SECONDS_PER_DAY + seconds
    arrays = [
        pa.array(_affine_permutation(user_rank, users, "taobao-user")),
        pa.array(_affine_permutation(item_rank, items, "taobao-item")),
        pa.array(_affine_permutation(category_rank, categories, "taobao-category")),
        pc.take(pa.array(TAOBAO_BEHAVIORS, pa.string()), pa.array(behavior)),
        pa.array(timestamp),
    ]
    return pa.Table.from_arrays(arrays, schema=schema)
