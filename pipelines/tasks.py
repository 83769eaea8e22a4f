"""Thin adapters between the Airflow DAGs (``dags/``) and the pipeline stages.

Each DAG task calls exactly one function here. They take plain, JSON-friendly arguments
(strings, numbers, the run's Params as a dict) and return small JSON-friendly records,
because that is what XCom carries: paths and counts, never data. No business logic lives
here beyond translating arguments; the stages in :mod:`pipelines` do the work.

DAG files import this module while they are parsed (every few seconds, by the
dag-processor), so it must stay cheap: the standard library at the top, the stages
(Polars, Arrow, numpy) imported inside the functions. Nothing here imports Airflow.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import posixpath
import re
import shlex
import signal
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fae_data.errors import InputError

log = logging.getLogger(__name__)

# --- configuration from the environment ----------------------------------------------

ENV_STORAGE_ROOT = "FAE_STORAGE_ROOT"
ENV_LANDING_URL = "FAE_LANDING_URL"
ENV_DATASETS = "FAE_DATASETS"
ENV_TRAIN_COMMAND = "FAE_TRAIN_COMMAND"
DEFAULT_STORAGE_ROOT = "fae-root"
DEFAULT_LANDING_URL = "landing/{dataset}/{ds}.tsv"
DEFAULT_DATASETS = "criteo:criteo"
#: ``{python}`` is this interpreter, ``{manifest}`` the manifest.json to train on.
DEFAULT_TRAIN_COMMAND = "{python} -m trainer.cli {manifest} --max-steps {max_steps} --json"
KINDS = ("criteo", "taobao")
_DATE_LEN = 10  # "YYYY-MM-DD"


@dataclass(frozen=True)
class DatasetConfig:
    """One dataset the DAGs handle: its name under ``<root>/ingested/`` and its kind."""

    name: str
    kind: str


def env_flag(value: str | None, default: bool = False) -> bool:
    """``1/true/yes/on`` (any case) is True, ``0/false/no/off`` False, unset the default."""
    if value is None or not value.strip():
        return default
    text = value.strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise InputError(f"boolean setting {value!r}: use true or false")


def parse_datasets(value: str | None) -> tuple[DatasetConfig, ...]:
    """``FAE_DATASETS``: comma-separated ``name[:kind]`` (kind defaults to the name).

    ``"criteo"`` -> one Criteo dataset; ``"kaggle:criteo,tb:taobao"`` -> two datasets.

    Raises:
        InputError: a kind other than criteo/taobao, a bad or repeated name.
    """
    text = value if value and value.strip() else DEFAULT_DATASETS
    out: list[DatasetConfig] = []
    for item in text.split(","):
        name, _, kind = item.strip().partition(":")
        kind = kind or name
        if kind not in KINDS:
            raise InputError(f"{ENV_DATASETS}={text!r}: kind {kind!r} of dataset {name!r} is "
                             f"not one of {', '.join(KINDS)}")
        if not re.match(_NAME_PATTERN, name):
            raise InputError(f"{ENV_DATASETS}={text!r}: dataset name {name!r} is not allowed: "
                             "use letters, digits and _ . = - (starting with a letter or digit)")
        if any(d.name == name for d in out):
            raise InputError(f"{ENV_DATASETS}={text!r}: dataset {name!r} appears twice")
        out.append(DatasetConfig(name, kind))
    return tuple(out)


def storage_root(value: str | None) -> str:
    """``FAE_STORAGE_ROOT`` as an absolute local path or a URL (``s3://bucket/prefix``)."""
    root = value if value and value.strip() else DEFAULT_STORAGE_ROOT
    if "://" in root:
        return root.rstrip("/")
    return os.path.abspath(root)


def asset_uri(root: str, *parts: str) -> str:
    """The Asset URI of a place under the storage root: ``file:///abs/...`` for a local
    root, the root's own URL (``s3://...``) otherwise."""
    base = root if "://" in root else "file://" + urllib.parse.quote(storage_root(root))
    return posixpath.join(base.rstrip("/"), *parts)


# --- ingest ---------------------------------------------------------------------------


def landing_url(pattern: str, *, dataset: str, ds: str) -> str:
    """Fill ``{ds}`` (2024-01-31), ``{ds_nodash}`` (20240131) and ``{dataset}``."""
    try:
        return pattern.format(ds=ds, ds_nodash=ds.replace("-", ""), dataset=dataset)
    except (KeyError, IndexError, ValueError) as exc:
        raise InputError(f"landing URL pattern {pattern!r}: {exc!r}; the placeholders are "
                         "{ds}, {ds_nodash} and {dataset}") from None


def find_landing(pattern: str, *, dataset: str, ds: str) -> list[str]:
    """The raw files of one day, or ``[]`` while none has arrived (the sensor pokes again).

    The pattern may hold glob characters (``raw/{ds_nodash}/part-*.tsv.gz``); the matches
    are returned sorted. A file still being written should be uploaded under a temporary
    name and renamed, as object stores and ``mv`` do, so that a match is complete.
    """
    import fsspec

    url = landing_url(pattern, dataset=dataset, ds=ds)
    fs, path = fsspec.core.url_to_fs(url)
    if any(ch in path for ch in "*?["):
        found = sorted(fs.glob(path))
    else:
        found = [path] if fs.exists(path) else []
    files = [fs.unstrip_protocol(p) if "://" in url else p for p in found
             if not fs.isdir(p)]
    log.info("landing %s: %d file(s)", url, len(files))
    return files


def day_partitions(sources: Sequence[str], ds: str) -> list[str]:
    """Partition names of a day's files: ``ds`` for one file, ``ds_<file>`` for several,
    so that partitions sort by day."""
    from fae_data.ingest import partition_name

    if len(sources) == 1:
        return [ds]
    return [f"{ds}_{partition_name(s)}" for s in sources]


def ingest_day(
    sources: Sequence[str], *, root: str, dataset: str, kind: str, ds: str,
    max_reject_fraction: float = 0.01,
) -> dict[str, Any]:
    """Ingest one day's files into ``<root>/ingested/<dataset>/<ds>...`` (idempotent:
    an unchanged source is skipped). Returns the record the Asset event carries."""
    from fae_data.ingest import IngestParams
    from pipelines.ingest import run_ingest

    if not sources:
        raise InputError(f"no landing files for dataset {dataset!r} on {ds}")
    names = day_partitions(sources, ds)
    result = run_ingest(list(sources), root, IngestParams(kind, max_reject_fraction),
                        dataset=dataset, partitions=names)
    return {
        "dataset": dataset,
        "kind": kind,
        "ds": ds,
        "partitions": [p.partition for p in result.partitions],
        "status": {p.partition: p.status for p in result.partitions},
        "rows_ok": result.rows_ok,
        "rows_rejected": result.rows_rejected,
        "sources": list(sources),
    }


# --- layout ---------------------------------------------------------------------------

_BUDGET_PATTERN = r"^\s*(\d+(\.\d*)?|\.\d+)\s*(([kKmMgGtT][iI]?)?[bB])?\s*$"
_DATE_PATTERN = r"^\d{4}-\d{2}-\d{2}$"
_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.=-]*$"

