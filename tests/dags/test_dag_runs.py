"""Whole DAG runs with ``dag.test()`` on small synthetic data (no scheduler, SQLite).

Three synthetic Criteo days land as ``landing/criteo/2024-01-0{1,2,3}.tsv``; fae_ingest
runs once per day, fae_layout lays them out, fae_train runs a stand-in trainer command.
Reruns must do nothing: same partitions, same layout, no new manifest Asset event.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
from pathlib import Path
from typing import Any

import pytest

from fae_data import manifest as mf
from fae_data.synth import write_criteo
from fae_data.verify import verify_layout

DAYS = ("2024-01-01", "2024-01-02", "2024-01-03")
CONF = {"budget": "64KiB", "batch_size": 256, "seed": 7}


def _dag(dags_folder: Path, dag_id: str) -> Any:
    """A freshly parsed DAG: in-process ``dag.test()`` runs leave the run's Params on the
    task objects, so every run here gets its own parse (as every real task process does).
    Retries are off: ``dag.test()`` would wait out each retry delay (minutes)."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(dags_folder / f"{dag_id}.py"))
    assert bag.import_errors == {}
    dag = bag.dags[dag_id]
    for t in dag.tasks:  # dag.test() sleeps through retry delays: fail at once instead
        t.retries = 0
    return dag


def _day(ds: str) -> dt.datetime:
    return dt.datetime.fromisoformat(ds).replace(tzinfo=dt.UTC)


def _states(dr: Any) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for ti in dr.get_task_instances():
        out.setdefault(ti.task_id, []).append(str(ti.state))
    return out


def _map_names(dr: Any, task_id: str) -> list[str]:
    """The rendered map indices (``map_index_template``) of a mapped task's instances."""
    tis = [ti for ti in dr.get_task_instances() if ti.task_id == task_id]
    return [str(ti.rendered_map_index) for ti in sorted(tis, key=lambda ti: ti.map_index)]


def _xcom(dr: Any, task_id: str, map_index: int = -1) -> Any:
    from airflow.models.xcom import XComModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        row = session.scalars(select(XComModel).where(
            XComModel.dag_id == dr.dag_id, XComModel.run_id == dr.run_id,
            XComModel.task_id == task_id, XComModel.map_index == map_index,
            XComModel.key == "return_value")).one_or_none()
        return None if row is None else XComModel.deserialize_value(row)


def _asset_events(name: str) -> list[dict[str, Any]]:
    from airflow.models.asset import AssetEvent, AssetModel
    from airflow.utils.session import create_session
    from sqlalchemy import select

    with create_session() as session:
        rows = session.scalars(
            select(AssetEvent).join(AssetModel, AssetEvent.asset_id == AssetModel.id)
            .where(AssetModel.name == name).order_by(AssetEvent.id))
        return [dict(e.extra) for e in rows]


@pytest.fixture(scope="module")
def ingested(airflow_db: Any, dags_folder: Path, landing: Path,
             tmp_path_factory: pytest.TempPathFactory) -> list[Any]:
    """The three days landed and ingested through fae_ingest; its dag runs, in order."""
    raw = tmp_path_factory.mktemp("raw")
    files = write_criteo(raw, rows=5000, days=len(DAYS), scale=0.001, seed=0)
    (landing / "criteo").mkdir(parents=True, exist_ok=True)
    for ds, f in zip(DAYS, files, strict=True):
        os.replace(f, landing / "criteo" / f"{ds}.tsv")
    return [_dag(dags_folder, "fae_ingest").test(logical_date=_day(ds)) for ds in DAYS]


@pytest.fixture(scope="module")
def published(dags_folder: Path, ingested: list[Any]) -> Any:
    return _dag(dags_folder, "fae_layout").test(run_conf=CONF)


def test_ingest_writes_one_partition_per_day(ingested: list[Any], storage_root: Path) -> None:
    for ds, dr in zip(DAYS, ingested, strict=True):
        assert str(dr.state) == "success", _states(dr)
        record = _xcom(dr, "criteo.ingest")
        assert record["partitions"] == [ds] and record["status"] == {ds: "written"}
        assert record["rows_ok"] + record["rows_rejected"] == 5000
        assert (storage_root / "ingested" / "criteo" / ds / "_partition.json").is_file()
    events = _asset_events("fae_ingested_criteo")
    assert [e["ds"] for e in events[:3]] == list(DAYS)
    assert events[0]["partitions"] == [DAYS[0]] and events[0]["dataset"] == "criteo"


