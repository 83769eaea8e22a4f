"""Operators dispatched per training step, by placement: a GPU-free proxy of launch cost.

On a GPU the hot steps of small minibatches are bound by their CPU side: every operator
is a Python call, a dispatch and (most of them) a kernel launch, some microseconds each,
whatever the arithmetic. This counts the ATen operators one eager ``train_step``
dispatches (``TorchDispatchMode``), per placement and kind of minibatch, with the store
of the hot rows static as on CUDA (:func:`trainer.embedding.dedupe`). Views (``t``,
``view``, ``slice``...) launch no kernel and are counted apart. A ``--cuda-graphs``
replay is one launch for the whole hot step.

    python bench/bench_step_ops.py [--target MANIFEST_OR_ROOT] [--workdir bench/out]
"""

from __future__ import annotations

import argparse
import collections
import logging
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch.utils._python_dispatch import TorchDispatchMode  # noqa: E402

from trainer.train import TrainConfig, Trainer  # noqa: E402

#: Operators that only re-describe a tensor (no kernel on any device).
VIEWS = {"t", "view", "slice", "transpose", "unsqueeze", "squeeze", "expand", "select",
         "detach", "alias", "as_strided", "permute", "_reshape_alias", "reshape",
         "_record_function_enter_new", "_record_function_exit"}


class _Count(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.ops[func.overloadpacket.__name__] += 1
        return func(*args, **(kwargs or {}))


def count_step(target: str, placement: str, kind: str) -> dict[str, Any]:
    """Operators of one eager step of a ``kind`` minibatch (after two warm-up steps)."""
    t = Trainer(TrainConfig(target, placement=placement, log_every=0, device="cpu"))
    store = t.placement.store_for(kind)
    if placement in ("fae", "gpu") and kind == "hot":
        store.static = True  # as on CUDA: no host sync for the unique rows
    refs = t.reader.refs("train", kind) or t.reader.refs("train")
    batch = t.reader.read(refs[0])
    for _ in range(2):
        t.train_step(batch, kind, batch.rows)
    with _Count() as c:
        t.train_step(batch, kind, batch.rows)
    kernels = {k: v for k, v in c.ops.items() if k not in VIEWS}
    return {"placement": placement, "kind": kind, "ops": sum(c.ops.values()),
            "kernels": sum(kernels.values()), "top": collections.Counter(kernels).most_common(8)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", help="an existing layout (default: a small synthetic one)")
    ap.add_argument("--workdir", type=Path, default=Path("bench/out"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    torch.set_num_threads(1)
    target = args.target
    if target is None:
        from pipelines.demo import run_demo

        work = args.workdir / "step_ops"
        if not (work / "root" / "layouts" / "LATEST").is_file():
            run_demo(work, rows=20_000, days=2, scale=0.001, budget="256KiB", train_steps=0)
        target = str(work / "root")
    rows = [count_step(target, p, k) for p, k in
            (("cpu", "hot"), ("hybrid", "cold"), ("fae", "hot"), ("fae", "cold"),
             ("gpu", "hot"))]
    print(f"{'placement':<10}{'minibatch':<11}{'operators':>10}{'kernels':>9}  most frequent")
    for r in rows:
        top = ", ".join(f"{k} {v}" for k, v in r["top"][:5])
        print(f"{r['placement']:<10}{r['kind']:<11}{r['ops']:>10}{r['kernels']:>9}  {top}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
