"""The training loop: config, init, batch fetch, evaluation, learning rate, loop.

:class:`~trainer.config.TrainConfig` is every option of ``fae-train``; :class:`Trainer`
verifies the layout (every shard checksum, columns, ids) and any checkpoint before the first step,
builds the model and the placement, and :meth:`Trainer.fit` trains in the order of the
hot/cold scheduler, logging one line per ``log_every`` steps (step, loss, samples/s, the
time split between hot, cold and sync, switches, phase), evaluating val and test every
``eval_every`` steps and at each epoch end, checkpointing after each evaluation, and
returning a JSON-ready summary.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections import deque
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from fae_data.errors import first_line
from fae_data.manifest import Manifest
from trainer import checkpoint as ckpt_io
from trainer import distributed as dp
from trainer.config import DECAYS, DEVICES, TrainConfig, resolve_device
from trainer.data import Batch, BatchRef, LayoutReader, Prefetcher, stream
from trainer.errors import CheckpointError, TrainerError
from trainer.graphs import HotStepGraph
from trainer.metrics import log_loss, summarize
from trainer.model import DLRM, DLRMConfig, init_table
from trainer.placement import Placement, TableSpec
from trainer.schedule import HotColdSchedule, ScheduleConfig

log = logging.getLogger(__name__)

__all__ = ["DECAYS", "DEVICES", "TrainConfig", "Trainer", "resolve_device", "train"]


def hot_budget_overrun(m: Manifest, optimizer: str) -> str | None:
    """Why the hot rows need more accelerator memory than the layout planned for, or None.

    The planner sized k_t for the layout's ``dtype`` and ``optimizer_slots``; the trainer
    keeps tables in float32, with one state slot per row under Adagrad. A layout planned
    for float16 or without optimizer state then puts more than its budget on the GPU.
    """
    slots = 1 if optimizer == "adagrad" else 0
    need = sum(t.hot_rows * t.dim for t in m.tables) * 4 * (1 + slots)
    budget = int(m.params.get("budget_bytes") or 0)
    if not budget or need <= budget:
        return None
    return (f"layout {m.layout_id} planned its hot rows for a budget of {budget:,} B "
            f"(dtype {m.params.get('dtype')}, {m.params.get('optimizer_slots')} optimizer "
            f"slots); training them in float32 with --optimizer {optimizer} puts {need:,} B "
            f"on the accelerator. If that does not fit, lay out again with --dtype float32 "
            f"--optimizer-slots {slots}")


def _model_config(config: TrainConfig, num_dense: int, num_sparse: int, dim: int
                  ) -> DLRMConfig:
    """The model a new run trains: the options given, DLRM's Kaggle setup for the others,
    the default bottom MLP (512-256-64-16) ending in the layout's embedding dimension
    (widths given explicitly are taken as they are, and checked by the model)."""
    d = DLRMConfig()
    bottom = config.bottom_mlp or (*d.bottom_mlp[:-1], dim)
    return DLRMConfig(num_dense, num_sparse, dim, bottom, config.top_mlp or d.top_mlp,
                      config.list_pooling or d.list_pooling)


def _same_layout_everywhere(ctx: dp.DistContext, layout_id: str) -> None:
    """Each rank resolves ``ROOT/layouts/LATEST`` on its own: a layout published while
    the ranks start would split them over two layouts (a crash on other table sizes,
    silent divergence on equal ones). Refused on every rank before the first step."""
    ids = dp.all_gather_objects(ctx, layout_id)
    if len(set(ids)) > 1:
        ranks = ", ".join(f"rank {r}: {i}" for r, i in enumerate(ids))
        raise TrainerError(f"the ranks resolved different layouts ({ranks}), a layout was "
                           "published while they started; pass the manifest path of one "
                           "layout instead of the root")


def _check_model_options(config: TrainConfig, saved: DLRMConfig, path: str,
                         has_lists: bool) -> None:
    """A resumed run takes its model's shape from the checkpoint; a shape option given
    that says otherwise is refused rather than silently ignored."""
    for option in ("bottom_mlp", "top_mlp", "list_pooling"):
        given, had = getattr(config, option), getattr(saved, option)
        if (option == "bottom_mlp" and not saved.num_dense) or (
                option == "list_pooling" and not has_lists):
            continue  # no bottom MLP (no dense features), no lists: the option does not apply
        if given is not None and given != had:
            flag = "--" + option.replace("_", "-")
            had_s, given_s = ("-".join(map(str, v)) if isinstance(v, tuple) else str(v)
                              for v in (had, given))
            raise CheckpointError(f"{path} was trained with {flag} {had_s}, not {given_s}; "
                                  f"resume without {flag} (or with {had_s}), or train a new "
                                  "model without --resume")


class Trainer:
    """One training run over one layout (one rank of it under torchrun)."""

    def __init__(self, config: TrainConfig, ctx: dp.DistContext | None = None) -> None:
        self.cfg = config
        self.ctx = ctx
        self.rank, self.world = (ctx.rank, ctx.world) if ctx else (0, 1)
        self.is_main = self.rank == 0
        if config.cuda_graphs and ctx is not None:
            raise TrainerError("--cuda-graphs records the hot steps of one process: not "
                               "under torchrun")
        # Everything that can refuse the run does so here, before the first step.
        if ckpt_io.nothing_saved_yet(config.resume, config.checkpoint):
            log.info("%s holds no checkpoint yet: starting the run there", config.resume)
            config = self.cfg = replace(config, resume=None)
        resume = ckpt_io.load(config.resume) if config.resume else None
        self.reader = LayoutReader(config.target)
        m = self.reader.manifest
        # --max-steps alone sets the run's length, and the decay ends there; with --epochs
        # it only stops the run early (resumed later, the same schedule continues). A resume
        # given neither continues the checkpoint's run: its --max-steps, or its epochs.
        saved = resume["config"] if resume else {}
        if config.epochs is None and config.max_steps is None \
                and type(saved.get("max_steps")) is int and saved.get("steps_set_length"):
            config = self.cfg = replace(config, max_steps=saved["max_steps"])
        self._steps_set_length = config.epochs is None and config.max_steps is not None
        if config.epochs is None:  # --max-steps alone trains that many steps
            config = self.cfg = replace(config, epochs=_epochs_for(
                config.max_steps, len(self.reader.refs("train")), self.world, resume))
        if ctx is not None:
            _same_layout_everywhere(ctx, m.layout_id)
        self.fingerprint = ckpt_io.vocab_fingerprint(self.reader)
        if resume is not None:
            with _named_damage(resume["path"]):
                ckpt_io.check_vocab(resume["vocab"], self.fingerprint, resume["layout_id"],
                                    m.layout_id)
            for option in ("optimizer", "seed"):  # the seed orders every epoch's minibatches
                saved, given = resume["config"].get(option), getattr(config, option)
                if saved != given:
                    shown = (repr if str(saved) == str(given) else str)(saved)  # "0" vs 0
                    raise CheckpointError(
                        f"{resume['path']} was trained with --{option} {shown}, not {given}; "
                        f"resume with --{option} {shown}")
        self.device = resolve_device(config.device, ctx)
        sch = self.reader.schema
        with _named_damage(resume["path"] if resume else None):
            self.model_config = (DLRMConfig.from_dict(resume["model_config"]) if resume else
                                 _model_config(config, len(sch.dense), sch.num_sparse,
                                               self.reader.dim))
        mc = self.model_config
        if resume is not None:
            _check_model_options(config, mc, resume["path"], bool(sch.lists))
        if (mc.num_dense, mc.num_sparse, mc.embedding_dim) != (
                len(sch.dense), sch.num_sparse, self.reader.dim):
            raise CheckpointError("the checkpoint's model does not fit this layout's columns")

        # -- model, tables, optimizers ---------------------------------------------------
        tables = [TableSpec(t.name, t.vocab_size, t.hot_rows) for t in m.tables]
        self.placement = Placement(config.placement, tables, self.reader.scalar_tables,
                                   self.reader.list_tables, mc.embedding_dim,
                                   config.optimizer, self.device, mc.list_pooling)
        self.compute = self.placement.compute
        if config.placement == "fae" and (over := hot_budget_overrun(m, config.optimizer)) \
                and self.is_main:
            log.warning(over)
        if config.cuda_graphs and sch.lists and self.is_main:
            log.warning("layout %s has list columns, whose lengths vary per minibatch: "
                        "--cuda-graphs records none of its steps (they run eagerly)",
                        m.layout_id)
        if not sch.dense and config.bottom_mlp is not None and self.is_main:
            log.warning("layout %s has no dense features, so the model has no bottom MLP: "
                        "--bottom-mlp is ignored", m.layout_id)
        if not sch.dense and config.optimizer == "sgd" and resume is None and self.is_main:
            log.warning("layout %s has no dense features: its embeddings alone carry the "
                        "signal, and SGD barely moves rarely seen rows (on the real Taobao "
                        "sample it stayed at the constant prediction); train it with "
                        "--optimizer adagrad --lr 0.02", m.layout_id)
        with _named_damage(resume["path"] if resume else None):  # a forged width: no model
            self.model = DLRM(mc, seed=config.seed).to(self.compute)
        g = torch.Generator().manual_seed(config.seed + 1)
        for t in m.tables:  # one table at a time: never a second copy of all tables
            self.placement.fill_table(t.name, init_table(t.vocab_size, mc.embedding_dim, g))
        params = list(self.model.parameters())
        self.optimizer: torch.optim.Optimizer = (
            torch.optim.SGD(params, lr=config.lr) if config.optimizer == "sgd"
            else torch.optim.Adagrad(params, lr=config.lr, eps=1e-10))
        self.pin = self.device.type == "cuda" and config.placement != "cpu"
        self._graphs: dict[int, HotStepGraph] = {}  # by store: hot steps as CUDA graphs

        if config.schedule == "adaptive" and not self.reader.refs("val"):
            raise TrainerError("--schedule adaptive needs validation minibatches in the layout "
                               f"(layout {m.layout_id} has none): its held-out loss decides "
                               "the switching rate")
        if config.checkpoint and self.is_main:
            ckpt_io.check_folder(config.checkpoint, resume["path"] if resume else None)
        elif resume is not None and self.is_main:
            log.warning("resuming %s without --checkpoint: this run saves no checkpoints "
                        "(pass --checkpoint %s to continue that folder)", resume["path"],
                        Path(resume["path"]).parent)

        # -- schedule and counters -------------------------------------------------------
        hot = self.reader.refs("train", "hot")
        cold = [r for r in self.reader.refs("train") if self.reader.kind(r) != "hot"]
        self.schedule = HotColdSchedule(hot, cold, ScheduleConfig(
            config.schedule, config.switch_every, 1, config.adapt_max, config.adapt_every,
            config.adapt_tolerance, config.seed), config.epochs)
        # Exact for one process; under data parallel a step takes up to `world` minibatches
        # of one kind, so an epoch takes at least this many steps.
        self.steps_per_epoch = math.ceil(self.schedule.batches_per_epoch / self.world)
        self.step = self.samples = 0
        self.batches = 0  # minibatches trained, over all ranks: the decay's clock
        self._last_lr = config.lr
        # 0-based: the epoch the loop is in (it moves on at an epoch's end, before that
        # epoch-end evaluation and checkpoint), and the epoch of the last step trained,
        # which logs and summaries report from 1.
        self.epoch = self.step_epoch = 0
        self.queue: deque[tuple[int, list[BatchRef], str]] = deque()  # handed out, untrained
        self.seconds = {"hot": 0.0, "cold": 0.0, "eval": 0.0, "probe": 0.0}
        self.switches = 0
        self.last_eval: dict[str, Any] = {}
        self.last_checkpoint: str | None = None
        self._phase: str | None = None  # the phase being timed
        self._last_phase: str | None = None  # of the last step, kept across evaluations and resumes
        self._phase_start = 0.0
        self._loss_sum = torch.zeros((), device=self.compute)
        self._loss_steps = 0
        self._mark = (0, 0, 0.0)  # step, samples, train seconds at the last log line
        if resume is not None:
            with _named_damage(resume["path"]):
                self._restore(resume)
        # The summary's rate counts this process's samples and seconds.
        self._samples_at_start, self._seconds_at_start = self.samples, self.train_seconds

    # -- learning rate -------------------------------------------------------------------
    def lr_at(self, step: int, batches: int) -> float:
        """The learning rate of step ``step``, taken after ``batches`` trained minibatches.

        Warmup counts steps. The decay runs from the end of the warmup to
        ``--decay-steps`` steps, or by default to the end of the last epoch, counted in
        minibatches: under data parallel a step takes up to one minibatch per rank, all
        of one kind, so the number of steps depends on the hot/cold runs (and, adaptive,
        on the probes), while the number of minibatches does not. (Counting steps made
        two ranks reach lr 0 halfway through the run.) In one process the two clocks agree.
        """
        c = self.cfg
        if step < c.warmup_steps:
            return c.lr * (step + 1) / c.warmup_steps
        if c.decay == "none":
            return c.lr
        if c.decay_steps:
            progress = min(1.0, (step - c.warmup_steps) / (c.decay_steps - c.warmup_steps))
        else:
            total = c.epochs * self.schedule.batches_per_epoch
            if self._steps_set_length:  # the run ends there (in minibatches, at most)
                total = min(total, c.max_steps * self.world)
            warm = min(c.warmup_steps * self.world, total - 1)  # minibatches of the warmup
            progress = min(1.0, max(0, batches - warm) / max(1, total - warm))
        if c.decay == "linear":
            return c.lr * (1.0 - progress)
        return c.lr * 0.5 * (1.0 + math.cos(math.pi * progress))

    # -- one step ------------------------------------------------------------------------
    def train_step(self, batch: Batch | None, kind: str, total_rows: int) -> torch.Tensor:
        """One optimizer step; ``batch`` None is a data-parallel rank without a minibatch.

        The loss is the sum of per-sample losses over ``total_rows`` (the rows of the whole
        step over all ranks), so gradients summed over ranks are the big-batch gradient.
        """
        lr = self._last_lr = self.lr_at(self.step, self.batches)
        self.placement.prepare(kind)
        if not self.model.training:  # after an evaluation (a walk over every module)
            self.model.train()
        if (graph := self._graph_for(batch, kind)) is not None:
            assert batch is not None
            return graph.step(batch, lr)
        self.optimizer.zero_grad(set_to_none=True)
        if batch is not None:
            embedded, lookup = self.placement.lookup(batch, kind)
            logits = self.model(batch.dense.to(self.compute, non_blocking=True), embedded)
            label = batch.label.to(self.compute, non_blocking=True)
            loss = F.binary_cross_entropy_with_logits(logits, label, reduction="sum") / total_rows
            loss.backward()
        else:
            lookup = self.placement.empty_lookup(kind)
            loss = torch.zeros((), device=self.compute)
        uniq, grad = lookup.uniq, self.placement.row_grads(lookup)
        if self.ctx is not None:
            dp.all_reduce_grads(self.ctx, list(self.model.parameters()))
            uniq, grad = dp.all_gather_rows(self.ctx, uniq, grad)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.step()
        self.placement.apply(lookup, uniq, grad, lr)
        return loss.detach()

    def _graph_for(self, batch: Batch | None, kind: str) -> HotStepGraph | None:
        """The recorded step that trains ``batch`` (``--cuda-graphs``), or None: eager."""
        if not self.cfg.cuda_graphs or batch is None:
            return None
        store = self.placement.store_for(kind)
        if store.device != self.compute or (self.cfg.placement == "fae" and kind != "hot"):
            return None
        graph = self._graphs.get(id(store))
        if graph is None:
            graph = self._graphs[id(store)] = HotStepGraph(
                self.model, self.optimizer, store, self.placement.scalar_bases(store),
                self.reader.manifest.batch_size, len(self.reader.schema.dense),
                capture=self.compute.type == "cuda")
        return graph if graph.fits(batch) else None

    # -- evaluation ----------------------------------------------------------------------
    @torch.no_grad()
    def predict(self, refs: list[BatchRef]) -> tuple[np.ndarray, np.ndarray]:
        """Labels and click probabilities of ``refs`` (this rank's share of them)."""
        self.placement.prepare("all")
        self.model.eval()
        labels, probs = [], []
        for batch in stream(self.reader, refs[self.rank::self.world], self.cfg.prefetch, self.pin):
            embedded, _ = self.placement.lookup(batch, "all", train=False)
            logits = self.model(batch.dense.to(self.compute, non_blocking=True), embedded)
            probs.append(torch.sigmoid(logits).float())
            labels.append(batch.label)
        if not probs:
            return np.zeros(0, np.float32), np.zeros(0, np.float32)
        return torch.cat(labels).numpy(), torch.cat(probs).cpu().numpy()

    def evaluate(self, split: str) -> dict[str, float] | None:
        refs = self.reader.refs(split)[: self.cfg.eval_batches]
        if not refs:
            return None
        y, p = self.predict(refs)
        if self.ctx is not None:
            parts = dp.all_gather_objects(self.ctx, (y, p))
            y = np.concatenate([a for a, _ in parts])
            p = np.concatenate([b for _, b in parts])
        return summarize(y, p)

    def _probe(self) -> None:
        """Held-out loss for the adaptive schedule (every rank, same minibatches)."""
        self._pause()
        start = time.perf_counter()
        refs = self.reader.refs("val")[: self.cfg.adapt_batches]
        if not refs:
            raise TrainerError("--schedule adaptive needs validation minibatches in the layout")
        rank, world = self.rank, self.world
        self.rank, self.world = 0, 1  # every rank scores all probe minibatches
        try:
            y, p = self.predict(refs)
        finally:
            self.rank, self.world = rank, world
        loss = log_loss(y, p)
        if self.ctx is not None:
            loss = dp.all_reduce_sum(self.ctx, loss) / self.world
        self.schedule.report(loss)
        self.seconds["probe"] += time.perf_counter() - start
        self._resume_timer()

    def _evaluate_all(self, why: str) -> None:
        if self.last_eval.get("step") == self.step and self.step > 0:
            # Already evaluated (and checkpointed) at this step: an --eval-every interval
            # that ends an epoch, or a resume from an epoch-end checkpoint.
            self.last_eval["why"] = f"{self.last_eval['why']}, {why}"
            return
        self._pause()
        start = time.perf_counter()
        result = {s: self.evaluate(s) for s in ("val", "test")}
        self.seconds["eval"] += time.perf_counter() - start
        self.last_eval = {"step": self.step, "epoch": self.step_epoch + 1, "why": why,
                          **{k: v for k, v in result.items() if v is not None}}
        if self.is_main:
            log.info("eval %s step %d | %s", why, self.step, " | ".join(
                f"{s} auc {r['auc']:.4f} logloss {r['logloss']:.4f} acc {r['accuracy']:.4f}"
                for s, r in result.items() if r is not None) or "no val/test minibatches")
        if self.cfg.checkpoint:
            self.save_checkpoint()
        self._resume_timer()

    # -- timing --------------------------------------------------------------------------
    def _sync_device(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _pause(self) -> None:
        if self._phase is not None:
            self._sync_device()
            self.seconds[self._phase] += time.perf_counter() - self._phase_start

    def _resume_timer(self) -> None:
        self._phase_start = time.perf_counter()

    def _enter(self, kind: str) -> None:
        """Start a hot or cold phase: close the old one's clock, sync rows, log the switch."""
        phase = "hot" if kind == "hot" else "cold"
        if phase == self._phase:
            return
        self._pause()
        if self._last_phase not in (None, phase):
            self.switches += 1
            if self.is_main:
                log.info("step %d: switch %s -> %s", self.step, self._last_phase, phase)
        self._phase = self._last_phase = phase
        self.placement.prepare(kind)  # timed by the placement as sync
        self._resume_timer()

    @property
    def train_seconds(self) -> float:
        return self.seconds["hot"] + self.seconds["cold"] + self.placement.sync_seconds

    # -- the loop ------------------------------------------------------------------------
    def _fill(self, pre: Prefetcher) -> None:
        """Hand out minibatches ahead of training (not past a due held-out probe)."""
        while len(self.queue) < self.cfg.prefetch and not self.schedule.needs_probe():
            group = self._next_group()
            if group is None:
                return
            self.queue.append(group)
            if self.rank < len(group[1]):
                pre.submit(group[1][self.rank])

    def _next_group(self) -> tuple[int, list[BatchRef], str] | None:
        """Up to ``world`` consecutive minibatches of one kind: one data-parallel step."""
        first = self.schedule.next()
        if first is None:
            return None
        epoch, ref, kind = first
        refs = [ref]
        while len(refs) < self.world and self.schedule.next_kind() == kind:
            nxt = self.schedule.next()
            assert nxt is not None
            refs.append(nxt[1])
        return epoch, refs, kind

    def fit(self) -> dict[str, Any]:
        """Train until the epochs or ``max_steps`` run out; return the summary."""
        cfg = self.cfg
        if self.is_main:
            m = self.reader.manifest
            log.info("layout %s: %d train minibatches (%d hot, %d cold) of %d, placement %s on "
                     "%s, %s, schedule %s, world %d", m.layout_id, self.schedule.batches_per_epoch,
                     len(self.schedule.hot), len(self.schedule.cold), m.batch_size,
                     cfg.placement, self.device, cfg.optimizer, cfg.schedule, self.world)
        with Prefetcher(self.reader, cfg.prefetch, self.pin) as pre:
            for _, refs, _ in self.queue:  # handed out before a checkpoint, not yet trained
                if self.rank < len(refs):
                    pre.submit(refs[self.rank])
            self._resume_timer()
            if (self.schedule.done and not self.queue
                    or cfg.max_steps is not None and self.step >= cfg.max_steps) \
                    and self.is_main:
                log.warning("nothing left to train: the run is at step %d, epoch %d of %d%s; "
                            "raise --epochs or --max-steps to train on", self.step,
                            min(self.step_epoch + 1, cfg.epochs), cfg.epochs,
                            "" if cfg.max_steps is None else f", --max-steps {cfg.max_steps}")
            while cfg.max_steps is None or self.step < cfg.max_steps:
                self._fill(pre)
                if not self.queue:
                    if self.schedule.needs_probe():
                        self._probe()
                        continue
                    break
                if self.queue[0][0] != self.epoch:
                    # Before the next epoch's first minibatch leaves the queue: a checkpoint
                    # written here must still list it as pending.
                    ended, self.epoch = self.epoch, self.queue[0][0]
                    self._evaluate_all(f"epoch {ended + 1} end")
                epoch, refs, kind = self.queue.popleft()
                batch = pre.get() if self.rank < len(refs) else None
                self._enter(kind)
                total = sum(self.reader.rows(r) for r in refs)
                self._loss_sum += self.train_step(batch, kind, total)
                self._loss_steps += 1
                self.step += 1
                self.step_epoch = epoch
                self.batches += len(refs)
                self.samples += total
                if cfg.log_every and self.step % cfg.log_every == 0:
                    self._log_interval()
                if cfg.eval_every and self.step % cfg.eval_every == 0:
                    self._evaluate_all("interval")
            self._pause()
            self._phase = None
        done = self.schedule.done and not self.queue
        if self._loss_steps:
            self._log_interval()
        self._evaluate_all(f"epoch {self.step_epoch + 1} end" if done else "end")
        if self.is_main and not all(math.isfinite(self.last_eval[s]["logloss"])
                                    for s in ("val", "test") if s in self.last_eval):
            log.warning("the model's predictions are not finite: training diverged; lower --lr")
        return self.summary()

    def _log_interval(self) -> None:
        self._pause()
        loss = self._loss_sum.item() / max(1, self._loss_steps)  # a device sync, once per line
        if self.ctx is not None:
            loss = dp.all_reduce_sum(self.ctx, loss)
        step0, samples0, secs0 = self._mark
        secs = self.train_seconds
        rate = (self.samples - samples0) / max(secs - secs0, 1e-9)
        if self.is_main:
            total = max(secs, 1e-9)
            log.info("step %d | epoch %d | loss %.4f | %s samples/s | lr %.4g | hot %.0f%% "
                     "cold %.0f%% sync %.0f%% | switches %d | run %d | phase %s",
                     self.step, self.step_epoch + 1, loss, f"{rate:,.0f}", self._last_lr,
                     100 * self.seconds["hot"] / total, 100 * self.seconds["cold"] / total,
                     100 * self.placement.sync_seconds / total, self.switches,
                     self.schedule.run_length, self._phase or "-")
        self._mark = (self.step, self.samples, secs)
        self._loss_sum.zero_()
        self._loss_steps = 0
        self._resume_timer()

    def summary(self) -> dict[str, Any]:
        secs = self.train_seconds
        return _json_safe({
            "layout_id": self.reader.manifest.layout_id, "placement": self.cfg.placement,
            "device": str(self.device), "optimizer": self.cfg.optimizer,
            "schedule": self.cfg.schedule, "world_size": self.world, "steps": self.step,
            "epoch": self.step_epoch + 1, "samples": self.samples, "train_seconds": secs,
            "samples_per_s": ((self.samples - self._samples_at_start)
                              / (secs - self._seconds_at_start)
                              if secs > self._seconds_at_start else None),
            "seconds": {**self.seconds, "sync": self.placement.sync_seconds},
            "switches": self.switches, "syncs": self.placement.copies,
            "run_length": self.schedule.run_length, "val": self.last_eval.get("val"),
            "test": self.last_eval.get("test"), "checkpoint": self.last_checkpoint,
        })

    # -- checkpoints ---------------------------------------------------------------------
    def save_checkpoint(self) -> None:
        """Write a checkpoint (rank 0; every rank syncs its hot rows back first)."""
        weight, state = self.placement.full_tables()
        if not self.is_main or not self.cfg.checkpoint:
            return
        path = ckpt_io.save(self.cfg.checkpoint, self.step, {
            "config": {**self.cfg.to_dict(), "steps_set_length": self._steps_set_length},
            "model_config": self.model_config.to_dict(),
            "step": self.step, "epoch": self.epoch, "samples": self.samples,
            "layout_id": self.reader.manifest.layout_id, "vocab": self.fingerprint,
            "model": self.model.state_dict(), "dense_optimizer": self.optimizer.state_dict(),
            "embedding": {"weight": weight, "state": state},
            "schedule": self.schedule.state_dict(),
            "pending": [[e, [[r.shard, r.group] for r in refs], k] for e, refs, k in self.queue],
            "rng": {"torch": torch.get_rng_state()}, "world_size": self.world,
            "counters": {"seconds": dict(self.seconds), "switches": self.switches,
                         "sync_seconds": self.placement.sync_seconds,
                         "syncs": self.placement.copies, "last_eval": self.last_eval,
                         "phase": self._last_phase, "step_epoch": self.step_epoch},
        })
        self.last_checkpoint = str(path)
        log.info("checkpoint step %d -> %s", self.step, path)

    def _kind(self, ref: BatchRef) -> str:
        """The schedule's kind of a training minibatch: hot, or cold (every other)."""
        return "hot" if self.reader.kind(ref) == "hot" else "cold"

    def _restore(self, c: dict[str, Any]) -> None:
        try:
            self.model.load_state_dict(c["model"])
        except RuntimeError as exc:  # e.g. a checkpoint of an older model shape
            first = str(exc).strip().splitlines()[0]
            raise CheckpointError(
                f"{c['path']}: its model weights do not fit the model it describes ({first}); "
                "it was written by another version of the trainer. Start without --resume."
            ) from None
        if not all(torch.isfinite(p).all() for p in self.model.state_dict().values()):
            raise CheckpointError(f"{c['path']}: its model weights are not all finite")
        self.optimizer.load_state_dict(c["dense_optimizer"])
        self.placement.load_tables(c["embedding"]["weight"], c["embedding"]["state"])
        self.step, self.epoch, self.samples = int(c["step"]), int(c["epoch"]), int(c["samples"])
        self.step_epoch = self.epoch
        same = c["layout_id"] == self.reader.manifest.layout_id
        # On another layout the epoch restarts: the one of the first untrained minibatch.
        pending_epochs = [int(e) for e, _, _ in c["pending"]]
        self.schedule.load_state_dict(c["schedule"], same_batches=same,
                                      restart_epoch=min(pending_epochs, default=None))
        if same:  # regrouped: the checkpoint may come from another world size
            train, seen = set(self.reader.refs("train")), set()
            for e, refs, k in c["pending"]:
                for s, g in refs:
                    ref = BatchRef(int(s), int(g))
                    if ref not in train or ref in seen or k != self._kind(ref) \
                            or not self.epoch <= int(e) <= self.schedule.epoch:
                        raise CheckpointError(f"{c['path']}: its pending minibatch (shard {s}, "
                                              f"row group {g}, {k}, epoch {e}) is not one of "
                                              "this layout's training minibatches left")
                    seen.add(ref)
                    last = self.queue[-1] if self.queue else None
                    if last and last[0] == int(e) and last[2] == k and len(last[1]) < self.world:
                        last[1].append(BatchRef(int(s), int(g)))
                    else:
                        self.queue.append((int(e), [BatchRef(int(s), int(g))], str(k)))
        elif self.is_main:
            log.warning("resuming %s from layout %s on layout %s (same vocabulary): epoch %d "
                        "restarts over this layout's minibatches", c["path"], c["layout_id"],
                        self.reader.manifest.layout_id, self.schedule.epoch + 1)
        torch.set_rng_state(c["rng"]["torch"])
        if self.queue and self.queue[-1][0] >= self.cfg.epochs:  # resumed with fewer --epochs
            dropped = sum(len(refs) for e, refs, _ in self.queue if e >= self.cfg.epochs)
            self.queue = deque(g for g in self.queue if g[0] < self.cfg.epochs)
            if self.is_main:
                log.warning("%s: the run ends with epoch %d (--epochs, or what --max-steps "
                            "needs), before its %d pending minibatches of later epochs; they "
                            "are not trained", c["path"], self.cfg.epochs, dropped)
        self.batches = self.schedule.emitted - sum(len(refs) for _, refs, _ in self.queue)
        counters = c.get("counters")  # absent in checkpoints of earlier versions
        if counters:
            self.seconds.update({k: float(v) for k, v in counters["seconds"].items()})
            self.switches = int(counters["switches"])
            self.placement.sync_seconds = float(counters["sync_seconds"])
            self.placement.copies = int(counters["syncs"])
            self.last_eval = dict(counters["last_eval"])
            self._last_phase = counters["phase"]
            self.step_epoch = int(counters.get("step_epoch", self.step_epoch))
        self._mark = (self.step, self.samples, self.train_seconds)
        if self.is_main:
            log.info("resumed %s at step %d, epoch %d", c["path"], self.step,
                     self.step_epoch + 1)


def _epochs_for(max_steps: int | None, train_batches: int, world: int,
                resume: dict[str, Any] | None = None) -> int:
    """Epochs when ``--epochs`` is not given: enough for ``max_steps`` steps, counted from
    where a resumed checkpoint stands; without ``max_steps`` 1, or the checkpoint's. A
    step takes up to one minibatch per rank, so an epoch has at least
    ceil(batches / world) steps: enough."""
    per_epoch = math.ceil(train_batches / world)
    saved = resume["config"].get("epochs") if resume else None
    if not max_steps or per_epoch == 0:
        return saved if type(saved) is int and saved >= 1 else 1
    if resume is None:
        return max(1, math.ceil(max_steps / per_epoch))
    left = max(0, max_steps - int(resume["step"]))
    return int(resume["epoch"]) + 1 + math.ceil(left / per_epoch)


@contextlib.contextmanager
def _named_damage(path: str | None) -> Iterator[None]:
    """A forged or damaged checkpoint field (a wrong type, a width no model can have, a
    tensor of another shape) as one CheckpointError naming the file, not a traceback
    from deep inside torch."""
    if path is None:
        yield
        return
    try:
        yield
    except CheckpointError:
        raise
    except (TrainerError, KeyError, TypeError, ValueError, IndexError, AttributeError,
            RuntimeError, ZeroDivisionError, OverflowError) as exc:
        first = first_line(exc)[:200]
        raise CheckpointError(f"{path}: a damaged checkpoint ({type(exc).__name__}: {first}); "
                              "resume from another checkpoint") from None


def _json_safe(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def train(config: TrainConfig, ctx: dp.DistContext | None = None) -> dict[str, Any]:
    """Verify, build and train; the summary of :meth:`Trainer.fit`."""
    return Trainer(config, ctx).fit()
