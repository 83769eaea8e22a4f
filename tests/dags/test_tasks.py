"""The DAG adapters in pipelines/tasks.py, without Airflow."""

from __future__ import annotations

import re
import shutil
import sys
from pathlib import Path

import pytest

from fae_data.errors import BudgetError, InputError
from fae_data.ingest import IngestParams, check_name
from fae_data.synth import write_criteo
from pipelines import tasks
from pipelines.ingest import run_ingest
from pipelines.tasks_config import _NAME_PATTERN

DAYS = ("2024-01-01", "2024-01-02", "2024-01-03")


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> str:
    base = tmp_path_factory.mktemp("tasks")
    files = write_criteo(base / "raw", rows=500, days=3, scale=0.001, seed=3)
    run_ingest([str(f) for f in files], str(base / "root"), IngestParams("criteo"),
               partitions=list(DAYS))
    return str(base / "root")


def test_datasets_setting() -> None:
    assert tasks.parse_datasets(None) == (tasks.DatasetConfig("criteo", "criteo"),)
    assert tasks.parse_datasets(" kaggle:criteo , tb:taobao ") == (
        tasks.DatasetConfig("kaggle", "criteo"), tasks.DatasetConfig("tb", "taobao"))
    with pytest.raises(InputError, match="kind 'avazu' of dataset 'avazu' is not one of"):
        tasks.parse_datasets("avazu")
    with pytest.raises(InputError, match="dataset 'a' appears twice"):
        tasks.parse_datasets("a:criteo,a:taobao")
    with pytest.raises(InputError, match="dataset name '../x' is not allowed"):
        tasks.parse_datasets("../x:criteo")
    with pytest.raises(InputError, match="dataset name 'x=y' is not allowed in the DAGs"):
        tasks.parse_datasets("x=y:criteo")  # an Airflow id (task group, DAG) is named after it


def test_name_pattern_is_the_ingest_rule() -> None:
    for name in ("criteo", "2024-01-01", "a.b=c_d-e", "-x", "", "a/b", "..", "ä"):
        try:
            check_name(name, "dataset")
            ok = True
        except InputError:
            ok = False
        assert bool(re.match(_NAME_PATTERN, name)) == ok, name


def test_flags_roots_and_asset_uris(tmp_path: Path) -> None:
    assert tasks.env_flag(None) is False and tasks.env_flag("", True) is True
    assert tasks.env_flag("Yes") is True and tasks.env_flag("off") is False
    with pytest.raises(InputError, match="use true or false"):
        tasks.env_flag("maybe")
    assert tasks.storage_root("s3://bucket/fae/") == "s3://bucket/fae"
    assert tasks.storage_root(str(tmp_path)) == str(tmp_path)
    assert tasks.asset_uri("s3://bucket/fae", "ingested", "criteo") == "s3://bucket/fae/ingested/criteo"
    assert tasks.asset_uri("/data/my root", "layouts") == "file:///data/my%20root/layouts"


def test_landing_patterns(tmp_path: Path) -> None:
    assert tasks.landing_url("s3://l/{dataset}/{ds_nodash}/day.tsv.gz", dataset="c",
                             ds="2024-01-31") == "s3://l/c/20240131/day.tsv.gz"
    with pytest.raises(InputError, match=r"placeholders are \{ds\}"):
        tasks.landing_url("x/{date}.tsv", dataset="c", ds="2024-01-31")
    day = tmp_path / "20240131"
    assert tasks.find_landing(str(tmp_path / "{ds_nodash}" / "*.tsv"), dataset="c",
                              ds="2024-01-31") == []
    day.mkdir()
    for name in ("b.tsv", "a.tsv", "skip.txt"):
        (day / name).write_text("x")
    found = tasks.find_landing(str(tmp_path / "{ds_nodash}" / "*.tsv"), dataset="c",
                               ds="2024-01-31")
    assert found == [str(day / "a.tsv"), str(day / "b.tsv")]
    assert tasks.day_partitions(found, "2024-01-31") == ["2024-01-31_a", "2024-01-31_b"]
    assert tasks.day_partitions(found[:1], "2024-01-31") == ["2024-01-31"]


def test_validate_pins_partitions_and_reports_existing(root: str) -> None:
    req = tasks.validate_layout(root, {"budget": "1KiB"})
    assert req["partitions"] == list(DAYS) and req["exists"] is False
    assert len(req["layout_id"]) == 16
    assert tasks.train_partitions(root, req) == list(DAYS[:2])
    ranged = tasks.validate_layout(root, {"start": DAYS[1]})
    assert ranged["partitions"] == list(DAYS[1:])
    # A day being ingested now (no _partition.json yet) is not pinned: it failed the run.
    inflight = Path(root) / "ingested" / "criteo" / "2024-01-09"
    inflight.mkdir()
    try:
        (inflight / "data-0.parquet").write_bytes(b"partial")
        assert tasks.validate_layout(root, {"budget": "1KiB"})["partitions"] == list(DAYS)
    finally:
        shutil.rmtree(inflight)


