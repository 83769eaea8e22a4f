"""Ingest benchmark: time vs a plain pyarrow parse of the same file, and peak memory.

Targets (issue "Foundation"): ingest time / pyarrow.csv.read_csv time <= 2.0 on a 1M-row
synthetic Criteo file; peak RSS ingesting 5M rows <= 1.5x that of 1M rows.

    python bench/bench_ingest.py [--rows 1000000 --big-rows 5000000 --workdir bench/out]
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import criteo_file, run_child  # noqa: E402

_INGEST_CHILD = """
from fae_data.ingest import IngestParams, ingest_source
from fae_data.storage import Storage
start = time.perf_counter()
r = ingest_source({src!r}, Storage({root!r}), "criteo", "day_0", IngestParams("criteo", compression={comp!r}))
seconds = time.perf_counter() - start
print(json.dumps({{"seconds": seconds, "rows": r.rows_ok, "peak_mb": _peak_mb()}}))
"""

_PARSE_CHILD = """
from bench._common import pyarrow_parse_seconds
from pathlib import Path
s = pyarrow_parse_seconds(Path({src!r}))
print(json.dumps({{"seconds": s, "peak_mb": _peak_mb()}}))
"""


def ingest_in_child(src: Path, root: Path, compression: str) -> dict[str, float]:
    shutil.rmtree(root, ignore_errors=True)
    return run_child(_INGEST_CHILD.format(src=str(src), root=str(root), comp=compression))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--big-rows", type=int, default=5_000_000)
    ap.add_argument("--repeats", type=int, default=3, help="best of N for the time ratio")
    ap.add_argument("--workdir", type=Path, default=Path("bench/out"))
    args = ap.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)

    small = criteo_file(args.workdir, args.rows)
    big = criteo_file(args.workdir, args.big_rows)
    results: dict[str, object] = {"rows": args.rows, "big_rows": args.big_rows}

    # Side by side, alternating, best of N: the machines here are noisy.
    for comp in ("lz4", "zstd"):  # the default, and the archival choice
        parse_s, ingest_s = [], []
        for _ in range(args.repeats):
            parse_s.append(run_child(_PARSE_CHILD.format(src=str(small)))["seconds"])
            ingest_s.append(ingest_in_child(small, args.workdir / "root", comp)["seconds"])
        results["parse_s"] = min(parse_s)
        results[f"ingest_{comp}_s"] = min(ingest_s)
        results[f"ratio_{comp}"] = min(ingest_s) / min(parse_s)

    mem_small = ingest_in_child(small, args.workdir / "root", "lz4")
    mem_big = ingest_in_child(big, args.workdir / "root", "lz4")
    results["peak_mb_small"] = mem_small["peak_mb"]
    results["peak_mb_big"] = mem_big["peak_mb"]
    results["rss_ratio"] = mem_big["peak_mb"] / mem_small["peak_mb"]
    results["big_ingest_s"] = mem_big["seconds"]

    print(json.dumps(results, indent=2))
    print(
        f"\ningest/parse time ratio (1 file of {args.rows:,} rows): "
        f"{results['ratio_lz4']:.2f} with lz4 (default), {results['ratio_zstd']:.2f} with zstd "
        f"(target <= 2.0); pyarrow parse {results['parse_s']:.2f}s, "
        f"ingest {results['ingest_lz4_s']:.2f}s"
    )
    print(
        f"peak RSS {args.big_rows:,} rows / {args.rows:,} rows: {results['rss_ratio']:.2f} "
        f"({results['peak_mb_big']:.0f} MB / {results['peak_mb_small']:.0f} MB, target <= 1.5)"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
