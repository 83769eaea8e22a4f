"""The layout as separate stages (prepare, encode per partition, cut per stream, publish):
the same bytes as the in-process layout whatever the order, idempotent reruns, and a
crash between or inside stages leaves LATEST and the published layouts alone."""

from __future__ import annotations

import random
import re
import shutil
from dataclasses import replace
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from fae_data import cutter
from fae_data import manifest as mf
from fae_data import shard
from fae_data.errors import InputError, StorageError
from fae_data.ingest import IngestParams
from fae_data.shard import (
    STREAMS,
    LayoutColumns,
    ShardParams,
    collect_streams,
    cut_stream,
    encode_chunk,
    layout_schema,
    shard_geometry,
    shard_schema,
    spill_partition,
    write_shards,
)
from fae_data.spill import SpillFolder, SpillWriter
from fae_data.storage import Storage
from fae_data.synth import write_criteo
from fae_data.verify import verify_layout
from fae_data.vocab import Encoder
from pipelines import layout_stages as stages
from pipelines.ingest import run_ingest
from pipelines.layout import LayoutParams, profile_layout, resolve_inputs, run_layout

PARAMS = LayoutParams(budget="64KiB", batch_size=128, shard_bytes=30_000, seed=3)


@pytest.fixture(scope="module")
def ingested(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("stages")
    files = write_criteo(base / "raw", rows=6000, days=3, seed=7, scale=0.0005)
    run_ingest([str(f) for f in files], str(base / "root"), IngestParams("criteo"))
    return base / "root"


@pytest.fixture
def root(ingested: Path, tmp_path: Path) -> str:
    """A private copy of the ingested root (the tests write layouts into it)."""
    dst = tmp_path / "root"
    shutil.copytree(ingested, dst)
    return str(dst)


def staged(root: str, params: LayoutParams, order: int = 0, force: bool = False) -> mf.Manifest:
    """Every stage called directly, partitions and streams in a shuffled order."""
    rng = random.Random(order)
    prepared = stages.prepare(root, params, force=force)
    assert prepared["status"] == "planned"
    lid = prepared["layout_id"]
    for name in rng.sample(prepared["partitions"], len(prepared["partitions"])):
        stages.encode(root, lid, name)
    for stream in rng.sample(prepared["streams"], len(prepared["streams"])):
        stages.cut(root, lid, stream)
    result = stages.publish(root, lid)
    assert result.status == "published"
    return result.manifest


def fingerprint(m: mf.Manifest) -> list[tuple[str, str, int, int]]:
    return [(plain(s.path), s.sha256, s.rows, s.last_batch_rows) for s in m.shards]


def plain(path: str) -> str:
    """A path of a forced rebuild (``shards-<tag>/...``, ``vocab-<tag>/...``) as a first
    build names it."""
    return re.sub(r"^(shards|vocab)-[0-9a-f]{8}/", r"\1/", path)


def comparable(m: mf.Manifest) -> dict[str, object]:
    """The manifest but for its creation time and the rebuild tag of its folders."""
    d = m.to_dict()
    d["created_at"] = None
    d["shards"] = [{**s, "path": plain(s["path"])} for s in d["shards"]]
    d["tables"] = [{**t, "vocab_path": plain(t["vocab_path"])} for t in d["tables"]]
    return d


def latest(root: str) -> str:
    return (Path(root) / "layouts" / "LATEST").read_text().strip()


def mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")
            if p.is_file()}


# --- same bytes ----------------------------------------------------------------------------


