"""A layout as separate, resumable stages, for a scheduler that fans work out over
workers (the Airflow DAG ``fae_layout``): prepare -> encode (one call per input
partition) -> cut (one call per (split, kind) stream) -> publish.

:func:`pipelines.layout.run_layout` does the same in one process; both share the
profile, the shard passes and the publish, and give byte-identical shards. Here the
stages hand over through files in the layout's staging folder, keyed by the layout id::

    layouts/<layout_id>/
        vocab/<table>.parquet       written by prepare (part of the layout)
        _build/plan.json            prepare's decisions, written last: its commit marker
        _build/spill/               pass 1: spill files and one index per partition
        _build/streams/<split>-<kind>.json   pass 2: the shards a stream was cut into
        shards/...                  written by cut (part of the layout)

Every stage is idempotent: a finished partition or stream is found by its index or
record and not done again; a crashed one leaves no index or record and its rerun
overwrites the files it left (their names are fixed). Only publish touches
``manifest.json`` and ``LATEST``, so a crash anywhere before it leaves the previous
layouts readable and LATEST where it was. Publish removes ``_build``. The staging folder
lives under the storage root, so on ``s3://`` the workers need no shared disk. A forced
rebuild of a published layout writes ``vocab-<tag>/`` and ``shards-<tag>/`` instead
(recorded in plan.json), so the published files stay readable until publish replaces
the manifest (see :mod:`pipelines.publish`).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from typing import Any

import polars as pl

from fae_data import manifest as mf
from fae_data.errors import InputError, ManifestError, StorageError
from fae_data.partition import read_marker
from fae_data.shard import (
    InputPart,
    ShardGeometry,
    StreamResult,
    check_stream,
    collect_streams,
    cut_stream,
    layout_schema,
    shard_geometry,
    spill_partition,
    streams_of,
)
from fae_data.shard_types import SHARD_DIR
from fae_data.spill import SpilledPart, SpillFolder
from fae_data.storage import Storage
from fae_data.vocab import Encoder
from pipelines.layout import (
    Inputs,
    LayoutParams,
    LayoutResult,
    PlanOutcome,
    build_manifest,
    commit_layout,
    compute_layout_id,
    existing_layout,
    layout_columns,
    point_latest,
    profile_layout,
    resolve_inputs,
    shard_params,
    split_notes,
    write_vocabs,
)
from pipelines.publish import build_dirs, missing_files

log = logging.getLogger(__name__)

BUILD_DIR = "_build"
PLAN_FILE = "plan.json"


def build_folder(lid: str) -> tuple[str, ...]:
    """The staging folder of layout ``lid`` (inside its layout folder)."""
    return (*mf.layout_folder(lid), BUILD_DIR)


@dataclass(frozen=True)
class BuildPlan:
    """What prepare decided, and all that the later stages need (``_build/plan.json``)."""

    layout_id: str
    params: LayoutParams
    inputs: Inputs
    tables: tuple[mf.TableRef, ...]  # vocabulary sizes, hot rows and accesses per table
    planned: PlanOutcome
    geometry: ShardGeometry  # buckets and rows per shard, the same for every task
    shard_dir: str = SHARD_DIR  # shards-<tag> when rebuilding a published layout

    @property
    def hot_rows(self) -> dict[str, int]:
        return dict(self.planned.plan["hot_rows"])

    @property
    def streams(self) -> list[str]:
        return streams_of(self.inputs.parts)

    def part(self, name: str) -> tuple[int, InputPart]:
        """The index and input part of partition ``name``."""
        for i, p in enumerate(self.inputs.parts):
            if p.name == name:
                return i, p
        raise InputError(f"partition {name!r} is not an input of layout {self.layout_id}; "
                         f"its partitions are {[p.name for p in self.inputs.parts]}")

    def to_dict(self) -> dict[str, Any]:
        inputs = self.inputs
        return {
            "layout_id": self.layout_id,
            "params": asdict(self.params),
            "inputs": {"kind": inputs.kind, "parts": [asdict(p) for p in inputs.parts],
                       "refs": [asdict(r) for r in inputs.refs], "split": inputs.split,
                       "rows_in": inputs.rows_in, "rows_rejected": inputs.rows_rejected},
            "tables": [asdict(t) for t in self.tables],
            "planned": asdict(self.planned),
            "geometry": asdict(self.geometry),
            "shard_dir": self.shard_dir,
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> BuildPlan:
        i = raw["inputs"]
        inputs = Inputs(
            i["kind"], layout_columns(i["kind"]),
            tuple(InputPart(**_tuples(p)) for p in i["parts"]),
            tuple(mf.PartitionRef(**r) for r in i["refs"]), i["split"],
            rows_in=i["rows_in"], rows_rejected=i["rows_rejected"],
        )
        return cls(
            raw["layout_id"], LayoutParams(**_tuples(raw["params"])), inputs,
            tuple(mf.TableRef(**t) for t in raw["tables"]), PlanOutcome(**raw["planned"]),
            ShardGeometry(**raw["geometry"]), raw.get("shard_dir", SHARD_DIR),
        )


def _tuples(fields: dict[str, Any]) -> dict[str, Any]:
    """JSON lists back into the tuples frozen dataclasses hold (nested ones too)."""
    def conv(v: Any) -> Any:
        return tuple(conv(x) for x in v) if isinstance(v, list) else v
    return {k: conv(v) for k, v in fields.items()}


# --- the stages -----------------------------------------------------------------------


def prepare(
    root: str, params: LayoutParams, *, force: bool = False, expected_id: str | None = None
) -> dict[str, Any]:
    """Stage 1: counts (cached), vocabularies and the hot-row plan; writes
    ``vocab/<table>.parquet`` and ``_build/plan.json``.

    Returns ``layout_id``, ``status`` (``unchanged``: the layout is already published,
    every file its manifest names is there, and it is not ``force``d, there is nothing to
    do; ``planned``), ``partitions`` (every input partition, to encode; empty when
    unchanged), ``streams`` (to cut) and the geometry. A published layout with missing
    files is rebuilt beside them, like :func:`pipelines.layout.run_layout` does. A rerun
    finds plan.json and returns at once (``force`` starts over).

    Raises:
        InputError: the layout id is not ``expected_id`` (the inputs changed since the
            caller computed it), checked before any work.
    """
    storage = Storage(root)
    inputs = resolve_inputs(storage, params)
    lid = compute_layout_id(inputs, params)
    if expected_id is not None and lid != expected_id:
        raise InputError(f"the input partitions changed since layout {expected_id} was "
                         f"requested (their layout is now {lid}); run again")
    folder = mf.layout_folder(lid)
    published_dirs: set[str] = set()
    if storage.exists(*folder, mf.MANIFEST) and not force:
        done = _published(storage, lid)
        missing = missing_files(storage, done)
        if not missing:
            if storage.exists(*build_folder(lid)):  # a publish that stopped before cleaning up
                storage.remove(*build_folder(lid), recursive=True)
            return {"layout_id": lid, "status": "unchanged", "partitions": [], "streams": []}
        # As run_layout does: build it again beside the published files (which stay until
        # the new manifest replaces theirs), resuming a repair that a crash interrupted.
        log.warning("layout %s: %d file(s) of the published layout are missing or damaged (%s); "
                    "rebuilding it", lid, len(missing), ", ".join(missing[:3]))
        published_dirs = {s.path.split("/")[0] for s in done.shards}
    build = None if force else _read_plan(storage, lid)
    if build is not None and build.shard_dir in published_dirs:
        build = None  # the staging files of the build that was published, not a repair's
    if build is None:
        published = storage.exists(*folder, mf.MANIFEST)
        if published:  # the forced rebuild: the published files stay until publish
            storage.remove(*build_folder(lid), recursive=True)
        else:  # an interrupted build of a layout never published
            storage.remove(*folder, recursive=True)
        shard_dir, vocab_dir = build_dirs(published)
        vocabs, planned = profile_layout(storage, inputs, params)
        tables = write_vocabs(storage, folder, vocabs, planned.plan["hot_rows"], params,
                              vocab_dir)
        geometry = shard_geometry(sum(p.rows for p in inputs.parts),
                                  layout_schema(storage, inputs.parts, inputs.columns),
                                  shard_params(params))
        build = BuildPlan(lid, params, inputs, tuple(tables), planned, geometry, shard_dir)
        storage.write_json_atomic(build.to_dict(), *build_folder(lid), PLAN_FILE)
    return {"layout_id": lid, "status": "planned",
            "partitions": [p.name for p in build.inputs.parts], "streams": build.streams,
            **asdict(build.geometry)}


def encode(root: str, lid: str, partition: str) -> dict[str, Any]:
    """Stage 2, once per input partition: pass 1 of the shuffle (encode, classify hot or
    cold, spill into ``_build/spill/``). A partition already spilled is not redone.

    Raises:
        StorageError: prepare has not run for ``lid``.
        InputError: ``partition`` is not an input of the layout, or changed since.
    """
    storage = Storage(root)
    build = _load(storage, lid)
    if build is None:
        return {"layout_id": lid, "partition": partition, "status": "unchanged"}
    index, part = build.part(partition)
    spill = _spill_folder(storage, lid)
    spilled = spill.read_index(index)
    status = "already done"
    if spilled is None:
        try:
            spilled = spill_partition(spill, storage, index, part, build.inputs.columns,
                                      _encoders(storage, build), build.hot_rows,
                                      shard_params(build.params), build.geometry.buckets)
        except StorageError:
            if why := _changed_since_planned(storage, build, index):
                raise InputError(why) from None
            raise
        status = "encoded"
    log.info("layout %s: partition %s (%d rows) %s", lid, partition, spilled.rows, status)
    return {"layout_id": lid, "partition": partition, "rows": spilled.rows, "status": status}


def cut(root: str, lid: str, stream: str) -> dict[str, Any]:
    """Stage 3, once per stream (``train/hot``, ``train/cold``, ``val/all``,
    ``test/all``): pass 2 (read each bucket of every partition, permute, cut into
    shards) and the record ``_build/streams/<split>-<kind>.json``. A stream that is
    already recorded is not redone; one the split does not produce records zero rows.

    Raises:
        StorageError: prepare has not run, or a partition has not been encoded yet.
        InputError: an unknown stream.
    """
    record = _stream_record(lid, stream)
    storage = Storage(root)
    build = _load(storage, lid)
    if build is None:
        return {"layout_id": lid, "stream": stream, "status": "unchanged"}
    status = "already done"
    if storage.exists(*record):
        result = StreamResult.from_dict(storage.read_json(*record))
    else:
        spill = _spill_folder(storage, lid)
        spilled = [_spilled(spill, i, p) for i, p in enumerate(build.inputs.parts)]
        result = cut_stream(storage, mf.layout_folder(lid), spill, spilled, stream,
                            build.geometry, shard_params(build.params),
                            shard_dir=build.shard_dir)
        storage.write_json_atomic(result.to_dict(), *record)
        status = "cut"
    log.info("layout %s: stream %s, %d rows in %d shards, %s", lid, stream, result.rows,
             len(result.shards), status)
    return {"layout_id": lid, "stream": stream, "rows": result.rows,
            "shards": len(result.shards), "status": status}


def publish(root: str, lid: str) -> LayoutResult:
    """Stage 4: gather the streams in their fixed order, write ``plan.json``, the
    manifest and ``LATEST``, then remove ``_build``. Without a build of ``lid`` (a layout
    already published) it only returns the published manifest, status ``unchanged``.

    Raises:
        StorageError: prepare has not run, or a stream has not been cut yet, or there is
            no build and files of the published layout are missing (prepare rebuilds it).
    """
    storage = Storage(root)
    build = _load(storage, lid)
    if build is None:
        manifest = existing_layout(storage, lid)
        assert manifest is not None  # _load returns None only for a published layout
        missing = missing_files(storage, manifest)
        if missing:  # never call a broken layout unchanged, nor point LATEST at it
            raise StorageError(
                f"layout {lid}: {len(missing)} file(s) of the published layout are missing or "
                f"damaged ({', '.join(missing[:3])}) and no rebuild is staged; rerun the prepare "
                "stage (the `plan` task), which rebuilds it"
            )
        point_latest(storage, lid)
        return LayoutResult(lid, "unchanged",
                            storage.display(*mf.layout_folder(lid), mf.MANIFEST), manifest,
                            split_notes(manifest))
    results = [_stream_result(storage, lid, s) for s in build.streams]
    written = collect_streams(results, layout_schema(storage, build.inputs.parts,
                                                     build.inputs.columns))
    manifest = build_manifest(lid, build.inputs, build.params, build.tables, written,
                              build.planned)
    path = commit_layout(storage, manifest, build.planned)
    storage.remove(*build_folder(lid), recursive=True)
    notes = split_notes(manifest)
    for note in notes:
        log.warning("%s", note)
    return LayoutResult(lid, "published", path, manifest, [*build.planned.notes, *notes])


# --- helpers --------------------------------------------------------------------------


def _read_plan(storage: Storage, lid: str) -> BuildPlan | None:
    if not storage.exists(*build_folder(lid), PLAN_FILE):
        return None
    build = BuildPlan.from_dict(storage.read_json(*build_folder(lid), PLAN_FILE))
    if build.layout_id != lid or compute_layout_id(build.inputs, build.params) != lid:
        raise StorageError(f"{storage.display(*build_folder(lid), PLAN_FILE)} does not "
                           f"describe layout {lid}; remove {storage.display(*build_folder(lid))} "
                           "and rerun")
    return build


def _changed_since_planned(storage: Storage, build: BuildPlan, index: int) -> str | None:
    """Why input partition ``index`` can no longer be read as planned: it was ingested
    again since (a new data file, the planned one removed), or None. A retry cannot help;
    a new run lays out the new data."""
    ref = build.inputs.refs[index]
    try:
        marker = read_marker(storage, build.params.dataset, ref.name)
    except StorageError:  # being rewritten, or damaged: not as planned either way
        marker = {}
    now = (marker or {}).get("source", {}).get("sha256")
    if now == ref.sha256 and marker and marker.get("data") == ref.path.rsplit("/", 1)[-1]:
        return None
    return (f"partition {ref.name!r} of dataset {build.params.dataset!r} was "
            f"{'ingested again' if marker else 'removed'} after layout {build.layout_id} was "
            "planned, so its planned data file is gone; this run cannot finish. Trigger the "
            "layout again: it lays out the partitions as they are now")


def _published(storage: Storage, lid: str) -> mf.Manifest:
    """The published manifest of ``lid`` (which must exist).

    Raises:
        ManifestError: the published manifest is unreadable (a forced rebuild repairs it).
    """
    try:
        manifest = existing_layout(storage, lid)
    except ManifestError as exc:
        raise ManifestError(f"{exc}; a forced rebuild (`force`) with the same parameters "
                            "rebuilds the layout") from None
    assert manifest is not None  # the caller saw its manifest.json
    return manifest


def _load(storage: Storage, lid: str) -> BuildPlan | None:
    """The build plan of ``lid``; None when there is none because the layout is
    published (nothing left to do)."""
    build = _read_plan(storage, lid)
    if build is None and not storage.exists(*mf.layout_folder(lid), mf.MANIFEST):
        raise StorageError(f"layout {lid} has no build plan "
                           f"({storage.display(*build_folder(lid), PLAN_FILE)}) and is not "
                           "published; run the prepare stage (the `plan` task) first")
    return build


def _spill_folder(storage: Storage, lid: str) -> SpillFolder:
    return SpillFolder(storage, (*build_folder(lid), "spill"))


def _spilled(spill: SpillFolder, index: int, part: InputPart) -> SpilledPart:
    done = spill.read_index(index)
    if done is None:
        raise StorageError(f"partition {part.name!r} has not been encoded yet (no "
                           f"{spill.storage.display(*spill.folder, spill.index_name(index))}); "
                           "run its encode stage first")
    return done


def _stream_record(lid: str, stream: str) -> tuple[str, ...]:
    split, kind = check_stream(stream)
    return (*build_folder(lid), "streams", f"{split}-{kind}.json")


def _stream_result(storage: Storage, lid: str, stream: str) -> StreamResult:
    record = _stream_record(lid, stream)
    if not storage.exists(*record):
        raise StorageError(f"stream {stream} has not been cut yet (no "
                           f"{storage.display(*record)}); run its cut stage first")
    return StreamResult.from_dict(storage.read_json(*record))


def _encoders(storage: Storage, build: BuildPlan) -> dict[str, Encoder]:
    """The encoders of the vocabularies prepare wrote (value, count, id per table)."""
    out = {}
    for t in build.tables:
        with storage.fs.open(storage.path(*mf.layout_folder(build.layout_id), t.vocab_path),
                             "rb") as f:
            out[t.name] = Encoder(pl.read_parquet(f))
    return out
