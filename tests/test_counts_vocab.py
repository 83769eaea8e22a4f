"""Counts and vocabularies against plain-Python references."""

from __future__ import annotations

import random
from collections import Counter

import numpy as np
import polars as pl
import pytest

import pyarrow as pa

from fae_data.counts import column_counts, count_values, merge_counts, sample_mask, to_frame
from fae_data.errors import InputError
from fae_data.vocab import Encoder, VocabParams, build_vocabs, id_counts, table_totals


def frame(seed: int, n: int = 500) -> pl.DataFrame:
    rng = random.Random(seed)
    a = [rng.choice([None, *range(1, 30)]) for _ in range(n)]
    b = [rng.randrange(1, 8) for _ in range(n)]
    hist = [[rng.randrange(1, 12) for _ in range(rng.randrange(0, 4))] for _ in range(n)]
    return pl.DataFrame({"a": a, "b": b, "hist": hist},
                        schema={"a": pl.UInt32, "b": pl.UInt32, "hist": pl.List(pl.UInt32)})


COLUMNS = {"a": "A", "b": "B", "hist": "B"}  # hist shares table B with b


def naive_counts(df: pl.DataFrame) -> dict[tuple[str, int | None], int]:
    c: Counter = Counter()
    for row in df.iter_rows(named=True):
        c[("A", row["a"])] += 1
        c[("B", row["b"])] += 1
        for v in row["hist"]:
            c[("B", v)] += 1
    return dict(c)


def as_dict(counts: pl.DataFrame) -> dict[tuple[str, int | None], int]:
    return {(t, v): c for t, v, c in counts.iter_rows()}


def test_counts_match_naive_and_lists_count_every_element():
    df = frame(0)
    assert as_dict(count_values(df, COLUMNS)) == naive_counts(df)


@pytest.mark.parametrize("values", [
    [],
    [None, None],
    [7, None, 3, 7, 4294967295, 0, None, 3, 7],
    list(np.random.default_rng(3).zipf(1.3, 5000) % 2**32),
])
def test_column_counts_are_sorted_exact_and_nulls_first(values):
    arr = pa.array(values, pa.uint32())
    got = column_counts(arr)
    expected = Counter(values)
    assert dict(got.iter_rows()) == dict(expected)
    nulls = expected.pop(None, 0)
    assert got.get_column("value").to_list() == [None] * (nulls > 0) + sorted(expected)
    # chunked, list and arrow-table inputs count the same elements
    assert column_counts(pa.chunked_array([arr[:2], arr[2:]])).equals(got)
    lists = pa.array([values[:1], [], None, values[1:]], pa.list_(pa.uint32()))
    assert column_counts(lists).equals(got)
    # Polars columns (what counting reads locally) count the same: one or several chunks,
    # lists, and a wider integer type
    series = pl.Series(values=arr)
    assert column_counts(series).equals(got)
    assert column_counts(pl.concat([series[:2], series[2:]], rechunk=False)).equals(got)
    assert column_counts(pl.Series(values=lists)).equals(got)
    assert column_counts(series.cast(pl.Int64)).equals(got)


def test_counting_leaves_its_input_untouched():
    """The kernel sorts in place only what it copied itself."""
    series = pl.concat([pl.Series([5, 1, None, 3], dtype=pl.UInt32),
                        pl.Series([2, 1], dtype=pl.UInt32)], rechunk=False)
    column_counts(series)
    assert series.to_list() == [5, 1, None, 3, 2, 1]
    arr = pa.array([9, 4, 7], pa.uint32())
    column_counts(arr)
    assert arr.to_pylist() == [9, 4, 7]


def test_arrow_tables_count_like_polars_frames():
    df = frame(4)
    assert count_values(df.to_arrow(), COLUMNS).equals(count_values(df, COLUMNS))


def test_merge_sums_per_value_sorted_and_keeps_a_zero_null_row():
    from fae_data.counts import merge_tables

    schema = {"value": pl.UInt32, "count": pl.UInt64}
    a = pl.DataFrame({"value": [None, 3, 9], "count": [0, 2, 1]}, schema=schema)
    b = pl.DataFrame({"value": [9, 1, 3], "count": [4, 1, 1]}, schema=schema)
    merged = merge_tables([{"T": a}, {"T": b}, {"U": b}])
    assert merged["T"].rows() == [(None, 0), (1, 1), (3, 3), (9, 5)]
    assert merged["U"].equals(b)
    no_null = merge_tables([{"T": b}, {"T": b}])["T"]
    assert no_null.rows() == [(1, 2), (3, 2), (9, 8)]


