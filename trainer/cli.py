"""``fae-train``: train a DLRM on a published layout.

    fae-train MANIFEST_OR_ROOT [--placement cpu|hybrid|fae|gpu] [--optimizer sgd|adagrad]
              [--lr 0.1] [--epochs 1] [--max-steps N] [--eval-every N] [--log-every N]
              [--checkpoint DIR] [--resume PATH] [--schedule fixed|adaptive]
              [--switch-every N] [--seed 0] [--device auto|cpu|cuda] [--json]

Data parallel: ``torchrun --nproc_per_node=G -m trainer.cli ...`` (see
:mod:`trainer.distributed`). Errors (a bad layout, a checksum mismatch, a checkpoint of
another vocabulary) print one ``error: ...`` line and exit 1; storage that cannot be read
or written (an unreachable store, a full disk) prints ``error (storage): ...`` instead, exit
1 (2 for a storage URL that no backend can use or reach), which the fae_train DAG retries;
Ctrl-C exits 130; ``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

from fae_data.errors import FaeError, StorageError, os_error_message
from trainer import distributed as dp
from trainer.checkpoint import LATEST
from trainer.embedding import SPARSE_OPTIMIZERS
from trainer.errors import CheckpointWriteError, TrainerError
from trainer.model import LIST_POOLINGS
from trainer.placement import MODES
from trainer.schedule import MODES as SCHEDULES
from trainer.train import DECAYS, DEVICES, TrainConfig, train


def _widths(text: str) -> tuple[int, ...]:
    try:
        widths = tuple(int(w) for w in text.replace(",", "-").split("-") if w)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected widths like 512-256-64-16") from None
    if not widths or min(widths) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: widths must be positive integers")
    return widths


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    d = TrainConfig(target="")
    ap = argparse.ArgumentParser(
        prog="fae-train", description="Train a DLRM on an FAE layout (hot rows on the "
        "accelerator, cold rows on the CPU).")
    ap.add_argument("target", metavar="MANIFEST_OR_ROOT",
                    help="manifest.json, a layout folder, or a storage root (its LATEST layout)")
    ap.add_argument("--placement", choices=MODES, default=d.placement)
    ap.add_argument("--optimizer", choices=SPARSE_OPTIMIZERS, default=d.optimizer)
    ap.add_argument("--lr", type=float, default=d.lr)
    ap.add_argument("--warmup-steps", type=int, default=d.warmup_steps)
    ap.add_argument("--decay", choices=DECAYS, default=d.decay,
                    help="learning-rate decay after warmup, to 0 at --decay-steps")
    ap.add_argument("--decay-steps", type=int, default=None,
                    help="default: the end of the last epoch, or of --max-steps when it "
                    "alone sets the run's length")
    ap.add_argument("--epochs", type=int, default=None,
                    help="passes over the training minibatches (default: 1, or as many as "
                    "--max-steps needs)")
    ap.add_argument("--max-steps", type=int, default=None,
                    help="stop at step N, counted from the run's start (a resumed run "
                    "included); alone, it sets the run's length (default: at the end of the "
                    "last epoch)")
    ap.add_argument("--eval-every", type=int, default=d.eval_every,
                    help="evaluate val/test every N steps (0: at epoch ends only)")
    ap.add_argument("--eval-batches", type=int, default=None,
                    help="at most N val and N test minibatches per evaluation")
    ap.add_argument("--log-every", type=int, default=d.log_every)
    ap.add_argument("--checkpoint", metavar="DIR", default=None,
                    help="write a checkpoint after every evaluation")
    ap.add_argument("--resume", metavar="PATH", default=None,
                    help="checkpoint file, or a checkpoint folder (its LATEST)")
    ap.add_argument("--schedule", choices=SCHEDULES, default=d.schedule)
    ap.add_argument("--switch-every", type=int, default=d.switch_every,
                    help="fixed schedule: longest hot or cold run, in minibatches")
    ap.add_argument("--adapt-every", type=int, default=d.adapt_every,
                    help="adaptive schedule: minibatches between held-out probes")
    ap.add_argument("--adapt-tolerance", type=float, default=d.adapt_tolerance,
                    help="adaptive schedule: relative held-out loss slack")
    ap.add_argument("--adapt-batches", type=int, default=d.adapt_batches,
                    help="adaptive schedule: validation minibatches per probe")
    ap.add_argument("--adapt-max", type=int, default=d.adapt_max,
                    help="adaptive schedule: longest run")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--device", choices=DEVICES, default=d.device)
    ap.add_argument("--prefetch", type=int, default=d.prefetch,
                    help="minibatches read ahead on a background thread")
    ap.add_argument("--bottom-mlp", type=_widths, default=d.bottom_mlp, metavar="W-W-...",
                    help="bottom MLP widths, the last equal to the embedding dimension "
                    "(default 512-256-64-DIM; on resume, the checkpoint's)")
    ap.add_argument("--top-mlp", type=_widths, default=d.top_mlp, metavar="W-W-...",
                    help="top MLP widths, the last 1 (default 512-256-1; on resume, the "
                    "checkpoint's)")
    ap.add_argument("--list-pooling", choices=LIST_POOLINGS, default=d.list_pooling,
                    help="pooling of list columns (histories; default mean; on resume, the "
                    "checkpoint's)")
    ap.add_argument("--cuda-graphs", action="store_true",
                    help="record the hot step as a CUDA graph and replay it (fae and gpu "
                    "placements, one process; not yet measured on a GPU)")
    ap.add_argument("--json", action="store_true", help="print the summary as JSON")
    ap.add_argument("--quiet", "-q", action="store_true", help="only warnings and the summary")
    ap.add_argument("--debug", action="store_true", help="show tracebacks of errors")
    _show_defaults(ap)
    return ap.parse_args(argv)


def _show_defaults(ap: argparse.ArgumentParser) -> None:
    """Say every option's default in --help, as ``fae`` does (argparse's own formatter
    skips options without help text and repeats defaults a help already explains)."""
    for action in ap._actions:
        if not action.option_strings or action.default is None or action.default is False \
                or action.default == argparse.SUPPRESS:
            continue
        if "default" not in (action.help or ""):
            action.help = (f"{action.help} (default: %(default)s)" if action.help
                           else "default: %(default)s")


def config_from_args(ns: argparse.Namespace) -> TrainConfig:
    """The run's config; a refused value is named by its flag (``--switch-every``), not by
    the config field (``switch_every``) the library's message uses."""
    keys = {f for f in TrainConfig.__dataclass_fields__}
    try:
        return TrainConfig(**{k: v for k, v in vars(ns).items() if k in keys})
    except TrainerError as exc:
        # "switch_every (0) must be >= 1": a field followed by its value, not any word.
        message = re.sub(r"\b(" + "|".join(sorted(keys, key=len, reverse=True)) + r")(?= \()",
                         lambda m: "--" + m[1].replace("_", "-"), str(exc))
        raise TrainerError(message) from None


