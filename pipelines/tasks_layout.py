"""Adapters of the layout DAG: its Params, and one function per task.

The layout DAG runs the stages of ``fae layout`` as separate tasks (validate, resolve,
count, plan, encode, shards, publish, report, announce, clean) so that the heavy ones fan
out over workers; these
functions translate the run's Params into :class:`pipelines.layout.LayoutParams` and call
:mod:`pipelines.layout` and :mod:`pipelines.layout_stages`.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fae_data.errors import InputError
from pipelines.tasks_config import _NAME_PATTERN

log = logging.getLogger(__name__)

_DATE_LEN = 10  # "YYYY-MM-DD"
_BUDGET_PATTERN = r"^\s*(\d+(\.\d*)?|\.\d+)\s*(([kKmMgGtT][iI]?)?[bB])?\s*$"
_DATE_PATTERN = r"^\d{4}-\d{2}-\d{2}$"

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
    plus ``layout_id`` and ``exists`` (that layout is already published, every file its
    manifest names there).

    Raises:
        InputError / BudgetError: an invalid Param (the message names it), end before
            start, an unknown dataset, no partitions in the range, a missing partition.
    """
    from fae_data.partition import INGESTED_DIR
    from fae_data.storage import Storage
    from pipelines.inputs import newest_uncommitted
    from pipelines.layout import compute_layout_id, existing_layout, resolve_inputs
    from pipelines.publish import missing_files

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
                 if not n.startswith(".")
                 and storage.fs.isdir(storage.path(INGESTED_DIR, request["dataset"], n))]
        # Days being ingested now (no _partition.json yet, the newest of all) are not
        # pinned: the run lays out what is committed, as `fae layout` does. Found over
        # every partition, before the range: one missing inside a range is damage.
        every, _ = newest_uncommitted(storage, request["dataset"], every)
        names = [n for n in every if _in_range(n, start, end)]
        if not names:
            raise InputError(
                f"{storage.display(INGESTED_DIR, request['dataset'])}: no ingested partitions"
                + (f" between {start or '...'} and {end or '...'} (partitions are named by "
                   f"day; found: {', '.join(every[:10]) or 'none'})" if start or end else
                   "; run fae_ingest (or `fae ingest`) first"))
        if start and end and (gaps := _missing_days(names, start, end)):
            log.warning("%d day(s) from %s to %s have no ingested partition of dataset %s "
                        "(%s%s); the layout covers the %d partition(s) found", len(gaps),
                        start, end, request["dataset"], ", ".join(gaps[:10]),
                        ", ..." if len(gaps) > 10 else "", len(names))
    request["partitions"] = names
    params = layout_params(request)
    inputs = resolve_inputs(storage, params)  # every partition committed, the split valid
    lid = compute_layout_id(inputs, params)
    request["layout_id"] = lid
    done = existing_layout(storage, lid)
    # A published layout with missing files is rebuilt by the run (prepare), so it counts
    # as not there: publish then reports it published and fae_train is told.
    request["exists"] = done is not None and not missing_files(storage, done)
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


def _missing_days(names: Sequence[str], start: dt.date, end: dt.date) -> list[str]:
    """The days from ``start`` to ``end`` without a partition among ``names`` (day
    partitions are named ``YYYY-MM-DD``, several files of a day ``YYYY-MM-DD_<file>``)."""
    have = {n[:_DATE_LEN] for n in names}
    days = (start + dt.timedelta(days=i) for i in range((end - start).days + 1))
    return [d.isoformat() for d in days if d.isoformat() not in have]


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


def clean_layouts(root: str, keep: str | None, stale_after: str | None) -> dict[str, Any]:
    """Remove abandoned builds and, with ``keep`` (``FAE_KEEP_LAYOUTS``), all but that
    many published layouts per dataset (:func:`pipelines.clean.run_clean`). Returns what
    was removed and why."""
    from pipelines.clean import DEFAULT_STALE_AFTER_S, parse_age, run_clean

    if keep is not None and not keep.strip().isdigit():
        raise InputError(f"FAE_KEEP_LAYOUTS={keep!r}: expected a whole number >= 1")
    result = run_clean(root, keep=int(keep) if keep else None,
                       stale_after_s=parse_age(stale_after) if stale_after
                       else DEFAULT_STALE_AFTER_S)
    for r in result.removed:
        log.info("removed %s (%.1f MiB): %s", r.path, r.bytes / 2**20, r.reason)
    for note in result.notes:
        log.info("%s", note)
    return result.to_dict()


def layout_event(layout: Mapping[str, Any], report: str | None = None) -> dict[str, Any]:
    """The extra of the manifest Asset event: which layout, where, and what it holds."""
    keys = ("layout_id", "status", "dataset", "manifest", "shards", "hot_input_fraction")
    return {**{k: layout[k] for k in keys if k in layout}, "report": report}
