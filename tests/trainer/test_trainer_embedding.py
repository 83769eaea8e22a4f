"""The sparse optimizers of :class:`trainer.embedding.EmbeddingStore` against torch.optim."""

from __future__ import annotations

import pytest
import torch

from trainer.embedding import ADAGRAD_EPS, EmbeddingStore, coalesce


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad"])
def test_sparse_updates_match_torch_optim(optimizer: str) -> None:
    """Several steps over two tables: the rows a step touched move exactly as a dense
    torch.optim step with zero gradient elsewhere moves them; the others do not move."""
    g = torch.Generator().manual_seed(0)
    store = EmbeddingStore(["a", "b"], [5, 7], 3, torch.device("cpu"), optimizer)
    store.weight.copy_(torch.randn(12, 3, generator=g))
    reference = torch.nn.Parameter(store.weight.clone())
    opt = (torch.optim.SGD([reference], lr=0.3) if optimizer == "sgd" else
           torch.optim.Adagrad([reference], lr=0.3, eps=ADAGRAD_EPS))
    for step in range(4):
        rows = torch.randint(0, 12, (9,), generator=g)  # repeats: summed by coalesce
        grads = torch.randn(9, 3, generator=g)
        uniq, summed = coalesce(rows, grads)
        before = store.weight.clone()
        store.apply(uniq, summed, 0.3)
        dense = torch.zeros(12, 3)
        dense.index_add_(0, rows, grads)
        reference.grad = dense
        opt.step()
        torch.testing.assert_close(store.weight, reference.detach(), rtol=1e-6, atol=1e-6)
        untouched = torch.ones(12, dtype=torch.bool)
        untouched[uniq] = False
        assert torch.equal(store.weight[untouched], before[untouched]), step
    if optimizer == "adagrad":
        torch.testing.assert_close(store.state, opt.state[reference]["sum"])
