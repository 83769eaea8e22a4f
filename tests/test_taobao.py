"""Tests of fae_data.taobao: TBSM-style samples from the Taobao UserBehavior log.

The positive samples are checked row for row against a deliberately naive plain-Python
reference (dicts and lists per user) on both real Taobao files in /work/shared/data.
"""

from __future__ import annotations

import csv
import os
import subprocess
import sys
from collections import Counter
from functools import cache
from pathlib import Path

import polars as pl
import pytest

from fae_data.errors import InputError
from fae_data.schema import (
    TAOBAO_COLUMNS,
    TAOBAO_HISTORY_LENGTH,
    TAOBAO_SAMPLE_COLUMNS,
    TAOBAO_SAMPLE_SCHEMA,
    TAOBAO_SCHEMA,
)
from fae_data.taobao import SampleParams, build_samples

DATA = Path(os.environ.get("FAE_SHARED_DATA", "/work/shared/data"))
TIME_ORDER = DATA / "taobao_userbehavior_timeorder110k.csv"
USER_ORDER = DATA / "taobao_userbehavior_userorder84k.csv"
REAL_FILES = [
    pytest.param(TIME_ORDER, id="timeorder110k"),
    pytest.param(USER_ORDER, id="userorder84k"),
]

EVENTS_SCHEMA = pl.Schema(pl.from_arrow(TAOBAO_SCHEMA.empty_table()).schema)
SAMPLE_SCHEMA = pl.Schema(pl.from_arrow(TAOBAO_SAMPLE_SCHEMA.empty_table()).schema)
SORT_KEYS = ["timestamp", "user_id", "label", "item_id"]
SORT_DESC = [False, False, True, False]


def _need(path: Path) -> None:
    if not path.exists():
        pytest.skip(f"real data sample {path} is not available")


def scan_events(path: Path) -> pl.LazyFrame:
    """The raw CSV typed as ingest would type it."""
    return pl.scan_csv(path, has_header=False, schema=EVENTS_SCHEMA)


@cache
def csv_rows(path: Path) -> list[tuple[int, int, int, str, int]]:
    with path.open(newline="") as handle:
        return [(int(u), int(i), int(c), b, int(t)) for u, i, c, b, t in csv.reader(handle)]


@cache
def samples(path: Path, params: SampleParams) -> pl.DataFrame:
    return build_samples(scan_events(path), params)


def naive_positives(rows, history_length, min_history):
    """The positive rule, spelled out with a dict of per-user lists."""
    by_user = {}
    for line, (user, item, category, _behavior, ts) in enumerate(rows):
        by_user.setdefault(user, []).append((ts, line, item, category))
    out = []
    for user, events in by_user.items():
        events.sort()  # (timestamp, line in the file): ties keep the file order
        for position in range(len(events)):
            if position < min_history:
                continue
            ts, _line, item, category = events[position]
            before = events[max(0, position - history_length) : position]
            out.append(
                (ts, user, item, position, [e[2] for e in before], [e[3] for e in before], category)
            )
    out.sort(key=lambda r: (r[0], r[1], r[2], r[3]))
    # (label, user, item, category, hist items, hist categories, timestamp)
    return [(1, r[1], r[2], r[6], r[4], r[5], r[0]) for r in out]


def frame(rows, schema=None) -> pl.LazyFrame:
    """Events (user, item, category, timestamp) as a typed LazyFrame."""
    data = {
        "user_id": [r[0] for r in rows],
        "item_id": [r[1] for r in rows],
        "category_id": [r[2] for r in rows],
        "behavior_type": ["pv"] * len(rows),
        "timestamp": [r[3] for r in rows],
    }
    return pl.DataFrame(data, schema=schema or EVENTS_SCHEMA).lazy()


def as_rows(df: pl.DataFrame) -> list[tuple]:
    return list(df.select(TAOBAO_SAMPLE_COLUMNS).iter_rows())


# --- positives against the naive reference ----------------------------------------------


