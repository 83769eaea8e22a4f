"""Layout end to end against a deliberately naive reference of FAE's rule."""

from __future__ import annotations

import json
import re
import shutil
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest

from fae_data import manifest as mf
from fae_data.errors import InputError, ManifestError, StorageError
from fae_data.ingest import IngestParams
from fae_data.schema import CRITEO_DENSE, CRITEO_SPARSE
from fae_data.storage import Storage
from fae_data.synth import write_criteo
from fae_data.verify import verify_layout
from pipelines.ingest import run_ingest
from pipelines.layout import LayoutParams, run_layout

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


# --- the naive reference ---------------------------------------------------------------


def naive_rows(path: Path) -> list[tuple]:
    """Parse a Criteo TSV with plain Python: (label, dense list, raw id list or None)."""
    rows = []
    for line in path.read_bytes().split(b"\n"):
        if not line:
            continue
        f = line.rstrip(b"\r").decode().split("\t")
        dense = [int(x) if x else None for x in f[1:14]]
        ids = [int(x, 16) if x else None for x in f[14:40]]
        rows.append((int(f[0]), dense, ids))
    return rows


def naive_vocab(train: list[tuple], table: int, min_count: int = 1) -> dict[int, int]:
    counts = Counter(r[2][table] for r in train if r[2][table] is not None)
    ranked = sorted((v for v, c in counts.items() if c >= min_count), key=lambda v: (-counts[v], v))
    return {v: i + 1 for i, v in enumerate(ranked)}


def naive_encode(rows: list[tuple], vocabs: list[dict[int, int]]) -> list[tuple]:
    out = []
    for label, dense, ids in rows:
        d = tuple(round(float(np.float32(np.log1p(max(x, 0)))), 5) if x is not None else 0.0
                  for x in dense)
        e = tuple(vocabs[t].get(v, 0) if v is not None else 0 for t, v in enumerate(ids))
        out.append((label, d, e))
    return out


def shard_rows(layout_dir: Path, m: mf.Manifest, split: str, kind: str) -> list[tuple]:
    out = []
    for s in m.shards_of(split, kind):
        t = pq.read_table(layout_dir / s.path).to_pydict()
        for i in range(len(t["label"])):
            out.append((
                t["label"][i],
                tuple(round(t[c][i], 5) for c in CRITEO_DENSE),
                tuple(t[c][i] for c in CRITEO_SPARSE),
            ))
    return out


