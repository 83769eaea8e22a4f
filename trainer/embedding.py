"""Embedding tables stored back to back, with explicit sparse SGD and Adagrad.

An :class:`EmbeddingStore` holds several tables (or the hot prefixes of them) as one
``[rows, dim]`` float32 tensor on one device: table ``t`` occupies rows
``[offset_t, offset_t + rows_t)``, so an id ``i`` of table ``t`` is the global row
``offset_t + i``. One flat tensor means one ``unique``, one gather and one update per
minibatch for all tables, instead of one of each per table (a GPU kernel launch each).

Updates are applied by hand to the rows a minibatch touched, so the optimizer state is a
plain tensor beside the weights and moving hot rows between devices (FAE's sync) moves
the state with them, exactly:

- SGD:     ``w[u] -= lr * g``
- Adagrad: ``s[u] += g * g;  w[u] -= lr * g / (sqrt(s[u]) + eps)`` (``torch.optim.Adagrad``'s
  sparse rule, initial accumulator 0)

where ``u`` are the unique rows of the minibatch and ``g`` their summed gradients.

On a CUDA device the store is *static* (:attr:`EmbeddingStore.static`): ``torch.unique``
must copy its result's length to the host, a synchronisation per step that stops the CPU
from queueing the next kernels while the GPU works, and the hot steps are bound by that
CPU side. A static store deduplicates by sorting into a buffer as long as the minibatch's
ids (:func:`dedupe`): the unique rows first, then padding that repeats the largest row,
so shapes depend on the minibatch size only and nothing waits for the GPU. The update
is the same, bit for bit (see :meth:`EmbeddingStore.apply`). On the CPU the exact
``torch.unique`` is kept: there is no sync to avoid, and fewer rows to gather and update.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

SPARSE_OPTIMIZERS = ("sgd", "adagrad")
ADAGRAD_EPS = 1e-10


class EmbeddingStore:
    """Tables ``names`` with ``rows`` rows each, back to back on ``device``."""

    def __init__(
        self,
        names: Sequence[str],
        rows: Sequence[int],
        dim: int,
        device: torch.device,
        optimizer: str,
        eps: float = ADAGRAD_EPS,
        static: bool | None = None,
    ) -> None:
        if optimizer not in SPARSE_OPTIMIZERS:
            from trainer.errors import TrainerError

            raise TrainerError(
                f"optimizer {optimizer!r} unknown: use one of {', '.join(SPARSE_OPTIMIZERS)}"
            )
        self.names = tuple(names)
        self.rows = tuple(int(r) for r in rows)
        self.offsets = tuple(sum(self.rows[:i]) for i in range(len(self.rows)))
        self.dim = dim
        self.device = device
        self.optimizer = optimizer
        self.eps = eps
        self.static = device.type == "cuda" if static is None else static
        total = sum(self.rows)
        self.weight = torch.zeros(total, dim, device=device)
        self.state = torch.zeros(total, dim, device=device) if optimizer == "adagrad" else None

    @property
    def total_rows(self) -> int:
        return sum(self.rows)

    def span(self, table: int, n: int | None = None) -> slice:
        """Global rows of the first ``n`` ids (default: all) of table number ``table``."""
        start = self.offsets[table]
        return slice(start, start + (self.rows[table] if n is None else n))

    def bases(self, tables: Sequence[int]) -> torch.Tensor:
        """The offsets of ``tables`` as an int64 tensor on this store's device."""
        return torch.tensor([self.offsets[t] for t in tables], dtype=torch.int64,
                            device=self.device)

    def unique(self, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(uniq, inverse)`` of the global rows ``flat``, ``uniq[inverse] == flat``:
        exactly unique rows, or under :attr:`static` a padded buffer (:func:`dedupe`)."""
        if self.static:
            return dedupe(flat)
        return torch.unique(flat, return_inverse=True)

    def apply(self, uniq: torch.Tensor, grad: torch.Tensor, lr: float | torch.Tensor,
              padded: bool | None = None) -> None:
        """Update the rows ``uniq`` with their gradients ``grad``.

        ``lr`` may be a 0-dim tensor on this store's device (a recorded CUDA graph reads
        it at replay). ``padded``: ``uniq`` comes from :func:`dedupe` (default: this
        store is :attr:`static`).

        Gather, update, scatter back: with each row once this equals an ``index_add_``
        (bit for bit: ``w - lr*g``), and on the CPU it is about 4x faster on large tables,
        where ``index_add_`` is the cold minibatches' costliest update. A static store's
        padding repeats the largest row: it is given that row's gradient, so every copy
        computes the same new values and the scatter writes one result, bit for bit the
        dynamic store's.
        """
        if uniq.numel() == 0:
            return
        if self.static if padded is None else padded:
            grad = grad.index_select(0, _first_copies(uniq))
        if self.state is None:
            step = grad
        else:
            s = self.state.index_select(0, uniq).addcmul_(grad, grad)
            self.state.index_copy_(0, uniq, s)
            step = grad / s.sqrt_().add_(self.eps)
        # w - (lr*g): the product rounded first, the same bits for a float lr and a tensor
        # one (sub_'s alpha may fuse the two, and Adagrad's first steps amplify that).
        self.weight.index_copy_(0, uniq, self.weight.index_select(0, uniq).sub_(step * lr))


def _first_copies(uniq: torch.Tensor) -> torch.Tensor:
    """For every slot of a :func:`dedupe` buffer, the slot holding the first copy of its
    value: itself, except padding, which maps to the largest value's first slot. Found
    without a host sync (the buffer is sorted; padding repeats its last value)."""
    first_of_last = (uniq < uniq[-1]).sum()
    return torch.minimum(torch.arange(uniq.numel(), device=uniq.device), first_of_last)


def dedupe(flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.unique(flat, return_inverse=True)`` without learning how many are unique.

    Returns ``uniq`` as long as ``flat``: the sorted unique values, then the largest
    value repeated (padding), and ``inverse`` with ``uniq[inverse] == flat`` pointing at
    the first copies only, so padding slots get a zero gradient. Every shape depends on
    ``len(flat)`` alone: no host synchronisation, no dynamic allocation.
    """
    if flat.numel() == 0:
        return flat, flat
    ordered, perm = torch.sort(flat)
    starts = torch.ones_like(ordered, dtype=torch.bool)
    torch.ne(ordered[1:], ordered[:-1], out=starts[1:])
    slot = torch.cumsum(starts, 0) - 1  # position in uniq of each sorted value
    inverse = torch.empty_like(slot).scatter_(0, perm, slot)
    # Slots past the last unique value keep the largest value: a valid row of the table.
    uniq = ordered[-1:].expand_as(ordered).clone().scatter_(0, slot, ordered)
    return uniq, inverse


def coalesce(uniq: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge repeated rows (from several ranks) by summing their gradients."""
    rows, inverse = torch.unique(uniq, return_inverse=True)
    summed = torch.zeros(rows.numel(), grad.shape[1], dtype=grad.dtype, device=grad.device)
    return rows, summed.index_add_(0, inverse, grad)
