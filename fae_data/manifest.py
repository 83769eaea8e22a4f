"""The layout manifest (format ``fae.layout/v1``): the contract between pipeline and trainer.

``<root>/layouts/<layout_id>/manifest.json`` lists everything a trainer needs: the tables
(vocabulary size, hot prefix length k_t, dimension), the shards (split, hot/cold kind,
rows, minibatches, checksum) and the shard columns. It is written last; ``layouts/LATEST``
names the newest complete layout and is replaced atomically after it.

Paths inside a manifest (shards, vocabularies) are relative to the manifest's folder; an
absolute path or one with ``..`` is refused, so a manifest can never make a reader touch
files outside its layout. ``dataset.partitions[].path`` records provenance relative to the
storage root and is never opened by readers.

Compatibility within v1: readers ignore fields they do not know, so a writer may add an
optional field (``tables[].vocab_bytes`` and ``vocab_sha256`` were added that way:
manifests written before them lack both, and readers check what is recorded). A change
an older reader would misread (a field renamed, removed or given another meaning)
bumps the format.

This module is imported by the trainer: it depends on the standard library and fsspec
(through :mod:`fae_data.storage`) only.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import posixpath
import re
from dataclasses import asdict, dataclass, field, fields
from typing import Any, TypeVar

from fae_data.errors import ManifestError
from fae_data.storage import Storage

_T = TypeVar("_T")

FORMAT = "fae.layout/v1"
#: What LATEST may name: a layout folder (layout ids are 16 hex digits).
_LAYOUT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.=-]{0,127}$")
LAYOUTS_DIR = "layouts"
LATEST = "LATEST"
MANIFEST = "manifest.json"
SPLITS = ("train", "val", "test")
KINDS = ("hot", "cold", "all")


@dataclass(frozen=True)
class PartitionRef:
    name: str
    path: str  # relative to the storage root (provenance only)
    rows: int
    sha256: str  # of the partition's data file


@dataclass(frozen=True)
class DatasetRef:
    name: str
    kind: str  # criteo | taobao
    partitions: tuple[PartitionRef, ...]


@dataclass(frozen=True)
class TableRef:
    name: str
    vocab_size: int  # rows of the embedding table, id 0 included
    hot_rows: int  # k_t: ids [0, k_t) are hot
    dim: int
    vocab_path: str  # Parquet (value, count, id), relative to the manifest folder
    accesses: int = 0  # training lookups of the table, id 0 (null/unseen/rare) included
    vocab_bytes: int | None = None  # size of the vocabulary file (None: not recorded)
    vocab_sha256: str | None = None  # its sha256 (None: an older v1 writer)


@dataclass(frozen=True)
class ShardRef:
    path: str  # relative to the manifest folder
    split: str  # train | val | test
    kind: str  # hot | cold | all
    rows: int
    batches: int  # row groups; each exactly batch_size rows except a marked last one
    bytes: int
    sha256: str
    last_batch_rows: int  # rows of the last row group (== batch_size unless short)


@dataclass(frozen=True)
class ColumnRef:
    name: str
    type: str  # Arrow type as text, e.g. "uint32", "float", "list<item: uint32>"
    role: str  # label | dense | sparse
    table: str | None = None  # the embedding table a sparse column looks up


@dataclass(frozen=True)
class Manifest:
    layout_id: str
    created_at: str
    producer: dict[str, str]
    dataset: DatasetRef
    params: dict[str, Any]
    tables: tuple[TableRef, ...]
    stats: dict[str, Any]
    shards: tuple[ShardRef, ...]
    columns: tuple[ColumnRef, ...]
    format: str = FORMAT
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def batch_size(self) -> int:
        return int(self.params["batch_size"])

    def table(self, name: str) -> TableRef:
        for t in self.tables:
            if t.name == name:
                return t
        raise ManifestError(f"layout {self.layout_id}: no table named {name!r}")

    def shards_of(self, split: str, kind: str | None = None) -> list[ShardRef]:
        return [s for s in self.shards if s.split == split and (kind is None or s.kind == kind)]

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d.pop("extra")
        d.update(self.extra)
        return d


def type_name(arrow_type: object) -> str:
    """Arrow type as manifest text; list element names ("item", "element") are dropped
    because Parquet round trips rename them."""
    text = str(arrow_type)
    for prefix in ("list<item: ", "list<element: ", "large_list<item: ", "large_list<element: "):
        text = text.replace(prefix, prefix.split("<")[0] + "<")
    return text


def layout_id(partition_checksums: list[str], params: dict[str, Any]) -> str:
    """Content hash of the inputs and parameters: equal inputs, equal id (16 hex chars)."""
    payload = json.dumps(
        {"format": FORMAT, "inputs": sorted(partition_checksums), "params": params},
        sort_keys=True,
        separators=(",", ":"),
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:16]


def safe_relpath(path: str, where: str) -> str:
    """Refuse manifest paths that could leave the layout folder."""
    if not isinstance(path, str) or not path:
        raise ManifestError(f"{where}: path must be a non-empty string, found {path!r}")
    if path.startswith(("/", "\\")) or "://" in path or (len(path) > 1 and path[1] == ":"):
        raise ManifestError(f"{where}: absolute path {path!r} is not allowed in a manifest")
    parts = path.replace("\\", "/").split("/")
    if any(p in ("..", "") for p in parts):
        raise ManifestError(
            f"{where}: path {path!r} escapes or is malformed; paths are relative to the "
            "manifest folder and may not contain '..'"
        )
    return posixpath.normpath(path)


def from_dict(d: dict[str, Any], where: str = "manifest") -> Manifest:
    """Validate and build a :class:`Manifest` from parsed JSON."""
    if not isinstance(d, dict):
        raise ManifestError(f"{where}: expected a JSON object, found {type(d).__name__}")
    fmt = d.get("format")
    if fmt != FORMAT:
        raise ManifestError(
            f"{where}: format {fmt!r} is not supported; this reader understands {FORMAT!r}. "
            "Rebuild the layout with a matching fae-data, or upgrade the reader."
        )
    try:
        ds = d["dataset"]
        dataset = DatasetRef(
            name=str(ds["name"]),
            kind=str(ds["kind"]),
            partitions=tuple(_entry(PartitionRef, p) for p in ds["partitions"]),
        )
        tables = tuple(_entry(TableRef, t) for t in d["tables"])
        shards = tuple(_entry(ShardRef, s) for s in d["shards"])
        columns = tuple(_entry(ColumnRef, c) for c in d["columns"])
        known = {
            "format", "layout_id", "created_at", "producer", "dataset", "params", "tables",
            "stats", "shards", "columns",
        }
        m = Manifest(
            layout_id=str(d["layout_id"]),
            created_at=str(d["created_at"]),
            producer=dict(d["producer"]),
            dataset=dataset,
            params=dict(d["params"]),
            tables=tables,
            stats=dict(d["stats"]),
            shards=shards,
            columns=columns,
            extra={k: v for k, v in d.items() if k not in known},
        )
    except KeyError as exc:
        raise ManifestError(f"{where}: missing field {exc.args[0]!r}") from None
    except TypeError as exc:
        raise ManifestError(f"{where}: malformed entry ({exc})") from None
    _check(m, where)
    return m


def _entry(cls: type[_T], raw: Any) -> _T:
    """Build an entry; fields added by newer v1 writers are ignored, missing ones raise."""
    if not isinstance(raw, dict):
        raise TypeError(f"{cls.__name__} entry must be an object, found {raw!r}")
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in raw.items() if k in known})


#: The integer fields of the entries: a string or float there would fail deep in a reader.
_COUNTS = {
    TableRef: ("vocab_size", "hot_rows", "dim", "accesses"),
    ShardRef: ("rows", "batches", "bytes", "last_batch_rows"),
    PartitionRef: ("rows",),
}


def _check_counts(m: Manifest, where: str) -> None:
    entries = [*m.tables, *m.shards, *m.dataset.partitions]
    for e in entries:
        for name in _COUNTS[type(e)]:
            value = getattr(e, name)
            if type(value) is not int or value < 0:
                label = getattr(e, "name", None) or getattr(e, "path", "?")
                raise ManifestError(f"{where}: {type(e).__name__} {label}: {name} must be a "
                                    f"non-negative integer, found {value!r}")


def _check(m: Manifest, where: str) -> None:
    batch = m.params.get("batch_size")
    if not isinstance(batch, int) or batch < 1:
        raise ManifestError(f"{where}: params.batch_size must be a positive integer, found {batch!r}")
    _check_counts(m, where)
    for t in m.tables:
        safe_relpath(t.vocab_path, f"{where}: table {t.name}")
        if not 0 <= t.hot_rows <= t.vocab_size:
            raise ManifestError(
                f"{where}: table {t.name}: hot_rows ({t.hot_rows}) must be between 0 and "
                f"vocab_size ({t.vocab_size})"
            )
    names = {t.name for t in m.tables}
    _refuse_repeats([t.name for t in m.tables], f"{where}: table")
    _refuse_repeats([posixpath.normpath(s.path) for s in m.shards], f"{where}: shard")
    for c in m.columns:
        if c.role == "sparse" and c.table not in names:
            raise ManifestError(f"{where}: column {c.name} refers to unknown table {c.table!r}")
    for s in m.shards:
        safe_relpath(s.path, f"{where}: shard")
        if s.split not in SPLITS or s.kind not in KINDS:
            raise ManifestError(
                f"{where}: shard {s.path}: split/kind {s.split}/{s.kind} not in "
                f"{SPLITS} x {KINDS}"
            )
        expect = (s.batches - 1) * batch + s.last_batch_rows if s.batches else 0
        if s.rows != expect or not 0 <= s.last_batch_rows <= batch:
            raise ManifestError(
                f"{where}: shard {s.path}: {s.rows} rows do not match {s.batches} batches of "
                f"{batch} (last {s.last_batch_rows})"
            )


def _refuse_repeats(items: list[str], what: str) -> None:
    """A table or shard listed twice would be trained (and counted) twice."""
    seen: set[str] = set()
    for item in items:
        if item in seen:
            raise ManifestError(f"{what} {item} is listed more than once")
        seen.add(item)


def created_time(m: Manifest) -> dt.datetime | None:
    """``created_at`` as an aware time, or None when it is not one. Writers before
    millisecond stamps wrote seconds; compare these, not the strings."""
    try:
        stamp = dt.datetime.fromisoformat(m.created_at)
    except ValueError:
        return None
    return stamp if stamp.tzinfo else stamp.replace(tzinfo=dt.timezone.utc)


def layout_folder(layout: str) -> tuple[str, str]:
    return (LAYOUTS_DIR, layout)


def write_manifest(storage: Storage, manifest: Manifest) -> str:
    """Write ``manifest.json`` into its layout folder (the layout's commit marker)."""
    from_dict(manifest.to_dict(), "manifest being written")  # never publish an invalid one
    storage.write_json_atomic(manifest.to_dict(), *layout_folder(manifest.layout_id), MANIFEST)
    return storage.display(*layout_folder(manifest.layout_id), MANIFEST)


def set_latest(storage: Storage, layout: str) -> None:
    """Point ``layouts/LATEST`` at a layout whose manifest is already written."""
    if not storage.exists(*layout_folder(layout), MANIFEST):
        raise ManifestError(f"layout {layout} has no manifest; refusing to point LATEST at it")
    storage.write_bytes_atomic((layout + "\n").encode(), LAYOUTS_DIR, LATEST)


def latest(storage: Storage) -> str | None:
    """The layout id LATEST names, or None when nothing was published yet."""
    if not storage.exists(LAYOUTS_DIR, LATEST):
        return None
    value = storage.read_bytes(LAYOUTS_DIR, LATEST).decode("utf-8", "replace").strip()
    if not _LAYOUT_NAME.match(value):  # ids are 16 hex digits; junk is not echoed whole
        raise ManifestError(f"{storage.display(LAYOUTS_DIR, LATEST)}: malformed "
                            f"({value[:40]!r}{'...' if len(value) > 40 else ''}, expected a "
                            "layout id); `fae layout` with the layout's parameters rewrites it")
    return value


def load(target: str) -> tuple[Manifest, Storage]:
    """Load a manifest from a ``manifest.json`` path/URL, a layout folder, or a storage root.

    A root means "the layout LATEST points to". Returns the manifest and a
    :class:`Storage` rooted at the manifest's folder (shard paths resolve against it).
    """
    base = target.rstrip("/")
    if base.endswith(".json"):
        folder, name = posixpath.split(base)
        store = Storage(folder or ".")
    else:
        store = Storage(base)
        name = MANIFEST
        if not store.exists(MANIFEST):
            root = store
            lid = latest(root)
            if lid is None:
                raise ManifestError(
                    f"{target}: neither a manifest, a layout folder nor a storage root with "
                    f"{LAYOUTS_DIR}/{LATEST}; run `fae layout` first"
                )
            store = Storage(root.url.rstrip("/") + f"/{LAYOUTS_DIR}/{lid}")
    if not store.exists(name):
        raise ManifestError(f"{store.display(name)}: no such manifest")
    try:
        raw = json.loads(store.read_bytes(name))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(f"{store.display(name)}: not valid JSON ({exc})") from None
    return from_dict(raw, store.display(name)), store
