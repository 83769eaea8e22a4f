"""Placement must not change the math: same order, same seed, same parameters."""

from __future__ import annotations

import pytest
import torch
from trainer_testlib import CPU_TINY, Layouts

from trainer.data import LayoutReader
from trainer.train import TrainConfig, Trainer

STEPS = 10


def train(target: str, placement: str, optimizer: str, steps: int = STEPS,
          static: bool = False, **kw: object) -> Trainer:
    """``static``: the accelerator's stores deduplicate without a host sync, as on CUDA."""
    options = {"lr": 0.05, "max_steps": steps, "switch_every": 2, "log_every": 0,
               "eval_batches": 1, **CPU_TINY, **kw}
    t = Trainer(TrainConfig(target, placement=placement, optimizer=optimizer,
                            **options))  # type: ignore[arg-type]
    if static:
        for store in (t.placement.hot, t.placement.full if placement == "gpu" else None):
            if store is not None:
                store.static = True
    t.fit()
    return t


def assert_same(a: Trainer, b: Trainer) -> None:
    for (name, x), (_, y) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        torch.testing.assert_close(x.cpu(), y.cpu(), atol=1e-5, rtol=0, msg=name)
    wa, sa = a.placement.full_tables()
    wb, sb = b.placement.full_tables()
    torch.testing.assert_close(wa.cpu(), wb.cpu(), atol=1e-5, rtol=0)
    if sa is not None:
        torch.testing.assert_close(sa.cpu(), sb.cpu(), atol=1e-5, rtol=0)


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad"])
def test_fae_hybrid_gpu_equal_cpu(layouts: Layouts, optimizer: str) -> None:
    ref = train(layouts.criteo, "cpu", optimizer)
    for placement in ("fae", "hybrid", "gpu"):
        other = train(layouts.criteo, placement, optimizer)
        assert other.step == ref.step == STEPS
        assert_same(ref, other)
    fae = other if other.cfg.placement == "fae" else train(layouts.criteo, "fae", optimizer)
    assert fae.switches >= 3  # several hot->cold and cold->hot switches were crossed
    assert fae.placement.copies >= fae.switches
    # Training moved the tables away from their initialisation, hot rows included.
    init = Trainer(TrainConfig(layouts.criteo, max_steps=0, **CPU_TINY))  # type: ignore[arg-type]
    w0, _ = init.placement.full_tables()
    w1, _ = fae.placement.full_tables()
    first_table_hot = fae.placement.tables[2].hot_rows
    span = fae.placement.full.span(2, first_table_hot)
    assert not torch.allclose(w0[span], w1[span])


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad"])
@pytest.mark.parametrize("target", ["criteo", "lists"])
def test_static_stores_equal_cpu(layouts: Layouts, target: str, optimizer: str) -> None:
    """On a CUDA device the hot store (and gpu placement's tables) deduplicate into padded
    buffers and update by accumulation, without a host sync: forced here on the CPU, the
    math must still equal the cpu placement's, lists and switches included."""
    manifest = getattr(layouts, target)
    ref = train(manifest, "cpu", optimizer, steps=14, switch_every=1)
    for placement in ("fae", "gpu"):
        other = train(manifest, placement, optimizer, steps=14, switch_every=1, static=True)
        store = other.placement.hot if placement == "fae" else other.placement.full
        assert store is not None and store.static
        assert_same(ref, other)


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad"])
def test_recorded_hot_steps_equal_cpu(layouts: Layouts, optimizer: str) -> None:
    """--cuda-graphs: the fixed-shape step that is recorded on CUDA (static ids, the dense
    optimizer written out with a tensor learning rate) runs eagerly on the CPU; its
    arithmetic must equal the eager trainer's, dense optimizer state and counters too.

    Adagrad: the written-out dense update rounds ``p + (-lr) * (g / std)`` in three steps
    where ``addcdiv_`` may fuse two, and Adagrad moves a table row by about ``lr`` on its
    first, possibly tiny gradient, so a handful of table elements may move the other way
    (as between devices, see test_trainer_cuda); the model itself stays within 1e-5."""
    ref = train(layouts.criteo, "cpu", optimizer, steps=14, switch_every=2)
    for placement in ("fae", "gpu"):
        t = train(layouts.criteo, placement, optimizer, steps=14, switch_every=2,
                  cuda_graphs=True)
        graphs = list(t._graphs.values())
        assert len(graphs) == 1 and graphs[0].replays == 0  # nothing to record on a CPU
        assert graphs[0].eager_left <= -1  # ... but the step function ran, 3 times or more
        if optimizer == "sgd":
            assert_same(ref, t)
        else:
            for name, v in ref.model.state_dict().items():
                torch.testing.assert_close(t.model.state_dict()[name], v, atol=1e-5, rtol=0,
                                           msg=name)
            diff = (t.placement.full_tables()[0] - ref.placement.full_tables()[0]).abs()
            assert (diff > 1e-5).float().mean().item() < 1e-4
            assert diff.max().item() <= 2 * 0.05 * 14
        a, b = ref.optimizer.state_dict()["state"], t.optimizer.state_dict()["state"]
        for i in a:
            for k, v in a[i].items():
                if isinstance(v, torch.Tensor):
                    torch.testing.assert_close(b[i][k], v, atol=1e-5, rtol=0, msg=f"{i}.{k}")


