"""The synthetic Taobao world and its chunk generator, behind :func:`fae_data.synth.write_taobao`.

Sizes, behaviour mix and the first day of the public dataset are fixed here; one call of
:func:`_taobao_chunk` draws a chunk of time-ordered rows with the RNG it is given.
"""

from __future__ import annotations

import math
import zlib

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from fae_data.schema import TAOBAO_BEHAVIORS
from fae_data.synth_numerics import _mix32, _power_law_ranks, _salt

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
