"""Idempotent stage functions over :mod:`fae_data` and the ``fae`` CLI that chains them.

Each ``run_<stage>`` takes inputs, parameters and an output location and returns a small
result record; the CLI and the Airflow DAGs both call these and nothing deeper.
"""

from __future__ import annotations

import fae_data  # noqa: F401  (first: its allocator setting must precede Polars' import)
