"""fae_layout: profile ingested partitions and publish a training layout.

Runs when fae_ingest updates a dataset (the Asset ``fae_ingested_<dataset>``), and on
demand with Params. With several datasets in ``FAE_DATASETS`` each has its own DAG
``fae_layout_<dataset>``, scheduled and on demand, instead (see :func:`layout_dag`). On
demand: Params (UI "Trigger", ``airflow dags trigger fae_layout --conf '{...}'`` or
``POST /api/v2/dags/fae_layout/dagRuns``). Invalid Params are refused when the run is
triggered (their JSON schema: a budget such as "abc", an unknown dataset, a wrong type);
what a schema cannot say (end before start, no partitions in the range) fails the first
task, ``validate``, before any work is done. A task that fails on its input (a damaged
partition, a budget too small) fails at once; storage errors are retried
(:mod:`pipelines.tasks_errors`).

validate -> resolve -> count (mapped: one task per training partition) -> plan
(vocabularies, hot rows) -> encode (mapped: one task per input partition, pass 1 of the
shuffle) -> shards (mapped: one task per stream, train/hot, train/cold, val/all,
test/all; pass 2) -> publish (manifest, LATEST) -> report -> announce, and after
publish, clean (abandoned builds; old layouts with ``FAE_KEEP_LAYOUTS``). The stages hand
over through files in the layout's staging folder ``layouts/<id>/_build/`` under the
storage root, which publish removes. Every step is keyed by content, so a rerun with the
same inputs and Params finds the finished layout and does nothing: plan returns no
partitions, encode and shards are skipped, publish only describes the layout, and
``announce`` skips, so the manifest Asset ``fae_layouts`` (which fae_train follows) gets
no new event.
"""

from __future__ import annotations

import datetime as dt
import os

from airflow.sdk import Asset, AssetAny, Param, dag, task

from pipelines.tasks import (
    ENV_DATASETS,
    ENV_STORAGE_ROOT,
    LAYOUT_PARAMS,
    LAYOUT_STREAMS,
    asset_uri,
    parse_datasets,
    storage_root,
)

ROOT = storage_root(os.environ.get(ENV_STORAGE_ROOT))
DATASETS = [d.name for d in parse_datasets(os.environ.get(ENV_DATASETS))]
INGESTED = [Asset(name=f"fae_ingested_{d}", uri=asset_uri(ROOT, "ingested", d), group="fae")
            for d in DATASETS]
LAYOUTS = Asset(name="fae_layouts", uri=asset_uri(ROOT, "layouts"), group="fae")


def _params(datasets: list[str]) -> dict[str, Param]:
    out = {}
    for name, (default, schema, description) in LAYOUT_PARAMS.items():
        if name == "dataset":
            default, schema = datasets[0], {**schema, "enum": datasets}
        out[name] = Param(default, description=description, **schema)
    return out