def split_days(src: Path, out: Path, days: int) -> list[Path]:
    lines = src.read_bytes().splitlines(keepends=True)
    per = -(-len(lines) // days)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for d in range(days):
        p = out / f"day_{d}.tsv"
        p.write_bytes(b"".join(lines[d * per:(d + 1) * per]))
        paths.append(p)
    return paths


def build(root: Path, files: list[Path], **params) -> tuple[mf.Manifest, Path]:
    run_ingest([str(f) for f in files], str(root), IngestParams("criteo"))
    result = run_layout(str(root), LayoutParams(**params))
    return result.manifest, root / "layouts" / result.layout_id


@pytest.fixture(scope="module")
def synthetic_days(tmp_path_factory) -> list[Path]:
    out = tmp_path_factory.mktemp("raw")
    return write_criteo(out, rows=6000, days=3, seed=7, scale=0.0005)


# --- FAE's rule, checked independently ---------------------------------------------------


@pytest.mark.parametrize("source", ["real", "synthetic"])
def test_layout_matches_naive_reference(tmp_path, synthetic_days, source):
    if source == "real":
        files = split_days(SHARED / "criteo_1tb_day0_sample8324.tsv", tmp_path / "raw", 3)
    else:
        files = synthetic_days
    m, layout_dir = build(tmp_path / "root", files, budget="64KiB", batch_size=128)

    rows = [naive_rows(f) for f in files]
    train = rows[0] + rows[1]
    vocabs = [naive_vocab(train, t) for t in range(26)]
    # Same vocabularies: sizes and the ranked values.
    for t, table in enumerate(m.tables):
        assert table.vocab_size == len(vocabs[t]) + 1
        got = pq.read_table(layout_dir / table.vocab_path).to_pydict()
        assert dict(zip(got["value"], got["id"])) == vocabs[t]
    k = [t.hot_rows for t in m.tables]
    encoded_train = naive_encode(train, vocabs)
    hot = [r for r in encoded_train if all(i < k[t] for t, i in enumerate(r[2]))]
    cold = [r for r in encoded_train if not all(i < k[t] for t, i in enumerate(r[2]))]
    assert hot and cold, "the budget should give both hot and cold rows"
    assert Counter(shard_rows(layout_dir, m, "train", "hot")) == Counter(hot)
    assert Counter(shard_rows(layout_dir, m, "train", "cold")) == Counter(cold)
    # Val/test: the last day halved, in order, encoded with the training vocabulary.
    last = naive_encode(rows[2], vocabs)
    half = len(last) // 2
    assert shard_rows(layout_dir, m, "val", "all") == last[:half]
    assert shard_rows(layout_dir, m, "test", "all") == last[half:]
    assert m.stats["hot_input_fraction"] == pytest.approx(len(hot) / len(encoded_train))
    # Hot access coverage from the naive counts.
    total = sum(1 for r in train for v in r[2])  # nulls count as accesses of id 0
    covered = sum(1 for r in encoded_train for t, i in enumerate(r[2]) if i < k[t])
    assert m.stats["hot_access_coverage"] == pytest.approx(covered / total)
    assert all(c.ok for c in verify_layout(*mf.load(str(layout_dir))))


def test_min_count_and_max_rows_map_to_zero(tmp_path, synthetic_days):
    m, layout_dir = build(tmp_path / "root", synthetic_days, budget="64KiB", batch_size=128,
                          min_count=3, max_rows=50)
    train = naive_rows(synthetic_days[0]) + naive_rows(synthetic_days[1])
    for t, table in enumerate(m.tables):
        ranked = naive_vocab(train, t, min_count=3)
        capped = {v: i for v, i in ranked.items() if i < 50}
        assert table.vocab_size == len(capped) + 1
        got = pq.read_table(layout_dir / table.vocab_path).to_pydict()
        assert dict(zip(got["value"], got["id"])) == capped


def test_minibatch_alignment(tmp_path, synthetic_days):
    m, layout_dir = build(tmp_path / "root", synthetic_days, budget="64KiB", batch_size=100,
                          shard_bytes=30_000)
    assert len(m.shards_of("train", "cold")) > 1, "small shards should roll over"
    for s in m.shards:
        meta = pq.ParquetFile(layout_dir / s.path).metadata
        sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        assert all(n == 100 for n in sizes[:-1])
        assert sizes[-1] == s.last_batch_rows
    for split, kind in (("train", "hot"), ("train", "cold")):
        shards = m.shards_of(split, kind)
        assert all(s.last_batch_rows == 100 for s in shards[:-1]), "only the last may be short"


def test_shard_compression_is_a_parameter_of_the_layout(tmp_path, synthetic_days):
    lz4, layout_dir = build(tmp_path / "root", synthetic_days, budget="64KiB", batch_size=100)
    plain, plain_dir = build(tmp_path / "root", synthetic_days, budget="64KiB", batch_size=100,
                             shard_compression="none")
    assert plain.layout_id != lz4.layout_id
    assert plain.params["shard_compression"] == "none"
    codec = pq.ParquetFile(plain_dir / plain.shards[0].path).metadata.row_group(0).column(1)
    assert codec.compression == "UNCOMPRESSED"
    assert all(c.ok for c in verify_layout(*mf.load(str(plain_dir))))
    for a, b in zip(lz4.shards, plain.shards, strict=True):  # same rows, other bytes
        assert pq.read_table(layout_dir / a.path).equals(pq.read_table(plain_dir / b.path))
    with pytest.raises(InputError, match="shard compression 'lzo' unknown"):
        LayoutParams(shard_compression="lzo")


# --- determinism and idempotency -------------------------------------------------------------


def test_deterministic_and_rerun_is_noop(tmp_path, synthetic_days):
    m1, d1 = build(tmp_path / "a", synthetic_days, budget="64KiB", batch_size=128, seed=3)
    m2, d2 = build(tmp_path / "b", synthetic_days, budget="64KiB", batch_size=128, seed=3)
    assert m1.layout_id == m2.layout_id
    for s1, s2 in zip(m1.shards, m2.shards, strict=True):
        assert (d1 / s1.path).read_bytes() == (d2 / s2.path).read_bytes()
    mtime = (d1 / "manifest.json").stat().st_mtime_ns
    again = run_layout(str(tmp_path / "a"), LayoutParams(budget="64KiB", batch_size=128, seed=3))
    assert again.status == "unchanged"
    assert (d1 / "manifest.json").stat().st_mtime_ns == mtime
    other = run_layout(str(tmp_path / "a"), LayoutParams(budget="64KiB", batch_size=128, seed=4))
    assert other.layout_id != m1.layout_id
    shuffled = shard_rows(d1, m1, "train", "hot")
    assert Counter(shard_rows(tmp_path / "a" / "layouts" / other.layout_id, other.manifest,
                              "train", "hot")) == Counter(shuffled)


def test_new_budget_is_a_new_layout_and_latest_moves(tmp_path, synthetic_days):
    m1, _ = build(tmp_path / "r", synthetic_days, budget="64KiB", batch_size=128)
    r2 = run_layout(str(tmp_path / "r"), LayoutParams(budget="16KiB", batch_size=128))
    assert r2.layout_id != m1.layout_id
    assert (tmp_path / "r" / "layouts" / "LATEST").read_text().strip() == r2.layout_id
    assert (tmp_path / "r" / "layouts" / m1.layout_id / "manifest.json").exists()
    assert sum(t.hot_rows for t in r2.manifest.tables) < sum(t.hot_rows for t in m1.tables)
    # asking for the first layout again: nothing is rebuilt, LATEST comes back to it
    again = run_layout(str(tmp_path / "r"), LayoutParams(budget="64KiB", batch_size=128))
    assert again.status == "unchanged" and again.layout_id == m1.layout_id
    assert (tmp_path / "r" / "layouts" / "LATEST").read_text().strip() == m1.layout_id


def test_a_crash_between_manifest_and_latest_is_finished_by_the_rerun(
        tmp_path, synthetic_days, monkeypatch):
    m1, _ = build(tmp_path / "r", synthetic_days, budget="64KiB", batch_size=128)
    params = LayoutParams(budget="16KiB", batch_size=128)

    def crash(*_args):
        raise OSError("killed (injected)")

    monkeypatch.setattr(mf, "set_latest", crash)
    with pytest.raises(OSError, match="injected"):
        run_layout(str(tmp_path / "r"), params)
    monkeypatch.undo()
    latest = tmp_path / "r" / "layouts" / "LATEST"
    assert latest.read_text().strip() == m1.layout_id
    done = run_layout(str(tmp_path / "r"), params)
    assert done.status == "unchanged"  # the manifest was written: nothing to rebuild
    assert latest.read_text().strip() == done.layout_id != m1.layout_id


# --- crash safety ------------------------------------------------------------------------


def test_failure_before_publish_keeps_latest(tmp_path, synthetic_days):
    m1, _ = build(tmp_path / "r", synthetic_days, budget="64KiB", batch_size=128)
    latest = tmp_path / "r" / "layouts" / "LATEST"
    with pytest.raises(StorageError, match="injected"):
        run_layout(str(tmp_path / "r"), LayoutParams(budget="32KiB", batch_size=128),
                   fail_after_shards=True)
    assert latest.read_text().strip() == m1.layout_id
    done = run_layout(str(tmp_path / "r"), LayoutParams(budget="32KiB", batch_size=128))
    assert done.status == "published"
    assert latest.read_text().strip() == done.layout_id
    assert all(c.ok for c in verify_layout(*mf.load(str(tmp_path / "r"))))


def test_failure_while_writing_shards_keeps_latest(tmp_path, synthetic_days, monkeypatch):
    from fae_data import cutter

    m1, _ = build(tmp_path / "r", synthetic_days, budget="64KiB", batch_size=128)
    calls = {"n": 0}
    real = cutter._Cutter._write

    def flaky(self, rows):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full (injected)")
        return real(self, rows)

    monkeypatch.setattr(cutter._Cutter, "_write", flaky)
    with pytest.raises(OSError, match="injected"):
        run_layout(str(tmp_path / "r"), LayoutParams(budget="32KiB", batch_size=128))
    monkeypatch.setattr(cutter._Cutter, "_write", real)
    assert (tmp_path / "r" / "layouts" / "LATEST").read_text().strip() == m1.layout_id
    done = run_layout(str(tmp_path / "r"), LayoutParams(budget="32KiB", batch_size=128))
    assert done.status == "published"


@pytest.mark.parametrize("where", ["shards", "before publish"])
def test_a_failed_forced_rebuild_leaves_the_published_layout_readable(
        tmp_path, synthetic_days, monkeypatch, where):
    """--force rebuilds the layout LATEST points to: until its manifest replaces the old
    one, the old manifest and every file it names stay in place."""
    from fae_data import cutter

    root = tmp_path / "r"
    params = LayoutParams(budget="64KiB", batch_size=128)
    m1, layout_dir = build(root, synthetic_days, budget="64KiB", batch_size=128)
    before = {p: p.read_bytes() for p in layout_dir.rglob("*") if p.is_file()}
    if where == "shards":
        def broken(self, rows):
            raise OSError("disk full (injected)")

        monkeypatch.setattr(cutter._Cutter, "_write", broken)
        with pytest.raises(OSError, match="injected"):
            run_layout(str(root), params, force=True)
        monkeypatch.undo()
    else:
        with pytest.raises(StorageError, match="injected"):
            run_layout(str(root), params, force=True, fail_after_shards=True)
    assert (root / "layouts" / "LATEST").read_text().strip() == m1.layout_id
    assert all((p.read_bytes() == b) for p, b in before.items()), "published files untouched"
    assert all(c.ok for c in verify_layout(*mf.load(str(root))))
    assert run_layout(str(root), params).status == "unchanged"  # still the published one

    done = run_layout(str(root), params, force=True)
    assert done.status == "published" and done.layout_id == m1.layout_id
    assert all(c.ok for c in verify_layout(*mf.load(str(root))))
    # the rebuild's files are the first build's bytes, in folders of their own; the old
    # folders and the crashed rebuild's are gone
    assert [s.sha256 for s in done.manifest.shards] == [s.sha256 for s in m1.shards]
    shard_dir = done.manifest.shards[0].path.split("/")[0]
    vocab_dir = done.manifest.tables[0].vocab_path.split("/")[0]
    assert shard_dir.startswith("shards-") and vocab_dir.startswith("vocab-")
    assert sorted(p.name for p in layout_dir.iterdir()) == sorted(
        ["manifest.json", "plan.json", shard_dir, vocab_dir])


def test_a_corrupt_manifest_is_named_and_force_rebuilds_it(tmp_path, synthetic_days):
    params = LayoutParams(budget="64KiB", batch_size=128)
    m1, layout_dir = build(tmp_path / "r", synthetic_days, budget="64KiB", batch_size=128)
    (layout_dir / "manifest.json").write_text("{broken")
    with pytest.raises(ManifestError, match=r"manifest.json: not valid JSON .*`fae layout "
                                            r"--force` with the same parameters rebuilds"):
        run_layout(str(tmp_path / "r"), params)
    done = run_layout(str(tmp_path / "r"), params, force=True)
    assert done.status == "published" and done.layout_id == m1.layout_id
    assert [s.sha256 for s in done.manifest.shards] == [s.sha256 for s in m1.shards]
    assert all(c.ok for c in verify_layout(*mf.load(str(tmp_path / "r"))))


def test_a_second_build_of_the_same_layout_waits_for_the_first(tmp_path, synthetic_days):
    """Two `fae layout` runs of one layout on a local root: the second waits on the build
    lock, then finds the layout published instead of removing the first one's files."""
    import threading

    from pipelines.publish import layout_lock

    root = tmp_path / "r"
    run_ingest([str(f) for f in synthetic_days], str(root), IngestParams("criteo"))
    params = LayoutParams(budget="64KiB", batch_size=128)
    first = run_layout(str(root), params)
    results = []
    with layout_lock(Storage(str(root)), first.layout_id):  # "another run" holds it
        worker = threading.Thread(
            target=lambda: results.append(run_layout(str(root), params, force=True)))
        worker.start()
        worker.join(timeout=0.5)
        assert worker.is_alive() and not results, "the second build waits for the lock"
    worker.join(timeout=120)
    assert [r.status for r in results] == ["published"]
    assert all(c.ok for c in verify_layout(*mf.load(str(root))))


def test_a_manifest_naming_a_missing_file_is_not_published(tmp_path, synthetic_days):
    from pipelines.publish import check_files

    m, layout_dir = build(tmp_path / "r", synthetic_days, budget="64KiB", batch_size=128)
    check_files(Storage(str(tmp_path / "r")), m)  # complete: no error
    (layout_dir / m.shards[-1].path).unlink()
    with pytest.raises(StorageError, match=r"1 file\(s\) of this build are gone .*Nothing was "
                                           r"published; run again"):
        check_files(Storage(str(tmp_path / "r")), m)


# --- bad input -----------------------------------------------------------------------------


def test_missing_partition_and_no_partitions(tmp_path, synthetic_days):
    with pytest.raises(InputError, match="no ingested partitions"):
        run_layout(str(tmp_path / "empty"), LayoutParams())
    run_ingest([str(f) for f in synthetic_days], str(tmp_path / "r"), IngestParams("criteo"))
    with pytest.raises(InputError, match="day_9.*missing"):
        run_layout(str(tmp_path / "r"), LayoutParams(partitions=("day_0", "day_9")))
    # Another dataset's name: the error says which datasets the root holds.
    with pytest.raises(InputError, match="holds dataset\\(s\\) criteo: pass --dataset criteo"):
        run_layout(str(tmp_path / "r"), LayoutParams(dataset="taobao"))
    with pytest.raises(InputError, match="at least 2 partitions"):
        run_layout(str(tmp_path / "r"), LayoutParams(partitions=("day_0",)))


def test_explicit_split(tmp_path, synthetic_days):
    root = tmp_path / "r"
    run_ingest([str(f) for f in synthetic_days], str(root), IngestParams("criteo"))
    params = LayoutParams(budget="64KiB", batch_size=128, val=("day_1",), test=("day_2",))
    m = run_layout(str(root), params).manifest
    assert m.params["split"] == {"mode": "explicit", "train": ["day_0"], "val": ["day_1"],
                                 "test": ["day_2"]}
    rows = {p.name: p.rows for p in m.dataset.partitions}
    by = m.stats["rows_by_split_and_kind"]
    assert by.get("train/hot", 0) + by.get("train/cold", 0) == rows["day_0"]
    assert (by["val/all"], by["test/all"]) == (rows["day_1"], rows["day_2"])
    assert all(c.ok for c in verify_layout(*mf.load(str(root))))

    with pytest.raises(InputError, match=r"\['day_2'\] are given as both validation and test"):
        run_layout(str(root), LayoutParams(val=("day_2",), test=("day_2",)))
    with pytest.raises(InputError, match=r"val/test partitions \['day_9'\] are not among"):
        run_layout(str(root), LayoutParams(val=("day_1",), test=("day_9",)))
    with pytest.raises(InputError, match="no training partitions left"):
        run_layout(str(root), LayoutParams(val=("day_0", "day_1"), test=("day_2",)))


def test_damaged_partition_is_refused_before_any_work_and_reingest_repairs_it(
        tmp_path, synthetic_days):
    root = tmp_path / "r"
    run_ingest([str(f) for f in synthetic_days], str(root), IngestParams("criteo"))
    day1 = root / "ingested" / "criteo" / "day_1"
    data = next(day1.glob("data-*.parquet"))
    data.write_bytes(b"not parquet")
    with pytest.raises(InputError, match=r"partition 'day_1' of dataset 'criteo' is damaged "
                                         r"\(.*data-.*not a readable Parquet file.*\); run "
                                         r"`fae ingest` on its source .*day_1.tsv\) again"):
        run_layout(str(root), LayoutParams(budget="64KiB", batch_size=128))
    assert not (root / "counts").exists() and not (root / "layouts").exists()
    results = run_ingest([str(f) for f in synthetic_days], str(root), IngestParams("criteo"))
    assert [p.status for p in results.partitions] == ["unchanged", "replaced", "unchanged"]
    assert run_layout(str(root), LayoutParams(budget="64KiB", batch_size=128)).status == "published"


def test_a_partition_damaged_during_the_layout_is_named(tmp_path, synthetic_days, monkeypatch):
    """A file that breaks after the up-front check still fails with its name, not a
    reader's traceback (iter_chunks wraps Polars' and Arrow's errors)."""
    from fae_data.chunks import iter_chunks

    root = tmp_path / "r"
    run_ingest([str(f) for f in synthetic_days], str(root), IngestParams("criteo"))
    data = next((root / "ingested" / "criteo" / "day_0").glob("data-*.parquet"))
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2] + b"PAR1")
    with pytest.raises(StorageError, match=rf"{data.name}: not a readable Parquet file"):
        list(iter_chunks(Storage(str(root)), str(data.relative_to(root)), 100))