def test_cuda_graphs_need_one_process_and_an_accelerator_store(layouts: Layouts) -> None:
    from trainer.errors import TrainerError

    with pytest.raises(TrainerError, match="needs --placement fae or gpu"):
        Trainer(TrainConfig(layouts.criteo, placement="hybrid", cuda_graphs=True,
                            **CPU_TINY))  # type: ignore[arg-type]


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad"])
def test_list_columns_fae_equal_cpu(layouts: Layouts, optimizer: str) -> None:
    ref = train(layouts.lists, "cpu", optimizer, steps=14, switch_every=1)
    fae = train(layouts.lists, "fae", optimizer, steps=14, switch_every=1)
    assert fae.switches >= 3
    assert_same(ref, fae)


def test_hot_rows_sync_is_exact_and_lazy(layouts: Layouts) -> None:
    t = Trainer(TrainConfig(layouts.criteo, placement="fae", optimizer="adagrad",
                            **CPU_TINY))  # type: ignore[arg-type]
    pl = t.placement
    reader = t.reader
    hot = reader.read(reader.refs("train", "hot")[0])
    cold = reader.read(reader.refs("train", "cold")[0])
    t.train_step(hot, "hot", hot.rows)
    assert pl.copies == 1  # CPU -> accelerator before the first hot step
    t.train_step(hot, "hot", hot.rows)
    assert pl.copies == 1
    assert pl.hot is not None
    before = pl.copies
    t.train_step(cold, "cold", cold.rows)  # accelerator -> CPU first
    assert pl.copies == before + 1
    t.train_step(hot, "hot", hot.rows)  # the cold step changed hot rows: copy to the hot store
    assert pl.copies == before + 2
    pl.prepare("all")  # evaluation: sync back, but the hot copy stays valid
    assert pl.copies == before + 3
    for i, spec in enumerate(pl.tables):
        assert torch.equal(pl.hot.weight[pl.hot.span(i)].cpu(),
                           pl.full.weight[pl.full.span(i, spec.hot_rows)].cpu())
        assert pl.hot.state is not None and pl.full.state is not None
        assert torch.equal(pl.hot.state[pl.hot.span(i)].cpu(),
                           pl.full.state[pl.full.span(i, spec.hot_rows)].cpu())
    pl.prepare("hot")
    assert pl.copies == before + 3  # nothing changed since: no copy


def test_list_pooling_is_the_mean_of_item_embeddings(layouts: Layouts) -> None:
    t = Trainer(TrainConfig(layouts.lists, placement="cpu", **CPU_TINY))  # type: ignore[arg-type]
    reader = LayoutReader(layouts.lists)
    batch = reader.read(reader.refs("val")[0])
    embedded, _ = t.placement.lookup(batch, "all", train=False)
    item = t.placement.table("item")
    values, lengths = batch.lists[0]  # hist_items
    start = 0
    for row, n in enumerate(lengths.tolist()):
        ids = values[start:start + n]
        start += n
        expect = item[ids].mean(0) if n else torch.zeros(item.shape[1])
        torch.testing.assert_close(embedded[row, 2], expect)  # after user, item
    torch.testing.assert_close(embedded[:, 1], item[batch.ids[1]])  # the shared table