#: The layout DAG's Params: name -> (default, JSON schema, description). The defaults
#: equal :class:`pipelines.layout.LayoutParams`' (a test keeps them so); ``dataset``'s
#: enum is filled in by the DAG from ``FAE_DATASETS``. Only what JSON Schema cannot say
#: (end before start, a partition that does not exist) is left to :func:`validate_layout`.
LAYOUT_PARAMS: dict[str, tuple[Any, dict[str, Any], str]] = {
    "dataset": ("criteo", {"type": "string", "pattern": _NAME_PATTERN},
                "Dataset under ROOT/ingested/."),
    "partitions": (None, {"type": ["null", "array"],
                          "items": {"type": "string", "pattern": _NAME_PATTERN},
                          "uniqueItems": True},
                   "Partitions to lay out (default: all, or those from start to end)."),
    "start": (None, {"type": ["null", "string"], "pattern": _DATE_PATTERN},
              "First day (YYYY-MM-DD) of the partitions to use, inclusive."),
    "end": (None, {"type": ["null", "string"], "pattern": _DATE_PATTERN},
            "Last day (YYYY-MM-DD) of the partitions to use, inclusive."),
    "budget": ("256MiB", {"type": ["string", "integer"], "pattern": _BUDGET_PATTERN,
                          "minimum": 0},
               "GPU memory for hot rows: bytes or with a unit (256MiB, 8GB, 1.5 GiB)."),
    "embedding_dim": (16, {"type": "integer", "minimum": 1}, "Embedding dimension."),
    "dtype": ("float32", {"type": "string", "enum": ["float32", "float16", "bfloat16",
                                                    "float64"]}, "Embedding dtype."),
    "optimizer_slots": (0, {"type": "integer", "minimum": 0},
                        "Optimizer state rows per embedding row (Adagrad 1, Adam 2)."),
    "batch_size": (2048, {"type": "integer", "minimum": 1}, "Rows per minibatch."),
    "sampling_rate": (1.0, {"type": "number", "exclusiveMinimum": 0, "maximum": 1},
                      "Profile a seeded sample of this share of rows (1 = exact)."),
    "seed": (0, {"type": "integer", "minimum": 0}, "Seed of sampling and shuffling."),
    "min_count": (1, {"type": "integer", "minimum": 1},
                  "Values seen fewer times map to id 0."),
    "force": (False, {"type": "boolean"}, "Rebuild even if this layout exists."),
}
#: The (split, kind) streams the layout DAG's ``shards`` task is mapped over: those of
#: :data:`fae_data.shard.STREAMS` (a test keeps them equal), spelled out here because
#: parsing a DAG file must not import numpy or Arrow.
LAYOUT_STREAMS = ("train/hot", "train/cold", "val/all", "test/all")
_STAGE_FIELDS = ("dataset", "budget", "embedding_dim", "dtype", "optimizer_slots",
                 "batch_size", "sampling_rate", "seed", "min_count")