def test_staged_layout_is_byte_identical_to_run_layout(ingested: Path, tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    shutil.copytree(ingested, a)
    shutil.copytree(ingested, b)
    ref = run_layout(str(a), PARAMS).manifest
    for order in (1, 2):  # two shuffled orders, the second a forced rebuild in place
        got = staged(str(b), PARAMS, order, force=order == 2)
        assert got.layout_id == ref.layout_id
        assert fingerprint(got) == fingerprint(ref)
        assert len(ref.shards) > 10, "small shards, so that streams roll over"
        assert comparable(got) == comparable(ref)
    layout = b / "layouts" / ref.layout_id
    for t_ref, t_got in zip(ref.tables, got.tables, strict=True):
        assert (layout / t_got.vocab_path).read_bytes() == (a / "layouts" / ref.layout_id
                                                            / t_ref.vocab_path).read_bytes()
    assert not (layout / stages.BUILD_DIR).exists(), "publish removes the staging folder"
    # the rebuild's folders replaced the first build's: only what the manifest names is left
    assert sorted(p.name for p in layout.iterdir()) == sorted(
        ["manifest.json", "plan.json", got.shards[0].path.split("/")[0],
         got.tables[0].vocab_path.split("/")[0]])
    assert latest(str(b)) == ref.layout_id
    checks = verify_layout(*mf.load(str(b)))
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]


def test_spill_and_cut_in_any_order_equal_write_shards(root: str) -> None:
    """Several buckets: the per-partition spill files of a bucket, read in partition
    order, are the rows of the one file per bucket the in-process run writes."""
    storage = Storage(root)
    inputs = resolve_inputs(storage, PARAMS)
    vocabs, planned = profile_layout(storage, inputs, PARAMS, sweep=False)
    hot, cols = planned.plan["hot_rows"], inputs.columns
    params = ShardParams(batch_size=100, shard_bytes=20_000, shuffle_memory_bytes=150_000,
                         seed=5)
    geometry = shard_geometry(sum(p.rows for p in inputs.parts),
                              layout_schema(storage, inputs.parts, cols), params)
    assert geometry.buckets > 3
    ref = write_shards(storage, ("ref",), inputs.parts, cols, vocabs.encoders(), hot, params)

    spill = SpillFolder(storage, ("spill",))
    order = list(enumerate(inputs.parts))
    random.Random(4).shuffle(order)
    spilled = [spill_partition(spill, storage, i, p, cols, vocabs.encoders(), hot, params,
                               geometry.buckets) for i, p in order]
    assert {s.name for s in spilled} == {p.name for p in inputs.parts}
    results = [cut_stream(storage, ("staged",), spill, spilled, s, geometry, params)
               for s in random.Random(5).sample(STREAMS, len(STREAMS))]
    got = collect_streams(results, layout_schema(storage, inputs.parts, cols))
    assert [(s.path, s.sha256) for s in got.shards] == [(s.path, s.sha256) for s in ref.shards]
    assert got.rows_by_split_and_kind == ref.rows_by_split_and_kind
    assert got.schema == ref.schema


def test_shard_schema_is_what_encoding_gives(tmp_path: Path) -> None:
    cols = LayoutColumns("label", ("d",), {"item": "item", "hist": "item"})
    source = pa.table({
        "label": pa.array([1, 0], pa.int8()),
        "d": pa.array([3, None], pa.int32()),
        "item": pa.array([7, 9], pa.uint32()),
        "hist": pa.array([[7, 9], []], pa.list_(pa.uint32())),
    })
    vocab = pl.DataFrame({"value": [7, 9], "count": [3, 2], "id": [1, 2]},
                         schema={"value": pl.UInt32, "count": pl.UInt64, "id": pl.UInt32})
    encoded, hot = encode_chunk(source, cols, {"item": Encoder(vocab)}, {"item": 2})
    assert hot.tolist() == [False, False]
    assert shard_schema(cols, source.schema) == encoded.schema
    pq.write_table(encoded, tmp_path / "x.parquet")  # a shard read back: same type names
    back = pq.read_schema(tmp_path / "x.parquet")
    assert [mf.type_name(f.type) for f in back] == [
        mf.type_name(f.type) for f in shard_schema(cols, source.schema)]
    with pytest.raises(InputError, match="input column 'hist' is missing"):
        shard_schema(cols, source.drop_columns(["hist"]).schema)


# --- idempotent reruns -----------------------------------------------------------------------