def test_ingest_rerun_is_a_noop(dags_folder: Path, ingested: list[Any], storage_root: Path) -> None:
    marker = storage_root / "ingested" / "criteo" / DAYS[0] / "_partition.json"
    before = marker.stat().st_mtime_ns, marker.read_bytes()
    dr = _dag(dags_folder, "fae_ingest").test(logical_date=_day(DAYS[0]))
    assert str(dr.state) == "success", _states(dr)
    assert _xcom(dr, "criteo.ingest")["status"] == {DAYS[0]: "unchanged"}
    assert (marker.stat().st_mtime_ns, marker.read_bytes()) == before


def test_layout_publishes_a_manifest_that_verifies(published: Any, storage_root: Path) -> None:
    dr = published
    states = _states(dr)
    assert str(dr.state) == "success", states
    assert states["count"] == ["success", "success"]  # days 1 and 2 train; day 3 is val/test
    request = _xcom(dr, "validate")
    assert request["partitions"] == list(DAYS) and request["exists"] is False
    # One encode task per input partition (train, val/test alike), one shards task per
    # stream, each named after what it handles.
    assert _xcom(dr, "plan") == list(DAYS)
    assert states["encode"] == ["success"] * len(DAYS)
    assert sorted(_map_names(dr, "encode")) == list(DAYS)
    assert states["shards"] == ["success"] * 4
    assert _map_names(dr, "shards") == ["train/hot", "train/cold", "val/all", "test/all"]
    encoded = [_xcom(dr, "encode", i) for i in range(len(DAYS))]
    assert sorted(e["partition"] for e in encoded) == list(DAYS)
    assert all(e["status"] == "encoded" and e["rows"] > 0 for e in encoded)
    cut = {c["stream"]: c for c in (_xcom(dr, "shards", i) for i in range(4))}
    built = _xcom(dr, "publish")
    assert built["status"] == "published"
    manifest, store = mf.load(built["manifest"])
    assert manifest.layout_id == built["layout_id"] == request["layout_id"]
    assert manifest.params["batch_size"] == 256 and manifest.params["seed"] == 7
    assert [p.name for p in manifest.dataset.partitions] == list(DAYS)
    assert manifest.stats["rows_by_split_and_kind"] == {
        s: c["rows"] for s, c in cut.items() if c["rows"]}
    assert len(manifest.shards) == sum(c["shards"] for c in cut.values())
    assert not (storage_root / "layouts" / manifest.layout_id / "_build").exists()
    checks = verify_layout(manifest, store)
    assert all(c.ok for c in checks), [c for c in checks if not c.ok]
    assert Path(_xcom(dr, "report")).is_file()
    assert (storage_root / "layouts" / "LATEST").read_text().strip() == manifest.layout_id
    event = _asset_events("fae_layouts")[-1]
    assert event["layout_id"] == manifest.layout_id and event["manifest"] == built["manifest"]


def test_layout_rerun_is_a_noop(dags_folder: Path, published: Any) -> None:
    built = _xcom(published, "publish")
    manifest = Path(built["manifest"])
    before = manifest.stat().st_mtime_ns
    events_before = len(_asset_events("fae_layouts"))
    dr = _dag(dags_folder, "fae_layout").test(run_conf=CONF)
    states = _states(dr)
    assert str(dr.state) == "success", states
    assert _xcom(dr, "validate")["exists"] is True
    assert _xcom(dr, "plan") == []  # nothing to encode: the mapped tasks are skipped
    assert states["encode"] == ["skipped"] and set(states["shards"]) == {"skipped"}
    assert _xcom(dr, "publish") == {**built, "status": "unchanged"}
    assert states["announce"] == ["skipped"]  # so fae_train is not triggered again
    assert len(_asset_events("fae_layouts")) == events_before
    assert manifest.stat().st_mtime_ns == before


def test_layout_over_a_date_range(dags_folder: Path, published: Any) -> None:
    dr = _dag(dags_folder, "fae_layout").test(
        run_conf={**CONF, "start": DAYS[1], "end": DAYS[2]})
    assert str(dr.state) == "success", _states(dr)
    assert _xcom(dr, "validate")["partitions"] == list(DAYS[1:])
    assert _xcom(dr, "resolve") == [DAYS[1]]
    assert _xcom(dr, "publish")["layout_id"] != _xcom(published, "publish")["layout_id"]


def test_invalid_params_are_refused_before_any_task(dags_folder: Path, ingested: list[Any]) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    with pytest.raises(ParamValidationError, match="Invalid input for param budget: 'abc'"):
        _dag(dags_folder, "fae_layout").test(run_conf={"budget": "abc"})


def test_end_before_start_fails_the_first_task(dags_folder: Path, ingested: list[Any]) -> None:
    dr = _dag(dags_folder, "fae_layout").test(run_conf={"start": DAYS[2], "end": DAYS[0]})
    states = _states(dr)
    assert str(dr.state) == "failed"
    assert states.pop("validate") == ["failed"]
    # (shards, mapped over the fixed streams, has one instance per stream)
    assert all(set(s) == {"upstream_failed"} for s in states.values()), states


