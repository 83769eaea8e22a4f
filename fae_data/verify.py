"""Re-check a published layout against its manifest, independently of how it was built.

Checks: every shard and vocabulary file exists with the recorded size and sha256; every
shard's row groups are whole minibatches (only a marked last one may be short); shard
columns match the manifest; ids lie inside their vocabularies; the hot invariant holds
(every id in a hot shard is below k_t; every cold row has at least one id >= k_t); the
row counts add up to the manifest's statistics; and (Criteo) each split's shards hold
exactly the rows of the partitions it was built from.
"""

from __future__ import annotations

import posixpath
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fae_data.errors import StorageError
from fae_data.manifest import SPLITS, Manifest, ShardRef, type_name
from fae_data.plan_budget import DTYPE_BYTES
from fae_data.storage import Storage


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


#: Called after each shard a long check has read: (check name, shards done, shards).
ProgressFn = Callable[[str, int, int], None]


def verify_layout(
    manifest: Manifest, store: Storage, deep: bool = True, progress: ProgressFn | None = None
) -> list[Check]:
    """Run every check; ``deep`` also reads the ids of every shard (the hot invariant).

    The checksum and hot-invariant checks read every shard once each, which takes a
    while on a large layout: ``progress`` hears of each shard they finish.
    """
    tick = progress or (lambda name, done, total: None)
    checks = [_checksums(manifest, store, tick)]
    checks.append(_vocabularies(manifest, store))
    checks.append(_batches_and_columns(manifest, store))
    checks.append(_row_totals(manifest))
    checks.append(_statistics(manifest, store))
    checks.append(_partition_rows(manifest))
    if deep:
        checks.append(_hot_invariant(manifest, store, tick))
    return checks


def shard_problem(manifest: Manifest, store: Storage, shard: ShardRef) -> str | None:
    """Why a shard's file does not match the manifest (size, checksum), or None."""
    return file_problem(store, shard.path, shard.bytes, shard.sha256)


def file_problem(store: Storage, path: str, size: int | None, sha256: str) -> str | None:
    """Why the file ``path`` is not the one recorded (missing, another size or sha256),
    or None. The size is compared first: a cheap answer for most damage."""
    if not store.exists(path):
        return f"{path}: missing"
    found = int(store.fs.size(store.path(path)))
    if size is not None and found != size:
        return f"{path}: {found} bytes, manifest says {size}"
    digest = store.sha256(path)
    if digest != sha256:
        return f"{path}: sha256 {digest[:12]}..., manifest says {sha256[:12]}..."
    return None


def _checksums(m: Manifest, store: Storage, tick: ProgressFn) -> Check:
    problems = []
    for i, s in enumerate(m.shards):
        if p := shard_problem(m, store, s):
            problems.append(p)
        tick("shard checksums", i + 1, len(m.shards))
    return Check("shard checksums", not problems,
                 "; ".join(problems[:5]) or f"{len(m.shards)} shards match")


def _vocabularies(m: Manifest, store: Storage) -> Check:
    """Each vocabulary file against its recorded size and sha256 (where the manifest has
    them: older v1 writers did not record them) and its row count against vocab_size."""
    problems = []
    unrecorded = 0
    for t in m.tables:
        if not store.exists(t.vocab_path):
            problems.append(f"{t.vocab_path}: missing")
            continue
        if t.vocab_sha256 is None:
            unrecorded += 1
        elif p := file_problem(store, t.vocab_path, t.vocab_bytes, t.vocab_sha256):
            problems.append(p)
        meta = _metadata(store, t.vocab_path)
        if isinstance(meta, str):
            problems.append(meta)
        elif meta.num_rows + 1 != t.vocab_size:
            problems.append(f"{t.name}: {meta.num_rows} values + id 0 != vocab_size {t.vocab_size}")
    summary = f"{len(m.tables)} tables" + (
        f" ({unrecorded} without a recorded checksum: an older layout; sizes only)"
        if unrecorded else ", checksums match")
    return Check("vocabularies", not problems, "; ".join(problems[:5]) or summary)


def _metadata(store: Storage, path: str) -> pq.FileMetaData | str:
    """The Parquet footer of ``path``, or why it cannot be read (a corrupt or foreign file
    is a finding of the check, not a crash of the tool)."""
    try:
        return store.parquet_metadata(path)
    except StorageError as exc:
        return str(exc)


def _unread(missing: int) -> list[str]:
    """A check that could not read every shard has not passed: say how many it skipped."""
    if not missing:
        return []
    return [f"{missing} shard{'s' if missing > 1 else ''} missing, not checked (see shard checksums)"]


