"""DLRM: bottom MLP over dense features, embedding features, pairwise dots, top MLP.

The network (Naumov et al., 2019) as in DLRM's Criteo Kaggle setup: 13 dense features go
through a bottom MLP 512-256-64-16 whose last width equals the embedding dimension; every
sparse column contributes one embedding vector; the bottom output and the embedding
vectors are dotted pairwise (the strictly lower triangle, no self-interaction); the dots
and the bottom output feed a top MLP 512-256-1 producing one logit per sample, trained
with BCE-with-logits.

Where the embedding tables live is the point of FAE, so the tables are not parameters of
:class:`DLRM`: :mod:`trainer.placement` owns them (CPU, accelerator, or a hot prefix on
the accelerator) and hands the model a ``[batch, features, dim]`` tensor of looked-up
vectors. :func:`init_table` gives the tables their DLRM initialisation.

List columns (Taobao histories, ``list<uint32>``): each list column is pooled into one
interaction feature, the **mean** of its item embeddings by default
(``list_pooling="mean"``; ``"sum"`` is DLRM's multi-hot bag). Why mean: history lengths
vary (a new user has 2 events, an old one the full 20), a sum grows with the length and
would dominate every dot product it enters, while a mean keeps the pooled history on the
scale of a single item embedding, so it interacts with the target item on equal terms. An
empty history pools to the zero vector. Several columns may share one table (target item
and history items both look up ``item``); each still yields its own feature. TBSM's
attention over the history is out of scope.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch
from torch import nn

LIST_POOLINGS = ("mean", "sum")


@dataclass(frozen=True)
class DLRMConfig:
    """Shape of the dense part of the model (defaults: DLRM's Criteo Kaggle setup)."""

    num_dense: int = 13
    num_sparse: int = 26  # embedding features: one per sparse column, lists included
    embedding_dim: int = 16
    bottom_mlp: tuple[int, ...] = (512, 256, 64, 16)  # last width == embedding_dim
    top_mlp: tuple[int, ...] = (512, 256, 1)  # last width == 1 (the logit)
    list_pooling: str = "mean"

    def __post_init__(self) -> None:
        from trainer.errors import TrainerError

        object.__setattr__(self, "bottom_mlp", tuple(int(w) for w in self.bottom_mlp))
        object.__setattr__(self, "top_mlp", tuple(int(w) for w in self.top_mlp))
        if self.num_dense < 0 or self.num_sparse < 1 or self.embedding_dim < 1:
            raise TrainerError(
                f"model needs num_dense >= 0, num_sparse >= 1 and embedding_dim >= 1, found "
                f"{self.num_dense}, {self.num_sparse}, {self.embedding_dim}"
            )
        if self.num_dense and (not self.bottom_mlp or self.bottom_mlp[-1] != self.embedding_dim):
            raise TrainerError(
                f"bottom MLP {'-'.join(map(str, self.bottom_mlp)) or '(empty)'} must end in the "
                f"embedding dimension {self.embedding_dim} (its output is dotted with embeddings)"
            )
        if not self.top_mlp or self.top_mlp[-1] != 1:
            raise TrainerError(
                f"top MLP {'-'.join(map(str, self.top_mlp)) or '(empty)'} must end in 1 (the logit)"
            )
        if any(w < 1 for w in self.bottom_mlp + self.top_mlp):
            raise TrainerError("MLP widths must be >= 1")
        if self.num_dense == 0 and self.num_sparse < 2:
            raise TrainerError(
                "a layout without dense features needs at least 2 sparse features (the model "
                "is their pairwise dots)"
            )
        if self.list_pooling not in LIST_POOLINGS:
            raise TrainerError(
                f"list_pooling {self.list_pooling!r} unknown: use one of {', '.join(LIST_POOLINGS)}"
            )

    @property
    def interaction_dim(self) -> int:
        """Width of the top MLP input: the bottom output plus one dot per feature pair.

        Without dense features (Taobao) there is no bottom MLP: an MLP over zero inputs
        would only learn a constant vector. The top MLP then sees the dots alone.
        """
        n = self.num_sparse + (1 if self.num_dense else 0)
        return (self.embedding_dim if self.num_dense else 0) + n * (n - 1) // 2

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["bottom_mlp"] = list(self.bottom_mlp)
        d["top_mlp"] = list(self.top_mlp)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DLRMConfig:
        known = {f.name for f in fields(cls)}
        kwargs: dict[str, Any] = {k: (tuple(v) if isinstance(v, list) else v)
                                  for k, v in d.items() if k in known}
        return cls(**kwargs)


def _mlp(widths: list[int], generator: torch.Generator, last_relu: bool) -> nn.Sequential:
    layers: list[nn.Module] = []
    for i, (n, m) in enumerate(zip(widths[:-1], widths[1:])):
        linear = nn.Linear(n, m)
        with torch.no_grad():  # DLRM's initialisation (Glorot-like normal weights)
            linear.weight.normal_(0.0, math.sqrt(2.0 / (m + n)), generator=generator)
            linear.bias.normal_(0.0, math.sqrt(1.0 / m), generator=generator)
        layers.append(linear)
        if i < len(widths) - 2 or last_relu:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class DLRM(nn.Module):
    """The dense part of DLRM: ``forward(dense, embedded) -> logits``.

    ``dense`` is ``[B, num_dense]`` float32; ``embedded`` is ``[B, num_sparse, dim]``, the
    looked-up (and, for lists, pooled) embeddings in feature order. Returns ``[B]`` logits.
    """

    _pairs: torch.Tensor

    def __init__(self, config: DLRMConfig, seed: int = 0) -> None:
        super().__init__()
        self.config = config
        g = torch.Generator().manual_seed(seed)
        self.bottom = (_mlp([config.num_dense, *config.bottom_mlp], g, last_relu=True)
                       if config.num_dense else None)
        self.top = _mlp([config.interaction_dim, *config.top_mlp], g, last_relu=False)
        n = config.num_sparse + (1 if config.num_dense else 0)
        li, lj = torch.tril_indices(n, n, offset=-1)
        # The strictly lower triangle as positions in the flattened [F, F] dot matrix: an
        # index_select, whose backward is an index_add, where z[:, li, lj]'s backward is
        # an accumulating index_put (twice as slow on the CPU, a sort on CUDA). Same values.
        self.register_buffer("_pairs", li * n + lj, persistent=False)

    def forward(self, dense: torch.Tensor, embedded: torch.Tensor) -> torch.Tensor:
        if self.bottom is None:  # no dense features: the embeddings interact alone
            z = torch.bmm(embedded, embedded.transpose(1, 2))  # [B, F, F]
            return self.top(self._lower(z)).squeeze(1)
        x = self.bottom(dense)  # [B, d]
        t = torch.cat([x.unsqueeze(1), embedded], dim=1)  # [B, F+1, d]
        z = torch.bmm(t, t.transpose(1, 2))  # [B, F+1, F+1]
        dots = self._lower(z)  # strictly lower triangle: each pair once
        return self.top(torch.cat([x, dots], dim=1)).squeeze(1)

    def _lower(self, z: torch.Tensor) -> torch.Tensor:
        """``z[:, li, lj]`` for the strictly lower triangle ``(li, lj)``: ``[B, pairs]``."""
        return z.flatten(1).index_select(1, self._pairs)


def init_table(vocab_size: int, dim: int, generator: torch.Generator) -> torch.Tensor:
    """DLRM's table initialisation: uniform in +-sqrt(1/vocab_size), float32, on CPU."""
    bound = math.sqrt(1.0 / max(vocab_size, 1))
    return torch.empty(vocab_size, dim).uniform_(-bound, bound, generator=generator)