def test_a_runs_landing_url_comes_before_the_variable(
        dags_folder: Path, ingested: list[Any], tmp_path: Path, storage_root: Path) -> None:
    """Reprocessing a day from another place: the run's landing_url wins over the Airflow
    Variable (which wins over FAE_LANDING_URL)."""
    from airflow.models import Variable

    ds = "2024-01-05"
    write_criteo(tmp_path, rows=500, days=1, scale=0.001, seed=5)
    Variable.set("fae_landing_url", str(tmp_path / "nowhere" / "{ds}.tsv"))
    try:
        dr = _dag(dags_folder, "fae_ingest").test(
            logical_date=_day(ds), run_conf={"landing_url": str(tmp_path / "day_0.tsv")})
        assert str(dr.state) == "success", _states(dr)
        marker = storage_root / "ingested" / "criteo" / ds / "_partition.json"
        assert json.loads(marker.read_text())["rows_ok"] == 500
        # A form that sends the Param empty (null) leaves the Variable in charge.
        os.replace(tmp_path / "day_0.tsv", tmp_path / "2024-01-06.tsv")
        Variable.set("fae_landing_url", str(tmp_path / "{ds}.tsv"))
        dr = _dag(dags_folder, "fae_ingest").test(logical_date=_day("2024-01-06"),
                                                  run_conf={"landing_url": None})
        assert str(dr.state) == "success", _states(dr)
    finally:
        Variable.delete("fae_landing_url")
        for day in (ds, "2024-01-06"):
            shutil.rmtree(storage_root / "ingested" / "criteo" / day, ignore_errors=True)
            shutil.rmtree(storage_root / "counts" / "criteo" / day, ignore_errors=True)


def test_a_file_refused_as_a_whole_fails_without_retries(
        dags_folder: Path, ingested: list[Any], landing: Path, storage_root: Path) -> None:
    """Retrying an ingest of a file that is not of the kind meets the same file: the task
    fails at once (retries stay for storage errors)."""
    ds = "2024-01-09"
    junk = landing / "criteo" / f"{ds}.tsv"
    junk.write_text("this is not a click log\n" * 50)
    try:
        dag = _dag(dags_folder, "fae_ingest")
        for t in dag.tasks:  # one immediate retry, were the failure retried
            t.retries, t.retry_delay = 1, dt.timedelta(0)
        dr = dag.test(logical_date=_day(ds))
    finally:
        junk.unlink()
    ti = next(ti for ti in dr.get_task_instances() if ti.task_id.endswith(".ingest"))
    assert (str(ti.state), ti.try_number) == ("failed", 1)
    assert not (storage_root / "ingested" / "criteo" / ds).exists()


def test_train_runs_the_trainer_as_a_process(dags_folder: Path, published: Any,
                                             storage_root: Path) -> None:
    built = _xcom(published, "publish")
    dr = _dag(dags_folder, "fae_train").test(run_conf={"manifest": built["manifest"]})
    assert str(dr.state) == "success", _states(dr)
    result = _xcom(dr, "train")
    assert result["exit_code"] == 0 and result["target"] == built["manifest"]
    assert result["summary"]["ok"] is True  # the stand-in verified the manifest
    assert result["summary"]["layout_id"] == built["layout_id"]
    # No manifest Param and no triggering event: the root, i.e. whatever LATEST names.
    dr = _dag(dags_folder, "fae_train").test()
    assert str(dr.state) == "success", _states(dr)
    latest = (storage_root / "layouts" / "LATEST").read_text().strip()
    assert _xcom(dr, "train")["summary"]["layout_id"] == latest, _xcom(dr, "train")["target"]


def test_train_failure_carries_the_trainer_output() -> None:
    from pipelines.tasks import run_training

    with pytest.raises(RuntimeError, match=r"exited with code 1(.|\n)*no such manifest"):
        run_training("{python} -m pipelines.cli verify {manifest}", root="/nonexistent",
                     manifest="/nonexistent/manifest.json")


def test_train_with_the_real_trainer(dags_folder: Path, published: Any,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """The default FAE_TRAIN_COMMAND (``python -m trainer.cli``), where torch is installed."""
    pytest.importorskip("torch", reason="torch is installed by requirements/train.txt only")
    from pipelines.tasks import DEFAULT_TRAIN_COMMAND

    monkeypatch.setenv("FAE_TRAIN_COMMAND", DEFAULT_TRAIN_COMMAND)
    built = _xcom(published, "publish")
    dr = _dag(dags_folder, "fae_train").test(
        run_conf={"manifest": built["manifest"], "max_steps": 3})
    assert str(dr.state) == "success", _states(dr)
    summary = _xcom(dr, "train")["summary"]
    assert summary["layout_id"] == built["layout_id"] and summary["steps"] == 3
