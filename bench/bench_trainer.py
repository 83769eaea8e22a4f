"""Trainer benchmark: every placement on the same layout and samples, side by side.

Trains the same minibatches in the same order from the same initialisation with each
``--placement`` (cpu, hybrid, fae, and gpu when asked) and prints samples/s, the time
split (hot, cold, sync), the final val/test AUC, and the ratios fae/hybrid and fae/cpu
(the FAE paper reports 1.52x and 2.3x on real data with GPUs). Placements run one after
another in one process, in rotated order over ``--repeats`` rounds; each placement's
best round counts (the machines here are noisy).

    python bench/bench_trainer.py [--device auto|cpu|cuda] [--rows 200000 --days 3]
        [--placements cpu,hybrid,fae,gpu,fae+g,gpu+g]
        [--scale 0.01 --budget 4MiB] [--target MANIFEST_OR_ROOT] [--max-steps N]

Without ``--target`` a synthetic Criteo layout is built once under ``--workdir``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from fae_data.manifest import load  # noqa: E402
from trainer.train import TrainConfig, Trainer  # noqa: E402


def synthetic_layout(workdir: Path, rows: int, days: int, scale: float, budget: str) -> str:
    from pipelines.demo import run_demo

    tag = f"criteo_r{rows}_d{days}_s{scale}_b{budget}"
    root = workdir / tag / "root"
    if (root / "layouts" / "LATEST").is_file():
        return str(root)
    result = run_demo(workdir / tag, rows=rows, days=days, scale=scale, budget=budget,
                      train_steps=0)
    return result.layout.manifest_path


def run_one(target: str, placement: str, args: argparse.Namespace) -> dict[str, Any]:
    """``placement`` may end in ``+g``: the same with --cuda-graphs (fae and gpu)."""
    mode, graphs = placement.removesuffix("+g"), placement.endswith("+g")
    cfg = TrainConfig(
        target, placement=mode, cuda_graphs=graphs, optimizer=args.optimizer, lr=args.lr,
        epochs=1,
        max_steps=args.max_steps, switch_every=args.switch_every, log_every=0,
        eval_batches=args.eval_batches, device=args.device, seed=0,
        bottom_mlp=tuple(int(w) for w in args.bottom_mlp.split("-")),
        top_mlp=tuple(int(w) for w in args.top_mlp.split("-")),
    )
    return Trainer(cfg).fit()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--target", help="an existing layout (manifest, folder or root)")
    ap.add_argument("--workdir", type=Path, default=Path("bench/out"))
    ap.add_argument("--rows", type=int, default=200_000, help="rows per synthetic day")
    ap.add_argument("--days", type=int, default=3)
    ap.add_argument("--scale", type=float, default=0.01)
    ap.add_argument("--budget", default="4MiB")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    ap.add_argument("--placements", default="cpu,hybrid,fae",
                    help="comma separated; add gpu when the tables fit the accelerator, "
                    "fae+g and gpu+g for the same with --cuda-graphs")
    ap.add_argument("--optimizer", choices=("sgd", "adagrad"), default="sgd")
    ap.add_argument("--lr", type=float, default=0.1)
    ap.add_argument("--max-steps", type=int, default=None, help="default: one epoch")
    ap.add_argument("--switch-every", type=int, default=16)
    ap.add_argument("--eval-batches", type=int, default=None)
    ap.add_argument("--bottom-mlp", default="512-256-64-16")
    ap.add_argument("--top-mlp", default="512-256-1")
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: default)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    if args.threads:
        torch.set_num_threads(args.threads)

    target = args.target or synthetic_layout(args.workdir, args.rows, args.days, args.scale,
                                             args.budget)
    manifest, _ = load(target)
    placements = [p.strip() for p in args.placements.split(",") if p.strip()]
    run_one(target, placements[0], argparse.Namespace(**{**vars(args), "max_steps": 3,
                                                         "eval_batches": 1}))  # warm-up
    best: dict[str, dict[str, Any]] = {}
    for r in range(args.repeats):
        for p in placements[r % len(placements):] + placements[:r % len(placements)]:
            s = run_one(target, p, args)
            if p not in best or (s["samples_per_s"] or 0) > (best[p]["samples_per_s"] or 0):
                best[p] = s

    st = manifest.stats
    print(f"layout {manifest.layout_id}: {st['rows_by_split_and_kind']}, hot input fraction "
          f"{st['hot_input_fraction']:.1%}, batch {manifest.batch_size}, device "
          f"{best[placements[0]]['device']}"
          + (f" ({torch.cuda.get_device_name()})" if torch.cuda.is_available() else ""))
    print(f"{'placement':<10}{'samples/s':>12}{'hot s':>9}{'cold s':>9}{'sync s':>9}"
          f"{'switches':>10}{'val auc':>9}{'test auc':>10}")
    for p, s in best.items():
        sec = s["seconds"]
        auc = {k: (s[k] or {}).get("auc") for k in ("val", "test")}
        print(f"{p:<10}{s['samples_per_s']:>12,.0f}{sec['hot']:>9.2f}{sec['cold']:>9.2f}"
              f"{sec['sync']:>9.3f}{s['switches']:>10}{auc['val'] or float('nan'):>9.4f}"
              f"{auc['test'] or float('nan'):>10.4f}")
    ratios = {}
    for fae in ("fae", "fae+g"):
        for base in ("hybrid", "cpu"):
            if fae in best and base in best:
                ratios[f"{fae}/{base}"] = (best[fae]["samples_per_s"]
                                           / best[base]["samples_per_s"])
    print("  ".join(f"{k} = {v:.2f}x" for k, v in ratios.items()))
    print(json.dumps({"layout_id": manifest.layout_id, "ratios": ratios, "runs": best},
                     indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