@pytest.mark.parametrize(
    ("path", "history_length", "min_history"),
    [
        pytest.param(TIME_ORDER, TAOBAO_HISTORY_LENGTH, 1, id="timeorder110k-default"),
        pytest.param(USER_ORDER, TAOBAO_HISTORY_LENGTH, 1, id="userorder84k-default"),
        # Long per-user histories: short windows, and a min_history above the window.
        pytest.param(USER_ORDER, 3, 0, id="userorder84k-L3-min0"),
        pytest.param(USER_ORDER, 5, 7, id="userorder84k-L5-min7"),
        pytest.param(TIME_ORDER, 1, 2, id="timeorder110k-L1-min2"),
    ],
)
def test_positives_match_naive_reference(path, history_length, min_history):
    _need(path)
    params = SampleParams(history_length=history_length, min_history=min_history)
    got = samples(path, params).filter(pl.col("label") == 1)
    expected = naive_positives(csv_rows(path), history_length, min_history)
    assert got.height == len(expected)
    assert as_rows(got) == expected


@pytest.mark.parametrize("path", REAL_FILES)
def test_output_schema_order_and_history_lengths(path):
    _need(path)
    df = samples(path, SampleParams())
    assert df.columns == list(TAOBAO_SAMPLE_COLUMNS)
    assert df.schema == SAMPLE_SCHEMA
    assert df.null_count().sum_horizontal().item() == 0
    assert df.equals(df.sort(SORT_KEYS, descending=SORT_DESC, maintain_order=True))
    lengths = df.select(
        items=pl.col("hist_item_id").list.len(), cats=pl.col("hist_category_id").list.len()
    )
    assert (lengths["items"] == lengths["cats"]).all()
    assert 1 <= lengths["items"].min() and lengths["items"].max() <= TAOBAO_HISTORY_LENGTH


def test_ties_keep_input_order_and_history_is_oldest_first():
    events = frame(
        [
            (7, 10, 1, 5),
            (8, 99, 9, 0),
            (7, 11, 1, 5),  # same second as item 10: comes after it (input order)
            (7, 12, 2, 4),  # earlier second: first in the sequence
            (7, 13, 2, 9),
        ]
    )
    df = build_samples(events, SampleParams(history_length=2, negatives=0))
    assert as_rows(df) == [
        (1, 7, 10, 1, [12], [2], 5),
        (1, 7, 11, 1, [12, 10], [2, 1], 5),
        (1, 7, 13, 2, [10, 11], [1, 1], 9),
    ]


def test_min_history_zero_gives_first_events_empty_histories():
    events = frame([(1, 5, 1, 0), (1, 6, 1, 1), (2, 7, 2, 0)])
    df = build_samples(events, SampleParams(min_history=0, negatives=0))
    assert as_rows(df) == [
        (1, 1, 5, 1, [], [], 0),
        (1, 2, 7, 2, [], [], 0),
        (1, 1, 6, 1, [5], [1], 1),
    ]


def test_partitions_and_user_interleaving_do_not_change_the_result():
    _need(TIME_ORDER)
    whole = samples(TIME_ORDER, SampleParams())
    lf = scan_events(TIME_ORDER)
    parts = pl.concat([lf.slice(0, 30_000), lf.slice(30_000, 50_000), lf.slice(80_000)])
    assert build_samples(parts, SampleParams()).equals(whole)
    # Another interleaving of users with the same order inside each user (a stable sort).
    by_user = lf.sort("user_id", maintain_order=True)
    assert build_samples(by_user, SampleParams()).equals(whole)


def test_integer_input_types_are_cast():
    wide = {
        "user_id": pl.Int64,
        "item_id": pl.Int64,
        "category_id": pl.Int32,
        "behavior_type": pl.String,
        "timestamp": pl.Int32,
    }
    events = frame([(1, 5, 1, 0), (1, 6, 2, 1)], schema=wide)
    df = build_samples(events, SampleParams(negatives=0))
    assert df.schema == SAMPLE_SCHEMA
    assert as_rows(df) == [(1, 1, 6, 2, [5], [1], 1)]


def test_empty_log_gives_empty_typed_frame():
    df = build_samples(frame([]), SampleParams())
    assert df.height == 0
    assert df.schema == SAMPLE_SCHEMA