def test_rerunning_a_stage_is_a_noop(root: str) -> None:
    prepared = stages.prepare(root, PARAMS)
    lid = prepared["layout_id"]
    assert prepared["status"] == "planned" and prepared["partitions"] == ["day_0", "day_1", "day_2"]
    assert prepared["streams"] == list(STREAMS)
    build = Path(root) / "layouts" / lid / stages.BUILD_DIR
    before = mtimes(build)
    assert stages.prepare(root, PARAMS) == prepared
    assert mtimes(build) == before

    first = stages.encode(root, lid, "day_1")
    assert first["status"] == "encoded" and first["rows"] == 6000
    spill = mtimes(build / "spill")
    assert spill, "the partition spilled files and its index"
    assert stages.encode(root, lid, "day_1") == {**first, "status": "already done"}
    assert mtimes(build / "spill") == spill
    for name in ("day_0", "day_2"):
        stages.encode(root, lid, name)

    cut = stages.cut(root, lid, "val/all")
    assert cut["status"] == "cut" and cut["rows"] == 3000
    shards = mtimes(Path(root) / "layouts" / lid / "shards")
    assert stages.cut(root, lid, "val/all") == {**cut, "status": "already done"}
    assert mtimes(Path(root) / "layouts" / lid / "shards") == shards
    for stream in ("train/hot", "train/cold", "test/all"):
        stages.cut(root, lid, stream)
    assert stages.publish(root, lid).status == "published"

    manifest = Path(root) / "layouts" / lid / "manifest.json"
    published = manifest.stat().st_mtime_ns
    again = stages.prepare(root, PARAMS)
    assert again == {"layout_id": lid, "status": "unchanged", "partitions": [], "streams": []}
    assert stages.encode(root, lid, "day_1")["status"] == "unchanged"
    assert stages.cut(root, lid, "train/hot")["status"] == "unchanged"
    assert stages.publish(root, lid).status == "unchanged"
    assert manifest.stat().st_mtime_ns == published


def test_staged_rerun_rebuilds_a_published_layout_with_missing_files(root: str) -> None:
    """The stages said "unchanged" for a published layout whose shard was deleted (and
    publish pointed LATEST at it); like run_layout, they now rebuild it beside the
    published files, byte for byte, and only then call it unchanged."""
    first = staged(root, PARAMS)
    folder = Path(root) / "layouts" / first.layout_id
    victim = first.shards[-1].path
    (folder / victim).unlink()
    with pytest.raises(StorageError, match=re.escape(
            f"layout {first.layout_id}: 1 file(s) of the published layout are missing or damaged "
            f"({victim}) and no rebuild is staged; rerun the prepare stage")):
        stages.publish(root, first.layout_id)  # never "unchanged" for a broken layout

    prepared = stages.prepare(root, PARAMS)
    assert prepared["status"] == "planned" and prepared["partitions"] == ["day_0", "day_1", "day_2"]
    assert stages.prepare(root, PARAMS) == prepared  # a rerun resumes the repair
    stages.encode(root, first.layout_id, "day_0")
    assert stages.prepare(root, PARAMS) == prepared
    assert (folder / first.shards[0].path).exists(), "the published files stay until publish"
    again = staged(root, PARAMS, order=4)
    assert fingerprint(again) == fingerprint(first)
    assert again.shards[0].path.split("/")[0] != first.shards[0].path.split("/")[0]
    assert all(c.ok for c in verify_layout(*mf.load(root)))
    assert latest(root) == first.layout_id
    assert stages.prepare(root, PARAMS)["status"] == "unchanged"
    assert stages.publish(root, first.layout_id).status == "unchanged"


def test_a_repair_does_not_resume_the_staging_files_of_the_published_build(
    root: str, tmp_path: Path
) -> None:
    """A publish that stopped before removing ``_build`` leaves the plan of the build it
    published (its shard folder is the published one). A repair must start afresh rather
    than find its streams "already done" and fail to publish on every rerun."""
    prepared = stages.prepare(root, PARAMS)
    lid = prepared["layout_id"]
    for name in prepared["partitions"]:
        stages.encode(root, lid, name)
    for stream in prepared["streams"]:
        stages.cut(root, lid, stream)
    build = Path(root) / "layouts" / lid / stages.BUILD_DIR
    shutil.copytree(build, tmp_path / "kept")
    first = stages.publish(root, lid).manifest
    shutil.copytree(tmp_path / "kept", build)  # as if publish stopped before cleaning up
    (Path(root) / "layouts" / lid / first.shards[0].path).unlink()
    again = staged(root, PARAMS, order=5)
    assert fingerprint(again) == fingerprint(first)
    assert all(c.ok for c in verify_layout(*mf.load(root)))