def _check_date(name: str, value: Any) -> dt.date | None:
    if value in (None, ""):
        return None
    try:
        return dt.date.fromisoformat(str(value))
    except ValueError:
        raise InputError(f"param {name}: {value!r} is not a date; expected YYYY-MM-DD") from None


def validate_layout(
    root: str, conf: Mapping[str, Any], *, known_datasets: Sequence[str] = (),
    events: Sequence[Mapping[str, Any]] = (), explicit: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Check a layout run's Params and pin its partitions; the first task of the run.

    ``conf`` is the run's Params (defaults filled in); ``explicit`` the keys the trigger
    gave (default: all of ``conf``). ``events`` are the extras of the ingest Asset events
    that triggered the run (empty for a manual run): their dataset replaces the
    ``dataset`` Param unless the trigger gave one. The
    partitions are pinned here (all of the dataset's, or those from ``start`` to ``end``)
    so that a partition arriving mid-run does not change what the later tasks see.

    Returns the request the later tasks take: the Params with ``partitions`` filled in,
    plus ``layout_id`` and ``exists`` (that layout is already published).

    Raises:
        InputError / BudgetError: an invalid Param (the message names it), end before
            start, an unknown dataset, no partitions in the range, a missing partition.
    """
    from fae_data.ingest import INGESTED_DIR
    from fae_data.storage import Storage
    from pipelines.layout import compute_layout_id, existing_layout, resolve_inputs

    unknown = sorted(set(conf) - set(LAYOUT_PARAMS))
    if unknown:
        raise InputError(f"unknown param(s) {unknown}; known: {', '.join(LAYOUT_PARAMS)}")
    request = {k: conf.get(k, default) for k, (default, _, _) in LAYOUT_PARAMS.items()}
    event_sets = sorted({str(e["dataset"]) for e in events if e and e.get("dataset")})
    if event_sets and "dataset" not in (conf if explicit is None else explicit):
        if len(event_sets) > 1:
            raise InputError(f"triggered by ingests of several datasets {event_sets}; "
                             "trigger one layout per dataset with conf {'dataset': ...}")
        request["dataset"] = event_sets[0]
    if known_datasets and request["dataset"] not in known_datasets:
        raise InputError(f"param dataset: {request['dataset']!r} is not one of the "
                         f"configured datasets {list(known_datasets)} (FAE_DATASETS)")
    start, end = _check_date("start", request["start"]), _check_date("end", request["end"])
    if start and end and end < start:
        raise InputError(f"param end ({end}) is before start ({start}): give end >= start")
    if request["partitions"] and (start or end):
        raise InputError("give either partitions or start/end, not both")
    layout_params(request)  # every stage parameter checked before any storage access

    storage = Storage(root)
    names = list(request["partitions"] or ())
    if not names:
        every = [n for n in storage.listdir(INGESTED_DIR, request["dataset"])
                 if not n.startswith(".")]
        names = [n for n in every if _in_range(n, start, end)]
        if not names:
            raise InputError(
                f"{storage.display(INGESTED_DIR, request['dataset'])}: no ingested partitions"
                + (f" between {start or '...'} and {end or '...'} (partitions are named by "
                   f"day; found: {', '.join(every[:10]) or 'none'})" if start or end else
                   "; run fae_ingest (or `fae ingest`) first"))
    request["partitions"] = names
    params = layout_params(request)
    inputs = resolve_inputs(storage, params)  # every partition committed, the split valid
    lid = compute_layout_id(inputs, params)
    request["layout_id"] = lid
    request["exists"] = existing_layout(storage, lid) is not None
    return request


def train_partitions(root: str, request: Mapping[str, Any]) -> list[str]:
    """The partitions whose accesses are counted (the training split of the request)."""
    from fae_data.storage import Storage
    from pipelines.layout import resolve_inputs

    inputs = resolve_inputs(Storage(root), layout_params(request))
    return [p.name for p in inputs.train_parts]


def _in_range(name: str, start: dt.date | None, end: dt.date | None) -> bool:
    if start is None and end is None:
        return True
    try:
        day = dt.date.fromisoformat(name[:_DATE_LEN])
    except ValueError:
        return False  # not a day partition
    return (start is None or day >= start) and (end is None or day <= end)


def layout_params(request: Mapping[str, Any]) -> Any:
    """The :class:`pipelines.layout.LayoutParams` of a resolved request (validates)."""
    from pipelines.layout import LayoutParams

    fields = {k: request[k] for k in _STAGE_FIELDS}
    fields["budget"] = str(fields["budget"])
    return LayoutParams(partitions=tuple(request.get("partitions") or ()), **fields)


def count_partition(root: str, request: Mapping[str, Any], partition: str) -> dict[str, Any]:
    """Partial counts of one training partition (cached by content; a rerun is free)."""
    from fae_data.storage import Storage
    from pipelines.layout import resolve_inputs, run_counts

    params = layout_params(request)
    storage = Storage(root)
    inputs = resolve_inputs(storage, params)
    part = next((p for p in inputs.train_parts if p.name == partition), None)
    if part is None:
        raise InputError(f"partition {partition!r} is not a training partition of this layout")
    path = run_counts(storage, inputs, part, params.sampling_rate, params.seed)
    return {"partition": partition, "rows": part.rows, "counts": path}


def plan_layout(root: str, request: Mapping[str, Any]) -> list[str]:
    """vocab -> plan over the cached counts, the first step of building the layout
    (:func:`pipelines.layout_stages.prepare`); writes the vocabularies and the build plan
    into the layout's staging folder.

    Returns the input partitions to encode: all of them, or none when the layout is
    already published and the request does not ``force`` a rebuild (the mapped tasks are
    then skipped). A list, because Airflow maps a task over a whole return value only.

    Raises:
        InputError: the inputs changed since ``validate`` pinned them (another layout id).
    """
    from pipelines.layout_stages import prepare

    prepared = prepare(root, layout_params(request), force=bool(request.get("force")),
                       expected_id=request["layout_id"])
    log.info("layout %s: %s", prepared["layout_id"], prepared)
    return list(prepared["partitions"])


def encode_partition(root: str, request: Mapping[str, Any], partition: str) -> dict[str, Any]:
    """Encode one input partition of the request's layout into the staging folder (pass 1
    of the shuffle; a partition already encoded is not redone)."""
    from pipelines.layout_stages import encode

    return encode(root, request["layout_id"], partition)


def cut_stream(root: str, request: Mapping[str, Any], stream: str) -> dict[str, Any]:
    """Cut one stream (``train/hot``, ...) of the request's layout into shards (pass 2
    of the shuffle; a stream already cut is not redone)."""
    from pipelines.layout_stages import cut

    return cut(root, request["layout_id"], stream)


def publish_layout(root: str, request: Mapping[str, Any]) -> dict[str, Any]:
    """Write the manifest, move ``LATEST`` and remove the staging folder; for a layout
    that was already published when the run started, only describe it.

    ``status`` is ``unchanged`` when the run found the layout published (and did not
    ``force``), else ``published``, also when an earlier try of this task got as far as
    publishing: the run did build it, and ``announce`` must tell fae_train.
    """
    from pipelines.layout_stages import publish

    result = publish(root, request["layout_id"])
    found = bool(request.get("exists")) and not request.get("force")
    st = result.manifest.stats
    return {
        "layout_id": result.layout_id,
        "status": "unchanged" if found else "published",
        "dataset": request["dataset"],
        "manifest": result.manifest_path,
        "shards": len(result.manifest.shards),
        "hot_input_fraction": st["hot_input_fraction"],
        "hot_access_coverage": st["hot_access_coverage"],
        "budget_used_bytes": st["budget_used_bytes"],
    }


def layout_report(manifest: str) -> str:
    """Write the layout's HTML report next to its manifest; returns its path."""
    from fae_data.report import write_report

    return write_report(manifest)


