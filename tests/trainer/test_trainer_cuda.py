"""On a CUDA machine: every placement on the GPU trains like the CPU reference.

Skipped without CUDA (CI has none); run on a GPU machine with
``pytest tests/trainer/test_trainer_cuda.py``.
"""

from __future__ import annotations

import pytest
import torch
from trainer_testlib import Layouts

from trainer.train import TrainConfig, Trainer

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")

STEPS = 10


def run(target: str, placement: str, device: str, optimizer: str = "sgd",
        cuda_graphs: bool = False) -> Trainer:
    t = Trainer(TrainConfig(target, placement=placement, device=device, optimizer=optimizer,
                            lr=0.05, max_steps=STEPS, switch_every=2, log_every=0,
                            eval_batches=2, bottom_mlp=(32, 16), top_mlp=(32, 1),
                            cuda_graphs=cuda_graphs))
    t.fit()
    return t


@pytest.mark.parametrize("target", ["criteo", "lists"])
def test_cuda_placements_match_cpu(layouts: Layouts, target: str) -> None:
    path = getattr(layouts, target)
    ref = run(path, "cpu", "cpu")
    w_ref, _ = ref.placement.full_tables()
    for placement in ("hybrid", "fae", "gpu"):
        t = run(path, placement, "cuda")
        assert t.compute.type == "cuda"
        if placement == "fae":
            assert t.placement.hot is not None and t.placement.hot.device.type == "cuda"
            assert t.placement.full.device.type == "cpu" and t.switches >= 3
        w, _ = t.placement.full_tables()
        diff = (w.cpu() - w_ref).abs().max().item()
        print(f"\n{target} {placement} on cuda: max table difference to cpu {diff:.2e}")
        torch.testing.assert_close(w.cpu(), w_ref, atol=1e-4, rtol=0)
        for k, v in ref.model.state_dict().items():
            torch.testing.assert_close(t.model.state_dict()[k].cpu(), v, atol=1e-4, rtol=0,
                                       msg=k)
        assert abs(t.summary()["val"]["auc"] - ref.summary()["val"]["auc"]) < 1e-3


def test_cuda_adagrad_fae_close_to_hybrid(layouts: Layouts) -> None:
    """Adagrad: FAE updates hot rows on the GPU, hybrid on the CPU.

    Adagrad moves a row by about ``lr`` whatever the size of its first gradient, so a row
    whose gradient is nearly zero may move either way depending on float summation order
    on the two devices; a handful of such elements may differ by up to ``2 lr``.
    """
    a = run(layouts.criteo, "fae", "cuda", "adagrad").placement.full_tables()[0].cpu()
    b = run(layouts.criteo, "hybrid", "cuda", "adagrad").placement.full_tables()[0].cpu()
    diff = (a - b).abs()
    print(f"\nadagrad fae vs hybrid on cuda: {int((diff > 1e-4).sum())} of {diff.numel()} "
          f"elements differ by more than 1e-4 (max {diff.max().item():.2e})")
    assert (diff > 1e-4).float().mean().item() < 1e-4
    assert diff.max().item() <= 2 * 0.05 * STEPS


def test_cuda_graph_hot_steps_match_cpu(layouts: Layouts) -> None:
    """--cuda-graphs on a GPU: hot steps are recorded once and replayed, same result."""
    ref = run(layouts.criteo, "cpu", "cpu")
    w_ref, _ = ref.placement.full_tables()
    for placement in ("fae", "gpu"):
        t = run(layouts.criteo, placement, "cuda", cuda_graphs=True)
        graph = next(iter(t._graphs.values()))
        print(f"\n{placement} --cuda-graphs: {graph.replays} replays, failed={graph.failed}")
        assert not graph.failed and graph.replays > 0
        w, _ = t.placement.full_tables()
        torch.testing.assert_close(w.cpu(), w_ref, atol=1e-4, rtol=0)
        for k, v in ref.model.state_dict().items():
            torch.testing.assert_close(t.model.state_dict()[k].cpu(), v, atol=1e-4, rtol=0,
                                       msg=k)