def test_corrupt_partial_counts(tmp_path, synthetic_days):
    root = tmp_path / "r"
    build(root, synthetic_days, budget="64KiB", batch_size=128)
    for f in (root / "counts").rglob("*.parquet"):
        f.write_bytes(b"not parquet at all")
    shutil.rmtree(root / "layouts")
    with pytest.raises(StorageError, match="corrupt partial count file"):
        run_layout(str(root), LayoutParams(budget="64KiB", batch_size=128))
    assert not (root / "layouts" / "LATEST").exists()


def test_partial_counts_with_a_string_table_column_still_load(tmp_path, synthetic_days):
    """Partial count files store ``table`` as an Enum; files from before, where it was a
    string, give the same layout. A file of another schema is refused by name."""
    import polars as pl

    root = tmp_path / "r"
    m, _ = build(root, synthetic_days, budget="64KiB", batch_size=128)
    files = sorted((root / "counts").rglob("*.parquet"))
    assert files and all(isinstance(pl.read_parquet(f).schema["table"], pl.Enum) for f in files)
    for f in files:
        pl.read_parquet(f).with_columns(pl.col("table").cast(pl.String)).write_parquet(f)
    shutil.rmtree(root / "layouts")
    again = run_layout(str(root), LayoutParams(budget="64KiB", batch_size=128))
    assert again.manifest.layout_id == m.layout_id
    assert [t.vocab_size for t in again.manifest.tables] == [t.vocab_size for t in m.tables]
    assert [s.sha256 for s in again.manifest.shards] == [s.sha256 for s in m.shards]
    pl.read_parquet(files[0]).with_columns(pl.col("count").cast(pl.Int32)).write_parquet(files[0])
    shutil.rmtree(root / "layouts")
    with pytest.raises(StorageError, match=f"{files[0].name}: partial counts have schema"):
        run_layout(str(root), LayoutParams(budget="64KiB", batch_size=128))