def layout_event(layout: Mapping[str, Any], report: str | None = None) -> dict[str, Any]:
    """The extra of the manifest Asset event: which layout, where, and what it holds."""
    keys = ("layout_id", "status", "dataset", "manifest", "shards", "hot_input_fraction")
    return {**{k: layout[k] for k in keys if k in layout}, "report": report}


# --- train ----------------------------------------------------------------------------


def train_target(root: str, manifest: str | None, events: Sequence[Mapping[str, Any]]) -> str:
    """What to train on: the ``manifest`` Param, else the newest triggering manifest
    event, else the root (the trainer then follows ``layouts/LATEST``)."""
    if manifest:
        return manifest
    for extra in reversed(list(events)):
        if extra.get("manifest"):
            return str(extra["manifest"])
    return root


def run_training(
    command: str, *, root: str, manifest: str | None = None,
    events: Sequence[Mapping[str, Any]] = (), max_steps: int = 1000, timeout_s: float | None = None,
) -> dict[str, Any]:
    """Run the trainer as its own process and wait for it.

    ``command`` is a template (``FAE_TRAIN_COMMAND``) with ``{python}``, ``{manifest}``,
    ``{root}`` and ``{max_steps}``; it is split like a shell line *before* filling in, so
    paths with spaces stay one argument, and no shell is involved. The child's output is
    logged line by line; its last JSON line, if any, is the summary returned.

    Raises:
        RuntimeError: the trainer exited non-zero (the message holds its last lines) or
            ran past ``timeout_s``.
    """
    target = train_target(root, manifest, events)
    log.info("training on %s (manifest param %r, %d layout event(s))", target, manifest,
             len(events))
    values = {"python": sys.executable, "manifest": target, "root": root,
              "max_steps": str(max_steps)}
    try:
        argv = [tok.format(**values) for tok in shlex.split(command)]
    except (KeyError, IndexError, ValueError) as exc:
        raise InputError(f"train command {command!r}: {exc!r}; the placeholders are "
                         "{python}, {manifest}, {root} and {max_steps}") from None
    log.info("starting trainer: %s", shlex.join(argv))
    # A session of its own, so that killing it also ends what it started (torchrun ranks).
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    expired = threading.Event()

    def kill() -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    def expire() -> None:
        expired.set()
        kill()

    timer = threading.Timer(timeout_s, expire) if timeout_s else None
    lines: list[str] = []
    try:
        if timer is not None:
            timer.start()
        assert proc.stdout is not None  # PIPE was asked for
        for line in proc.stdout:
            line = line.rstrip("\n")
            log.info("trainer: %s", line)
            lines.append(line)
            del lines[:-200]  # the tail is enough for the error message and the summary
        code = proc.wait()
    except BaseException:  # the task is being killed: never leave the trainer running
        kill()
        proc.wait()
        raise
    finally:
        if timer is not None:
            timer.cancel()
    tail = "\n".join(lines[-20:])
    if expired.is_set():
        raise RuntimeError(f"trainer ran past {timeout_s} s and was killed: "
                           f"{shlex.join(argv)}\n{tail}")
    if code != 0:
        raise RuntimeError(f"trainer exited with code {code}: {shlex.join(argv)}\n{tail}")
    return {"target": target, "exit_code": code, "summary": _last_json(lines)}


def _last_json(lines: Sequence[str]) -> Any:
    """The trainer's ``--json`` summary: the last parseable JSON value printed (it may
    span several lines), or None."""
    text = "\n".join(lines)
    for start in [i for i, ch in enumerate(text) if ch in "{["][::-1][:2000]:
        try:
            value = json.loads(text[start:])
        except json.JSONDecodeError:
            continue
        return value
    return None