@pytest.mark.parametrize("conf, error, message", [
    ({"budgett": "1KiB"}, InputError, r"unknown param\(s\) \['budgett'\]"),
    ({"budget": "abc"}, BudgetError, "cannot read memory budget 'abc'"),
    ({"start": "2024-01-03", "end": "2024-01-01"}, InputError,
     r"param end \(2024-01-01\) is before start \(2024-01-03\)"),
    ({"start": "2024-02-30"}, InputError, "param start: '2024-02-30' is not a date"),
    ({"start": "2025-01-01"}, InputError, "no ingested partitions between 2025-01-01"),
    ({"partitions": ["2024-01-01"], "start": "2024-01-01"}, InputError,
     "either partitions or start/end"),
    ({"partitions": ["2024-01-01", "nope"]}, InputError, "partition 'nope' of dataset"),
    ({"dataset": "taobao"}, InputError, "not one of the configured datasets"),
    ({"batch_size": 0}, InputError, r"batch_size \(0\) must be >= 1"),
])
def test_validate_refuses_with_a_readable_message(
    root: str, conf: dict, error: type[Exception], message: str
) -> None:
    with pytest.raises(error, match=message):
        tasks.validate_layout(root, conf, known_datasets=["criteo"])


def test_the_ingest_event_chooses_the_dataset(root: str) -> None:
    events = [{"dataset": "criteo", "ds": DAYS[2]}]
    assert tasks.validate_layout(root, {"dataset": "x"}, events=events,
                                 explicit=[])["dataset"] == "criteo"
    with pytest.raises(InputError, match="several datasets"):
        tasks.validate_layout(root, {}, events=[*events, {"dataset": "other"}], explicit=[])


def test_train_target_and_command(tmp_path: Path) -> None:
    events = [{"manifest": "old.json"}, {"layout_id": "x"}, {"manifest": "new.json"}]
    assert tasks.train_target("/r", None, events) == "new.json"
    assert tasks.train_target("/r", "mine.json", events) == "mine.json"
    assert tasks.train_target("/r", None, []) == "/r"
    script = tmp_path / "trainer.py"
    script.write_text("import json, sys\nprint('step 1')\nprint(json.dumps({'argv': sys.argv[1:]},"
                      " indent=2))\n")
    out = tasks.run_training(f"{{python}} {script} {{manifest}} --max-steps {{max_steps}}",
                             root="/r", manifest="/a path/manifest.json", max_steps=7)
    assert out["summary"] == {"argv": ["/a path/manifest.json", "--max-steps", "7"]}
    out = tasks.run_training(f"{{python}} {script} /ckpt/{{run_id}}", root="/r",
                             run_id="manual__2026-01-01T00:00:00+00:00")
    assert out["summary"] == {"argv": ["/ckpt/manual__2026-01-01T00_00_00_00_00"]}
    with pytest.raises(InputError, match="placeholders are"):
        tasks.run_training("{python} {nope}", root="/r")
    with pytest.raises(RuntimeError, match="exited with code 3(.|\n)*boom") as crash:
        tasks.run_training(f"{sys.executable} -c \"print('boom'); raise SystemExit(3)\"",
                           root="/r")
    assert not isinstance(crash.value, tasks.TrainerRefused)  # a crash is retried
    # The trainer's own refusal (one `error:` line, exit 1) is not: the DAG fails at once.
    with pytest.raises(tasks.TrainerRefused, match="exited with code 1(.|\n)*error: bad"):
        tasks.run_training(f"{sys.executable} -c \"print('error: bad layout'); "
                           "raise SystemExit(1)\"", root="/r")
    # Nor is a usage error of FAE_TRAIN_COMMAND (argparse: "prog: error: ...", exit 2).
    with pytest.raises(tasks.TrainerRefused, match="invalid choice"):
        tasks.run_training(f"{sys.executable} -m trainer.cli {{manifest}} --placement nope",
                           root="/r", manifest="/r/manifest.json")
    # Under torchrun the refusal is followed by torchrun's own traceback.
    script = tmp_path / "ranks.py"
    script.write_text("print('[rank0]: error: bad layout')\nfor i in range(40): print('  at', i)"
                      "\nraise SystemExit(1)\n")
    with pytest.raises(tasks.TrainerRefused):
        tasks.run_training(f"{{python}} {script}", root="/r")
    # FORCE_COLOR styles the line: still a refusal.
    with pytest.raises(tasks.TrainerRefused):
        tasks.run_training(f"{sys.executable} -c \"print('\\x1b[1;31merror:\\x1b[0m bad'); "
                           "raise SystemExit(1)\"", root="/r")
    # Storage that could not be reached may answer next time: retried.
    with pytest.raises(RuntimeError) as storage:
        tasks.run_training(f"{sys.executable} -c \"print('error (storage): s3://x: cannot "
                           "reach the object store'); raise SystemExit(2)\"", root="/r")
    assert not isinstance(storage.value, tasks.TrainerRefused)
    with pytest.raises(RuntimeError) as traceback:  # an uncaught exception also exits 1
        tasks.run_training(f"{sys.executable} -c \"raise ValueError('x')\"", root="/r")
    assert not isinstance(traceback.value, tasks.TrainerRefused)