@pytest.mark.parametrize(("params", "match"), [
    ({"partitions": ("day_0", "day_0", "day_1")}, "partition 'day_0' is given more than once"),
    ({"val": ("day_2", "day_2")}, "val partition 'day_2' is given more than once"),
    ({"dataset": "../ingested/criteo"}, "dataset name '../ingested/criteo' is not allowed"),
    ({"partitions": ("../criteo/day_0", "day_1")}, "partition name '../criteo/day_0'"),
    ({"seed": -1}, r"seed \(-1\) must be in"),
    ({"table_dims": (("C3", 0),)}, "found 0 for table C3"),
    ({"table_dims": (("", 8),)}, "table name is missing"),
    ({"table_dims": (("C3", 8), ("C3", 4))}, "name a table twice"),
])
def test_bad_layout_parameters_are_refused(params, match):
    """Each once did damage or crashed: a repeated partition laid its rows out twice (and
    verify passed), '..' names wrote counts outside counts/, seed -1 was a traceback."""
    with pytest.raises(InputError, match=match):
        LayoutParams(**params)


def test_unknown_per_table_dim_is_refused(tmp_path, synthetic_days):
    """A --table-dim for a table the dataset lacks used to be ignored (yet gave a new
    layout id, so a duplicate layout)."""
    with pytest.raises(InputError, match="per-table dim for 'C99'.*no such table"):
        build(tmp_path / "r", synthetic_days, budget="64KiB", table_dims=(("C99", 32),))
    assert not (tmp_path / "r" / "layouts" / "LATEST").exists()


def test_rerun_rebuilds_a_published_layout_with_missing_files(tmp_path, synthetic_days):
    """A rerun once answered "unchanged" for a layout whose shard was deleted (and pointed
    LATEST at it); now it rebuilds it, byte for byte, like a re-ingest repairs a partition."""
    root = tmp_path / "r"
    m, layout_dir = build(root, synthetic_days, budget="64KiB", batch_size=128)
    victim = layout_dir / m.shards[-1].path
    victim.unlink()
    again = run_layout(str(root), LayoutParams(budget="64KiB", batch_size=128))
    assert again.status == "published"
    assert [s.sha256 for s in again.manifest.shards] == [s.sha256 for s in m.shards]
    assert all(c.ok for c in verify_layout(*mf.load(str(layout_dir))))
    assert run_layout(str(root), LayoutParams(budget="64KiB", batch_size=128)).status == "unchanged"
    # A truncated shard and vocabulary are damage a rerun repairs too (it said unchanged).
    m = again.manifest  # the repair wrote its files beside the old ones' folders
    for path in (layout_dir / m.shards[0].path, layout_dir / m.tables[0].vocab_path):
        path.write_bytes(path.read_bytes()[:100])
    again = run_layout(str(root), LayoutParams(budget="64KiB", batch_size=128))
    assert again.status == "published"
    assert all(c.ok for c in verify_layout(*mf.load(str(layout_dir))))


def test_an_unreadable_latest_is_repaired_by_a_rerun(tmp_path, synthetic_days):
    """An empty or garbage LATEST failed every rerun, which is how it is repaired."""
    root = tmp_path / "r"
    m, _ = build(root, synthetic_days, budget="64KiB", batch_size=128)
    latest = root / "layouts" / "LATEST"
    for junk in (b"", b"a/b", bytes(range(200))):
        latest.write_bytes(junk)
        with pytest.raises(ManifestError, match="LATEST: malformed") as info:
            mf.latest(Storage(str(root)))
        assert len(str(info.value)) < 400  # junk is not echoed whole
        assert run_layout(str(root), LayoutParams(budget="64KiB", batch_size=128)).status == "unchanged"
        assert latest.read_text().strip() == m.layout_id


def test_manifest_pointing_outside_is_refused(tmp_path, synthetic_days):
    _, layout_dir = build(tmp_path / "r", synthetic_days, budget="64KiB", batch_size=128)
    path = layout_dir / "manifest.json"
    for bad in ("../../ingested/criteo/day_0/_partition.json", "/etc/passwd", "s3://x/y"):
        d = json.loads(path.read_text())
        d["shards"][0]["path"] = bad
        path.write_text(json.dumps(d))
        with pytest.raises(ManifestError, match="not allowed|escapes"):
            mf.load(str(path))


def test_other_format_version_is_refused(tmp_path, synthetic_days):
    _, layout_dir = build(tmp_path / "r", synthetic_days, budget="64KiB", batch_size=128)
    path = layout_dir / "manifest.json"
    d = json.loads(path.read_text())
    d["format"] = "fae.layout/v0"
    path.write_text(json.dumps(d))
    with pytest.raises(ManifestError, match="format 'fae.layout/v0' is not supported"):
        mf.load(str(path))


def test_checksum_mismatch_fails_verify(tmp_path, synthetic_days):
    m, layout_dir = build(tmp_path / "r", synthetic_days, budget="64KiB", batch_size=128)
    shard = layout_dir / m.shards[0].path
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0xFF
    shard.write_bytes(bytes(data))
    checks = {c.name: c for c in verify_layout(*mf.load(str(layout_dir)), deep=False)}
    assert not checks["shard checksums"].ok
    assert m.shards[0].path in checks["shard checksums"].detail


def test_vocabulary_checksums_are_recorded_and_verified(tmp_path, synthetic_days):
    """verify compared a vocabulary's row count only: values swapped or rewritten with the
    same count passed. The manifest now records each file's size and sha256."""
    import hashlib

    import polars as pl

    m, layout_dir = build(tmp_path / "r", synthetic_days, budget="64KiB", batch_size=128)
    for t in m.tables:
        data = (layout_dir / t.vocab_path).read_bytes()
        assert (t.vocab_bytes, t.vocab_sha256) == (len(data), hashlib.sha256(data).hexdigest())
    checks = {c.name: c for c in verify_layout(*mf.load(str(layout_dir)), deep=False)}
    assert checks["vocabularies"].ok and "checksums match" in checks["vocabularies"].detail

    vocab = layout_dir / m.tables[2].vocab_path
    frame = pl.read_parquet(vocab)
    swapped = frame.with_columns(pl.col("value").reverse())  # same rows, other ids
    swapped.write_parquet(vocab)
    checks = {c.name: c for c in verify_layout(*mf.load(str(layout_dir)), deep=False)}
    assert not checks["vocabularies"].ok
    assert re.search(rf"{re.escape(m.tables[2].vocab_path)}: (\d+ bytes|sha256)",
                     checks["vocabularies"].detail)

    # A layout written before the checksums were recorded: sizes only, and it says so.
    frame.write_parquet(vocab)
    path = layout_dir / mf.MANIFEST
    d = json.loads(path.read_text())
    for t in d["tables"]:
        del t["vocab_bytes"], t["vocab_sha256"]
    path.write_text(json.dumps(d))
    checks = {c.name: c for c in verify_layout(*mf.load(str(layout_dir)), deep=False)}
    assert checks["vocabularies"].ok
    assert f"{len(m.tables)} without a recorded checksum" in checks["vocabularies"].detail