def _batches_and_columns(m: Manifest, store: Storage) -> Check:
    expected = [(c.name, c.type) for c in m.columns]
    problems: list[str] = []
    missing = 0
    for s in m.shards:
        if not store.exists(s.path):
            missing += 1
            continue
        meta = _metadata(store, s.path)
        if isinstance(meta, str):
            problems.append(meta)
            continue
        got = [(fld.name, type_name(fld.type)) for fld in meta.schema.to_arrow_schema()]
        sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        if got != expected:
            problems.append(f"{s.path}: columns {got[:3]}... differ from the manifest")
        if meta.num_rows != s.rows or len(sizes) != s.batches:
            problems.append(f"{s.path}: {meta.num_rows} rows in {len(sizes)} row groups, "
                            f"manifest says {s.rows} in {s.batches}")
        elif sizes and (any(n != m.batch_size for n in sizes[:-1])
                        or sizes[-1] != s.last_batch_rows):
            problems.append(f"{s.path}: row groups {sorted(set(sizes))} are not minibatches "
                            f"of {m.batch_size}")
    problems += _unread(missing)
    return Check("minibatch alignment and columns", not problems,
                 "; ".join(problems[:5]) or f"batch size {m.batch_size}")


def _row_totals(m: Manifest) -> Check:
    totals: Counter[str] = Counter()
    for s in m.shards:
        totals[f"{s.split}/{s.kind}"] += s.rows
    stated = {k: v for k, v in m.stats.get("rows_by_split_and_kind", {}).items() if v}
    ok = dict(totals) == stated
    return Check("row totals", ok, f"shards {dict(totals)} vs stats {stated}")


def _statistics(m: Manifest, store: Storage) -> Check:
    """The statistics a report and a trainer read, recomputed from what they derive from:
    an edited or corrupted value (a hot-input fraction of 0.9 on a layout without hot
    rows, a budget used beyond the budget, a NaN) fails here rather than in a chart."""
    st, problems = m.stats, []
    by = st.get("rows_by_split_and_kind") or {}
    hot, cold = int(by.get("train/hot", 0)), int(by.get("train/cold", 0))
    expected = hot / (hot + cold) if hot + cold else 0.0
    fraction = st.get("hot_input_fraction")
    if not isinstance(fraction, (int, float)) or not abs(fraction - expected) <= 1e-9:
        problems.append(f"hot_input_fraction {fraction!r}, but train/hot and train/cold "
                        f"rows give {expected:.6f}")
    for name in ("hot_access_coverage", "predicted_hot_input_fraction"):
        value = st.get(name)
        if value is not None and not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
            problems.append(f"{name} {value!r} is not a share in [0, 1]")
    accesses = sum(t.accesses for t in m.tables)
    # Layouts of the first release have no per-table accesses (read as 0): nothing to add.
    if "accesses_total" in st and st["accesses_total"] != accesses and accesses:
        problems.append(f"accesses_total {st['accesses_total']!r}, but the tables' accesses "
                        f"add up to {accesses}")
    bad_tables = [t.name for t in m.tables if t.dim < 1 or t.vocab_size < 1]
    if bad_tables:
        problems.append(f"tables {bad_tables[:3]} have a dim or vocab_size below 1")
    width = DTYPE_BYTES.get(str(m.params.get("dtype")))
    slots = m.params.get("optimizer_slots")
    used = None
    if width and isinstance(slots, int) and not bad_tables:
        used = sum(t.hot_rows * t.dim * width * (1 + slots) for t in m.tables)
        if st.get("budget_used_bytes") != used:
            problems.append(f"budget_used_bytes {st.get('budget_used_bytes')!r}, but the hot "
                            f"rows take {used} B")
        budget = m.params.get("budget_bytes")
        if isinstance(budget, int) and used > budget:
            problems.append(f"the hot rows take {used} B, more than the budget {budget} B")
    all_hot = all(t.hot_rows == t.vocab_size for t in m.tables)
    if "all_hot" in st and bool(st["all_hot"]) != all_hot:
        problems.append(f"all_hot is {st['all_hot']!r}, but "
                        f"{'every' if all_hot else 'not every'} table is wholly hot")
    folder = posixpath.basename(store.root.rstrip("/"))
    if _is_layout_id(folder) and folder != m.layout_id:
        problems.append(f"layout_id {m.layout_id}, but the manifest is in folder {folder}")
    return Check("statistics", not problems, "; ".join(problems[:5]) or
                 f"hot-input fraction {expected:.4f}, {accesses:,} accesses"
                 + ("" if used is None else f", hot rows {used:,} B"))


def _is_layout_id(name: str) -> bool:
    """A folder named like a layout id (16 hex digits): one copied elsewhere under
    another name is not a contradiction."""
    return len(name) == 16 and all(c in "0123456789abcdef" for c in name)