def layout_dag(dag_id: str, datasets: list[str], schedule: object) -> None:
    """One layout DAG over ``datasets`` (its ``dataset`` Param), scheduled on ``schedule``.

    A run lays out one dataset. With one configured dataset, ``fae_layout`` follows its
    ingest Asset. With several, ingests of two datasets that finish in the same scheduler
    loop would trigger one run for both, which can lay out only one: so each dataset gets
    ``fae_layout_<dataset>``, scheduled on its own Asset and triggered on demand for it.
    One DAG per dataset, not another one for all: ``max_active_runs`` holds per DAG, and
    two runs building the same layout at once would delete each other's staging files.
    """

    @dag(
        dag_id=dag_id,
        schedule=schedule,
        start_date=dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
        catchup=False,
        # Two runs at once would build the same partitions twice. (Layouts of different
        # datasets may publish together: each write of LATEST is atomic.)
        max_active_runs=1,
        default_args={
            "retries": 2,
            "retry_delay": dt.timedelta(minutes=1),
            "retry_exponential_backoff": 2.0,
            "max_retry_delay": dt.timedelta(minutes=30),
        },
        params=_params(datasets),
        tags=["fae"],
        doc_md=__doc__,
    )
    def fae_layout() -> None:
        @task(retries=0, multiple_outputs=False)  # a bad Param does not get better by retrying
        def validate(params=None, dag_run=None, triggering_asset_events=None) -> dict:  # type: ignore[no-untyped-def]
            from pipelines.tasks import fail_for_good, validate_layout

            events = [e.extra for evs in (triggering_asset_events or {}).values() for e in evs]
            with fail_for_good():
                return validate_layout(ROOT, dict(params), known_datasets=datasets,
                                       events=events, explicit=list(dag_run.conf or {}))

        @task
        def resolve(request: dict) -> list[str]:
            from pipelines.tasks import fail_for_good, train_partitions

            with fail_for_good():
                return train_partitions(ROOT, request)

        @task(map_index_template="{{ partition }}", multiple_outputs=False)
        def count(request: dict, partition: str) -> dict:
            from pipelines.tasks import count_partition, fail_for_good

            with fail_for_good():  # e.g. a damaged partition: ingest it again first
                return count_partition(ROOT, request, partition)

        @task
        def plan(request: dict) -> list[str]:
            from pipelines.tasks import fail_for_good, plan_layout

            with fail_for_good():  # e.g. a budget too small for one row
                return plan_layout(ROOT, request)

        @task(map_index_template="{{ partition }}", multiple_outputs=False)
        def encode(request: dict, partition: str) -> dict:
            from pipelines.tasks import encode_partition, fail_for_good

            with fail_for_good():  # e.g. the partition changed since the plan
                return encode_partition(ROOT, request, partition)

        @task(map_index_template="{{ stream }}", multiple_outputs=False)
        def shards(request: dict, stream: str) -> dict:
            from pipelines.tasks import cut_stream, fail_for_good

            with fail_for_good():
                return cut_stream(ROOT, request, stream)

        # none_failed: encode and shards are skipped when the layout already exists.
        @task(trigger_rule="none_failed", multiple_outputs=False)
        def publish(request: dict) -> dict:
            from pipelines.tasks import fail_for_good, publish_layout

            with fail_for_good():
                return publish_layout(ROOT, request)

        @task
        def report(built: dict) -> str:
            from pipelines.tasks import fail_for_good, layout_report

            with fail_for_good():
                return layout_report(built["manifest"])

        # After publish, so a failed run's staging stays for its retry; never LATEST's.
        @task(multiple_outputs=False)
        def clean(built: dict) -> dict:
            from pipelines.tasks import clean_layouts, fail_for_good

            with fail_for_good():
                return clean_layouts(ROOT, os.environ.get("FAE_KEEP_LAYOUTS") or None,
                                     os.environ.get("FAE_STALE_BUILD_AFTER") or None)

        @task(outlets=[LAYOUTS], multiple_outputs=False)
        def announce(built: dict, report_path: str, outlet_events=None) -> dict:  # type: ignore[no-untyped-def]
            from airflow.sdk.exceptions import AirflowSkipException

            from pipelines.tasks import layout_event

            extra = layout_event(built, report_path)
            if built["status"] == "unchanged":  # nothing new: fae_train must not run again
                raise AirflowSkipException(f"layout {built['layout_id']} was already published")
            outlet_events[LAYOUTS].extra = extra
            return extra

        request = validate()
        counts = count.partial(request=request).expand(partition=resolve(request))
        partitions = plan(request)
        counts >> partitions
        encoded = encode.partial(request=request).expand(partition=partitions)
        cut = shards.partial(request=request).expand(stream=list(LAYOUT_STREAMS))
        built = publish(request)
        encoded >> cut >> built
        announce(built, report(built))
        clean(built)

    fae_layout()


if len(DATASETS) == 1:
    layout_dag("fae_layout", DATASETS, AssetAny(*INGESTED))
else:
    for name, asset in zip(DATASETS, INGESTED):
        layout_dag(f"fae_layout_{name}", [name], asset)