def test_verify_reports_unreadable_and_missing_files_instead_of_crashing(tmp_path, synthetic_days):
    """A shard or vocabulary that is not Parquet at all is a failed check with its path,
    and a check that could not read a missing shard does not pass."""
    from typer.testing import CliRunner

    from pipelines.cli import app

    m, layout_dir = build(tmp_path / "r", synthetic_days, budget="64KiB", batch_size=128)
    (layout_dir / m.shards[0].path).write_bytes(b"not parquet at all")
    (layout_dir / m.tables[0].vocab_path).write_bytes(b"junk")
    (layout_dir / m.shards[1].path).unlink()
    checks = {c.name: c for c in verify_layout(*mf.load(str(layout_dir)))}
    for name in ("shard checksums", "vocabularies", "minibatch alignment and columns",
                 "hot invariant"):
        assert not checks[name].ok, name
    assert f"{m.shards[0].path}: not a readable Parquet file" in checks[
        "minibatch alignment and columns"].detail
    assert f"{m.tables[0].vocab_path}: not a readable Parquet file" in checks["vocabularies"].detail
    assert f"{m.shards[0].path}: not a readable Parquet file" in checks["hot invariant"].detail
    for name in ("minibatch alignment and columns", "hot invariant"):
        assert "1 shard missing, not checked" in checks[name].detail
    assert checks["row totals"].ok  # the manifest alone: still checked

    runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})
    done = runner.invoke(app, ["verify", str(layout_dir), "--quiet"])
    assert done.exit_code == 1, done.output
    assert "Traceback" not in done.output
    assert f"FAIL hot invariant: {layout_dir / m.shards[0].path}: not a readable Parquet " \
        "file" in done.output


def test_verify_reports_progress_per_shard_and_commands_accept_quiet(tmp_path, synthetic_days):
    from typer.testing import CliRunner

    from pipelines.cli import app

    m, layout_dir = build(tmp_path / "r", synthetic_days, budget="64KiB", batch_size=128)
    seen: list[tuple[str, int, int]] = []
    checks = verify_layout(*mf.load(str(layout_dir)), progress=lambda *a: seen.append(a))
    assert all(c.ok for c in checks)
    n = len(m.shards)
    assert seen == [("shard checksums", i, n) for i in range(1, n + 1)] + [
        ("hot invariant", i, n) for i in range(1, n + 1)]
    runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})
    for args in (["verify", str(layout_dir), "--quiet"],
                 ["plan", "--root", str(tmp_path / "r"), "--budget", "64KiB", "--quiet"],
                 ["report", str(layout_dir), "-q", "--out", str(tmp_path / "r.html")]):
        done = runner.invoke(app, args)
        assert done.exit_code == 0, done.output


def test_budget_holding_everything(tmp_path, synthetic_days):
    m, _ = build(tmp_path / "r", synthetic_days, budget="1GiB", batch_size=128)
    assert m.stats["all_hot"] is True
    assert m.shards_of("train", "cold") == []
    assert m.stats["hot_input_fraction"] == 1.0


# --- Taobao: list columns, shared tables ---------------------------------------------------


def test_taobao_layout_matches_naive_reference(tmp_path):
    import polars as pl

    from fae_data.taobao import SampleParams, build_samples

    lines = (SHARED / "taobao_userbehavior_timeorder110k.csv").read_bytes().splitlines(True)
    lines = lines[:30000]
    raw = tmp_path / "raw"
    raw.mkdir()
    files = []
    for d in range(3):
        p = raw / f"day_{d}.csv"
        p.write_bytes(b"".join(lines[d * 10000:(d + 1) * 10000]))
        files.append(p)
    run_ingest([str(f) for f in files], str(tmp_path / "root"), IngestParams("taobao"),
               dataset="taobao")
    result = run_layout(str(tmp_path / "root"),
                        LayoutParams(dataset="taobao", budget="96KiB", batch_size=64))
    m = result.manifest
    layout_dir = tmp_path / "root" / "layouts" / result.layout_id
    assert all(c.ok for c in verify_layout(*mf.load(str(layout_dir))))

    # Naive reference: samples of the first two days are training rows.
    events = [pl.read_csv(f, has_header=False, new_columns=["user_id", "item_id", "category_id",
                                                              "behavior_type", "timestamp"])
              .with_columns(pl.lit(d).alias("day")) for d, f in enumerate(files)]
    samples = build_samples(pl.concat(events).lazy(), SampleParams(), carry="day", train=[0, 1])
    train = samples.filter(pl.col("day") < 2).to_dicts()
    # No leak from the future: every item of a training sample, negatives included, is an
    # item of the training days (negatives were drawn from the whole log, day 2 included).
    train_items = set(pl.concat(events[:2])["item_id"].to_list())
    assert {r["item_id"] for r in train} <= train_items
    assert any(r["label"] == 0 for r in train)
    assert m.params["negative_pool"] == "train"
    columns = {"user_id": "user_id", "item_id": "item_id", "category_id": "category_id",
               "hist_item_id": "item_id", "hist_category_id": "category_id"}
    counts: dict[str, Counter] = {t: Counter() for t in set(columns.values())}
    for r in train:
        for c, t in columns.items():
            counts[t].update(r[c] if isinstance(r[c], list) else [r[c]])
    rank = {t: {v: i + 1 for i, v in enumerate(sorted(cnt, key=lambda v: (-cnt[v], v)))}
            for t, cnt in counts.items()}
    k = {t.name: t.hot_rows for t in m.tables}
    for t in m.tables:
        assert t.vocab_size == len(rank[t.name]) + 1

    def encode(r):
        return tuple(tuple(rank[t][v] for v in r[c]) if isinstance(r[c], list) else rank[t][r[c]]
                     for c, t in columns.items())

    def is_hot(e):
        return all((max(x, default=0) if isinstance(x, tuple) else x) < k[t]
                   for x, t in zip(e, columns.values()))

    enc = [(r["label"], encode(r)) for r in train]
    want_hot = Counter(e for e in enc if is_hot(e[1]))
    want_cold = Counter(e for e in enc if not is_hot(e[1]))
    assert want_hot and want_cold

    def got(kind):
        out = Counter()
        for s in m.shards_of("train", kind):
            d = pq.read_table(layout_dir / s.path).to_pydict()
            for i in range(len(d["label"])):
                out[(d["label"][i], tuple(tuple(d[c][i]) if isinstance(d[c][i], list) else d[c][i]
                                          for c in columns))] += 1
        return out

    assert got("hot") == want_hot
    assert got("cold") == want_cold