# --- negatives -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "negatives"),
    [
        pytest.param(TIME_ORDER, 1, id="timeorder110k-1"),
        pytest.param(USER_ORDER, 3, id="userorder84k-3"),
    ],
)
def test_negatives_follow_their_positive(path, negatives):
    _need(path)
    df = samples(path, SampleParams(negatives=negatives))
    positives = df.filter(pl.col("label") == 1)
    negs = df.filter(pl.col("label") == 0)
    assert negs.height == negatives * positives.height

    # Group samples by what a negative shares with its positive: user, time and history.
    key = ["user_id", "timestamp", "hist_item_id", "hist_category_id"]
    groups = df.group_by(key).agg(
        pos=pl.col("item_id").filter(pl.col("label") == 1),
        neg=pl.col("item_id").filter(pl.col("label") == 0),
    )
    assert (groups["neg"].list.len() == negatives * groups["pos"].list.len()).all()
    single = groups.filter(pl.col("pos").list.len() == 1)
    assert single.height >= 0.95 * groups.height  # nearly every positive is alone
    clash = single.filter(pl.col("neg").list.contains(pl.col("pos").list.first()).fill_null(False))
    assert clash.height == 0, clash.head()
    # Groups with several positives of one item (repeats): still never that item.
    same_item = groups.filter(
        (pl.col("pos").list.len() > 1) & (pl.col("pos").list.n_unique() == 1)
    )
    for pos, neg in same_item.select("pos", "neg").iter_rows():
        assert pos[0] not in neg


@pytest.mark.parametrize("path", REAL_FILES)
def test_negative_categories_come_from_the_log(path):
    _need(path)
    df = samples(path, SampleParams())
    pairs = {(item, category) for _u, item, category, _b, _t in csv_rows(path)}
    negs = df.filter(pl.col("label") == 0).select("item_id", "category_id").unique()
    assert set(negs.iter_rows()) <= pairs


def test_negatives_are_drawn_by_popularity_excluding_the_target():
    # Item 1 (600 events), item 2 (300), item 3 (100): a negative of a positive on item 1
    # is item 2 three times in four, and never item 1.
    rows = []
    counts = {1: 600, 2: 300, 3: 100}
    event = 0
    for item, count in counts.items():
        for _ in range(count):
            rows.append((event % 50, item, 10 * item, event))
            event += 1
    df = build_samples(frame(rows), SampleParams(negatives=20, seed=3))
    groups = df.group_by("user_id", "timestamp").agg(
        pos=pl.col("item_id").filter(pl.col("label") == 1).first(),
        neg=pl.col("item_id").filter(pl.col("label") == 0),
    )
    drawn = Counter()
    for pos, neg in groups.filter(pl.col("pos") == 1).select("pos", "neg").iter_rows():
        drawn.update(neg)
    assert 1 not in drawn
    share = drawn[2] / (drawn[2] + drawn[3])
    assert abs(share - 0.75) < 0.02, drawn
    # The category of a drawn item is its category in the log.
    assert df.filter(pl.col("category_id") != 10 * pl.col("item_id")).height == 0


def test_negatives_zero_gives_positives_only():
    _need(USER_ORDER)
    df = samples(USER_ORDER, SampleParams(negatives=0))
    assert (df["label"] == 1).all()
    assert df.equals(samples(USER_ORDER, SampleParams()).filter(pl.col("label") == 1))


# --- determinism -----------------------------------------------------------------------


def test_same_seed_same_frame_other_seed_other_draws():
    _need(TIME_ORDER)
    first = samples(TIME_ORDER, SampleParams(seed=11))
    again = build_samples(scan_events(TIME_ORDER), SampleParams(seed=11))
    assert first.equals(again)
    other = samples(TIME_ORDER, SampleParams(seed=12))
    assert not first.equals(other)
    # Only the negatives' targets change with the seed.
    assert first.filter(pl.col("label") == 1).equals(other.filter(pl.col("label") == 1))


