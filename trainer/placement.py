"""Where the embedding tables live and where each minibatch runs (``--placement``).

=========  ====================================================================================
``cpu``    tables, lookups, MLPs and updates all on the CPU.
``hybrid`` MLPs on the accelerator; all tables on the CPU: ids are looked up and pooled on
           the CPU, the pooled ``[B, F, dim]`` vectors move to the accelerator per batch and
           their gradients come back for a CPU update (XDL-style CPU-GPU hybrid).
``fae``    as ``hybrid`` for cold minibatches; in addition the hot prefix ``[0, k_t)`` of
           every table lives on the accelerator (with its optimizer state) and hot
           minibatches run entirely there. At every hot->cold switch the hot rows are
           copied accelerator->CPU into the prefix of the full tables; at cold->hot the
           prefixes are copied CPU->accelerator: one contiguous copy per table (and one per
           table for the Adagrad state).
``gpu``    tables, lookups, MLPs and updates all on the accelerator.
=========  ====================================================================================

Copies are lazy and exact: the hot copy is refreshed only when a cold step has changed the
full tables since the last copy, and the full tables are refreshed from the hot copy only
when a hot step ran since (before cold steps, evaluation and checkpoints). Both stores
use the same update rule on the same rows, so the placement does not change the math.

Without a GPU the "accelerator" is a second handle on the CPU: every mode still runs and
``fae`` still keeps a separate hot store and copies at each switch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from trainer.data import Batch
from trainer.embedding import EmbeddingStore
from trainer.errors import TrainerError

log = logging.getLogger(__name__)

MODES = ("cpu", "hybrid", "fae", "gpu")
_CPU = torch.device("cpu")


@dataclass(frozen=True)
class TableSpec:
    name: str
    vocab_size: int
    hot_rows: int


@dataclass
class Lookup:
    """What a training step needs to update the rows it looked up."""

    store: EmbeddingStore
    uniq: torch.Tensor  # unique global rows of the store (see EmbeddingStore.unique)
    leaf: torch.Tensor | None  # [F, B, dim] looked-up vectors on the store's device
    scalar_index: torch.Tensor  # position in uniq of every scalar id, feature-major
    bags: tuple[tuple[torch.Tensor, torch.Tensor], ...]  # per list: positions, lengths


class Placement:
    """The embedding tables of one model under one placement mode."""

    def __init__(
        self,
        mode: str,
        tables: Sequence[TableSpec],
        scalar_tables: Sequence[int],
        list_tables: Sequence[int],
        dim: int,
        optimizer: str,
        accelerator: torch.device,
        list_pooling: str = "mean",
    ) -> None:
        if mode not in MODES:
            raise TrainerError(f"placement {mode!r} unknown: use one of {', '.join(MODES)}")
        self.mode = mode
        self.tables = tuple(tables)
        self.accelerator = accelerator
        self.compute = _CPU if mode == "cpu" else accelerator
        self.list_pooling = list_pooling
        names = [t.name for t in self.tables]
        full_device = accelerator if mode == "gpu" else _CPU
        self.full = EmbeddingStore(names, [t.vocab_size for t in self.tables], dim,
                                   full_device, optimizer)
        self.hot: EmbeddingStore | None = None
        if mode == "fae":
            self.hot = EmbeddingStore(names, [t.hot_rows for t in self.tables], dim,
                                      accelerator, optimizer)
        self._bases = {
            id(s): (s.bases(scalar_tables), [s.offsets[t] for t in list_tables])
            for s in (self.full, self.hot) if s is not None
        }
        self._owner = "full"  # which store holds the newest hot rows
        self._hot_fresh = False  # hot store equals the full tables' prefixes
        self.copies = 0  # per-direction syncs (each is one copy per table)
        self.sync_seconds = 0.0

    # -- tables ---------------------------------------------------------------------------
    def load_tables(self, weight: torch.Tensor, state: torch.Tensor | None) -> None:
        """Replace the full tables (flat, as :attr:`full` lays them out) and their state."""
        shape = tuple(self.full.weight.shape)
        for name, t in (("embedding weights", weight), ("optimizer state", state)):
            if t is None:
                continue
            if tuple(t.shape) != shape or not t.is_floating_point():
                raise TrainerError(f"{name} of shape {tuple(t.shape)} and type {t.dtype} do "
                                   f"not fit float tables of shape {shape}")
            if not torch.isfinite(t).all() or (name == "optimizer state" and (t < 0).any()):
                raise TrainerError(f"{name} hold values that are not finite (or a negative "
                                   "sum of squares)")
        if self.full.state is not None and state is None:
            raise TrainerError("the tables have no optimizer state: they were not trained "
                               "with Adagrad")
        self.full.weight.copy_(weight)
        if self.full.state is not None and state is not None:
            self.full.state.copy_(state)
        self._owner, self._hot_fresh = "full", False

    def fill_table(self, name: str, weight: torch.Tensor) -> None:
        """Set one table's weights (the others stay; optimizer state untouched)."""
        i = [t.name for t in self.tables].index(name)
        self.full.weight[self.full.span(i)].copy_(weight)
        self._owner, self._hot_fresh = "full", False

    def full_tables(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The up-to-date full tables (flat) and optimizer state, hot rows synced back."""
        self.prepare("all")
        return self.full.weight, self.full.state

    def table(self, name: str) -> torch.Tensor:
        """One table's current weights (a view of the full store)."""
        self.prepare("all")
        i = [t.name for t in self.tables].index(name)
        return self.full.weight[self.full.span(i)]

    # -- hot/cold sync --------------------------------------------------------------------
    def prepare(self, kind: str) -> None:
        """Make the store that serves ``kind`` minibatches (hot | cold | all) current."""
        if self.hot is None:
            return
        if kind == "hot":
            if self._owner != "hot":
                if not self._hot_fresh:
                    self._copy(to_hot=True)
                self._owner, self._hot_fresh = "hot", True
        elif self._owner == "hot":
            self._copy(to_hot=False)
            self._owner = "full"

    def _copy(self, to_hot: bool) -> None:
        assert self.hot is not None
        devices = {self.full.device, self.hot.device}
        _synchronize(devices)  # time the copy, not the queued kernels before it
        start = time.perf_counter()
        for i, t in enumerate(self.tables):
            if t.hot_rows == 0:
                continue
            hot, full = self.hot.span(i), self.full.span(i, t.hot_rows)
            pairs = [(self.hot.weight, self.full.weight)]
            if self.hot.state is not None and self.full.state is not None:
                pairs.append((self.hot.state, self.full.state))
            for h, f in pairs:  # one contiguous copy per table (per tensor)
                if to_hot:
                    h[hot].copy_(f[full], non_blocking=True)
                else:
                    f[full].copy_(h[hot])
        _synchronize(devices)
        self.sync_seconds += time.perf_counter() - start
        self.copies += 1
        log.debug("synced hot rows %s", "CPU->accelerator" if to_hot else "accelerator->CPU")

    # -- lookups and updates --------------------------------------------------------------
    def scalar_bases(self, store: EmbeddingStore) -> torch.Tensor:
        """The global row offsets of the scalar columns' tables in ``store``."""
        return self._bases[id(store)][0]

    def store_for(self, kind: str) -> EmbeddingStore:
        return self.hot if (self.hot is not None and kind == "hot") else self.full

    def lookup(self, batch: Batch, kind: str, train: bool = True
               ) -> tuple[torch.Tensor, Lookup]:
        """Embed a minibatch: ``[B, F, dim]`` on :attr:`compute` (scalar columns, then lists).

        Call :meth:`prepare` with the same ``kind`` first. The lookup itself is not
        recorded by autograd: the ``[F, B, dim]`` result on the table's device is the leaf,
        and :meth:`row_grads` scatters its gradient onto the rows (an ``index_add``, much
        cheaper on the CPU than the embedding backward).
        """
        store = self.store_for(kind)
        dev = store.device
        scalar_base, list_base = self._bases[id(store)]
        nb = batch.rows
        parts = []
        if batch.ids.shape[0]:
            ids = batch.ids.to(dev, non_blocking=True)
            parts.append((ids + scalar_base[:, None]).reshape(-1))
        for (values, _), base in zip(batch.lists, list_base):
            parts.append(values.to(dev, non_blocking=True) + base)
        flat = torch.cat(parts) if len(parts) > 1 else parts[0]
        # One unique over every feature: a row shared by two columns gets one gradient.
        uniq, inverse = store.unique(flat)
        rows = store.weight.index_select(0, uniq)
        n_features = batch.ids.shape[0]
        n_scalar = n_features * nb
        # Pinned when it is about to cross to a CUDA device: an asynchronous copy.
        pin = dev.type == "cpu" and self.compute.type == "cuda"
        leaf = torch.empty((n_features + len(batch.lists), nb, store.dim), device=dev,
                           pin_memory=pin)  # [F, B, dim]
        if n_scalar:
            out = leaf[:n_features].view(-1, store.dim)
            torch.index_select(rows, 0, inverse[:n_scalar], out=out)
        bags = []
        pos = n_scalar
        for j, (values, lengths) in enumerate(batch.lists):
            idx = inverse[pos:pos + values.numel()]
            pos += values.numel()
            lengths = lengths.to(dev, non_blocking=True)
            offsets = torch.cumsum(lengths, 0) - lengths
            leaf[n_features + j] = F.embedding_bag(idx, rows, offsets, mode=self.list_pooling)
            bags.append((idx, lengths))
        if train:
            leaf.requires_grad_()
        embedded = leaf.transpose(0, 1).to(self.compute, non_blocking=True)
        return embedded, Lookup(store, uniq, leaf, inverse[:n_scalar], tuple(bags))

    def row_grads(self, lookup: Lookup) -> torch.Tensor:
        """Gradients of the looked-up rows (``[len(uniq), dim]``) after ``backward``."""
        store = lookup.store
        grad = torch.zeros(lookup.uniq.numel(), store.dim, device=store.device)
        if lookup.leaf is None or lookup.leaf.grad is None:
            return grad
        g = lookup.leaf.grad
        nb = g.shape[1]
        n_scalar = lookup.scalar_index.numel() // max(nb, 1)
        if n_scalar:
            grad.index_add_(0, lookup.scalar_index, g[:n_scalar].reshape(-1, store.dim))
        for j, (idx, lengths) in enumerate(lookup.bags):
            if idx.numel() == 0:
                continue
            owner = torch.repeat_interleave(torch.arange(nb, device=g.device), lengths)
            per_item = g[n_scalar + j].index_select(0, owner)
            if self.list_pooling == "mean":
                per_item = per_item / lengths.index_select(0, owner).unsqueeze(1)
            grad.index_add_(0, idx, per_item)
        return grad

    def empty_lookup(self, kind: str) -> Lookup:
        """A lookup of no rows (a data-parallel rank without a minibatch this step)."""
        store = self.store_for(kind)
        empty = torch.zeros(0, dtype=torch.int64, device=store.device)
        return Lookup(store, empty, None, empty, ())

    def apply(self, lookup: Lookup, uniq: torch.Tensor, grad: torch.Tensor, lr: float) -> None:
        """Apply the sparse optimizer to ``uniq`` rows of the store ``lookup`` used."""
        lookup.store.apply(uniq, grad, lr)
        if lookup.store is self.full and self.hot is not None and uniq.numel():
            self._hot_fresh = False  # cold steps update hot rows too


def _synchronize(devices: set[torch.device]) -> None:
    for d in devices:
        if d.type == "cuda":
            torch.cuda.synchronize(d)