def _human(s: dict[str, Any]) -> str:
    def metrics(name: str) -> str:
        r = s.get(name)
        if not r:
            return f"{name} -"
        shown = {k: "nan" if r.get(k) is None else f"{r[k]:.4f}"
                 for k in ("auc", "logloss", "accuracy")}
        return (f"{name} auc {shown['auc']} logloss {shown['logloss']} "
                f"acc {shown['accuracy']}")

    sec = s["seconds"]
    rate = "-" if s["samples_per_s"] is None else f"{s['samples_per_s']:,.0f}"
    return (f"trained {s['steps']} steps ({s['samples']:,} samples) on layout {s['layout_id']}, "
            f"placement {s['placement']} on {s['device']}: {rate} samples/s "
            f"(hot {sec['hot']:.1f}s, cold {sec['cold']:.1f}s, sync {sec['sync']:.2f}s, "
            f"{s['switches']} switches)\n{metrics('val')}\n{metrics('test')}"
            + (f"\ncheckpoint {s['checkpoint']}" if s["checkpoint"] else ""))


def _resumable(checkpoint: str | None) -> str:
    """What an interrupted run left to resume from (checkpoints are written whole, then
    renamed, so the newest one is intact)."""
    if checkpoint and (Path(checkpoint) / LATEST).is_file():
        return (f"continue from the last checkpoint with --resume {checkpoint} "
                f"--checkpoint {checkpoint}")
    if checkpoint:
        return f"no checkpoint was written to {checkpoint} yet (one follows each evaluation)"
    return "nothing was saved (--checkpoint DIR makes a run resumable)"


def _quiet_broken_pipe() -> int:
    """When stdout's reader went away (``fae-train ... | head``): no traceback; stdout is
    pointed at /dev/null so that the interpreter's final flush does not fail again.
    Returns the exit code, 141 as a shell reports SIGPIPE."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    return 141


def main(argv: list[str] | None = None) -> int:
    """Console-script entry point; returns the exit code."""
    args = parse_args(argv)
    level = logging.WARNING if args.quiet else logging.INFO
    logging.basicConfig(level=level, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    ctx = None
    try:
        ctx = dp.init_from_env(args.device)
        if ctx is not None and not ctx.is_main:
            logging.getLogger().setLevel(logging.WARNING)  # only rank 0 logs
        summary = train(config_from_args(args), ctx)
        dp.shutdown(ctx)
    except FaeError as exc:
        if args.debug:
            raise
        # Storage that could not be read or written may work the next time (a scheduler
        # retries those); anything else is a refusal of this input.
        label = ("error (storage)" if isinstance(exc, (StorageError, CheckpointWriteError))
                 else "error")
        print(f"{label}: {exc}", file=sys.stderr)
        return exc.exit_code
    except OSError as exc:  # e.g. a checkpoint folder that cannot be written
        if args.debug:
            raise
        print(f"error (storage): {os_error_message(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        if args.debug:
            raise
        print(f"interrupted: {_resumable(args.checkpoint)}", file=sys.stderr)
        return 130
    if ctx is None or ctx.is_main:
        try:
            print(json.dumps(summary, indent=2) if args.json else _human(summary), flush=True)
        except BrokenPipeError:  # the reader of stdout went away (`fae-train ... | head`)
            return _quiet_broken_pipe()
    return 0


if __name__ == "__main__":
    sys.exit(main())
