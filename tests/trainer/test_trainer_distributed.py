"""Data parallel over gloo on two CPU processes equals one process on joined minibatches.

Adagrad runs fewer steps: it divides each gradient by its own running norm, so a row or
weight whose gradient is tiny moves by about ``lr`` either way, and float reassociation
(two partial sums instead of one) can flip it; after a few steps such rows legitimately
differ by up to ``2 lr``. SGD stays within float noise for longer runs.
"""

from __future__ import annotations

import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from trainer_testlib import CPU_TINY, Layouts

from trainer import distributed as dp
from trainer.data import Batch
from trainer.schedule import HotColdSchedule, ScheduleConfig
from trainer.train import TrainConfig, Trainer

WORLD = 2


def options(target: str, optimizer: str, steps: int) -> dict[str, object]:
    return {"target": target, "placement": "fae", "optimizer": optimizer, "lr": 0.05,
            "switch_every": 3, "log_every": 0, "eval_batches": 2, "max_steps": steps,
            **CPU_TINY}


def worker(rank: int, port: int, opts: dict[str, object], out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        ctx = dp.context(torch.device("cpu"))
        t = Trainer(TrainConfig(**opts), ctx)  # type: ignore[arg-type]
        summary = t.fit()
        weight, state = t.placement.full_tables()
        torch.save({"model": t.model.state_dict(), "weight": weight, "state": state,
                    "steps": t.step, "samples": t.samples, "summary": summary,
                    "last_lr": t._last_lr, "batches": t.batches},
                   Path(out) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def reference(opts: dict[str, object], steps: int) -> tuple[Trainer, int]:
    """One process; each step trains the concatenation of that step's minibatches."""
    ref = Trainer(TrainConfig(**opts))  # type: ignore[arg-type]
    reader, cfg = ref.reader, ref.cfg
    hot = reader.refs("train", "hot")
    cold = [r for r in reader.refs("train") if reader.kind(r) != "hot"]
    sched = HotColdSchedule(hot, cold, ScheduleConfig("fixed", cfg.switch_every, seed=cfg.seed),
                            cfg.epochs)
    samples = 0
    for _ in range(steps):
        item = sched.next()
        assert item is not None
        _, first, kind = item
        refs = [first]
        while len(refs) < WORLD and sched.next_kind() == kind:
            nxt = sched.next()
            assert nxt is not None
            refs.append(nxt[1])
        batch = Batch.concat([reader.read(r) for r in refs])
        ref.train_step(batch, kind, batch.rows)
        ref.step += 1
        samples += batch.rows
    return ref, samples


@pytest.mark.parametrize("optimizer,steps", [("sgd", 7), ("adagrad", 2)])
def test_two_gloo_ranks_equal_one_process_on_joined_batches(
        layouts: Layouts, tmp_path: Path, optimizer: str, steps: int) -> None:
    opts = options(layouts.criteo, optimizer, steps)
    mp.spawn(worker, args=(free_port(), opts, str(tmp_path)), nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    for k in ranks[0]["model"]:  # replicas stay identical
        assert torch.equal(ranks[0]["model"][k], ranks[1]["model"][k]), k
    assert torch.equal(ranks[0]["weight"], ranks[1]["weight"])
    if optimizer == "adagrad":
        assert torch.equal(ranks[0]["state"], ranks[1]["state"])
    assert ranks[0]["steps"] == steps
    summary = ranks[0]["summary"]
    assert summary["world_size"] == WORLD and 0 <= summary["val"]["auc"] <= 1

    ref, samples = reference(opts, steps)
    assert ranks[0]["samples"] == samples
    for k, v in ref.model.state_dict().items():
        torch.testing.assert_close(ranks[0]["model"][k], v, atol=1e-5, rtol=0, msg=k)
    weight, state = ref.placement.full_tables()
    torch.testing.assert_close(ranks[0]["weight"], weight, atol=1e-5, rtol=0)
    if state is not None:
        torch.testing.assert_close(ranks[0]["state"], state, atol=1e-5, rtol=0)


def test_two_ranks_decay_over_the_whole_run(layouts: Layouts, tmp_path: Path) -> None:
    """A data-parallel step takes up to one minibatch per rank, all of one kind: with runs
    of one minibatch most steps take one. The decay counted steps (batches / world per
    epoch) and two ranks trained the second half of the epoch at lr 0."""
    opts = {**options(layouts.criteo, "sgd", 0), "max_steps": None, "switch_every": 1,
            "decay": "linear"}
    mp.spawn(worker, args=(free_port(), opts, str(tmp_path)), nprocs=WORLD, join=True)
    out = torch.load(tmp_path / "rank0.pt", weights_only=True)
    total = Trainer(TrainConfig(**opts)).schedule.batches_per_epoch  # type: ignore[arg-type]
    assert out["batches"] == total and out["steps"] > total / WORLD
    assert 0 < out["last_lr"] <= 0.05 * WORLD / total  # the last step: nearly 0, not before


def mismatched_worker(rank: int, port: int, targets: list[str], out: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        Trainer(TrainConfig(targets[rank], log_every=0, **CPU_TINY),  # type: ignore[arg-type]
                dp.context(torch.device("cpu")))
        (Path(out) / f"rank{rank}.txt").write_text("started")
    except Exception as exc:  # noqa: BLE001 - the message is the result
        (Path(out) / f"rank{rank}.txt").write_text(str(exc))
    finally:
        dist.destroy_process_group()


def test_ranks_on_different_layouts_are_refused(layouts: Layouts, tmp_path: Path) -> None:
    """Each rank resolves ROOT/layouts/LATEST itself: a layout published while they start
    split them over two layouts (a crash deep in a lookup, or silent divergence)."""
    targets = [layouts.criteo, layouts.criteo_other_budget]
    mp.spawn(mismatched_worker, args=(free_port(), targets, str(tmp_path)), nprocs=WORLD,
             join=True)
    for rank in range(WORLD):
        message = (tmp_path / f"rank{rank}.txt").read_text()
        assert "the ranks resolved different layouts" in message, (rank, message)