def test_train_timeout_kills_the_trainer_and_its_children(tmp_path: Path) -> None:
    marker = tmp_path / "child-survived"
    child = f"import time; time.sleep(3); open({str(marker)!r}, 'w')"
    script = tmp_path / "slow.py"
    script.write_text("import subprocess, sys, time\n"
                      f"subprocess.Popen([sys.executable, '-c', {child!r}])\n"
                      "print('started', flush=True)\ntime.sleep(60)\n")
    with pytest.raises(RuntimeError, match="ran past 1 s and was killed(.|\n)*started"):
        tasks.run_training(f"{{python}} {script}", root="/r", timeout_s=1)
    import time

    time.sleep(3.5)
    assert not marker.exists()


def test_layout_tasks_build_publish_and_then_do_nothing(root: str) -> None:
    """validate -> count -> plan -> encode (per partition) -> shards (per stream) ->
    publish, called the way the DAG calls them, then the same request again."""
    from fae_data import manifest as mf
    from fae_data.verify import verify_layout

    req = tasks.validate_layout(root, {"budget": "2KiB", "batch_size": 64})
    for name in tasks.train_partitions(root, req):
        tasks.count_partition(root, req, name)
    partitions = tasks.plan_layout(root, req)
    assert partitions == list(DAYS)  # every input partition, val/test included
    for name in reversed(partitions):
        assert tasks.encode_partition(root, req, name)["status"] == "encoded"
    cut = [tasks.cut_stream(root, req, s) for s in tasks.LAYOUT_STREAMS]
    assert [c["status"] for c in cut] == ["cut"] * 4
    assert tasks.cut_stream(root, req, "val/all")["status"] == "already done"
    built = tasks.publish_layout(root, req)
    assert built["status"] == "published" and built["layout_id"] == req["layout_id"]
    assert built["shards"] == sum(c["shards"] for c in cut)
    manifest, store = mf.load(built["manifest"])
    assert all(c.ok for c in verify_layout(manifest, store))
    # A publish retried after it had finished still reports what this run did.
    assert tasks.publish_layout(root, req)["status"] == "published"

    again = tasks.validate_layout(root, {"budget": "2KiB", "batch_size": 64})
    assert again["exists"] is True
    assert tasks.plan_layout(root, again) == []
    assert tasks.publish_layout(root, again) == {**built, "status": "unchanged"}
    forced = {**again, "force": True}
    assert tasks.plan_layout(root, forced) == list(DAYS)  # force: build it again


def test_layout_tasks_rebuild_a_published_layout_with_a_missing_shard(root: str) -> None:
    """The DAG once published "unchanged" (and skipped fae_train) for a layout whose shard
    was deleted; validate now sees it incomplete, plan rebuilds it and publish says so."""
    from fae_data import manifest as mf
    from fae_data.verify import verify_layout

    def run(req: dict) -> dict:
        for name in tasks.train_partitions(root, req):
            tasks.count_partition(root, req, name)
        for name in tasks.plan_layout(root, req):
            tasks.encode_partition(root, req, name)
        if req["exists"] is False:
            for s in tasks.LAYOUT_STREAMS:
                tasks.cut_stream(root, req, s)
        return tasks.publish_layout(root, req)

    conf = {"budget": "1536B", "batch_size": 64}
    built = run(tasks.validate_layout(root, conf))
    manifest, store = mf.load(built["manifest"])
    store.remove(manifest.shards[0].path)
    again = tasks.validate_layout(root, conf)
    assert again["exists"] is False
    rebuilt = run(again)
    assert rebuilt["status"] == "published" and rebuilt["layout_id"] == built["layout_id"]
    manifest, store = mf.load(rebuilt["manifest"])
    assert all(c.ok for c in verify_layout(manifest, store))
    assert tasks.validate_layout(root, conf)["exists"] is True


