"""Stage: synthetic Criteo/Taobao raw logs (see :mod:`fae_data.synth`)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from fae_data import synth
from fae_data.errors import InputError


@dataclass(frozen=True)
class SynthResult:
    kind: str
    files: tuple[str, ...]
    rows_per_file: int

    def to_dict(self) -> dict[str, object]:
        return {"kind": self.kind, "files": list(self.files), "rows_per_file": self.rows_per_file}


def run_synth(
    kind: str,
    out_dir: str | Path,
    *,
    rows: int,
    days: int = 1,
    seed: int = 0,
    zipf: float = 1.1,
    scale: float = 1.0,
    gzip: bool = False,
    progress: Callable[[int], None] | None = None,
) -> SynthResult:
    """Write ``days`` synthetic day files of ``rows`` rows each into ``out_dir``."""
    if kind == "criteo":
        files = synth.write_criteo(out_dir, rows=rows, days=days, seed=seed, zipf=zipf,
                                   scale=scale, gzip=gzip, progress=progress)
    elif kind == "taobao":
        files = synth.write_taobao(out_dir, rows=rows, days=days, seed=seed, zipf=zipf,
                                   scale=scale, gzip=gzip, progress=progress)
    else:
        raise InputError(f"unknown dataset kind {kind!r}: expected criteo or taobao")
    return SynthResult(kind, tuple(str(f) for f in files), rows)
