"""Reading a layout: verification up front, then minibatches streamed from Parquet.

A layout's shards hold one minibatch per Parquet row group, so a minibatch is named by
``BatchRef(shard, group)`` (the shard's index in ``manifest.shards`` and the row group's
index in the file) and read with one ``ParquetFile.read_row_group``. Shards are never
loaded whole; a background thread reads the next few minibatches while the model trains
(:class:`Prefetcher`, a bounded queue; pinned host memory when the accelerator is CUDA).

:class:`LayoutReader` refuses a layout before the first step when any shard is missing,
has another size or sha256 than the manifest says, has other columns or row groups than
the manifest says, or when the manifest's columns are not a label, numeric dense features
and integer (or list of integer) sparse ids. While reading it also checks every id against
its table (``id < vocab_size``, and ``id < hot_rows`` in hot shards), because an id out of
range would silently read another table's row in the flat stores of
:mod:`trainer.embedding`.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from typing import IO, Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import torch

from fae_data.errors import ManifestError, first_line
from fae_data.manifest import Manifest, load
from fae_data.storage import Storage
from fae_data.verify import shard_problem
from trainer.errors import TrainerError

log = logging.getLogger(__name__)

_INTS = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
_NUMERIC = (*_INTS, "float", "double", "halffloat", "bool")
_OPEN_FILES = 8  # shard files a reader thread keeps open


@dataclass(frozen=True, order=True)
class BatchRef:
    """A minibatch: row group ``group`` of ``manifest.shards[shard]``."""

    shard: int
    group: int


@dataclass
class Batch:
    """One minibatch as tensors (host memory unless moved)."""

    ref: BatchRef | None
    kind: str  # hot | cold | all
    label: torch.Tensor  # [B] float32
    dense: torch.Tensor  # [B, num_dense] float32
    ids: torch.Tensor  # [num_scalar, B] int64, one row per scalar sparse column
    lists: tuple[tuple[torch.Tensor, torch.Tensor], ...]  # per list column: values, lengths

    @property
    def rows(self) -> int:
        return int(self.label.shape[0])

    def pin_memory(self) -> Batch:
        return replace(
            self, label=self.label.pin_memory(), dense=self.dense.pin_memory(),
            ids=self.ids.pin_memory(),
            lists=tuple((v.pin_memory(), n.pin_memory()) for v, n in self.lists),
        )

    @staticmethod
    def concat(batches: list[Batch]) -> Batch:
        """Several minibatches as one (the reference for data-parallel steps)."""
        kinds = {b.kind for b in batches}
        return Batch(
            None, kinds.pop() if len(kinds) == 1 else "all",
            torch.cat([b.label for b in batches]), torch.cat([b.dense for b in batches]),
            torch.cat([b.ids for b in batches], dim=1),
            tuple((torch.cat([b.lists[i][0] for b in batches]),
                   torch.cat([b.lists[i][1] for b in batches]))
                  for i in range(len(batches[0].lists))),
        )


@dataclass(frozen=True)
class FeatureSchema:
    """Which shard column plays which part, from the manifest's ``columns``."""

    label: str
    dense: tuple[str, ...]
    scalar: tuple[tuple[str, str], ...]  # (column, table) of single-id sparse columns
    lists: tuple[tuple[str, str], ...]  # (column, table) of list-of-id sparse columns

    @property
    def columns(self) -> list[str]:
        return [self.label, *self.dense, *(c for c, _ in self.scalar), *(c for c, _ in self.lists)]

    @property
    def num_sparse(self) -> int:
        return len(self.scalar) + len(self.lists)

    @classmethod
    def from_manifest(cls, m: Manifest) -> FeatureSchema:
        labels, dense, scalar, lists = [], [], [], []
        for c in m.columns:
            where = f"layout {m.layout_id}: column {c.name} ({c.role}, {c.type})"
            if c.role == "label":
                if c.type not in _NUMERIC:
                    raise TrainerError(f"{where}: a label must be numeric 0/1")
                labels.append(c.name)
            elif c.role == "dense":
                if c.type not in _NUMERIC:
                    raise TrainerError(f"{where}: dense features must be numeric")
                dense.append(c.name)
            elif c.role == "sparse":
                inner = _list_item(c.type)
                if inner is None and c.type in _INTS:
                    scalar.append((c.name, str(c.table)))
                elif inner in _INTS:
                    lists.append((c.name, str(c.table)))
                else:
                    raise TrainerError(f"{where}: sparse ids must be integers or lists of them")
            else:
                raise TrainerError(f"{where}: unknown role; expected label, dense or sparse")
        if len(labels) != 1:
            raise TrainerError(f"layout {m.layout_id}: expected one label column, found {labels}")
        if not scalar and not lists:
            raise TrainerError(f"layout {m.layout_id}: no sparse columns to embed")
        return cls(labels[0], tuple(dense), tuple(scalar), tuple(lists))


