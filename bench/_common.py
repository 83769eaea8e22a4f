"""Helpers shared by the benchmarks: timing, peak memory of a child process, data."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.csv as pacsv

from fae_data.schema import CRITEO_COLUMNS, CRITEO_SPARSE
from fae_data.synth import write_criteo

REPO = Path(__file__).resolve().parents[1]


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    start = time.perf_counter()
    value = fn()
    return time.perf_counter() - start, value


def pyarrow_parse_seconds(path: Path) -> float:
    """The yardstick: a plain pyarrow.csv.read_csv of a Criteo TSV, C* kept as strings."""

    def parse() -> int:
        table = pacsv.read_csv(
            path,
            read_options=pacsv.ReadOptions(column_names=list(CRITEO_COLUMNS)),
            parse_options=pacsv.ParseOptions(delimiter="\t"),
            convert_options=pacsv.ConvertOptions(
                column_types={c: pa.string() for c in CRITEO_SPARSE}
            ),
        )
        return table.num_rows

    seconds, _ = timed(parse)
    return seconds


def criteo_file(workdir: Path, rows: int, seed: int = 1) -> Path:
    """A synthetic Criteo day file with Kaggle cardinalities, generated once and reused."""
    folder = workdir / f"criteo_{rows}"
    path = folder / "day_0.tsv"
    if not path.exists():
        write_criteo(folder, rows=rows, days=1, seed=seed, scale=1.0)
    return path


def run_child(code: str) -> dict[str, Any]:
    """Run ``code`` in a fresh interpreter; it must print one JSON object as last line.

    The child reports its own peak RSS (ru_maxrss), so each figure is one process's.
    """
    prelude = (
        "import json, resource, time\n"
        "def _peak_mb():\n"
        "    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", prelude + code],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"benchmark child failed:\n{done.stderr}")
    return dict(json.loads(done.stdout.strip().splitlines()[-1]))
