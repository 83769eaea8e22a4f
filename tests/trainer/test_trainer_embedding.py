"""The sparse optimizers of :class:`trainer.embedding.EmbeddingStore` against torch.optim."""

from __future__ import annotations

import pytest
import torch

from trainer.embedding import ADAGRAD_EPS, EmbeddingStore, coalesce, dedupe


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


@pytest.mark.parametrize("values", [[7], [3, 3, 3], [5, 1, 5, 0, 9, 1, 1, 2], list(range(6))[::-1]])
def test_dedupe_equals_unique_with_padding(values: list[int]) -> None:
    flat = torch.tensor(values)
    uniq, inverse = dedupe(flat)
    rows, inv = torch.unique(flat, return_inverse=True)
    n = rows.numel()
    assert uniq.shape == flat.shape and inverse.shape == flat.shape
    assert torch.equal(uniq[:n], rows) and torch.equal(inverse, inv)
    assert torch.equal(uniq[n:], torch.full((len(values) - n,), max(values)))
    empty = torch.zeros(0, dtype=torch.int64)
    assert all(t.numel() == 0 for t in dedupe(empty))


def test_dedupe_at_scale() -> None:
    g = torch.Generator().manual_seed(1)
    flat = (torch.rand(50_000, generator=g) ** 4 * 20_000).long()
    uniq, inverse = dedupe(flat)
    assert torch.equal(uniq[inverse], flat)
    rows = torch.unique(flat)
    assert torch.equal(uniq[:rows.numel()], rows)


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad"])
def test_static_store_padding_moves_nothing(optimizer: str) -> None:
    """A static store's padding repeats the largest row: the rows move bit for bit as a
    dynamic store moves them, the repeated row included."""
    g = torch.Generator().manual_seed(2)
    stores = [EmbeddingStore(["a"], [10], 4, torch.device("cpu"), optimizer, static=s)
              for s in (False, True)]
    init = torch.randn(10, 4, generator=g)
    for store in stores:
        store.weight.copy_(init)
    for _ in range(3):
        rows = torch.tensor([9, 2, 9, 4, 2, 9])
        grads = torch.randn(6, 4, generator=g)
        for store in stores:
            uniq, inverse = store.unique(rows)
            summed = torch.zeros(uniq.numel(), 4).index_add_(0, inverse, grads)
            store.apply(uniq, summed, 0.1)
    assert stores[1].unique(torch.tensor([9, 2]))[0].tolist() == [2, 9]
    assert torch.equal(stores[1].weight, stores[0].weight)
    if optimizer == "adagrad":
        assert torch.equal(stores[1].state, stores[0].state)