def _type_text(type_text: str) -> str:
    """An Arrow type as text, list item names dropped (Parquet renames ``item`` to
    ``element`` on a round trip: ``list<item: uint32>`` and ``list<element: uint32>`` are
    the same column type)."""
    inner = _list_item(type_text)
    if inner is None:
        return type_text
    return f"{type_text.split('<', 1)[0]}<{_type_text(inner)}>"


def _list_item(type_text: str) -> str | None:
    for prefix in ("list<", "large_list<"):
        if type_text.startswith(prefix) and type_text.endswith(">"):
            inner = type_text[len(prefix):-1]
            name, sep, rest = inner.partition(":")
            return rest.strip() if sep and "<" not in name else inner.strip()
    return None


class LayoutReader:
    """A verified layout: its manifest, feature schema and minibatches."""

    def __init__(self, target: str, *, verify: bool = True) -> None:
        self.manifest, self.store = load(target)
        self.schema = FeatureSchema.from_manifest(self.manifest)
        m = self.manifest
        self.table_names = tuple(t.name for t in m.tables)
        index = {n: i for i, n in enumerate(self.table_names)}
        self.scalar_tables = tuple(index[t] for _, t in self.schema.scalar)
        self.list_tables = tuple(index[t] for _, t in self.schema.lists)
        dims = {t.dim for t in m.tables}
        if len(dims) != 1:
            raise TrainerError(
                f"layout {m.layout_id}: tables have dimensions {sorted(dims)}; DLRM's dot "
                "interaction needs one embedding dimension for all tables"
            )
        self.dim = dims.pop()
        vocab = np.array([t.vocab_size for t in m.tables], dtype=np.int64)
        hot = np.array([t.hot_rows for t in m.tables], dtype=np.int64)
        self._limits = {"vocab_size": vocab, "hot_rows": hot}
        if verify:
            self.verify()

    # -- verification -------------------------------------------------------------------
    def verify(self) -> None:
        """Check every shard's size, sha256, columns and row groups against the manifest.

        Raises:
            ManifestError: naming the first problems found, before any training starts.
        """
        m = self.manifest
        for t in m.tables:  # fae_data.manifest checks this too; a trainer must not trust it
            if not 0 <= t.hot_rows <= t.vocab_size:
                raise ManifestError(f"layout {m.layout_id}: table {t.name}: hot_rows "
                                    f"({t.hot_rows}) must be between 0 and vocab_size "
                                    f"({t.vocab_size})")
        if not m.shards_of("train"):
            raise TrainerError(f"layout {m.layout_id}: no training shards")
        expected = [(c.name, _type_text(c.type)) for c in m.columns]
        problems = []
        for s in m.shards:
            problem = shard_problem(m, self.store, s)
            if problem is None:
                problem = self._shard_layout_problem(s, expected)
            if problem:
                problems.append(problem)
        if problems:
            more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
            raise ManifestError(
                f"layout {m.layout_id} ({self.store.display()}): {len(problems)} of "
                f"{len(m.shards)} shards do not match the manifest: "
                f"{'; '.join(problems[:3])}{more}. Rebuild the layout or restore its files."
            )
        log.info("layout %s verified: %d shards, %d tables", m.layout_id, len(m.shards),
                 len(m.tables))

    def _shard_layout_problem(self, s: Any, expected: list[tuple[str, str]]) -> str | None:
        with self.store.fs.open(self.store.path(s.path), "rb") as f:
            pf = pq.ParquetFile(f)
            got = [(fld.name, _type_text(str(fld.type))) for fld in pf.schema_arrow]
            meta = pf.metadata
            sizes = [meta.row_group(i).num_rows for i in range(meta.num_row_groups)]
        if got != expected:
            diff = next(((e, g) for e, g in zip(expected, got) if e != g), None)
            detail = (f"column {diff[1][0]} ({diff[1][1]}) where the manifest has "
                      f"{diff[0][0]} ({diff[0][1]})" if diff
                      else f"{len(got)} columns, manifest lists {len(expected)}")
            return f"{s.path}: {detail}"
        if len(sizes) != s.batches or sum(sizes) != s.rows:
            return (f"{s.path}: {sum(sizes)} rows in {len(sizes)} row groups, manifest says "
                    f"{s.rows} in {s.batches}")
        want = [self.manifest.batch_size] * (s.batches - 1) + [s.last_batch_rows]
        if s.batches and sizes != want:
            return f"{s.path}: row groups are not minibatches of {self.manifest.batch_size}"
        return None

    # -- minibatches --------------------------------------------------------------------
    def refs(self, split: str, kind: str | None = None) -> list[BatchRef]:
        """Every minibatch of ``split`` (and ``kind``), in file order."""
        return [BatchRef(i, g) for i, s in enumerate(self.manifest.shards)
                if s.split == split and (kind is None or s.kind == kind)
                for g in range(s.batches)]

    def kind(self, ref: BatchRef) -> str:
        return self.manifest.shards[ref.shard].kind

    def rows(self, ref: BatchRef) -> int:
        s = self.manifest.shards[ref.shard]
        return s.last_batch_rows if ref.group == s.batches - 1 else self.manifest.batch_size

    def read(self, ref: BatchRef, files: ShardFiles | None = None) -> Batch:
        """Read one minibatch (synchronously) into host tensors."""
        owned = files is None
        files = files or ShardFiles(self.store)
        shard = self.manifest.shards[ref.shard]
        try:
            table = files.get(shard.path).read_row_group(ref.group, columns=self.schema.columns)
        except (pa.ArrowException, OSError) as exc:  # changed since it was verified
            first = first_line(exc)
            raise TrainerError(
                f"{self.store.display(shard.path)} row group {ref.group}: unreadable ({first}); "
                "the shard changed after the layout was verified at start: run `fae verify` "
                "on the layout, then resume from the last checkpoint") from None
        finally:
            if owned:
                files.close()
        return self._to_batch(ref, shard.kind, shard.path, table)

    def _to_batch(self, ref: BatchRef, kind: str, path: str, table: pa.Table) -> Batch:
        sch = self.schema
        n = table.num_rows
        label = _numpy(table.column(sch.label)).astype(np.float32)
        dense = np.empty((n, len(sch.dense)), dtype=np.float32)
        for j, c in enumerate(sch.dense):
            dense[:, j] = _numpy(table.column(c))
        ids = np.empty((len(sch.scalar), n), dtype=np.int64)
        for i, (c, _) in enumerate(sch.scalar):
            ids[i] = _numpy(table.column(c))
        self._check_ids(ids, self.scalar_tables, [c for c, _ in sch.scalar], kind, path, ref)
        lists = []
        for (c, _), t in zip(sch.lists, self.list_tables):
            arr = table.column(c).combine_chunks()
            lengths = pc.fill_null(pc.list_value_length(arr), 0).to_numpy().astype(np.int64)
            values = _numpy(pc.list_flatten(arr)).astype(np.int64)
            self._check_ids(values[None, :], (t,), [c], kind, path, ref)
            lists.append((torch.from_numpy(values), torch.from_numpy(lengths)))
        return Batch(ref, kind, torch.from_numpy(label), torch.from_numpy(dense),
                     torch.from_numpy(ids), tuple(lists))

    def _check_ids(self, ids: np.ndarray, tables: tuple[int, ...], names: list[str],
                   kind: str, path: str, ref: BatchRef) -> None:
        if ids.size == 0:
            return
        limit_name = "hot_rows" if kind == "hot" else "vocab_size"
        limits = self._limits[limit_name][list(tables)]
        top = ids.max(axis=1)
        bad = np.flatnonzero((top >= limits) | (ids.min(axis=1) < 0))
        if bad.size:
            i = int(bad[0])
            raise TrainerError(
                f"{path} row group {ref.group}: column {names[i]} has id {int(top[i])} outside "
                f"[0, {limit_name} {int(limits[i])}) of table {self.table_names[tables[i]]} "
                f"({kind} shard); the layout is inconsistent, run `fae verify` on it"
            )