def test_to_frame_sorts_unsorted_partials():
    shuffled = pl.DataFrame({"value": [5, None, 2], "count": [1, 2, 3]},
                            schema={"value": pl.UInt32, "count": pl.UInt64})
    out = to_frame({"T": shuffled})
    assert out.get_column("value").to_list() == [None, 2, 5]
    assert out.get_column("count").to_list() == [2, 3, 1]


def test_partials_merge_associatively_in_any_order():
    df = frame(1, 900)
    whole = count_values(df, COLUMNS)
    parts = [count_values(df.slice(i, 300), COLUMNS) for i in (0, 300, 600)]
    for order in ([0, 1, 2], [2, 0, 1]):
        merged = merge_counts(parts[i].lazy() for i in order)
        assert merged.equals(whole)
    nested = merge_counts([merge_counts([parts[0].lazy(), parts[1].lazy()]).lazy(), parts[2].lazy()])
    assert nested.equals(whole)


def test_sample_mask_is_the_same_whatever_the_chunking():
    whole = sample_mask(10_000, 0, 0.2, seed=5)
    pieces = pl.concat([sample_mask(3000, 0, 0.2, 5), sample_mask(7000, 3000, 0.2, 5)])
    assert whole.equals(pieces)
    assert 0.17 < whole.mean() < 0.23
    assert not whole.equals(sample_mask(10_000, 0, 0.2, seed=6))
    assert sample_mask(10, 0, 1.0, 0) is None
    with pytest.raises(InputError, match="sampling rate"):
        sample_mask(10, 0, 0.0, 0)


def test_sampled_counts_keep_every_value_with_zero_counts():
    df = frame(2)
    keep = sample_mask(df.height, 0, 0.1, 1)
    sampled = as_dict(count_values(df, COLUMNS, keep))
    full = naive_counts(df)
    assert set(sampled) == set(full)
    assert sampled == naive_counts(df.filter(keep)) | {k: 0 for k in full if k not in
                                                        naive_counts(df.filter(keep))}


def test_vocab_ranks_by_count_then_value_and_id0_takes_the_rest():
    counts = pl.DataFrame(
        {"table": ["A"] * 6, "value": [None, 5, 3, 9, 7, 1], "count": [4, 2, 2, 10, 1, 2]},
        schema={"table": pl.String, "value": pl.UInt32, "count": pl.UInt64},
    )
    v = build_vocabs(counts, ["A"], VocabParams())["A"]
    assert v.to_dict(as_series=False) == {"value": [9, 1, 3, 5, 7], "count": [10, 2, 2, 2, 1],
                                          "id": [1, 2, 3, 4, 5]}
    capped = build_vocabs(counts, ["A"], VocabParams(min_count=2, max_rows=3))["A"]
    assert capped["value"].to_list() == [9, 1]
    total = table_totals(counts)["A"]
    assert id_counts(total, capped).tolist() == [4 + 2 + 1 + 2, 10, 2]
    sampled = counts.with_columns(pl.when(pl.col("value") == 7).then(0).otherwise(pl.col("count"))
                                  .cast(pl.UInt64).alias("count"))
    v = build_vocabs(sampled, ["A"], VocabParams(sampling_rate=0.5))["A"]
    assert v["value"].to_list()[-1] == 7, "unsampled values rank last but keep an id"


@pytest.mark.parametrize("repeat", [1, 5], ids=["sorted-search", "hash-lookup"])
def test_encoder_matches_a_dict_lookup(repeat):
    """Both lookups (chunks smaller than the vocabulary, and larger) against a dict."""
    rng = np.random.default_rng(0)
    values = np.unique(rng.integers(0, 2**32, 5000, dtype=np.uint64).astype(np.uint32))
    vocab = pl.DataFrame({"value": values, "count": np.ones(len(values), np.uint64),
                          "id": rng.permutation(len(values)).astype(np.uint32) + 1})
    lookup = dict(zip(vocab["value"].to_list(), vocab["id"].to_list()))
    queries = np.concatenate([rng.choice(values, 3000 * repeat),
                              rng.integers(0, 2**32, 1000 * repeat).astype(np.uint32)])
    valid = rng.random(len(queries)) > 0.1
    got = Encoder(vocab).encode(queries, valid)
    want = [lookup.get(int(q), 0) if ok else 0 for q, ok in zip(queries, valid)]
    assert got.tolist() == want
    assert Encoder(vocab.clear()).encode(queries).tolist() == [0] * len(queries)
