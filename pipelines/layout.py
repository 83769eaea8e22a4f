"""A layout in one process: counts -> vocab -> plan -> shards -> publish.

The parameters and inputs live in :mod:`pipelines.inputs`, the profile (counts,
vocabularies, plan) in :mod:`pipelines.profile`, the shard passes in
:mod:`fae_data.shard`; the same stages as separate, resumable tasks are
:mod:`pipelines.layout_stages`. Every stage is idempotent and keyed by content: partial
counts by the partition checksum and sampling parameters, the layout by
:func:`fae_data.manifest.layout_id`. A rerun with the same inputs finds the finished
product and returns it; a crash leaves only unreferenced files, which the rerun removes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import io
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from fae_data import __version__
from fae_data import manifest as mf
from fae_data.errors import ManifestError, StorageError
from fae_data.shard import LayoutColumns, ShardParams, ShardResult, write_shards
from fae_data.storage import Storage

# The layout's building blocks, re-exported: ``pipelines.layout`` is the one import for
# callers (CLI, DAG tasks, benchmarks, tests).
from pipelines.inputs import (  # noqa: F401
    DTYPE_BYTES,
    SHARD_COMPRESSIONS,
    Inputs,
    LayoutParams,
    Step,
    layout_columns,
    resolve_inputs,
)
from pipelines.profile import (  # noqa: F401
    COUNTS_DIR,
    PlanOutcome,
    Vocabs,
    counts_path,
    hot_fraction,
    load_counts,
    plan_sample,
    profile_layout,
    run_counts,
    run_plan,
    run_plan_only,
    run_vocab,
    table_specs,
)
from pipelines.publish import (
    VOCAB_DIR,
    build_dirs,
    check_files,
    layout_lock,
    missing_files,
    prune_layout,
)

log = logging.getLogger(__name__)


@dataclass
class LayoutResult:
    layout_id: str
    status: str  # "published" | "unchanged"
    manifest_path: str
    manifest: mf.Manifest
    notes: list[str] = field(default_factory=list)  # the plan's warnings (PlanOutcome.notes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "layout_id": self.layout_id,
            "status": self.status,
            "manifest": self.manifest_path,
            "stats": self.manifest.stats,
            "tables": [asdict(t) for t in self.manifest.tables],
            "shards": len(self.manifest.shards),
            "notes": list(self.notes),
        }


# --- shards and publish ---------------------------------------------------------------


def manifest_params(params: LayoutParams, split: dict[str, Any], kind: str = "criteo"
                    ) -> dict[str, Any]:
    """The layout's parameters as the manifest records them (and its id hashes). Taobao
    layouts also say where training negatives come from (``negative_pool``: the training
    partitions' events, see :func:`fae_data.taobao.build_samples`): layouts built before
    that rule drew them from the whole log, and get another id."""
    extra = {"negative_pool": "train"} if kind == "taobao" else {}
    return {
        "budget_bytes": params.budget_bytes,
        "embedding_dim": params.embedding_dim,
        "table_dims": dict(params.table_dims),
        "dtype": params.dtype,
        "optimizer_slots": params.optimizer_slots,
        "batch_size": params.batch_size,
        "sampling_rate": params.sampling_rate,
        "seed": params.seed,
        "min_count": params.min_count,
        "max_rows": params.max_rows,
        "shard_bytes": params.shard_bytes,
        "shard_compression": params.shard_compression,
        "history_length": params.history_length,
        "negatives": params.negatives,
        "split": split,
        **extra,
    }


def compute_layout_id(inputs: Inputs, params: LayoutParams) -> str:
    return mf.layout_id(
        [f"{r.name}:{r.sha256}:{r.rows}" for r in inputs.refs],
        {**manifest_params(params, inputs.split, inputs.kind), "dataset": params.dataset,
         "kind": inputs.kind},
    )


def existing_layout(storage: Storage, lid: str) -> mf.Manifest | None:
    if not storage.exists(*mf.layout_folder(lid), mf.MANIFEST):
        return None
    manifest, _ = mf.load(storage.url.rstrip("/") + f"/{mf.LAYOUTS_DIR}/{lid}/{mf.MANIFEST}")
    return manifest


def shard_params(params: LayoutParams) -> ShardParams:
    """The shard pass's parameters of a layout (the in-process and the staged run must
    agree on them to write the same bytes)."""
    return ShardParams(params.batch_size, params.shard_bytes, seed=params.seed,
                       compression=params.shard_compression)


def run_layout(
    root: str,
    params: LayoutParams,
    *,
    step: Step = lambda _m: None,
    progress: Callable[[str, int], None] | None = None,
    spill_dir: str | None = None,
    force: bool = False,
    fail_after_shards: bool = False,
) -> LayoutResult:
    """counts -> vocab -> plan -> shards -> publish in this process, skipping all of it
    when the layout with the same content hash is already published (unless ``force``).

    The shuffle spills into a local temporary folder (under ``spill_dir``); the same
    stages as separate, resumable tasks are :mod:`pipelines.layout_stages`.
    """
    storage = Storage(root)
    step("resolving partitions")
    inputs = resolve_inputs(storage, params)
    lid = compute_layout_id(inputs, params)
    folder = mf.layout_folder(lid)
    with layout_lock(storage, lid):
        try:
            done = existing_layout(storage, lid)
        except ManifestError as exc:  # unreadable for every reader already
            if not force:
                raise ManifestError(f"{exc}; `fae layout --force` with the same parameters "
                                    "rebuilds the layout") from None
            log.warning("%s; rebuilding the layout", exc)
            done = None
        if done is not None and not force:
            missing = missing_files(storage, done)
            if not missing:
                point_latest(storage, lid)
                return LayoutResult(lid, "unchanged", storage.display(*folder, mf.MANIFEST),
                                    done, split_notes(done))
            # Like a re-ingest of a damaged partition: build it again beside the published
            # files, which stay until the new manifest replaces theirs.
            log.warning("layout %s: %d file(s) of the published layout are missing or "
                        "damaged (%s); rebuilding it", lid, len(missing), ", ".join(missing[:3]))

        vocabs, planned = profile_layout(storage, inputs, params, step=step, progress=progress)
        hot_rows = planned.plan["hot_rows"]
        step("writing shards")
        if done is None:
            storage.remove(*folder, recursive=True)  # leftovers of an unpublished run
        shard_dir, vocab_dir = build_dirs(published=done is not None)
        try:
            written = write_shards(storage, folder, inputs.parts, inputs.columns,
                                   vocabs.encoders(), hot_rows, shard_params(params),
                                   spill_dir=spill_dir, progress=progress, shard_dir=shard_dir)
            tables = write_vocabs(storage, folder, vocabs, hot_rows, params, vocab_dir)
        except Exception:
            # A failed write (most often a full disk) frees what it wrote at once, rather
            # than at the next build of this layout; a published layout's files stay.
            _discard(storage, folder if done is None else
                     [(*folder, shard_dir), (*folder, vocab_dir)])
            raise
        if fail_after_shards:  # test hook: a crash between shards and publish
            raise StorageError("injected failure after writing shards")

        step("publishing")
        manifest = build_manifest(lid, inputs, params, tables, written, planned)
        path = commit_layout(storage, manifest, planned)
    notes = split_notes(manifest)
    for note in notes:
        log.warning("%s", note)
    return LayoutResult(lid, "published", path, manifest, [*planned.notes, *notes])


def _discard(storage: Storage, targets: tuple[str, ...] | list[tuple[str, ...]]) -> None:
    """Remove a failed build's folders, best effort: the build's own error is the one to
    report."""
    for target in targets if isinstance(targets, list) else [targets]:
        try:
            storage.remove(*target, recursive=True)
        except (OSError, StorageError) as exc:
            log.warning("could not remove %s after the failed build (%s); `fae clean` "
                        "removes it later", storage.display(*target), exc)


def split_notes(manifest: mf.Manifest) -> list[str]:
    """Warnings about evaluation splits that came out empty (a last day of one row, a
    Taobao partition whose users have no earlier event): a trainer then reports no
    val or test metrics, which should not be the first place anyone notices."""
    by = manifest.stats.get("rows_by_split_and_kind") or {}
    split = manifest.params.get("split") or {}
    notes = []
    for name in ("val", "test"):
        if not any(rows for key, rows in by.items() if key.startswith(f"{name}/")):
            given = split.get(name) or []
            why = (f"partitions {', '.join(given)} gave no {name} rows" if given else
                   f"no --{name} partitions were given")
            notes.append(f"layout {manifest.layout_id}: the {name} split is empty ({why}); "
                         f"training will report no {name} metrics. Give other partitions "
                         "with --val/--test, or more data")
    return notes


def write_vocabs(
    storage: Storage, folder: tuple[str, str], vocabs: Vocabs, hot_rows: Mapping[str, int],
    params: LayoutParams, vocab_dir: str = VOCAB_DIR,
) -> list[mf.TableRef]:
    """Write ``<vocab_dir>/<table>.parquet`` (value, count, id) into the layout folder;
    returns the manifest's table entries, with each file's size and sha256 (hashed from
    the bytes written: no second read, which matters on an object store)."""
    refs = []
    for t in vocabs.tables:
        rel = f"{vocab_dir}/{t}.parquet"
        buffer = io.BytesIO()  # a vocabulary is small: tens of MB for millions of values
        vocabs.frames[t].write_parquet(buffer)
        data = buffer.getvalue()
        storage.write_bytes_atomic(data, *folder, vocab_dir, f"{t}.parquet")
        refs.append(mf.TableRef(t, vocabs.frames[t].height + 1, int(hot_rows[t]),
                                params.dim_of(t), rel, int(vocabs.counts[t].sum()),
                                len(data), hashlib.sha256(data).hexdigest()))
    return refs


def build_manifest(
    lid: str, inputs: Inputs, params: LayoutParams, tables: Sequence[mf.TableRef],
    written: ShardResult, planned: PlanOutcome,
) -> mf.Manifest:
    """The manifest of a layout whose vocabularies and shards are written."""
    by = written.rows_by_split_and_kind
    train_hot = by.get("train/hot", 0)
    train_rows = train_hot + by.get("train/cold", 0)
    assert written.schema is not None  # write_shards and collect_streams always set it
    columns = [mf.ColumnRef(f.name, mf.type_name(f.type), _role(f.name, inputs.columns),
                            inputs.columns.sparse.get(f.name)) for f in written.schema]
    return mf.Manifest(
        layout_id=lid,
        created_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="milliseconds"),
        producer={"name": "fae-data", "version": __version__},
        dataset=mf.DatasetRef(params.dataset, inputs.kind, inputs.refs),
        params=manifest_params(params, inputs.split, inputs.kind),
        tables=tuple(tables),
        stats={
            "rows_in": inputs.rows_in,
            "rows_rejected": inputs.rows_rejected,
            "rows_by_split_and_kind": by,
            "hot_input_fraction": train_hot / train_rows if train_rows else 0.0,
            "predicted_hot_input_fraction": planned.predicted_hot_input_fraction,
            "hot_access_coverage": planned.plan["hot_access_coverage"],
            "budget_used_bytes": planned.plan["budget_used_bytes"],
            "accesses_total": sum(t.accesses for t in tables),
            "knee_budget_bytes": planned.knee_budget_bytes,
            "all_hot": planned.plan["all_hot"],
            "sampling": planned.sampling,
        },
        shards=tuple(mf.ShardRef(**asdict(s)) for s in written.shards),
        columns=tuple(columns),
    )


def point_latest(storage: Storage, lid: str) -> None:
    """Point LATEST at a layout found already published: the layout a run asked for is
    the one ``fae-train ROOT`` trains next, and a run that crashed between writing the
    manifest and LATEST is finished by its rerun. An unreadable LATEST (empty, garbage) is
    replaced too: the rerun is how it is repaired."""
    try:
        current = mf.latest(storage)
    except ManifestError as exc:
        log.warning("%s; pointing it at layout %s", exc, lid)
        current = None
    if current != lid:
        mf.set_latest(storage, lid)


def commit_layout(storage: Storage, manifest: mf.Manifest, planned: PlanOutcome) -> str:
    """Publish a layout whose files are all written: ``plan.json`` (the budget sweep),
    then ``manifest.json`` (the commit marker), then ``LATEST``; then remove the shard and
    vocabulary folders the manifest does not name (see :mod:`pipelines.publish`).
    Returns the manifest's path. A crash before the manifest leaves the layout as it was
    (unpublished, or the published one still readable) and LATEST as it was."""
    check_files(storage, manifest)
    storage.write_json_atomic(
        {"sweep": planned.sweep, "knee_budget_bytes": planned.knee_budget_bytes},
        *mf.layout_folder(manifest.layout_id), "plan.json",
    )
    path = mf.write_manifest(storage, manifest)
    mf.set_latest(storage, manifest.layout_id)
    prune_layout(storage, manifest)
    return path


def _role(name: str, cols: LayoutColumns) -> str:
    if name == cols.label:
        return "label"
    return "sparse" if name in cols.sparse else "dense"
