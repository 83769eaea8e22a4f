"""fae_layout: profile ingested partitions and publish a training layout.

Runs when fae_ingest updates a dataset (the Asset ``fae_ingested_<dataset>``), and on
demand with Params (UI "Trigger", ``airflow dags trigger fae_layout --conf '{...}'`` or
``POST /api/v2/dags/fae_layout/dagRuns``). Invalid Params are refused when the run is
triggered (their JSON schema: a budget such as "abc", an unknown dataset, a wrong type);
what a schema cannot say (end before start, no partitions in the range) fails the first
task, ``validate``, before any work is done.

validate -> resolve -> count (one mapped task per training partition) -> layout (vocab,
plan, shards, publish) -> report -> announce. Every step is keyed by content, so a rerun
with the same inputs and Params finds the finished layout and does nothing; ``announce``
then skips, and the manifest Asset ``fae_layouts`` (which fae_train follows) gets no new
event.
"""

from __future__ import annotations

import datetime as dt
import os

from airflow.sdk import Asset, AssetAny, Param, dag, task

from pipelines.tasks import (
    ENV_DATASETS,
    ENV_STORAGE_ROOT,
    LAYOUT_PARAMS,
    asset_uri,
    parse_datasets,
    storage_root,
)

ROOT = storage_root(os.environ.get(ENV_STORAGE_ROOT))
DATASETS = [d.name for d in parse_datasets(os.environ.get(ENV_DATASETS))]
INGESTED = [Asset(name=f"fae_ingested_{d}", uri=asset_uri(ROOT, "ingested", d), group="fae")
            for d in DATASETS]
LAYOUTS = Asset(name="fae_layouts", uri=asset_uri(ROOT, "layouts"), group="fae")


def _params() -> dict[str, Param]:
    out = {}
    for name, (default, schema, description) in LAYOUT_PARAMS.items():
        if name == "dataset":
            default, schema = DATASETS[0], {**schema, "enum": DATASETS}
        out[name] = Param(default, description=description, **schema)
    return out


@dag(
    dag_id="fae_layout",
    schedule=AssetAny(*INGESTED),
    start_date=dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,  # two layouts of one root at once would race on LATEST
    default_args={
        "retries": 2,
        "retry_delay": dt.timedelta(minutes=1),
        "retry_exponential_backoff": 2.0,
        "max_retry_delay": dt.timedelta(minutes=30),
    },
    params=_params(),
    tags=["fae"],
    doc_md=__doc__,
)
def fae_layout() -> None:
    @task(retries=0, multiple_outputs=False)  # a bad Param does not get better by retrying
    def validate(params=None, dag_run=None, triggering_asset_events=None) -> dict:  # type: ignore[no-untyped-def]
        from pipelines.tasks import validate_layout

        events = [e.extra for evs in (triggering_asset_events or {}).values() for e in evs]
        return validate_layout(ROOT, dict(params), known_datasets=DATASETS, events=events,
                               explicit=list(dag_run.conf or {}))

    @task
    def resolve(request: dict) -> list[str]:
        from pipelines.tasks import train_partitions

        return train_partitions(ROOT, request)

    @task(map_index_template="{{ partition }}", multiple_outputs=False)
    def count(request: dict, partition: str) -> dict:
        from pipelines.tasks import count_partition

        return count_partition(ROOT, request, partition)

    @task(multiple_outputs=False)
    def layout(request: dict) -> dict:
        from pipelines.tasks import build_layout

        return build_layout(ROOT, request)

    @task
    def report(built: dict) -> str:
        from pipelines.tasks import layout_report

        return layout_report(built["manifest"])

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
    built = layout(request)
    counts >> built
    announce(built, report(built))


fae_layout()