def test_sampled_profile_keeps_every_value_and_reports_its_error(tmp_path, synthetic_days):
    exact, _ = build(tmp_path / "r", synthetic_days, budget="64KiB", batch_size=128)
    sampled = run_layout(str(tmp_path / "r"),
                         LayoutParams(budget="64KiB", batch_size=128, sampling_rate=0.5)).manifest
    assert [t.vocab_size for t in sampled.tables] == [t.vocab_size for t in exact.tables]
    info = sampled.stats["sampling"]
    assert info["rate"] == 0.5 and info["exact"] is False
    assert 0.0 < info["hot_set_overlap"] <= 1.0
    assert info["exact_hot_access_coverage"] == pytest.approx(exact.stats["hot_access_coverage"])
    # 12,000 training rows: the estimate's row sample is all of them, so it is the truth.
    truth = true_coverage(sampled, tmp_path / "r" / "layouts" / sampled.layout_id,
                          tmp_path / "r" / "layouts" / exact.layout_id, exact)
    assert info["estimate_rows"] == 12_000 and info["coverage_stderr"] == 0.0
    assert info["estimated_access_coverage"] == pytest.approx(truth, abs=1e-12)
    assert exact.stats["sampling"] == {"rate": 1.0, "exact": True}


def true_coverage(sampled: mf.Manifest, sampled_dir: Path, exact_dir: Path,
                  exact: mf.Manifest) -> float:
    """The access coverage over every training row of the hot rows a sampled profile
    chose, from the exact layout's vocabularies (value -> exact count; id 0's accesses are
    the table's accesses minus its values')."""
    covered = total = 0
    for st, et in zip(sampled.tables, exact.tables, strict=True):
        ids = pq.read_table(sampled_dir / st.vocab_path).to_pydict()
        counts = pq.read_table(exact_dir / et.vocab_path).to_pydict()
        exact_count = dict(zip(counts["value"], counts["count"], strict=True))
        id0 = et.accesses - sum(counts["count"])
        covered += (id0 if st.hot_rows >= 1 else 0) + sum(
            exact_count.get(v, 0) for v, i in zip(ids["value"], ids["id"], strict=True)
            if i < st.hot_rows)
        total += et.accesses
    return covered / total


def test_sampled_coverage_is_estimated_on_independent_rows(tmp_path):
    """The in-sample coverage of a sampled profile flatters the hot set it chose; the
    estimate on the plan's own row sample is within a few standard errors of the coverage
    over every training row (a standard error over rows: lookups of a row are not
    independent draws). Exact counts of any seed serve the comparison."""
    files = write_criteo(tmp_path / "raw", rows=40_000, days=3, seed=3, scale=0.0005)
    exact, exact_dir = build(tmp_path / "r", files, budget="32KiB", batch_size=512)
    for seed in (1, 2, 3):
        m = run_layout(str(tmp_path / "r"), LayoutParams(
            budget="32KiB", batch_size=512, sampling_rate=0.05, seed=seed)).manifest
        info = m.stats["sampling"]
        truth = true_coverage(m, tmp_path / "r" / "layouts" / m.layout_id, exact_dir, exact)
        assert info["estimate_rows"] == pytest.approx(50_000, rel=0.05)
        assert 0.0 < info["coverage_stderr"] < 0.01
        assert abs(info["estimated_access_coverage"] - truth) <= 4 * info["coverage_stderr"], \
            (seed, info, truth)
        assert "hot_set_overlap" in info  # the exact counts were found (seed 0's)


def test_partitions_are_sampled_independently(tmp_path, synthetic_days):
    """Two partitions holding the same rows: a sample drawn by row position alone kept
    the same rows of both, so every sampled count came out even."""
    for name in ("a", "b"):
        run_ingest([str(synthetic_days[0])], str(tmp_path / "r"), IngestParams("criteo"),
                   partitions=[f"same_{name}"])
    run_ingest([str(synthetic_days[1])], str(tmp_path / "r"), IngestParams("criteo"),
               partitions=["z_last"])
    m = run_layout(str(tmp_path / "r"), LayoutParams(budget="64KiB", batch_size=128,
                                                     sampling_rate=0.3)).manifest
    layout_dir = tmp_path / "r" / "layouts" / m.layout_id
    counts = [c for t in m.tables
              for c in pq.read_table(layout_dir / t.vocab_path)["count"].to_pylist() if c]
    odd = sum(c % 2 for c in counts) / len(counts)
    assert 0.3 < odd < 0.7, odd


def test_taobao_plan_below_two_rows_says_why_and_marks_no_knee_on_a_convex_curve(tmp_path):
    """On Taobao id 0 is never accessed, so below two rows (128 B) no hot row serves an
    access: zero hot rows is right, and `fae plan` says why. The hot-input curve of the
    sweep is convex there, so no budget is marked as its knee (it was the smallest)."""
    from typer.testing import CliRunner

    from pipelines.cli import app

    lines = (SHARED / "taobao_userbehavior_timeorder110k.csv").read_bytes().splitlines(True)
    files = []
    for d in range(2):
        p = tmp_path / f"day_{d}.csv"
        p.write_bytes(b"".join(lines[d * 15000:(d + 1) * 15000]))
        files.append(p)
    root = str(tmp_path / "root")
    run_ingest([str(f) for f in files], root, IngestParams("taobao"), dataset="taobao")
    runner = CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})
    done = runner.invoke(app, ["plan", "--root", root, "--dataset", "taobao", "--budget", "100",
                               "--sweep", "--json", "-q"])
    assert done.exit_code == 0, done.output
    out = json.loads(done.stdout)
    assert set(out["plan"]["hot_rows"].values()) == {0}
    [note] = out["notes"]
    assert note.startswith("no hot rows: budget 100 B is below the cheapest hot prefix of any "
                           "table, 128 B for table user_id (ids 0 and 1, 2 rows x 64 B")
    assert "can only be hot after id 0 (null/unseen/rare), which is never accessed" in note
    # Independently: each point's height above the chord of the sweep the command printed.
    xs = [p["budget_bytes"] for p in out["sweep"]]
    ys = [p["hot_input_fraction"] for p in out["sweep"]]
    x0, x1, y0, y1 = xs[0], xs[-1], min(ys), max(ys)
    above = [(y - y0) / (y1 - y0) - (x - x0) / (x1 - x0) for x, y in zip(xs, ys)]
    assert max(above) <= 1e-9, "this sample's hot-input curve is convex"
    assert out["knee_budget_bytes"] is None
    assert [p["hot_rows"] for p in out["sweep"][:2]] == [{"user_id": 0, "item_id": 0,
                                                           "category_id": 0}] * 2
    human = runner.invoke(app, ["plan", "--root", root, "--dataset", "taobao", "--budget", "1KiB",
                                "--sweep", "-q"])
    assert human.exit_code == 0 and "no knee:" in human.output and " knee " not in human.output