# --- crash safety -----------------------------------------------------------------------------


def test_a_crash_between_or_inside_stages_keeps_latest(
    root: str, monkeypatch: pytest.MonkeyPatch, ingested: Path, tmp_path: Path
) -> None:
    first = run_layout(root, PARAMS)
    other = replace(PARAMS, budget="32KiB")

    def assert_untouched() -> None:
        assert latest(root) == first.layout_id
        checks = verify_layout(*mf.load(root))
        assert all(c.ok for c in checks), [c for c in checks if not c.ok]

    # Inside prepare, after the vocabularies: no plan.json, so nothing later may start.
    def broken(*_args: object) -> None:
        raise OSError("disk full (injected)")

    monkeypatch.setattr(stages, "shard_geometry", broken)
    with pytest.raises(OSError, match="injected"):
        stages.prepare(root, other)
    monkeypatch.undo()
    lid = stages.prepare(root, other, force=False)["layout_id"]  # the rerun starts over
    assert_untouched()

    # Inside encode: the second spill write fails; no index, so the partition is redone.
    calls = {"n": 0}
    real_write = SpillWriter.write

    def flaky_write(self: SpillWriter, table: pa.Table) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full (injected)")
        real_write(self, table)

    monkeypatch.setattr(SpillWriter, "write", flaky_write)
    with pytest.raises(OSError, match="injected"):
        stages.encode(root, lid, "day_0")
    monkeypatch.undo()
    spill = Path(root) / "layouts" / lid / stages.BUILD_DIR / "spill"
    assert list(spill.glob("00000-*.parquet")) and not (spill / "00000.json").exists()
    with pytest.raises(StorageError, match="'day_0' has not been encoded yet"):
        stages.cut(root, lid, "train/hot")
    assert_untouched()
    for name in ("day_0", "day_1", "day_2"):
        assert stages.encode(root, lid, name)["status"] == "encoded"

    # Inside cut: the second write of rows fails; no stream record, so publish refuses.
    real_write = cutter._Cutter._write
    calls["n"] = 0

    def flaky_write(self: cutter._Cutter, rows: pa.Table) -> None:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError("disk full (injected)")
        real_write(self, rows)

    monkeypatch.setattr(cutter._Cutter, "_write", flaky_write)
    with pytest.raises(OSError, match="injected"):
        stages.cut(root, lid, "train/cold")
    monkeypatch.undo()
    for stream in ("train/hot", "val/all", "test/all"):
        stages.cut(root, lid, stream)
    with pytest.raises(StorageError, match="stream train/cold has not been cut yet"):
        stages.publish(root, lid)
    assert_untouched()
    assert not (Path(root) / "layouts" / lid / "manifest.json").exists()

    # The reruns finish, and the result is the in-process layout's, byte for byte.
    assert stages.cut(root, lid, "train/cold")["status"] == "cut"
    done = stages.publish(root, lid)
    assert done.status == "published" and latest(root) == lid != first.layout_id
    assert not (Path(root) / "layouts" / lid / stages.BUILD_DIR).exists()
    assert all(c.ok for c in verify_layout(*mf.load(root)))
    shutil.copytree(ingested, tmp_path / "ref")
    assert fingerprint(done.manifest) == fingerprint(run_layout(str(tmp_path / "ref"),
                                                                other).manifest)