def test_result_does_not_depend_on_polars_thread_count(tmp_path):
    _need(TIME_ORDER)
    out = tmp_path / "one_thread.parquet"
    script = (
        "import sys, polars as pl\n"
        "from fae_data.schema import TAOBAO_SCHEMA\n"
        "from fae_data.taobao import SampleParams, build_samples\n"
        "assert pl.thread_pool_size() == 1\n"
        "schema = pl.Schema(pl.from_arrow(TAOBAO_SCHEMA.empty_table()).schema)\n"
        "events = pl.scan_csv(sys.argv[1], has_header=False, schema=schema)\n"
        "build_samples(events, SampleParams(negatives=2, seed=5)).write_parquet(sys.argv[2])\n"
    )
    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "POLARS_MAX_THREADS": "1", "PYTHONPATH": str(root)}
    subprocess.run(
        [sys.executable, "-c", script, str(TIME_ORDER), str(out)], check=True, cwd=root, env=env
    )
    here = samples(TIME_ORDER, SampleParams(negatives=2, seed=5))
    assert pl.read_parquet(out).equals(here)


# --- errors ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"history_length": 0}, r"history_length \(0\) is out of range: it must be >= 1"),
        ({"history_length": -3}, r"history_length \(-3\).*>= 1"),
        ({"negatives": -1}, r"negatives \(-1\).*>= 0"),
        ({"min_history": -1}, r"min_history \(-1\).*>= 0"),
        ({"seed": -1}, r"seed \(-1\).*>= 0"),
        ({"history_length": 2.5}, r"history_length must be an integer >= 1, got 2.5"),
        ({"negatives": True}, r"negatives must be an integer >= 0, got True"),
    ],
)
def test_invalid_params_are_refused(kwargs, match):
    with pytest.raises(InputError, match=match):
        SampleParams(**kwargs)


def test_missing_column_is_refused():
    events = frame([(1, 5, 1, 0)]).drop("category_id")
    with pytest.raises(InputError, match=r"no column 'category_id'.*found columns: user_id"):
        build_samples(events, SampleParams())


def test_non_integer_column_is_refused():
    events = frame([(1, 5, 1, 0)]).with_columns(pl.col("timestamp").cast(pl.String))
    with pytest.raises(InputError, match=r"'timestamp' has type String: expected Int64"):
        build_samples(events, SampleParams())


def test_nulls_are_refused():
    events = frame([(1, 5, 1, 0), (1, 6, 1, 1)]).with_columns(
        pl.when(pl.col("item_id") == 6).then(None).otherwise(pl.col("item_id")).alias("item_id")
    )
    with pytest.raises(InputError, match=r"'item_id' has 1 null value"):
        build_samples(events, SampleParams())


def test_single_item_log_cannot_give_negatives():
    events = frame([(1, 5, 1, 0), (1, 5, 1, 1), (2, 5, 1, 2)])
    with pytest.raises(InputError, match=r"every event of the log has item 5"):
        build_samples(events, SampleParams())
    assert build_samples(events, SampleParams(negatives=0)).height == 1


def test_columns_constant_matches_ingested_names():
    assert set(TAOBAO_SAMPLE_COLUMNS) >= {"user_id", "item_id", "category_id", "timestamp"}
    assert set(TAOBAO_COLUMNS) - set(TAOBAO_SAMPLE_COLUMNS) == {"behavior_type"}


def test_a_taobao_layout_without_training_samples_is_refused(tmp_path: Path) -> None:
    """A training partition holding only each user's first event makes no samples (no
    history): the layout once published with empty vocabularies and no training shard."""
    from fae_data.ingest import IngestParams
    from pipelines.ingest import run_ingest
    from pipelines.layout import LayoutParams, run_layout

    _need(USER_ORDER)
    events = pl.read_csv(USER_ORDER, has_header=False, new_columns=list(TAOBAO_COLUMNS),
                         n_rows=20000).with_row_index()
    first = events.sort(["user_id", "timestamp", "index"]).group_by(
        "user_id", maintain_order=True).head(1)
    rest = events.join(first.select("index"), on="index", how="anti")
    (tmp_path / "a_first.csv").write_text(first.drop("index").write_csv(include_header=False))
    (tmp_path / "b_rest.csv").write_text(rest.drop("index").write_csv(include_header=False))
    root = str(tmp_path / "root")
    run_ingest([str(tmp_path / "a_first.csv"), str(tmp_path / "b_rest.csv")], root,
               IngestParams("taobao"))
    with pytest.raises(InputError, match="no training rows in a_first"):
        run_layout(root, LayoutParams(dataset="taobao", val=("b_rest",), budget="64KiB"))
    assert not (tmp_path / "root" / "layouts" / "LATEST").exists()