def _partition_rows(m: Manifest) -> Check:
    """The shards' rows per split against the rows of the partitions they were built from.

    The manifest records every input partition's rows (``dataset.partitions``, the rows
    ingest kept), the split (``params.split``: which partitions are train, val and test;
    ``last-day-halves`` gives the first ``rows // 2`` rows of the last partition to val
    and the rest to test) and what ingest read and rejected (``stats.rows_in``,
    ``stats.rows_rejected``). A Criteo row is one training input, so each split's shards
    must hold exactly its partitions' rows: a shard dropped from the manifest, or rows of
    a partition that never reached a shard, show here even when
    ``rows_by_split_and_kind`` agrees with the shards. A Taobao partition's rows are
    behaviour events, and the manifest does not record how many samples each partition
    gave, so for Taobao only the partitions' rows against ``rows_in - rows_rejected`` are
    checked.
    """
    parts = {p.name: p.rows for p in m.dataset.partitions}
    problems = []
    rows_in, rejected = m.stats.get("rows_in"), m.stats.get("rows_rejected")
    if isinstance(rows_in, int) and isinstance(rejected, int) \
            and sum(parts.values()) != rows_in - rejected:
        problems.append(f"partitions hold {sum(parts.values()):,} rows, but stats say "
                        f"{rows_in:,} read - {rejected:,} rejected = {rows_in - rejected:,}")
    found: Counter[str] = Counter()
    for s in m.shards:
        found[s.split] += s.rows
    split = m.params.get("split")
    if m.dataset.kind != "criteo":
        note = (f"{m.dataset.kind} shards hold samples, and the manifest does not record "
                "how many each partition gave: shard rows not compared")
    elif not isinstance(split, dict) or any(not isinstance(split.get(s), list) for s in SPLITS):
        problems.append(f"params.split is {split!r}: expected lists of train, val and test "
                        "partitions, so the shard rows cannot be checked")
        note = ""
    else:
        unknown = sorted({n for s in SPLITS for n in split[s]} - set(parts))
        if unknown:
            problems.append(f"params.split names partitions {unknown} that "
                            "dataset.partitions does not list")
        expected = _split_rows(parts, split)
        for s in SPLITS:
            if found[s] != expected[s]:
                problems.append(
                    f"{s} shards hold {found[s]:,} rows, but partitions "
                    f"{', '.join(split[s]) or '(none)'} hold {expected[s]:,}"
                    + (" (the last one halved into val and test)"
                       if split.get("mode") == "last-day-halves" and s != "train" else "")
                )
        note = ", ".join(f"{s} {expected[s]:,}" for s in SPLITS) + " rows as partitioned"
    return Check("rows vs partitions", not problems, "; ".join(problems[:5]) or
                 f"{len(parts)} partitions, {sum(parts.values()):,} rows; {note}")


def _split_rows(parts: dict[str, int], split: dict[str, Any]) -> dict[str, int]:
    """Rows per split that the partitions give under ``split`` (unknown names count 0)."""
    rows = {s: sum(parts.get(n, 0) for n in split[s]) for s in SPLITS}
    if split.get("mode") == "last-day-halves":  # one partition, halved in row order
        total = sum(parts.get(n, 0) for n in split["val"])
        rows["val"], rows["test"] = total // 2, total - total // 2
    return rows


def _hot_invariant(m: Manifest, store: Storage, tick: ProgressFn) -> Check:
    sparse = [(c.name, c.table) for c in m.columns if c.role == "sparse"]
    k = {t.name: t.hot_rows for t in m.tables}
    size = {t.name: t.vocab_size for t in m.tables}
    problems: list[str] = []
    missing = 0
    columns = [c for c, _ in sparse]
    for i, s in enumerate(m.shards):
        if not store.exists(s.path):
            missing += 1
        else:
            try:
                table = store.read_table(s.path, columns=columns)
            except StorageError as exc:
                problems.append(str(exc))
            else:
                problems += _shard_invariant(s, table, sparse, k, size)
        tick("hot invariant", i + 1, len(m.shards))
    problems += _unread(missing)
    return Check("hot invariant", not problems, "; ".join(problems[:5]) or "holds for every shard")


def _shard_invariant(
    s: ShardRef, table: pa.Table, sparse: list[tuple[str, str]], k: dict[str, int],
    size: dict[str, int],
) -> list[str]:
    """What breaks the hot invariant (or a vocabulary's bounds) in one shard's ids."""
    problems = []
    any_cold = np.zeros(table.num_rows, dtype=bool)
    for col, t in sparse:
        arr = table.column(col).combine_chunks()
        if pa.types.is_list(arr.type):
            flat = arr.flatten().to_numpy()
            offs = np.asarray(arr.offsets)
            cold_cum = np.concatenate(([0], np.cumsum(flat >= k[t])))
            row_cold = (cold_cum[offs[1:]] - cold_cum[offs[:-1]]) > 0
            ids = flat
        else:
            ids = arr.to_numpy()
            row_cold = ids >= k[t]
        if ids.size and int(ids.max()) >= size[t]:
            problems.append(f"{s.path}: {col} id {int(ids.max())} >= vocab_size {size[t]}")
        any_cold |= row_cold
    if s.kind == "hot" and any_cold.any():
        problems.append(f"{s.path}: {int(any_cold.sum())} rows with an id >= k_t in a hot shard")
    if s.kind == "cold" and not any_cold.all():
        problems.append(f"{s.path}: {int((~any_cold).sum())} all-hot rows in a cold shard")
    return problems
