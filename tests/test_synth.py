"""Tests of the synthetic Criteo and Taobao generators.

The checks read the files back with plain Python string splitting, independent of the
generator's Arrow/numpy code, and the learnability check trains its own tiny model.
"""

from __future__ import annotations

import collections
import gzip
import math
import re
from pathlib import Path

import numpy as np
import pytest

from fae_data import synth
from fae_data.errors import InputError
from fae_data.schema import (
    CRITEO_COLUMNS,
    CRITEO_DENSE,
    CRITEO_HEX_DIGITS,
    CRITEO_KAGGLE_CARDINALITIES,
    CRITEO_LABEL,
    CRITEO_SPARSE,
    TAOBAO_BEHAVIORS,
    TAOBAO_COLUMNS,
)

HEX_RE = re.compile(rf"[0-9a-f]{{{CRITEO_HEX_DIGITS}}}")
INT_RE = re.compile(r"-?[0-9]+")
LABEL = CRITEO_COLUMNS.index(CRITEO_LABEL)
DENSE = [CRITEO_COLUMNS.index(c) for c in CRITEO_DENSE]
SPARSE = [CRITEO_COLUMNS.index(c) for c in CRITEO_SPARSE]
BIG_ROWS = 20_000


def read_lines(path: Path) -> list[list[str]]:
    """Naive reader: the whole file, split on LF, then on the format's delimiter."""
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    text = data.decode("ascii")
    assert text.endswith("\n") and "\r" not in text
    delimiter = "\t" if ".tsv" in path.name else ","
    return [line.split(delimiter) for line in text[:-1].split("\n")]


def column(lines: list[list[str]], name: str) -> list[str]:
    j = CRITEO_COLUMNS.index(name)
    return [line[j] for line in lines]


@pytest.fixture(scope="module")
def criteo_big(tmp_path_factory: pytest.TempPathFactory) -> list[list[str]]:
    out = tmp_path_factory.mktemp("criteo_big")
    [path] = synth.write_criteo(out, rows=BIG_ROWS, seed=7)
    return read_lines(path)