def test_damaged_cached_samples_are_built_again(tmp_path: Path) -> None:
    """A truncated or deleted sample file behind an intact _samples.json failed every
    layout of the dataset, with no remedy; it is now built again, the same bytes."""
    from fae_data.ingest import IngestParams
    from pipelines.ingest import run_ingest
    from pipelines.layout import LayoutParams, run_layout

    _need(USER_ORDER)
    lines = USER_ORDER.read_bytes().splitlines(True)[:6000]
    files = []
    for i in range(2):
        path = tmp_path / f"part_{i}.csv"
        path.write_bytes(b"".join(lines[i * 3000:(i + 1) * 3000]))
        files.append(str(path))
    root = tmp_path / "root"
    run_ingest(files, str(root), IngestParams("taobao"), dataset="tb")
    params = LayoutParams(dataset="tb", budget="64KiB", batch_size=64)
    first = run_layout(str(root), params)
    [cache] = list((root / "samples" / "tb").iterdir())
    victim = cache / "part_0.parquet"
    good = victim.read_bytes()
    for damage, budget in ((lambda: victim.write_bytes(good[:500]), "32KiB"),
                           (victim.unlink, "128KiB")):
        damage()  # another budget: another layout over the same cached samples
        again = run_layout(str(root), LayoutParams(dataset="tb", budget=budget, batch_size=64))
        assert again.status == "published"
        assert victim.read_bytes() == good
    assert first.status == "published"


def test_training_negatives_come_from_training_events():
    """Drawn from the whole log, 1,633 of 11,142 training rows of the real sample (3 days,
    2 for training) had a negative item first seen on the evaluation day, which then got
    a training count and id. With ``train``, they come from the training days only."""
    _need(TIME_ORDER)
    lines = TIME_ORDER.read_bytes().splitlines(True)[:30000]
    days = [pl.read_csv(b"".join(lines[d * 10000:(d + 1) * 10000]), has_header=False,
                        new_columns=list(TAOBAO_COLUMNS)).with_columns(pl.lit(d).alias("day"))
            for d in range(3)]
    log = pl.concat(days).lazy()
    before = build_samples(log, SampleParams(), carry="day")
    after = build_samples(log, SampleParams(), carry="day", train=[0, 1])
    assert after.equals(build_samples(log, SampleParams(), carry="day", train=[0, 1]))
    positives = [f.filter(pl.col("label") == 1) for f in (before, after)]
    assert positives[0].equals(positives[1])  # only negatives change
    assert after.height == before.height
    train_items = set(pl.concat(days[:2])["item_id"].to_list())
    negatives = after.filter(pl.col("label") == 0)
    train_neg = negatives.filter(pl.col("day") < 2)["item_id"].to_list()
    assert train_neg and set(train_neg) <= train_items
    later = set(negatives.filter(pl.col("day") == 2)["item_id"].to_list())
    assert later - train_items  # evaluation negatives still come from the whole log


def test_a_training_log_of_one_item_names_the_training_partitions():
    """Training negatives come from the training partitions: with one item there, the
    error said "every event of the log has item 777" of a log with many items."""
    events = frame([(1, 777, 1, 0), (1, 777, 1, 1), (2, 777, 1, 2), (2, 777, 1, 3),
                    (1, 5, 2, 4), (1, 6, 2, 5)]).with_columns(
        pl.Series("day", [0, 0, 0, 0, 1, 1]))
    with pytest.raises(InputError, match="every event of the training partitions has item "
                                         "777; need at least 2 distinct items there"):
        build_samples(events, SampleParams(), carry="day", train=[0])
    assert build_samples(events, SampleParams(negatives=0), carry="day", train=[0]).height == 4
