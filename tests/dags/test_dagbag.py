"""The DAG files parse cleanly and fast, and are wired as designed."""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import re
import subprocess
import sys
import textwrap
from typing import Any

import pytest

DAG_IDS = ("fae_ingest", "fae_layout", "fae_train")
PARSE_LIMIT_S = 1.0
HEAVY = ("polars", "pyarrow", "numpy", "matplotlib", "torch", "fae_data.ingest",
         "fae_data.partition", "fae_data.block_reader", "pipelines.layout", "pipelines.ingest")


def test_no_import_errors_and_one_dag_per_file(dagbag: Any) -> None:
    assert dagbag.import_errors == {}
    assert sorted(dagbag.dag_ids) == sorted(DAG_IDS)
    for dag_id in DAG_IDS:
        assert os.path.basename(dagbag.dags[dag_id].fileloc) == f"{dag_id}.py"


def test_each_file_parses_fast_without_heavy_imports(
    airflow_db: Any, dags_folder: Any, fae_env: dict[str, str]
) -> None:
    """What the dag-processor pays every parse: Airflow is warm, the file is not."""
    script = textwrap.dedent(f"""
        import json, sys, time
        from airflow.dag_processing.dagbag import DagBag
        from airflow.sdk import Asset, AssetAny, Param, PokeReturnValue, dag, task, task_group
        DagBag(dag_folder={str(dags_folder / "fae_train.py")!r})  # warm Airflow's own imports
        out = {{}}
        for f in {[str(dags_folder / f"{d}.py") for d in DAG_IDS]!r}:
            t = time.perf_counter()
            bag = DagBag(dag_folder=f)
            out[f] = [time.perf_counter() - t, dict(bag.import_errors)]
        out["heavy"] = [m for m in {HEAVY!r} if m in sys.modules]
        print(json.dumps(out))
    """)
    proc = subprocess.run([sys.executable, "-c", script], check=False,
                          env={**os.environ, **fae_env}, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    heavy = result.pop("heavy")
    for path, (seconds, errors) in result.items():
        assert errors == {}, errors
        assert seconds < PARSE_LIMIT_S, f"{path} took {seconds:.2f} s to parse"
    assert heavy == [], f"parsing the DAG files imported {heavy}; import them inside tasks"


def _schedule_assets(dag: Any) -> list[str]:
    """Names of the Assets a DAG is scheduled on (its asset condition, flattened)."""
    out, todo = [], [dag.timetable.asset_condition]
    while todo:
        node = todo.pop()
        if hasattr(node, "objects"):
            todo.extend(node.objects)
        else:
            out.append(node.name)
    return sorted(out)


def _edges(dag: Any) -> set[tuple[str, str]]:
    return {(t.task_id, d) for t in dag.tasks for d in t.downstream_task_ids}


def test_fae_ingest_wiring(dagbag: Any, storage_root: Any) -> None:
    dag = dagbag.dags["fae_ingest"]
    assert set(dag.task_ids) == {"criteo.wait_for_files", "criteo.ingest"}
    assert _edges(dag) == {("criteo.wait_for_files", "criteo.ingest")}
    assert dag.catchup is False  # FAE_INGEST_CATCHUP unset
    sensor = dag.get_task("criteo.wait_for_files")
    assert sensor.mode == "reschedule"  # holds no worker slot between pokes
    assert sensor.poke_interval == 5 and sensor.timeout == 60  # from the environment
    ingest = dag.get_task("criteo.ingest")
    assert ingest.retries == 3 and ingest.retry_exponential_backoff == 2.0
    assert [(a.name, a.uri) for a in ingest.outlets] == [
        ("fae_ingested_criteo", f"file://{storage_root}/ingested/criteo")]


def test_fae_ingest_catchup_and_datasets_from_env(
    airflow_db: Any, dags_folder: Any, monkeypatch: Any
) -> None:
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("FAE_INGEST_CATCHUP", "true")
    monkeypatch.setenv("FAE_DATASETS", "criteo,tb:taobao")
    dag = DagBag(dag_folder=str(dags_folder / "fae_ingest.py")).dags["fae_ingest"]
    assert dag.catchup is True
    assert {t.task_id for t in dag.tasks} == {
        "criteo.wait_for_files", "criteo.ingest", "tb.wait_for_files", "tb.ingest"}
    layouts = DagBag(dag_folder=str(dags_folder / "fae_layout.py")).dags
    assert layouts["fae_layout_tb"].params.get_param("dataset").schema["enum"] == ["tb"]


def test_fae_layout_wiring(dagbag: Any) -> None:
    dag = dagbag.dags["fae_layout"]
    assert set(dag.task_ids) == {"validate", "resolve", "count", "plan", "encode", "shards",
                                 "publish", "report", "announce", "clean"}
    assert _edges(dag) == {
        ("validate", "resolve"), ("validate", "count"), ("resolve", "count"),
        ("count", "plan"), ("validate", "plan"),
        ("plan", "encode"), ("validate", "encode"),
        ("encode", "shards"), ("validate", "shards"),
        ("shards", "publish"), ("validate", "publish"),
        ("publish", "report"), ("publish", "announce"), ("report", "announce"),
        ("publish", "clean"),
    }
    # One task instance per training partition, per input partition, per stream.
    for task_id in ("count", "encode", "shards"):
        assert dag.get_task(task_id).is_mapped, task_id
    assert dag.get_task("encode").map_index_template == "{{ partition }}"
    assert dag.get_task("shards").map_index_template == "{{ stream }}"
    # encode and shards are skipped for a layout that exists: publish still describes it.
    assert dag.get_task("publish").trigger_rule == "none_failed"
    assert dag.get_task("validate").retries == 0
    assert [a.name for a in dag.get_task("announce").outlets] == ["fae_layouts"]
    assert _schedule_assets(dag) == ["fae_ingested_criteo"]


def test_layout_streams_are_the_shard_streams() -> None:
    """The DAG maps ``shards`` over a copy of the streams (parsing must stay light)."""
    from fae_data.shard import STREAMS
    from pipelines.tasks import LAYOUT_STREAMS

    assert LAYOUT_STREAMS == STREAMS


def test_fae_train_wiring(dagbag: Any) -> None:
    dag = dagbag.dags["fae_train"]
    assert dag.task_ids == ["train"]
    assert _schedule_assets(dag) == ["fae_layouts"]


def test_layout_param_defaults_match_layout_params(dagbag: Any) -> None:
    """The DAG Params and the CLI come from one definition and must not drift."""
    from pipelines.layout import LayoutParams

    params = dagbag.dags["fae_layout"].params
    defaults = {f.name: f.default for f in dataclasses.fields(LayoutParams)}
    shared = {"budget", "embedding_dim", "dtype", "optimizer_slots", "batch_size",
              "sampling_rate", "seed", "min_count", "dataset"}
    for name in shared:
        assert params[name] == defaults[name], name
    assert set(params.get_param("dtype").schema["enum"]) == set(
        __import__("pipelines.layout", fromlist=["DTYPE_BYTES"]).DTYPE_BYTES)


@pytest.mark.parametrize("conf, message", [
    ({"budget": "abc"}, "param budget"),
    ({"budget": "12 MiBs"}, "param budget"),
    ({"dataset": "nope"}, "param dataset: 'nope' is not one of"),
    ({"batch_size": "x"}, "param batch_size"),
    ({"batch_size": 0}, "param batch_size"),
    ({"sampling_rate": 0}, "param sampling_rate"),
    ({"start": "2024-13"}, "param start"),
    ({"partitions": "day_0"}, "param partitions"),
])
def test_invalid_params_are_refused_at_trigger(dagbag: Any, conf: dict, message: str) -> None:
    from airflow.sdk.exceptions import ParamValidationError

    params = copy.deepcopy(dagbag.dags["fae_layout"].params)
    with pytest.raises(ParamValidationError, match=re.escape(message)):
        params.update(conf)
        params.validate()


def test_budget_schema_accepts_what_parse_budget_accepts() -> None:
    from fae_data.errors import BudgetError
    from fae_data.plan import parse_budget
    from pipelines.tasks import LAYOUT_PARAMS

    pattern = re.compile(LAYOUT_PARAMS["budget"][1]["pattern"])
    for text in ("256MiB", "8GB", "1.5 GiB", "512kB", "4096", " 7 b ", ".5MiB", "3.", "1TiB",
                 "abc", "12 MiBs", "1 KI", "k", "-1", "1e3", "", "1 kib b", "2 MB "):
        try:
            parse_budget(text)
            ok = True
        except BudgetError:
            ok = False
        assert bool(pattern.match(text)) == ok, text


def test_several_datasets_get_a_layout_dag_each(
    airflow_db: Any, dags_folder: Any, monkeypatch: Any
) -> None:
    """With two datasets, ingests finishing together triggered one fae_layout run for
    both, whose validate refused it: neither dataset got a layout, day after day. One DAG
    per dataset (scheduled, and on demand for that dataset); no second DAG over all of
    them, whose runs could overlap a dataset's own and delete its staging files."""
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("FAE_DATASETS", "criteo,tb:taobao")
    dags = DagBag(dag_folder=str(dags_folder / "fae_layout.py")).dags
    assert set(dags) == {"fae_layout_criteo", "fae_layout_tb"}
    for name in ("criteo", "tb"):
        dag = dags[f"fae_layout_{name}"]
        assert _schedule_assets(dag) == [f"fae_ingested_{name}"]
        assert dag.params.get_param("dataset").schema["enum"] == [name]
        assert dag.max_active_runs == 1
        assert set(dag.task_ids) == {"validate", "resolve", "count", "plan", "encode",
                                     "shards", "publish", "report", "announce", "clean"}