def _numpy(col: pa.ChunkedArray | pa.Array) -> np.ndarray:
    if col.null_count:
        col = pc.fill_null(col, 0)  # the contract says no nulls; be lenient with zeros
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    return col.to_numpy(zero_copy_only=False)


class ShardFiles:
    """Open Parquet files of one reader thread (the last few used stay open)."""

    def __init__(self, store: Storage) -> None:
        self.store = store
        self._open: OrderedDict[str, tuple[IO[bytes], pq.ParquetFile]] = OrderedDict()

    def get(self, path: str) -> pq.ParquetFile:
        if path in self._open:
            self._open.move_to_end(path)
            return self._open[path][1]
        f = self.store.fs.open(self.store.path(path), "rb")
        self._open[path] = (f, pq.ParquetFile(f))
        while len(self._open) > _OPEN_FILES:
            self._open.popitem(last=False)[1][0].close()
        return self._open[path][1]

    def close(self) -> None:
        while self._open:
            self._open.popitem()[1][0].close()


class Prefetcher:
    """Reads submitted minibatches in submission order on a background thread.

    At most ``depth`` finished minibatches wait in memory; ``get`` returns them in order
    and re-raises a reading error in the caller's thread.
    """

    def __init__(self, reader: LayoutReader, depth: int = 4, pin: bool = False) -> None:
        self.reader = reader
        self.pin = pin
        self.pending = 0
        self._requests: queue.Queue[BatchRef | None] = queue.Queue()
        self._out: queue.Queue[Batch | BaseException] = queue.Queue(maxsize=max(1, depth))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="fae-prefetch", daemon=True)
        self._thread.start()

    def submit(self, ref: BatchRef) -> None:
        self.pending += 1
        self._requests.put(ref)

    def get(self) -> Batch:
        if self.pending == 0:
            raise RuntimeError("Prefetcher.get() with nothing submitted")
        item = self._out.get()
        self.pending -= 1
        if isinstance(item, BaseException):
            raise item
        return item

    def _run(self) -> None:
        files = ShardFiles(self.reader.store)
        try:
            while not self._stop.is_set():
                ref = self._requests.get()
                if ref is None:
                    return
                item: Batch | BaseException
                try:
                    item = self.reader.read(ref, files)
                    if self.pin:
                        item = item.pin_memory()
                except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                    item = exc
                while not self._stop.is_set():
                    try:
                        self._out.put(item, timeout=0.1)
                        break
                    except queue.Full:
                        continue
        finally:
            files.close()

    def close(self) -> None:
        self._stop.set()
        self._requests.put(None)
        self._thread.join(timeout=10)

    def __enter__(self) -> Prefetcher:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def stream(reader: LayoutReader, refs: Iterable[BatchRef], depth: int = 4,
           pin: bool = False) -> Iterator[Batch]:
    """Minibatches ``refs`` in order, read ``depth`` ahead on a background thread."""
    with Prefetcher(reader, depth, pin) as pre:
        it = iter(refs)
        for ref in it:
            pre.submit(ref)
            if pre.pending > depth:
                yield pre.get()
        while pre.pending:
            yield pre.get()
