"""fae_train: train on every newly published layout.

Scheduled on the manifest Asset ``fae_layouts`` that fae_layout announces (its extra names
the manifest), and triggerable on demand with a ``manifest`` Param. The trainer runs as
its own process, started by ``pipelines.tasks.run_training`` from the command template
``FAE_TRAIN_COMMAND`` (default ``{python} -m trainer.cli {manifest} --max-steps
{max_steps} --json``), so a crash or an out-of-memory kill of the trainer never takes the
Airflow worker with it, and the worker needs no torch when the command runs elsewhere.

Production: run the trainer in its own image on a GPU node instead, with
``DockerOperator`` (apache-airflow-providers-docker) or ``KubernetesPodOperator``
(apache-airflow-providers-cncf-kubernetes) and the same command; see docs/airflow.md.
``FAE_TRAIN_QUEUE`` routes the task to a Celery queue of GPU workers.
"""

from __future__ import annotations

import datetime as dt
import os

from airflow.sdk import Asset, Param, dag, task

from pipelines.tasks import (
    DEFAULT_TRAIN_COMMAND,
    ENV_STORAGE_ROOT,
    ENV_TRAIN_COMMAND,
    asset_uri,
    storage_root,
)

ROOT = storage_root(os.environ.get(ENV_STORAGE_ROOT))
LAYOUTS = Asset(name="fae_layouts", uri=asset_uri(ROOT, "layouts"), group="fae")
COMMAND = os.environ.get(ENV_TRAIN_COMMAND) or DEFAULT_TRAIN_COMMAND
TIMEOUT_S = float(os.environ.get("FAE_TRAIN_TIMEOUT_S") or 24 * 3600)


@dag(
    dag_id="fae_train",
    schedule=[LAYOUTS],
    start_date=dt.datetime(2024, 1, 1, tzinfo=dt.UTC),
    catchup=False,
    max_active_runs=1,  # one trainer per GPU host
    params={
        "manifest": Param(None, type=["null", "string"],
                          description="manifest.json, layout folder or root (default: the "
                                      "newest layout of the triggering event's dataset, "
                                      "else LATEST)."),
        "max_steps": Param(int(os.environ.get("FAE_TRAIN_MAX_STEPS") or 1000), type="integer",
                           minimum=1, description="Training steps."),
    },
    tags=["fae"],
    doc_md=__doc__,
)
def fae_train() -> None:
    @task(
        retries=1,
        retry_delay=dt.timedelta(minutes=5),
        execution_timeout=dt.timedelta(seconds=TIMEOUT_S + 60),
        queue=os.environ.get("FAE_TRAIN_QUEUE") or "default",
        multiple_outputs=False,
    )
    def train(params=None, triggering_asset_events=None, run_id=None, dag_run=None) -> dict:  # type: ignore[no-untyped-def]
        from pipelines.tasks import fail_for_good, run_training

        events = sorted((e for evs in (triggering_asset_events or {}).values() for e in evs),
                        key=lambda e: e.timestamp)  # the newest layout last
        with fail_for_good():  # a refused layout is refused again; a crash is retried
            return run_training(COMMAND, root=ROOT, manifest=params["manifest"],
                                events=[e.extra for e in events],
                                max_steps=params["max_steps"], timeout_s=TIMEOUT_S,
                                run_id=run_id or "manual",
                                not_after=getattr(dag_run, "start_date", None))

    train()


fae_train()