def test_a_sample_without_accesses_is_refused_by_plan_layout_and_stages(tmp_path, synthetic_days):
    """--sampling-rate 1e-9 counted no access, and used to plan zero hot rows in silence.
    Every way of planning now refuses it, naming what was sampled and the rate needed;
    a thin but non-empty sample is planned with a warning that says the same."""
    from typer.testing import CliRunner

    from pipelines import layout_stages
    from pipelines.cli import app
    from pipelines.layout import run_plan_only

    root = tmp_path / "r"
    run_ingest([str(f) for f in synthetic_days], str(root), IngestParams("criteo"))
    train_rows = len(naive_rows(synthetic_days[0])) + len(naive_rows(synthetic_days[1]))
    assert train_rows > 10_000  # a sample of 10,000 rows is what the advice aims at
    advice = (f"use a sampling rate of at least {10_000 / train_rows:.3g} (about 10,000 "
              "sampled rows)")
    msg = (f"sampling rate 1e-09 sampled 0 accesses from {train_rows:,} training rows "
           f"(about {1e-9 * train_rows:,.4g} rows expected): there is nothing to rank ids or "
           f"plan hot rows by; {advice}")
    params = LayoutParams(budget="64KiB", batch_size=128, sampling_rate=1e-9)
    for run in (lambda: run_plan_only(str(root), params),
                lambda: run_layout(str(root), params),
                lambda: layout_stages.prepare(str(root), params)):
        with pytest.raises(InputError, match=re.escape(msg)):
            run()
    assert not (root / "layouts" / "LATEST").exists()
    runner = CliRunner(env={"COLUMNS": "400", "NO_COLOR": "1", "TERM": "dumb"})
    for command in ("plan", "layout"):
        done = runner.invoke(app, [command, "--root", str(root), "--budget", "64KiB",
                                   "--sampling-rate", "1e-9", "-q"])
        assert done.exit_code == 1 and "Traceback" not in done.output
        assert msg in " ".join(done.output.split()), done.output
    thin = run_plan_only(str(root), LayoutParams(budget="64KiB", sampling_rate=0.01))
    [note] = thin.notes
    assert note.startswith("sampling rate 0.01 sampled ")
    assert note.endswith(f"from {train_rows:,} training rows (about {0.01 * train_rows:,.4g} "
                         f"rows expected): the plan may be far from the exact one; {advice}")
    assert run_plan_only(str(root), LayoutParams(budget="64KiB")).notes == []


