"""Helpers of the trainer tests: small model sizes, the session's layouts, and a
hand-written Taobao-like layout with list columns whose hot rows are known by
construction (tests on the pipeline's own Taobao layout of the real sample are in
``test_trainer_placement``). A module with its own name, so tests import it unambiguously
(there is more than one ``conftest`` in the tree)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from fae_data import manifest as mf
from fae_data.storage import Storage

#: A small model on the CPU (tests pin the device: "auto" would pick a GPU where there is one).
CPU_TINY = {"bottom_mlp": (32, 16), "top_mlp": (32, 1), "device": "cpu"}


@dataclass(frozen=True)
class Layouts:
    root: Path
    criteo: str  # manifest paths
    criteo_other_budget: str
    criteo_other_vocab: str
    lists: str


# --- a hand-written layout with list columns ------------------------------------------------

LIST_VOCAB = {"user": 40, "item": 300, "cat": 12}
LIST_HOT = {"user": 10, "item": 60, "cat": 6}
LIST_BATCH = 64


def _zipf_ids(rng: np.random.Generator, n: int, vocab: int) -> np.ndarray:
    return np.minimum((rng.pareto(1.2, n) * 3).astype(np.int64), vocab - 1).astype(np.uint32)


def _list_rows(rng: np.random.Generator, n: int) -> pa.Table:
    lengths = rng.integers(0, 6, n)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    items = _zipf_ids(rng, int(lengths.sum()), LIST_VOCAB["item"])
    cats = _zipf_ids(rng, int(lengths.sum()), LIST_VOCAB["cat"])
    user = _zipf_ids(rng, n, LIST_VOCAB["user"])
    item = _zipf_ids(rng, n, LIST_VOCAB["item"])
    dense = rng.normal(size=n).astype(np.float32)
    logit = dense + (item % 3 == 0) - 0.5
    label = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(np.int8)
    return pa.table({
        "label": label, "d1": dense, "user": user, "item": item,
        "hist_items": pa.ListArray.from_arrays(offsets, items),
        "hist_cats": pa.ListArray.from_arrays(offsets, cats),
    })


def _row_is_hot(t: pa.Table) -> np.ndarray:
    hot = (t["user"].to_numpy() < LIST_HOT["user"]) & (t["item"].to_numpy() < LIST_HOT["item"])
    for col, table in (("hist_items", "item"), ("hist_cats", "cat")):
        arr = t[col].combine_chunks()
        flat_cold = (arr.flatten().to_numpy() >= LIST_HOT[table]).astype(np.int64)
        cum = np.concatenate([[0], np.cumsum(flat_cold)])
        offs = np.asarray(arr.offsets)
        hot &= (cum[offs[1:]] - cum[offs[:-1]]) == 0
    return hot


def write_list_layout(root: Path, seed: int = 0) -> str:
    rng = np.random.default_rng(seed)
    lid = "lists0000000000a"
    folder = root / mf.LAYOUTS_DIR / lid
    (folder / "shards").mkdir(parents=True)
    (folder / "vocab").mkdir()
    train = _list_rows(rng, 1000)
    hot = _row_is_hot(train)
    parts = {("train", "hot"): train.filter(pa.array(hot)),
             ("train", "cold"): train.filter(pa.array(~hot)),
             ("val", "all"): _list_rows(rng, 300), ("test", "all"): _list_rows(rng, 300)}
    shards = []
    for (split, kind), table in parts.items():
        rel = f"shards/{split}-{kind}-00000.parquet"
        pq.write_table(table, folder / rel, row_group_size=LIST_BATCH)
        data = (folder / rel).read_bytes()
        batches = -(-table.num_rows // LIST_BATCH)
        shards.append(mf.ShardRef(rel, split, kind, table.num_rows, batches, len(data),
                                  hashlib.sha256(data).hexdigest(),
                                  table.num_rows - (batches - 1) * LIST_BATCH))
    tables = []
    for name, size in LIST_VOCAB.items():
        rel = f"vocab/{name}.parquet"
        pq.write_table(pa.table({"value": np.arange(1, size, dtype=np.uint32) * 7,
                                 "count": np.arange(size - 1, 0, -1, dtype=np.uint64),
                                 "id": np.arange(1, size, dtype=np.uint32)}), folder / rel)
        tables.append(mf.TableRef(name, size, LIST_HOT[name], 16, rel))
    schema = parts[("train", "hot")].schema
    roles = {"label": ("label", None), "d1": ("dense", None), "user": ("sparse", "user"),
             "item": ("sparse", "item"), "hist_items": ("sparse", "item"),
             "hist_cats": ("sparse", "cat")}
    columns = tuple(mf.ColumnRef(f.name, str(f.type), *roles[f.name]) for f in schema)
    by = {f"{s}/{k}": t.num_rows for (s, k), t in parts.items()}
    manifest = mf.Manifest(
        layout_id=lid, created_at="2026-01-01T00:00:00+00:00",
        producer={"name": "tests", "version": "0"},
        dataset=mf.DatasetRef("taobao-like", "taobao", ()),
        params={"batch_size": LIST_BATCH, "embedding_dim": 16},
        tables=tuple(tables), stats={"rows_by_split_and_kind": by}, shards=tuple(shards),
        columns=columns,
    )
    return mf.write_manifest(Storage(str(root)), manifest)