@pytest.fixture(scope="module")
def taobao_two_days(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    out = tmp_path_factory.mktemp("taobao")
    return synth.write_taobao(out, rows=5_000, days=2, seed=3, scale=0.001)


# --- determinism and layout ------------------------------------------------------------


@pytest.mark.parametrize("use_gzip", [False, True])
@pytest.mark.parametrize("writer", [synth.write_criteo, synth.write_taobao])
def test_same_seed_gives_identical_bytes(tmp_path, writer, use_gzip):
    a = writer(tmp_path / "a", rows=3_000, days=2, seed=5, scale=0.01, gzip=use_gzip)
    b = writer(tmp_path / "b", rows=3_000, days=2, seed=5, scale=0.01, gzip=use_gzip)
    assert [p.name for p in a] == [p.name for p in b]
    for pa_, pb in zip(a, b, strict=True):
        assert pa_.read_bytes() == pb.read_bytes()


@pytest.mark.parametrize("writer", [synth.write_criteo, synth.write_taobao])
def test_different_seed_or_day_gives_different_bytes(tmp_path, writer):
    a = writer(tmp_path / "a", rows=1_000, days=2, seed=1)
    b = writer(tmp_path / "b", rows=1_000, days=2, seed=2)
    assert a[0].read_bytes() != b[0].read_bytes()
    assert a[0].read_bytes() != a[1].read_bytes()


def test_gzip_holds_the_same_text_as_plain(tmp_path):
    [plain] = synth.write_criteo(tmp_path / "p", rows=2_000, seed=4)
    [packed] = synth.write_criteo(tmp_path / "g", rows=2_000, seed=4, gzip=True)
    assert packed.name == "day_0.tsv.gz"
    assert gzip.decompress(packed.read_bytes()) == plain.read_bytes()


def test_files_rows_chunks_and_progress(tmp_path, monkeypatch):
    # A small chunk size so one file spans several chunks, the last one short.
    monkeypatch.setattr(synth, "CHUNK_ROWS", 1_000)
    seen: list[int] = []
    out = tmp_path / "new" / "folder"
    paths = synth.write_criteo(out, rows=2_500, days=3, scale=0.01, progress=seen.append)
    assert paths == [out / f"day_{d}.tsv" for d in range(3)]
    assert sorted(p.name for p in out.iterdir()) == [p.name for p in paths]  # no temp files
    for path in paths:
        assert len(read_lines(path)) == 2_500
    assert seen == [1_000, 1_000, 500] * 3

    taobao = synth.write_taobao(tmp_path / "t", rows=2_500, days=2, progress=seen.append)
    assert [p.name for p in taobao] == ["day_0.csv", "day_1.csv"]
    assert [len(read_lines(p)) for p in taobao] == [2_500, 2_500]


def test_failed_write_leaves_no_file(tmp_path):
    def boom(rows: int) -> None:
        raise RuntimeError("stop")

    with pytest.raises(RuntimeError, match="stop"):
        synth.write_criteo(tmp_path, rows=100, progress=boom)
    assert list(tmp_path.iterdir()) == []


# --- Criteo content ----------------------------------------------------------------------


def test_criteo_lines_are_well_formed(criteo_big):
    assert len(criteo_big) == BIG_ROWS
    for line in criteo_big:
        assert len(line) == len(CRITEO_COLUMNS)
        assert line[LABEL] in ("0", "1")
        for j in DENSE:
            assert line[j] == "" or INT_RE.fullmatch(line[j]), line[j]
        for j in SPARSE:
            assert line[j] == "" or HEX_RE.fullmatch(line[j]), line[j]


def test_criteo_dense_values_look_like_counts(criteo_big):
    i2 = [int(v) for v in column(criteo_big, "I2") if v]
    assert min(i2) == -1 and 0.01 < i2.count(-1) / len(i2) < 0.2
    for name in CRITEO_DENSE:
        values = np.array([int(v) for v in column(criteo_big, name) if v])
        assert values.min() >= -1
        # Heavy tail: the maximum is far above the median.
        assert values.max() > 5 * max(np.median(values), 1)


def test_criteo_missing_rates_are_kaggle_like(criteo_big):
    def empty_rate(name: str) -> float:
        return column(criteo_big, name).count("") / BIG_ROWS

    assert 0.40 < empty_rate("I1") < 0.50
    assert 0.72 < empty_rate("I12") < 0.82
    assert 0.71 < empty_rate("C22") < 0.81
    assert 0.39 < empty_rate("C19") < 0.49
    assert empty_rate("C1") == 0.0


@pytest.mark.parametrize("fraction", [0.0, 0.3, 1.0])
def test_empty_fraction_overrides_all_rates(tmp_path, fraction):
    [path] = synth.write_criteo(tmp_path, rows=4_000, empty_fraction=fraction)
    lines = read_lines(path)
    for j in DENSE + SPARSE:
        rate = sum(line[j] == "" for line in lines) / len(lines)
        assert abs(rate - fraction) < 0.05
    assert all(line[LABEL] in ("0", "1") for line in lines)


def test_distinct_values_respect_cardinality(tmp_path):
    scale = 0.001
    cards = synth.criteo_cardinalities(scale)
    [path] = synth.write_criteo(tmp_path, rows=10_000, scale=scale, seed=2)
    lines = read_lines(path)
    for name, card in zip(CRITEO_SPARSE, cards, strict=True):
        distinct = {v for v in column(lines, name) if v}
        assert 1 <= len(distinct) <= card, name
        if card <= 10:
            # Tiny columns are saturated by 10k draws even with the skew.
            assert len(distinct) == card, name


def test_criteo_cardinalities():
    assert synth.criteo_cardinalities(1.0) == CRITEO_KAGGLE_CARDINALITIES
    assert set(synth.criteo_cardinalities(1e-9)) == {1}
    half = synth.criteo_cardinalities(0.5)
    assert half == tuple(math.ceil(c / 2) for c in CRITEO_KAGGLE_CARDINALITIES)


def test_sparse_accesses_are_skewed(criteo_big):
    counts = sorted(
        collections.Counter(v for v in column(criteo_big, "C3") if v).values(), reverse=True
    )
    top = max(1, len(counts) // 100)
    share = sum(counts[:top]) / sum(counts)
    # Uniform draws would give the top 1% of values about 1-2% of the accesses.
    assert share > 0.3


def test_criteo_positive_rate(criteo_big):
    rate = sum(line[LABEL] == "1" for line in criteo_big) / BIG_ROWS
    assert 0.20 <= rate <= 0.30


def test_labels_depend_on_a_sparse_column(criteo_big):
    labels = np.array([int(v) for v in column(criteo_big, CRITEO_LABEL)])
    base = labels.mean()
    values = column(criteo_big, "C6")
    chi2, dof = 0.0, 0
    for value, n in collections.Counter(values).items():
        if value and n >= 100:
            ctr = labels[[v == value for v in values]].mean()
            chi2 += (ctr - base) ** 2 / (base * (1 - base) / n)
            dof += 1
    # Without a real effect chi2 / dof is about 1 (binomial noise only).
    assert dof >= 5 and chi2 / dof > 3


def naive_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    pos, neg = scores[labels == 1], scores[labels == 0]
    greater = (pos[:, None] > neg[None, :]).sum()
    ties = (pos[:, None] == neg[None, :]).sum()
    return float((greater + 0.5 * ties) / (pos.size * neg.size))


def test_labels_are_learnable_by_logistic_regression(criteo_big):
    # One-hot every (column, value) seen at least twice in the training half; the rest of
    # the values share one "rare" slot per column. Full-batch Adagrad on the log loss.
    train, test = criteo_big[: BIG_ROWS // 2], criteo_big[BIG_ROWS // 2 :]
    seen = collections.Counter((j, line[j]) for line in train for j in SPARSE)
    vocab = {key: i for i, key in enumerate(k for k, n in seen.items() if n >= 2)}
    rare = {j: len(vocab) + k for k, j in enumerate(SPARSE)}

    def encode(lines):
        idx = np.array([[vocab.get((j, line[j]), rare[j]) for j in SPARSE] for line in lines])
        y = np.array([int(line[LABEL]) for line in lines])
        return idx, y

    x_train, y_train = encode(train)
    x_test, y_test = encode(test)
    w = np.zeros(len(vocab) + len(rare))
    bias, g2, gb2 = 0.0, np.full(w.size, 1e-8), 1e-8
    for _ in range(100):
        p = 1 / (1 + np.exp(-(w[x_train].sum(axis=1) + bias)))
        r = p - y_train
        grad = np.bincount(x_train.ravel(), np.repeat(r, x_train.shape[1]), w.size)
        grad += 1e-3 * w * len(train)
        g2 += grad**2
        gb2 += r.sum() ** 2
        w -= 0.5 * grad / np.sqrt(g2)
        bias -= 0.5 * r.sum() / math.sqrt(gb2)
    auc = naive_auc(w[x_test].sum(axis=1) + bias, y_test)
    assert auc > 0.6


# --- Taobao content ---------------------------------------------------------------------


def test_taobao_lines_are_well_formed(taobao_two_days):
    users = max(1, round(synth.TAOBAO_NUM_USERS * 0.001))
    items = max(1, round(synth.TAOBAO_NUM_ITEMS * 0.001))
    categories = max(1, round(synth.TAOBAO_NUM_CATEGORIES * 0.001))
    behaviours = collections.Counter()
    for day, path in enumerate(taobao_two_days):
        lines = read_lines(path)
        assert len(lines) == 5_000
        for line in lines:
            assert len(line) == len(TAOBAO_COLUMNS)
            assert 1 <= int(line[0]) <= users
            assert 1 <= int(line[1]) <= items
            assert 1 <= int(line[2]) <= categories
        behaviours.update(line[3] for line in lines)
        times = [int(line[4]) for line in lines]
        start = synth.TAOBAO_START_TIMESTAMP + day * synth.SECONDS_PER_DAY
        assert times == sorted(times)
        assert start <= times[0] and times[-1] < start + synth.SECONDS_PER_DAY
        # Spread over the whole day, not bunched at its start.
        assert times[-1] - times[0] > 0.9 * synth.SECONDS_PER_DAY
    assert set(behaviours) == set(TAOBAO_BEHAVIORS)
    assert 0.85 < behaviours["pv"] / sum(behaviours.values()) < 0.93


def test_taobao_item_has_one_category(taobao_two_days):
    category_of: dict[str, set[str]] = collections.defaultdict(set)
    for path in taobao_two_days:
        for line in read_lines(path):
            category_of[line[1]].add(line[2])
    assert all(len(c) == 1 for c in category_of.values())
    # Many items, fewer categories, more than one of them used.
    assert len({next(iter(c)) for c in category_of.values()}) > 1


def test_taobao_users_and_items_are_skewed(taobao_two_days):
    lines = read_lines(taobao_two_days[0])
    for j in (0, 1):
        counts = sorted(collections.Counter(line[j] for line in lines).values(), reverse=True)
        top = max(1, len(counts) // 100)
        assert sum(counts[:top]) / sum(counts) > 0.2


# --- bad arguments ----------------------------------------------------------------------


@pytest.mark.parametrize("writer", [synth.write_criteo, synth.write_taobao])
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"rows": 0}, r"rows \(0\)"),
        ({"rows": -5}, r"rows \(-5\)"),
        ({"rows": 2.5}, r"rows \(2\.5\)"),
        ({"days": 0}, r"days \(0\)"),
        ({"seed": -1}, r"seed \(-1\)"),
        ({"scale": 0}, r"scale \(0\).*\(0, 1\]"),
        ({"scale": 2}, r"scale \(2\).*\(0, 1\]"),
        ({"zipf": 0}, r"zipf \(0\)"),
        ({"zipf": -1.5}, r"zipf \(-1\.5\)"),
        ({"zipf": float("nan")}, r"zipf \(nan\)"),
    ],
)
def test_bad_arguments_raise_input_error(tmp_path, writer, kwargs, match):
    args = {"rows": 10} | kwargs
    with pytest.raises(InputError, match=match):
        writer(tmp_path / "out", **args)
    assert not (tmp_path / "out").exists()  # validated before anything is created


