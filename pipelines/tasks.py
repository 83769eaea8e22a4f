"""Thin adapters between the Airflow DAGs (``dags/``) and the pipeline stages.

Each DAG task calls exactly one function here. They take plain, JSON-friendly arguments
(strings, numbers, the run's Params as a dict) and return small JSON-friendly records,
because that is what XCom carries: paths and counts, never data. No business logic lives
here beyond translating arguments; the stages in :mod:`pipelines` do the work.

DAG files import this module while they are parsed (every few seconds, by the
dag-processor), so it must stay cheap: the standard library at the top, the stages
(Polars, Arrow, numpy) imported inside the functions. Nothing here imports Airflow.

The adapters live in one module per DAG (:mod:`pipelines.tasks_ingest`,
:mod:`pipelines.tasks_layout`, :mod:`pipelines.tasks_train`), the settings the DAGs read
from the environment in :mod:`pipelines.tasks_config`, the errors that fail a task without
a retry in :mod:`pipelines.tasks_errors`; this module re-exports them, so
that DAG files import every name from one place.
"""

from __future__ import annotations

from pipelines.tasks_config import (
    DEFAULT_DATASETS,
    DEFAULT_LANDING_URL,
    DEFAULT_STORAGE_ROOT,
    DEFAULT_TRAIN_COMMAND,
    ENV_DATASETS,
    ENV_LANDING_URL,
    ENV_STORAGE_ROOT,
    ENV_TRAIN_COMMAND,
    KINDS,
    DatasetConfig,
    asset_uri,
    env_flag,
    parse_datasets,
    storage_root,
)
from pipelines.tasks_ingest import day_partitions, find_landing, ingest_day, landing_url
from pipelines.tasks_layout import (
    LAYOUT_PARAMS,
    LAYOUT_STREAMS,
    clean_layouts,
    count_partition,
    cut_stream,
    encode_partition,
    layout_event,
    layout_params,
    layout_report,
    plan_layout,
    publish_layout,
    train_partitions,
    validate_layout,
)
from pipelines.tasks_errors import PERMANENT_ERRORS, fail_for_good
from pipelines.tasks_train import TrainerRefused, newest_layout, run_training, train_target

__all__ = [
    "DEFAULT_DATASETS",
    "DEFAULT_LANDING_URL",
    "DEFAULT_STORAGE_ROOT",
    "DEFAULT_TRAIN_COMMAND",
    "DatasetConfig",
    "ENV_DATASETS",
    "ENV_LANDING_URL",
    "ENV_STORAGE_ROOT",
    "ENV_TRAIN_COMMAND",
    "KINDS",
    "LAYOUT_PARAMS",
    "LAYOUT_STREAMS",
    "PERMANENT_ERRORS",
    "TrainerRefused",
    "asset_uri",
    "clean_layouts",
    "count_partition",
    "cut_stream",
    "day_partitions",
    "encode_partition",
    "env_flag",
    "fail_for_good",
    "find_landing",
    "ingest_day",
    "landing_url",
    "layout_event",
    "layout_params",
    "layout_report",
    "newest_layout",
    "parse_datasets",
    "plan_layout",
    "publish_layout",
    "run_training",
    "storage_root",
    "train_partitions",
    "train_target",
    "validate_layout",
]
