"""Which failures of a DAG task a retry cannot cure.

A task that fails on its input (a file that is not of the kind, a budget too small, a
damaged manifest, a trainer that refuses its layout) meets the same input on every retry:
retrying only delays the failure by the retry delays (minutes each) and buries the message
under attempts. :func:`fail_for_good` turns those errors into Airflow's
``AirflowFailException``, which fails the task at once. Storage errors keep their retries:
an object store that is unreachable or slow may answer the next time.

Airflow is imported only when such an error happens, so :mod:`pipelines.tasks` stays free
of Airflow imports.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from fae_data.errors import BudgetError, InputError, ManifestError
from pipelines.tasks_train import TrainerRefused

#: The errors that fail a task without a retry.
PERMANENT_ERRORS: tuple[type[Exception], ...] = (
    InputError, BudgetError, ManifestError, TrainerRefused)


@contextmanager
def fail_for_good() -> Iterator[None]:
    """Re-raise :data:`PERMANENT_ERRORS` as ``AirflowFailException`` (no retry), with the
    error's one-line message."""
    try:
        yield
    except PERMANENT_ERRORS as exc:
        from airflow.sdk.exceptions import AirflowFailException

        raise AirflowFailException(f"{exc} (not retried: the same input fails the same "
                                   "way)") from None