@pytest.mark.parametrize("fraction", [-0.1, 1.5])
def test_bad_empty_fraction(tmp_path, fraction):
    with pytest.raises(InputError, match=rf"empty_fraction \({fraction}\)"):
        synth.write_criteo(tmp_path, rows=10, empty_fraction=fraction)


@pytest.mark.parametrize("scale", [0.0, -1.0, 1.5])
def test_criteo_cardinalities_bad_scale(scale):
    with pytest.raises(InputError, match=rf"scale \({scale}\)"):
        synth.criteo_cardinalities(scale)


def test_out_dir_that_is_a_file(tmp_path):
    target = tmp_path / "file"
    target.write_text("x")
    with pytest.raises(InputError, match="cannot create output folder"):
        synth.write_taobao(target, rows=10)


def test_zipf_exponent_one_and_steep(tmp_path):
    # The inverse CDF has a special case at exponent 1; both sides must stay in range.
    for exponent in (1.0, 3.0, 0.5):
        [path] = synth.write_criteo(
            tmp_path / str(exponent), rows=2_000, zipf=exponent, scale=0.001
        )
        lines = read_lines(path)
        for name, card in zip(CRITEO_SPARSE, synth.criteo_cardinalities(0.001), strict=True):
            assert len({v for v in column(lines, name) if v}) <= card
