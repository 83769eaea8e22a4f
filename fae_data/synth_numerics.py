"""Vectorised numerics of the synthetic generators (:mod:`fae_data.synth`).

Power-law (Zipf) ranks, the salted hash bijection that turns a rank into a raw value or a
fixed per-value effect, and Arrow arrays built straight from numpy buffers. They live
apart from :mod:`fae_data.synth` so that :mod:`fae_data.synth_criteo` and
:mod:`fae_data.synth_taobao` can import them, and :mod:`fae_data.synth` can import both
generators, without an import cycle.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import pyarrow as pa

from fae_data.schema import CRITEO_HEX_DIGITS

#: Byte b -> its two lowercase hex characters, as one uint16 whose memory is those chars.
_HEX_PAIRS = np.frombuffer(b"".join(f"{b:02x}".encode() for b in range(256)), dtype=np.uint16)


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