@pytest.mark.parametrize("pooling", ["mean", "sum"])
def test_row_gradients_match_autograd(layouts: Layouts, pooling: str) -> None:
    """The hand-written scatter of gradients onto rows against autograd on a naive lookup."""
    t = Trainer(TrainConfig(layouts.lists, placement="cpu", list_pooling=pooling,
                            **CPU_TINY))  # type: ignore[arg-type]
    reader = t.reader
    batch = reader.read(reader.refs("train", "cold")[0])
    embedded, lookup = t.placement.lookup(batch, "cold")
    upstream = torch.randn(embedded.shape, generator=torch.Generator().manual_seed(0))
    (embedded * upstream).sum().backward()
    got = t.placement.row_grads(lookup)

    # The reference runs in float64: the two float32 sums add the same terms in a
    # different order, and on some machines that alone differed by 2.6e-6 (CI, stop 9).
    upstream = upstream.double()
    weight = t.placement.full.weight.detach().double().requires_grad_()
    base = {name: t.placement.full.offsets[i] for i, name in enumerate(reader.table_names)}
    feats = []
    for j, (_, table) in enumerate(reader.schema.scalar):
        feats.append(weight[batch.ids[j] + base[table]])
    for (values, lengths), (_, table) in zip(batch.lists, reader.schema.lists):
        pooled, start = [], 0
        for n in lengths.tolist():
            vecs = weight[values[start:start + n] + base[table]]
            start += n
            if n == 0:
                pooled.append(torch.zeros(weight.shape[1], dtype=weight.dtype))
            else:
                pooled.append(vecs.mean(0) if pooling == "mean" else vecs.sum(0))
        feats.append(torch.stack(pooled))
    (torch.stack(feats, 1) * upstream).sum().backward()
    assert weight.grad is not None
    torch.testing.assert_close(got.double(), weight.grad[lookup.uniq], atol=1e-5, rtol=1e-5)
    untouched = torch.ones(weight.shape[0], dtype=torch.bool)
    untouched[lookup.uniq] = False
    assert not weight.grad[untouched].any()


@pytest.fixture(scope="module")
def taobao_layout(tmp_path_factory: pytest.TempPathFactory) -> str:
    """A layout built by the real pipeline from the real Taobao sample (three "days" of
    10k events each), not a hand-written one: what the trainer meets in production."""
    import os
    from pathlib import Path

    from fae_data.ingest import IngestParams
    from pipelines.ingest import run_ingest
    from pipelines.layout import LayoutParams, run_layout

    data = Path(os.environ.get("FAE_SHARED_DATA", "/work/shared/data"))
    source = data / "taobao_userbehavior_timeorder110k.csv"
    if not source.exists():
        pytest.skip(f"real data sample {source} is not available")
    work = tmp_path_factory.mktemp("taobao-layout")
    lines = source.read_bytes().splitlines(True)[:30_000]
    files = []
    for day in range(3):
        path = work / f"day_{day}.csv"
        path.write_bytes(b"".join(lines[day * 10_000:(day + 1) * 10_000]))
        files.append(str(path))
    run_ingest(files, str(work / "root"), IngestParams("taobao"), dataset="taobao")
    result = run_layout(str(work / "root"),
                        LayoutParams(dataset="taobao", budget="96KiB", batch_size=64))
    assert result.manifest.stats["rows_by_split_and_kind"]["train/cold"] > 0
    return result.manifest_path


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad"])
def test_real_taobao_layout_fae_equal_cpu(taobao_layout: str, optimizer: str) -> None:
    # The whole epoch: its few hot minibatches are spread through it, not trained first.
    ref = train(taobao_layout, "cpu", optimizer, steps=None, switch_every=1)
    fae = train(taobao_layout, "fae", optimizer, steps=None, switch_every=1)
    assert fae.switches >= 3
    assert_same(ref, fae)
    summary = fae.summary()
    assert summary["steps"] == fae.schedule.batches_per_epoch
    assert 0.0 <= summary["test"]["auc"] <= 1.0


def test_sgd_on_a_layout_without_dense_features_is_warned_about(  # type: ignore[no-untyped-def]
        taobao_layout: str, layouts: Layouts, caplog) -> None:
    import logging

    with caplog.at_level(logging.WARNING, logger="trainer.train"):
        Trainer(TrainConfig(taobao_layout, placement="cpu", **CPU_TINY))  # type: ignore[arg-type]
    assert "has no dense features" in caplog.text and "--optimizer adagrad" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="trainer.train"):
        Trainer(TrainConfig(taobao_layout, placement="cpu", optimizer="adagrad",
                            **CPU_TINY))  # type: ignore[arg-type]
        Trainer(TrainConfig(layouts.criteo, placement="cpu", **CPU_TINY))  # type: ignore[arg-type]
    assert "SGD barely moves" not in caplog.text
    # CPU_TINY gives a bottom MLP, which a model without dense features does not have.
    assert "--bottom-mlp is ignored" in caplog.text
