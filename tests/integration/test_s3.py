"""The whole layout with the storage root on ``s3://`` (fsspec/s3fs), against a local S3.

A module fixture starts moto's server mode (:class:`moto.server.ThreadedMotoServer`) on
127.0.0.1 and a free port and points fsspec's ``s3`` configuration at it, the way a
deployment points it at MinIO (``FSSPEC_S3_ENDPOINT_URL`` and the ``AWS_*`` variables):
no code below passes storage options. Synthetic Criteo days are uploaded to a landing
prefix, ingested into ``s3://<bucket>/fae``, laid out, verified, read by the trainer (a
few training steps), and a publish interrupted after its shards leaves ``LATEST`` alone.
The tests run in order and build on each other's results. moto[server] and s3fs come
from requirements/s3.txt (part of dev.txt): without them the module fails, never skips.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import fsspec
import fsspec.config
import pytest
import s3fs
from moto.server import ThreadedMotoServer

from fae_data import manifest as mf
from fae_data.errors import StorageError
from fae_data.ingest import IngestParams
from fae_data.storage import Storage
from fae_data.synth import write_criteo
from fae_data.verify import verify_layout
from pipelines.ingest import run_ingest
from pipelines.layout import LayoutParams, run_layout

BUCKET = "fae-test"
ROOT = f"s3://{BUCKET}/fae"
LANDING = f"s3://{BUCKET}/landing"
PARAMS = LayoutParams(dataset="criteo", budget="32KiB", batch_size=128)


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[fsspec.AbstractFileSystem]:
    """A local S3 on 127.0.0.1; fsspec's s3 config and the AWS env point at it."""
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    saved = fsspec.config.conf.get("s3")
    try:
        host, port = server.get_host_and_port()
        with pytest.MonkeyPatch.context() as mp:
            for var in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_CONFIG_FILE",
                        "AWS_SHARED_CREDENTIALS_FILE", "AWS_ENDPOINT_URL",
                        "AWS_ENDPOINT_URL_S3"):
                mp.delenv(var, raising=False)
            mp.setenv("AWS_ACCESS_KEY_ID", "testing")
            mp.setenv("AWS_SECRET_ACCESS_KEY", "testing")
            mp.setenv("AWS_DEFAULT_REGION", "us-east-1")
            mp.setenv("AWS_EC2_METADATA_DISABLED", "true")
            # What FSSPEC_S3_ENDPOINT_URL=<endpoint> does when set before fsspec's import.
            fsspec.config.conf["s3"] = {"endpoint_url": f"http://{host}:{port}"}
            s3fs.S3FileSystem.clear_instance_cache()
            fs = fsspec.filesystem("s3")
            fs.mkdir(BUCKET)
            days = write_criteo(tmp_path_factory.mktemp("landing"), rows=5000, days=3,
                                scale=0.001)
            for day in days:
                fs.put_file(str(day), f"{LANDING}/{Path(day).name}")
            yield fs
    finally:
        s3fs.S3FileSystem.clear_instance_cache()
        if saved is None:
            fsspec.config.conf.pop("s3", None)
        else:
            fsspec.config.conf["s3"] = saved
        server.stop()


def _latest(fs: fsspec.AbstractFileSystem) -> str:
    fs.invalidate_cache()
    return fs.cat_file(f"{BUCKET}/fae/layouts/LATEST").decode().strip()


def test_atomic_write_on_s3_appears_only_on_success(s3: fsspec.AbstractFileSystem) -> None:
    store = Storage(f"s3://{BUCKET}/atomic")
    store.write_bytes_atomic(b"old\n", "a", "LATEST")
    assert store.exists("a") and store.listdir("a") == ["LATEST"]
    for name in ("LATEST", "new"):
        with pytest.raises(RuntimeError, match="boom"):
            with store.open_atomic("a", name) as f:
                f.write(b"partial")
                raise RuntimeError("boom")
    assert store.read_bytes("a", "LATEST") == b"old\n"
    assert not store.exists("a", "new") and store.listdir("a") == ["LATEST"]
    assert s3.list_multipart_uploads(BUCKET) == []  # the failed uploads were aborted
    store.write_json_atomic({"x": 1}, "a", "LATEST")
    assert store.read_json("a", "LATEST") == {"x": 1}
    store.remove("", recursive=True)
    assert store.listdir() == []


def test_ingest_from_and_into_s3(s3: fsspec.AbstractFileSystem) -> None:
    sources = sorted(f"s3://{p}" for p in s3.ls(LANDING, detail=False))
    assert len(sources) == 3
    first = run_ingest(sources, ROOT, IngestParams(kind="criteo"))
    assert [p.status for p in first.partitions] == ["written"] * 3
    assert first.rows_ok == first.rows_in == 15_000
    again = run_ingest(sources, ROOT, IngestParams(kind="criteo"))
    assert [p.status for p in again.partitions] == ["unchanged"] * 3
    # one data file, one rejects file and the marker per partition, nothing left over
    for p in first.partitions:
        names = sorted(os.path.basename(n) for n in s3.ls(p.path, detail=False, refresh=True))
        assert len(names) == 3 and "_partition.json" in names, names


