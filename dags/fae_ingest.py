"""fae_ingest: every day, wait for that day's raw log files and ingest them.

For each dataset in ``FAE_DATASETS`` (``name[:kind]``, comma-separated; default
``criteo``): a sensor waits, in reschedule mode (no worker slot held between pokes), for
the files ``FAE_LANDING_URL`` names for the run's day (``{ds}``, ``{ds_nodash}``,
``{dataset}``, globs allowed); then ``pipelines.ingest.run_ingest`` writes them to the
partition ``<FAE_STORAGE_ROOT>/ingested/<dataset>/<ds>`` (idempotent: an unchanged file is
skipped, a changed one replaces the partition) and the Asset
``fae_ingested_<dataset>`` gets an event whose extra names the partitions. fae_layout is
scheduled on those Assets.

Settings (environment, read when the file is parsed): ``FAE_STORAGE_ROOT``,
``FAE_LANDING_URL`` (per run: the run's Param ``landing_url`` when given, else the
Airflow Variable ``fae_landing_url`` when set), ``FAE_DATASETS``, ``FAE_START_DATE`` (default 2024-01-01),
``FAE_INGEST_CATCHUP`` (default false), ``FAE_LANDING_POKE_S`` (300),
``FAE_LANDING_TIMEOUT_S`` (86400).
"""

from __future__ import annotations

import datetime as dt
import os

from airflow.sdk import Asset, Param, PokeReturnValue, dag, task, task_group

from pipelines.tasks import (
    DEFAULT_LANDING_URL,
    ENV_DATASETS,
    ENV_LANDING_URL,
    ENV_STORAGE_ROOT,
    asset_uri,
    env_flag,
    parse_datasets,
    storage_root,
)

ROOT = storage_root(os.environ.get(ENV_STORAGE_ROOT))
DATASETS = parse_datasets(os.environ.get(ENV_DATASETS))
LANDING = os.environ.get(ENV_LANDING_URL) or DEFAULT_LANDING_URL
START = dt.datetime.fromisoformat(os.environ.get("FAE_START_DATE") or "2024-01-01").replace(
    tzinfo=dt.UTC)


def ingested_asset(dataset: str) -> Asset:
    return Asset(name=f"fae_ingested_{dataset}", uri=asset_uri(ROOT, "ingested", dataset),
                 group="fae")


@dag(
    dag_id="fae_ingest",
    schedule="@daily",
    user_defined_macros={"fae_default_landing": LANDING},
    start_date=START,
    catchup=env_flag(os.environ.get("FAE_INGEST_CATCHUP")),
    max_active_runs=int(os.environ.get("FAE_INGEST_MAX_ACTIVE_RUNS") or 4),
    default_args={
        "retries": 3,
        "retry_delay": dt.timedelta(minutes=2),
        "retry_exponential_backoff": 2.0,  # 2, 4, 8 minutes: a flaky store gets time
        "max_retry_delay": dt.timedelta(hours=1),
    },
    params={
        # No default: a form that sends every Param must not override the Variable.
        "landing_url": Param(None, type=["null", "string"], minLength=1,
                             description="Raw files of a day: {ds}, {ds_nodash}, {dataset} "
                             "(unset: the Variable fae_landing_url, else FAE_LANDING_URL)."),
        "max_reject_fraction": Param(0.01, type="number", minimum=0, maximum=1,
                                     description="Fail a file with more bad lines than this."),
    },
    tags=["fae"],
    doc_md=__doc__,
)
def fae_ingest() -> None:
    for ds_cfg in DATASETS:

        @task_group(group_id=ds_cfg.name)
        def one_dataset(name: str = ds_cfg.name, kind: str = ds_cfg.kind) -> None:
            @task.sensor(
                mode="reschedule",
                poke_interval=float(os.environ.get("FAE_LANDING_POKE_S") or 300),
                timeout=float(os.environ.get("FAE_LANDING_TIMEOUT_S") or 86400),
                exponential_backoff=False,
            )
            def wait_for_files(pattern: str, ds=None) -> PokeReturnValue:  # type: ignore[no-untyped-def]
                from pipelines.tasks import fail_for_good, find_landing

                with fail_for_good():  # a malformed pattern stays malformed
                    files = find_landing(pattern, dataset=name, ds=ds)
                return PokeReturnValue(is_done=bool(files), xcom_value=files)

            @task(outlets=[ingested_asset(name)], multiple_outputs=False)
            def ingest(sources: list[str], ds=None, params=None, outlet_events=None) -> dict:  # type: ignore[no-untyped-def]
                from pipelines.tasks import fail_for_good, ingest_day

                with fail_for_good():  # a file refused as a whole is refused again
                    record = ingest_day(sources, root=ROOT, dataset=name, kind=kind, ds=ds,
                                        max_reject_fraction=params["max_reject_fraction"])
                outlet_events[ingested_asset(name)].extra = record
                return record

            # A run's own landing_url (conf, or the Trigger form) first; then the Variable,
            # which moves the landing place without a redeploy; then FAE_LANDING_URL.
            files = wait_for_files("{{ params.landing_url or var.value.get("
                                   "'fae_landing_url', fae_default_landing) }}")
            ingest(files)

        one_dataset()


fae_ingest()