def test_a_crashed_forced_rebuild_keeps_the_published_layout(
    root: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The DAG's force=True on the layout LATEST points to: prepare, encode and a failed
    cut leave the published manifest and its files as they were; a plain request then
    reports the layout unchanged, and the next forced rebuild completes and prunes."""
    first = run_layout(root, PARAMS)
    folder = Path(root) / "layouts" / first.layout_id
    before = {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    prepared = stages.prepare(root, PARAMS, force=True)
    assert prepared["status"] == "planned" and prepared["layout_id"] == first.layout_id
    for name in prepared["partitions"]:
        stages.encode(root, first.layout_id, name)

    def broken(self: cutter._Cutter, rows: pa.Table) -> None:
        raise OSError("disk full (injected)")

    monkeypatch.setattr(cutter._Cutter, "_write", broken)
    with pytest.raises(OSError, match="injected"):
        stages.cut(root, first.layout_id, "train/hot")
    monkeypatch.undo()
    assert latest(root) == first.layout_id
    assert all(p.read_bytes() == b for p, b in before.items())
    assert all(c.ok for c in verify_layout(*mf.load(root)))

    assert stages.prepare(root, PARAMS)["status"] == "unchanged"  # drops the stale _build
    assert all(c.ok for c in verify_layout(*mf.load(root)))
    done = staged(root, PARAMS, force=True)
    assert fingerprint(done) == fingerprint(first.manifest)
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["manifest.json", "plan.json", done.shards[0].path.split("/")[0],
         done.tables[0].vocab_path.split("/")[0]])
    assert all(c.ok for c in verify_layout(*mf.load(root)))


# --- bad requests ----------------------------------------------------------------------------


def test_stages_refuse_with_a_readable_message(root: str) -> None:
    with pytest.raises(StorageError, match="no build plan .* run the prepare stage"):
        stages.encode(root, "0123456789abcdef", "day_0")
    with pytest.raises(InputError, match="input partitions changed since layout x"):
        stages.prepare(root, PARAMS, expected_id="x")
    lid = stages.prepare(root, PARAMS)["layout_id"]
    with pytest.raises(InputError, match="partition 'day_9' is not an input of layout"):
        stages.encode(root, lid, "day_9")
    with pytest.raises(InputError, match="stream 'train/warm' unknown"):
        stages.cut(root, lid, "train/warm")
    with pytest.raises(StorageError, match="'day_0' has not been encoded yet"):
        stages.cut(root, lid, "val/all")


def test_geometry_is_decided_by_the_total_row_count() -> None:
    schema = pa.schema([("label", pa.int8()), ("a", pa.float32()), ("b", pa.float32()),
                        ("c", pa.uint32()), ("d", pa.uint32()), ("e", pa.uint32()),
                        ("f", pa.uint32())])  # 1 + 8 + 16 = 25 B a row
    assert shard.row_bytes(schema) == 25
    params = ShardParams(batch_size=10, shard_bytes=1000, shuffle_memory_bytes=20_000)
    assert shard_geometry(100, schema, params) == shard.ShardGeometry(1, 40)
    assert shard_geometry(101, schema, params).buckets == 2
    assert shard_geometry(0, schema, params).buckets == 1
    # a shard holds at least one whole minibatch, however small shard_bytes is
    assert shard_geometry(10, schema, ShardParams(batch_size=64, shard_bytes=1)).rows_per_shard == 64
    # a list column counts as a full history of uint32 ids plus its offset
    lists = pa.schema([("label", pa.int8()), ("h", pa.list_(pa.uint32()))])
    assert shard.row_bytes(lists) == 1 + 20 * 4 + 4



def test_a_partition_ingested_again_mid_run_is_named(root: str, tmp_path: Path) -> None:
    """A re-ingest between plan and encode failed encode with "not a readable Parquet file
    (No such file or directory)", retried twice to no purpose."""
    lid = stages.prepare(root, PARAMS)["layout_id"]
    changed = tmp_path / "day_1.tsv"
    write_criteo(tmp_path / "raw2", rows=500, days=1, seed=11, scale=0.0005)[0].rename(changed)
    run_ingest([str(changed)], root, IngestParams("criteo"))  # replaces partition day_1
    with pytest.raises(InputError, match=r"partition 'day_1' of dataset 'criteo' was ingested "
                                         r"again after layout \w+ was planned"):
        stages.encode(root, lid, "day_1")
    stages.encode(root, lid, "day_0")  # untouched partitions still encode