def test_layout_on_s3_publishes_and_verifies(s3: fsspec.AbstractFileSystem) -> None:
    result = run_layout(ROOT, PARAMS)
    assert result.status == "published"
    assert result.manifest_path.startswith(f"{ROOT}/layouts/")
    manifest, store = mf.load(ROOT)
    assert manifest.layout_id == result.layout_id == _latest(s3)
    assert not store.is_local
    checks = verify_layout(manifest, store)
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]
    assert run_layout(ROOT, PARAMS).status == "unchanged"


def test_trainer_reads_and_trains_from_s3(s3: fsspec.AbstractFileSystem) -> None:
    torch = pytest.importorskip("torch", reason="torch is installed by requirements/train.txt only")
    from trainer.config import TrainConfig
    from trainer.data import LayoutReader, stream
    from trainer.train import train

    torch.set_num_threads(1)
    reader = LayoutReader(ROOT)  # verifies every shard's size and sha256 on S3
    assert reader.manifest.layout_id == _latest(s3)
    refs = reader.refs("train")
    assert refs
    batches = list(stream(reader, refs[:3], depth=2))
    assert [b.rows for b in batches] == [reader.rows(r) for r in refs[:3]]
    assert batches[0].ids.shape[0] == len(reader.schema.scalar)
    summary = train(TrainConfig(ROOT, max_steps=3, device="cpu", eval_batches=1,
                                bottom_mlp=(16, 16), top_mlp=(16, 1)))
    assert summary["steps"] == 3, summary


def test_interrupted_publish_keeps_latest_on_s3(s3: fsspec.AbstractFileSystem) -> None:
    first = _latest(s3)
    other = LayoutParams(dataset="criteo", budget="16KiB", batch_size=128)
    with pytest.raises(StorageError, match="injected"):
        run_layout(ROOT, other, fail_after_shards=True)
    assert _latest(s3) == first
    assert mf.load(ROOT)[0].layout_id == first
    done = run_layout(ROOT, other)
    assert done.status == "published" and done.layout_id != first
    assert _latest(s3) == done.layout_id
    assert all(c.ok for c in verify_layout(*mf.load(ROOT)))


def test_staged_layout_on_s3_matches_the_in_process_one(s3: fsspec.AbstractFileSystem) -> None:
    """The DAG's stages with their staging folder on s3:// (what separate workers share):
    a forced rebuild of the first layout gives the same shards, byte for byte."""
    from pipelines import layout_stages as stages

    lid = run_layout(ROOT, PARAMS).layout_id  # published by an earlier test
    before, _ = mf.load(f"{ROOT}/layouts/{lid}/manifest.json")
    prepared = stages.prepare(ROOT, PARAMS, force=True)
    assert prepared["layout_id"] == lid and prepared["status"] == "planned"
    for name in reversed(prepared["partitions"]):
        assert stages.encode(ROOT, lid, name)["status"] == "encoded"
    build = f"{BUCKET}/fae/layouts/{lid}/{stages.BUILD_DIR}"
    s3.invalidate_cache()
    assert s3.exists(f"{build}/spill/00000.json") and s3.exists(f"{build}/plan.json")
    for stream in reversed(prepared["streams"]):
        assert stages.cut(ROOT, lid, stream)["status"] == "cut"
    done = stages.publish(ROOT, lid)
    # the rebuild wrote beside the published files (shards-<tag>/), same names and bytes
    rebuilt = done.manifest.shards[0].path.split("/")[0]
    assert rebuilt.startswith("shards-")
    assert [(s.path.split("/", 1)[1], s.sha256) for s in done.manifest.shards] == [
        (s.path.split("/", 1)[1], s.sha256) for s in before.shards]
    s3.invalidate_cache()
    assert not s3.exists(build)
    assert not s3.exists(f"{BUCKET}/fae/layouts/{lid}/shards"), "the replaced files are pruned"
    assert s3.exists(f"{BUCKET}/fae/layouts/{lid}/{rebuilt}")
    assert _latest(s3) == lid
    assert all(c.ok for c in verify_layout(*mf.load(ROOT)))


def test_clean_on_s3(s3: fsspec.AbstractFileSystem) -> None:
    """Object stores list no folders and date files by LastModified: an abandoned build
    is found by its newest object, old layouts go, LATEST's stays readable."""
    import time

    from pipelines.clean import run_clean

    s3.pipe(f"{BUCKET}/fae/layouts/0123456789abcdef/shards/train-hot-00000.parquet", b"x" * 10)
    s3.invalidate_cache()
    latest = _latest(s3)
    fresh = run_clean(ROOT, keep=1)
    assert fresh.removed == [] or all(r.layout_id != latest for r in fresh.removed)
    assert any("0123456789abcdef" in n and "running build" in n for n in fresh.notes)
    later = run_clean(ROOT, keep=1, now=time.time() + 3 * 86400)  # everything is stale now
    removed = {r.layout_id for r in [*fresh.removed, *later.removed]}
    assert "0123456789abcdef" in removed and latest not in removed
    s3.invalidate_cache()
    assert not s3.exists(f"{BUCKET}/fae/layouts/0123456789abcdef")
    names = [os.path.basename(p) for p in s3.ls(f"{BUCKET}/fae/layouts", detail=False)]
    assert sorted(n for n in names if n != "LATEST") == [latest]
    assert all(c.ok for c in verify_layout(*mf.load(ROOT)))