def test_verify_checks_shard_rows_against_the_partitions(tmp_path):
    """Each split's shards must hold the rows of its partitions (Criteo: one row, one
    input). A manifest that lost a shard, its stats edited to match, used to pass."""
    files = split_days(SHARED / "criteo_1tb_day0_sample8324.tsv", tmp_path / "raw", 3)
    m, layout_dir = build(tmp_path / "root", files, budget="64KiB", batch_size=128)
    lines = [len(naive_rows(f)) for f in files]
    want = {"train": lines[0] + lines[1], "val": lines[2] // 2, "test": lines[2] - lines[2] // 2}
    checks = {c.name: c for c in verify_layout(*mf.load(str(layout_dir)))}
    assert checks["rows vs partitions"].ok
    assert checks["rows vs partitions"].detail == (
        f"3 partitions, {sum(lines):,} rows; train {want['train']:,}, val {want['val']:,}, "
        f"test {want['test']:,} rows as partitioned")

    path = layout_dir / "manifest.json"
    good = json.loads(path.read_text())
    d = json.loads(path.read_text())
    [cold] = [s for s in d["shards"] if (s["split"], s["kind"]) == ("train", "cold")]
    d["shards"].remove(cold)
    d["stats"]["rows_by_split_and_kind"]["train/cold"] = 0
    path.write_text(json.dumps(d))
    checks = {c.name: c for c in verify_layout(*mf.load(str(layout_dir)))}
    # (the hot-input fraction no longer matches the edited row counts either)
    assert [n for n, c in checks.items() if not c.ok] == ["statistics", "rows vs partitions"]
    assert checks["rows vs partitions"].detail == (
        f"train shards hold {want['train'] - cold['rows']:,} rows, but partitions day_0, day_1 "
        f"hold {want['train']:,}")

    d = json.loads(json.dumps(good))
    d["dataset"]["partitions"][2]["rows"] += 2
    path.write_text(json.dumps(d))
    detail = next(c.detail for c in verify_layout(*mf.load(str(layout_dir)), deep=False)
                  if c.name == "rows vs partitions")
    assert detail == (
        f"partitions hold {sum(lines) + 2:,} rows, but stats say {sum(lines):,} read - 0 "
        f"rejected = {sum(lines):,}; val shards hold {want['val']:,} rows, but partitions "
        f"day_2 hold {want['val'] + 1:,} (the last one halved into val and test); test shards "
        f"hold {want['test']:,} rows, but partitions day_2 hold {want['test'] + 1:,} (the last "
        "one halved into val and test)")


def test_the_last_day_is_the_last_by_number(tmp_path):
    """Partition names sorted as text put day_10 before day_2: with 11 days the default
    split validated on day_9 and trained on day_10."""
    from fae_data.partition import name_order
    from pipelines.inputs import resolve_inputs

    assert sorted(["day_10", "day_9", "day_2", "a", "day_1b"], key=name_order) == [
        "a", "day_1b", "day_2", "day_9", "day_10"]
    assert sorted(["2024-01-10", "2024-01-02"], key=name_order) == ["2024-01-02", "2024-01-10"]
    files = write_criteo(tmp_path / "raw", rows=200, days=11, seed=3, scale=0.0005)
    run_ingest([str(f) for f in files], str(tmp_path / "r"), IngestParams("criteo"))
    inputs = resolve_inputs(Storage(str(tmp_path / "r")), LayoutParams(dataset="criteo"))
    assert inputs.split["val"] == inputs.split["test"] == ["day_10"]
    assert inputs.split["train"] == [f"day_{i}" for i in range(10)]
    # An explicit --partition list is ordered the same way.
    given = LayoutParams(dataset="criteo", partitions=("day_10", "day_2", "day_9"))
    assert resolve_inputs(Storage(str(tmp_path / "r")), given).split["val"] == ["day_10"]


@pytest.mark.parametrize("edit,message", [
    (lambda d: d["stats"].update(hot_input_fraction=0.9), "hot_input_fraction 0.9, but"),
    (lambda d: d["stats"].update(hot_input_fraction=float("nan")), "hot_input_fraction nan"),
    (lambda d: d["stats"].update(budget_used_bytes=10**12), "budget_used_bytes 1000000000000"),
    (lambda d: d["stats"].update(all_hot=True), "all_hot is True, but not every table"),
    (lambda d: d["stats"].update(hot_access_coverage=1.5), "hot_access_coverage 1.5 is not"),
    (lambda d: d["tables"][0].update(accesses=5), "accesses_total"),
    (lambda d: d["tables"][0].update(dim=0), "dim or vocab_size below 1"),
    (lambda d: d.update(layout_id="0123456789abcdef"), "but the manifest is in folder"),
])
def test_verify_recomputes_the_statistics(tmp_path, synthetic_days, edit, message):
    """Edited statistics passed verify, and the report showed them (a NaN as 'nan%')."""
    m, layout_dir = build(tmp_path / "r", synthetic_days, budget="64KiB", batch_size=128)
    checks = {c.name: c for c in verify_layout(*mf.load(str(layout_dir)), deep=False)}
    assert checks["statistics"].ok, checks["statistics"].detail
    path = layout_dir / mf.MANIFEST
    d = json.loads(path.read_text())
    edit(d)
    path.write_text(json.dumps(d))
    checks = {c.name: c for c in verify_layout(*mf.load(str(layout_dir)), deep=False)}
    assert not checks["statistics"].ok and message in checks["statistics"].detail


def test_an_empty_evaluation_split_is_warned_about(tmp_path, synthetic_days, caplog):
    """A last day of one row gave val 0 and test 1 rows without a word; a trainer then
    reported no val metrics."""
    import logging

    day = tmp_path / "day_9.tsv"
    day.write_bytes(synthetic_days[0].read_bytes().splitlines(True)[0])
    root = tmp_path / "r"
    run_ingest([str(f) for f in [*synthetic_days, day]], str(root), IngestParams("criteo"))
    with caplog.at_level(logging.WARNING, logger="pipelines.layout"):
        result = run_layout(str(root), LayoutParams(budget="64KiB", batch_size=128))
    assert result.manifest.stats["rows_by_split_and_kind"].get("val/all", 0) == 0
    [note] = [n for n in result.notes if "split is empty" in n]
    assert "the val split is empty (partitions day_9 gave no val rows)" in note
    only_val = run_layout(str(root), LayoutParams(budget="64KiB", batch_size=128,
                                                  val=["day_2"]))
    [no_test] = [n for n in only_val.notes if "split is empty" in n]
    assert "the test split is empty (no --test partitions were given)" in no_test
    assert note in caplog.text
    again = run_layout(str(root), LayoutParams(budget="64KiB", batch_size=128))
    assert again.status == "unchanged" and note in again.notes  # said again on a rerun


def test_partition_names_equal_by_number_keep_one_order(tmp_path):
    """d_2 and d_02 have the same numbers: the split followed the --partition flags."""
    from pipelines.inputs import resolve_inputs

    files = write_criteo(tmp_path / "raw", rows=100, days=3, seed=4, scale=0.0005)
    run_ingest([str(f) for f in files], str(tmp_path / "r"), IngestParams("criteo"),
               partitions=["d_1", "d_2", "d_02"])
    store = Storage(str(tmp_path / "r"))
    splits = {tuple(resolve_inputs(store, LayoutParams(partitions=order)).split["val"])
              for order in (("d_1", "d_2", "d_02"), ("d_1", "d_02", "d_2"))}
    assert splits == {("d_2",)}


def test_layout_files_behind_symbolic_links_are_not_missing(tmp_path, synthetic_days):
    """A layout copied with `cp -s` (links to its files) was rebuilt by every rerun:
    fsspec lists a link as "other", not "file"."""
    import os

    root = tmp_path / "r"
    m, layout_dir = build(root, synthetic_days, budget="64KiB", batch_size=128)
    for path in [layout_dir / s.path for s in m.shards] + [layout_dir / t.vocab_path
                                                           for t in m.tables]:
        target = tmp_path / "store" / path.relative_to(layout_dir)
        target.parent.mkdir(parents=True, exist_ok=True)
        path.rename(target)
        os.symlink(target, path)
    from pipelines.publish import missing_files

    assert missing_files(Storage(str(root)), m) == []
    assert run_layout(str(root), LayoutParams(budget="64KiB", batch_size=128)).status == "unchanged"


def test_statistics_of_a_layout_without_per_table_accesses_pass(tmp_path, synthetic_days):
    """The first layout release wrote no tables[].accesses: verify failed it."""
    m, layout_dir = build(tmp_path / "r", synthetic_days, budget="64KiB", batch_size=128)
    path = layout_dir / mf.MANIFEST
    d = json.loads(path.read_text())
    for t in d["tables"]:
        del t["accesses"]
    path.write_text(json.dumps(d))
    checks = {c.name: c for c in verify_layout(*mf.load(str(layout_dir)), deep=False)}
    assert checks["statistics"].ok, checks["statistics"].detail


def test_manifest_counts_of_the_wrong_type_are_refused() -> None:
    """A string or float where a count belongs failed deep in the trainer (a TypeError
    while building its own error message)."""
    m = mf.Manifest(
        layout_id="0" * 16, created_at="2026-01-01T00:00:00+00:00", producer={},
        dataset=mf.DatasetRef("d", "criteo", (mf.PartitionRef("p", "x", 4, "0" * 64),)),
        params={"batch_size": 2}, tables=(mf.TableRef("C1", 3, 1, 16, "vocab/C1.parquet"),),
        stats={}, shards=(mf.ShardRef("shards/a.parquet", "train", "hot", 4, 2, 10, "0", 2),),
        columns=(mf.ColumnRef("C1", "uint32", "sparse", "C1"),))
    mf.from_dict(m.to_dict())
    for where, key, value in (("tables", "vocab_size", "abc"), ("tables", "dim", "16"),
                              ("shards", "batches", "x"), ("shards", "rows", 4.0)):
        d = m.to_dict()
        d[where][0][key] = value
        with pytest.raises(ManifestError, match=f"{key} must be a non-negative integer, "
                           f"found {value!r}"):
            mf.from_dict(d)


def test_a_partition_without_its_marker_is_left_out_unless_named(tmp_path, synthetic_days,
                                                                  caplog):
    """A first ingest killed (or still running) leaves a folder without _partition.json:
    the newest day does not exist yet, so the default layout goes on without it (it
    refused the whole dataset); named with --partition it is still refused."""
    run_ingest([str(f) for f in synthetic_days], str(tmp_path / "r"), IngestParams("criteo"))
    half = tmp_path / "r" / "ingested" / "criteo" / "day_9"
    half.mkdir()
    (half / "data-0000.parquet").write_bytes(b"partial")
    m = run_layout(str(tmp_path / "r"), LayoutParams(budget="64KiB", batch_size=128)).manifest
    assert [p.name for p in m.dataset.partitions] == ["day_0", "day_1", "day_2"]
    assert any("day_9" in r.getMessage() and "left out" in r.getMessage()
               for r in caplog.records)
    with pytest.raises(InputError, match="'day_9' of dataset 'criteo' is missing or incomplete"):
        run_layout(str(tmp_path / "r"), LayoutParams(budget="64KiB", batch_size=128,
                                                     partitions=["day_2", "day_9"]))
    # Before a committed partition it is damage, not a day in flight: refused, since
    # leaving it out would silently change the split.
    (tmp_path / "r" / "ingested" / "criteo" / "day_9" / "data-0000.parquet").unlink()
    (tmp_path / "r" / "ingested" / "criteo" / "day_9").rmdir()
    (tmp_path / "r" / "ingested" / "criteo" / "day_1" / "_partition.json").unlink()
    with pytest.raises(InputError, match="'day_1' of dataset 'criteo' is missing or incomplete"):
        run_layout(str(tmp_path / "r"), LayoutParams(budget="64KiB", batch_size=128))


def test_a_folder_the_publish_cannot_remove_is_a_warning(tmp_path, synthetic_days,
                                                          monkeypatch, caplog):
    """--force published the rebuild, then failed the run on an undeletable old folder
    (a bare file name in the message), leaving the other old folders too."""
    m, layout_dir = build(tmp_path / "r", synthetic_days, budget="64KiB", batch_size=128)
    real_remove = Storage.remove

    def stuck(self, *parts, recursive=False):  # type: ignore[no-untyped-def]
        if parts[-1] == "shards":
            raise PermissionError(13, "Permission denied")
        return real_remove(self, *parts, recursive=recursive)

    monkeypatch.setattr(Storage, "remove", stuck)
    again = run_layout(str(tmp_path / "r"), LayoutParams(budget="64KiB", batch_size=128),
                       force=True)
    assert again.status == "published" and (layout_dir / "shards").is_dir()
    assert not (layout_dir / "vocab").exists()  # the other old folder still went
    assert any("could not be removed" in r.getMessage() and "shards" in r.getMessage()
               for r in caplog.records)


def test_a_failed_first_build_frees_its_files_at_once(tmp_path, synthetic_days, monkeypatch):
    """A build that failed writing (a full disk) left its partial shards until the next
    build of the same layout, keeping the disk full for everything else on the root."""
    from fae_data import cutter

    m1, _ = build(tmp_path / "r", synthetic_days, budget="64KiB", batch_size=128)

    def broken(self, rows):  # type: ignore[no-untyped-def]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cutter._Cutter, "_write", broken)
    with pytest.raises(OSError, match="No space left"):
        run_layout(str(tmp_path / "r"), LayoutParams(budget="32KiB", batch_size=128))
    assert sorted(p.name for p in (tmp_path / "r" / "layouts").iterdir()
                  if not p.name.startswith(".")) == sorted(["LATEST", m1.layout_id])
