"""An isolated Airflow for the DAG tests: a temporary AIRFLOW_HOME with SQLite.

Airflow reads its configuration when it is first imported, so the environment is set
here, while pytest collects this folder and before any test imports ``airflow``; test
modules import Airflow inside fixtures and tests only. The metadata database is created
once per session with ``airflow db migrate``. Nothing touches ``~/airflow``.
"""

from __future__ import annotations

import atexit
import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
DAGS = REPO / "dags"
DAG_IDS = ("fae_ingest", "fae_layout", "fae_train")

_HOME = Path(tempfile.mkdtemp(prefix="fae-airflow-home-"))
_WORK = Path(tempfile.mkdtemp(prefix="fae-airflow-data-"))
atexit.register(shutil.rmtree, _HOME, True)
atexit.register(shutil.rmtree, _WORK, True)
ROOT = _WORK / "root"
LANDING = _WORK / "landing"
#: A stand-in for the trainer (torch is not installed here): checks the manifest instead.
STANDIN_TRAIN = "{python} -m pipelines.cli verify {manifest} --json"

ENV = {
    "AIRFLOW_HOME": str(_HOME),
    "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
    "AIRFLOW__CORE__DAGS_FOLDER": str(DAGS),
    "AIRFLOW__LOGGING__LOGGING_LEVEL": "WARNING",
    "FAE_STORAGE_ROOT": str(ROOT),
    "FAE_LANDING_URL": str(LANDING / "{dataset}" / "{ds}.tsv"),
    "FAE_DATASETS": "criteo",
    "FAE_TRAIN_COMMAND": STANDIN_TRAIN,
    "FAE_TRAIN_MAX_STEPS": "5",
    "FAE_LANDING_POKE_S": "5",
    "FAE_LANDING_TIMEOUT_S": "60",
}
if "airflow" in sys.modules:  # pragma: no cover - a guard, not a code path
    raise RuntimeError("airflow was imported before tests/dags/conftest.py set AIRFLOW_HOME")
os.environ.update(ENV)


@pytest.fixture(scope="session")
def fae_env() -> dict[str, str]:
    """The environment the DAG files are parsed and run with (also for subprocesses)."""
    return dict(ENV)


@pytest.fixture(scope="session")
def dags_folder() -> Path:
    return DAGS


@pytest.fixture(scope="session")
def storage_root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def landing() -> Path:
    return LANDING


@pytest.fixture(scope="session")
def airflow_db() -> Iterator[Path]:
    """A migrated SQLite metadata database in the temporary AIRFLOW_HOME."""
    proc = subprocess.run(
        [sys.executable, "-m", "airflow", "db", "migrate"], check=False,
        env={**os.environ, **ENV}, capture_output=True, text=True, timeout=300,
    )
    if proc.returncode != 0:
        pytest.fail(f"`airflow db migrate` failed ({proc.returncode}):\n{proc.stderr[-3000:]}",
                    pytrace=False)
    yield _HOME


@pytest.fixture(scope="session")
def dagbag(airflow_db: Path) -> Any:
    """The DAG files parsed once, as the dag-processor would."""
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))