def test_layout_tasks_refuse_stale_or_bad_requests(root: str) -> None:
    req = tasks.validate_layout(root, {"budget": "3KiB"})
    with pytest.raises(InputError, match="input partitions changed since layout 0000"):
        tasks.plan_layout(root, {**req, "layout_id": "0000"})
    tasks.plan_layout(root, req)
    with pytest.raises(InputError, match="partition 'nope' is not an input of layout"):
        tasks.encode_partition(root, req, "nope")
    with pytest.raises(InputError, match="stream 'all' unknown"):
        tasks.cut_stream(root, req, "all")


def test_a_queued_training_run_takes_the_newest_layout_of_its_dataset(tmp_path: Path) -> None:
    """fae_train runs one at a time; a run queued behind a long training starts with the
    event that queued it, and layouts published meanwhile queue no run: it trained an
    older layout and the newest waited for yet another one."""
    import json

    from pipelines.layout import LayoutParams, run_layout

    files = write_criteo(tmp_path / "raw", rows=400, days=2, scale=0.001, seed=5)
    root = str(tmp_path / "root")
    run_ingest([str(f) for f in files], root, IngestParams("criteo"))
    old = run_layout(root, LayoutParams(budget="16KiB", batch_size=64))
    new = run_layout(root, LayoutParams(budget="32KiB", batch_size=64))  # LATEST now
    path = Path(new.manifest_path)
    d = json.loads(path.read_text())
    d["created_at"] = "2999-01-01T00:00:00+00:00"  # certainly published after the event's
    path.write_text(json.dumps(d))
    event = {"manifest": old.manifest_path, "layout_id": old.layout_id, "dataset": "criteo"}
    assert tasks.train_target(root, None, [event]) == new.manifest_path
    # The newest event's layout is already the newest: it is trained as it is.
    event_new = {"manifest": new.manifest_path, "layout_id": new.layout_id}
    assert tasks.train_target(root, None, [event, event_new]) == new.manifest_path
    # An older LATEST (another dataset's, or published before) does not replace the event's.
    d["created_at"] = "2000-01-01T00:00:00+00:00"
    path.write_text(json.dumps(d))
    assert tasks.train_target(root, None, [event]) == old.manifest_path
    # The event's layout removed by `fae clean`: the newest one of its dataset, not a
    # missing manifest; a layout created after the run started is not taken (a retry of
    # the run trains what its first attempt trained).
    d["created_at"] = "2999-01-01T00:00:00+00:00"
    path.write_text(json.dumps(d))
    shutil.rmtree(Path(old.manifest_path).parent)
    assert tasks.train_target(root, None, [event]) == new.manifest_path
    import datetime as dt

    started = dt.datetime(2998, 1, 1, tzinfo=dt.timezone.utc)
    assert tasks.train_target(root, None, [event], not_after=started) == old.manifest_path
    # A manual run (no event, no Param) is pinned as well: LATEST as of its start, so that
    # a retry does not resume a checkpoint on a layout published in between.
    assert tasks.train_target(root, None, []) == root
    assert tasks.train_target(root, None, [], not_after=started) is not None
    naive = dt.datetime(3000, 1, 1)  # direct callers may pass a naive time: UTC
    assert tasks.newest_layout(root, "criteo", naive) == new.manifest_path


def test_a_date_range_with_missing_days_is_warned_about(root: str, caplog) -> None:  # type: ignore[no-untyped-def]
    """start/end over a month with three days ingested published a 3-day layout silently."""
    import logging

    with caplog.at_level(logging.WARNING, logger="pipelines.tasks_layout"):
        request = tasks.validate_layout(root, {"start": DAYS[0], "end": "2024-01-05"})
    assert request["partitions"] == list(DAYS)
    assert "2 day(s) from 2024-01-01 to 2024-01-05 have no ingested partition of dataset " \
        "criteo (2024-01-04, 2024-01-05)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="pipelines.tasks_layout"):
        tasks.validate_layout(root, {"start": DAYS[0], "end": DAYS[2]})
    assert "have no ingested partition" not in caplog.text


def test_input_errors_fail_a_task_for_good_and_storage_errors_are_retried() -> None:
    from airflow.sdk.exceptions import AirflowFailException

    from fae_data.errors import StorageError
    from pipelines.tasks import TrainerRefused, fail_for_good

    for exc in (InputError("day_0.tsv: not a Criteo file"), BudgetError("1B holds no row"),
                TrainerRefused("error: checksum mismatch")):
        with pytest.raises(AirflowFailException, match=str(exc)), fail_for_good():
            raise exc
    with pytest.raises(StorageError), fail_for_good():  # a store may answer next time
        raise StorageError("s3://bucket: connection reset")
