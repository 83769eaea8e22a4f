"""FAE's hot/cold scheduler: the order in which an epoch's minibatches are trained.

Policy. Each epoch shuffles the hot and the cold training minibatches separately (seeded
by ``(seed, epoch)``) and trains them in *rounds*: a run of hot minibatches, then a run of
cold ones. The more numerous kind is split evenly over the rounds left
(``ceil(left / N)`` rounds of at most ``N``, ``switch_every``); the other kind follows it
in proportion, its ``j``-th minibatch placed where the more numerous kind has reached
``(j + 1/2) / count`` of its minibatches. So both kinds run out together and the hot share
stays even through the epoch. When the rarer kind has fewer minibatches than there are
rounds, some rounds get none of it and the runs of the other kind between two of its
minibatches grow beyond ``N`` (to about ``more / fewer``): spread out, not front-loaded
(rounding each round's share up once trained every hot minibatch of a Taobao layout
with 2 hot and 43 cold ones in the first 4 steps). Every
minibatch is taken exactly once per epoch: the schedule is a seeded permutation of all
training minibatches. A round boundary is where the placement syncs (hot rows copied
between devices); fewer rounds mean fewer syncs, longer runs mean the model sees one kind
for longer, which can cost accuracy. Each switch is logged by the training loop, where
the copy happens and is timed.

Modes and knobs:

- ``fixed``: ``N = switch_every`` for the whole run.
- ``adaptive``: start switching often (``N = adapt_min``, default 1) and, at a round
  boundary at least ``adapt_every`` minibatches after the last probe, ask the trainer for
  a held-out loss (a fixed few validation minibatches). The first probe sets the
  reference, the loss under frequent switching; afterwards the reference is the best
  held-out loss seen so far. A probe within ``tolerance`` (relative) of the reference
  doubles ``N`` (up to ``adapt_max``): switching less did not hurt. A probe above it
  halves ``N`` (down to ``adapt_min``): switch more often again. ``N`` carries over epochs.

The scheduler does no I/O and holds no model: :meth:`HotColdSchedule.next` hands out one
minibatch at a time, :meth:`needs_probe` says when the next one must wait for a held-out
loss, :meth:`report` takes it. :meth:`state_dict` captures everything for a checkpoint.
"""

from __future__ import annotations

import logging
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from trainer.data import BatchRef
from trainer.errors import TrainerError

log = logging.getLogger(__name__)

MODES = ("fixed", "adaptive")


@dataclass(frozen=True)
class ScheduleConfig:
    mode: str = "fixed"
    switch_every: int = 8  # fixed: run length N (minibatches)
    adapt_min: int = 1  # adaptive: first and smallest N
    adapt_max: int = 1024  # adaptive: largest N
    adapt_every: int = 50  # adaptive: minibatches between held-out probes
    tolerance: float = 0.01  # adaptive: relative held-out loss slack
    seed: int = 0

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise TrainerError(f"schedule {self.mode!r} unknown: use one of {', '.join(MODES)}")
        for name in ("switch_every", "adapt_min", "adapt_max", "adapt_every"):
            if getattr(self, name) < 1:
                raise TrainerError(f"{name} ({getattr(self, name)}) must be >= 1")
        if self.adapt_min > self.adapt_max:
            raise TrainerError(f"adapt_min ({self.adapt_min}) must be <= adapt_max "
                               f"({self.adapt_max})")
        if self.tolerance < 0:
            raise TrainerError(f"tolerance ({self.tolerance}) must be >= 0")


def _round_sizes(hot: int, hot_pos: int, cold: int, cold_pos: int, run: int
                 ) -> tuple[int, int]:
    """Minibatches of each kind in the next round (see the module docstring): the kind
    with more minibatches (hot on a tie) is split into rounds of at most ``run``; the
    other takes its share of the same progress, rounded to the nearest."""
    more_hot = hot >= cold
    total_m, pos_m, total_f, pos_f = ((hot, hot_pos, cold, cold_pos) if more_hot
                                      else (cold, cold_pos, hot, hot_pos))
    left_m = total_m - pos_m
    n_m = math.ceil(left_m / max(1, math.ceil(left_m / run))) if left_m else 0
    reached = pos_m + n_m  # the more numerous kind's progress after this round
    target = total_f if reached >= total_m else (reached * total_f * 2 + total_m) // (2 * total_m)
    n_f = min(total_f - pos_f, max(0, target - pos_f))
    return (n_m, n_f) if more_hot else (n_f, n_m)


class HotColdSchedule:
    """Hands out ``(epoch, ref, kind)`` for ``epochs`` epochs, then ``None``."""

    def __init__(self, hot: list[BatchRef], cold: list[BatchRef], config: ScheduleConfig,
                 epochs: int) -> None:
        if epochs < 1:
            raise TrainerError(f"epochs ({epochs}) must be >= 1")
        if not hot and not cold:
            raise TrainerError("no training minibatches to schedule")
        self.hot, self.cold = list(hot), list(cold)
        self.config = config
        self.epochs = epochs
        self.run_length = config.adapt_min if config.mode == "adaptive" else config.switch_every
        self.epoch = 0
        self.emitted = 0  # minibatches handed out, all epochs
        self.reference: float | None = None  # adaptive: best held-out loss
        self.last_probe = 0  # adaptive: `emitted` at the last probe
        self._hot_pos = self._cold_pos = 0
        self._round: list[tuple[str, int]] = []  # rest of the current round
        self._new_epoch()

    # -- order ----------------------------------------------------------------------------
    def _new_epoch(self) -> None:
        rng = np.random.default_rng([self.config.seed, self.epoch])
        self._hot_order = rng.permutation(len(self.hot))
        self._cold_order = rng.permutation(len(self.cold))

    @property
    def batches_per_epoch(self) -> int:
        return len(self.hot) + len(self.cold)

    def _plan_round(self) -> None:
        n_hot, n_cold = _round_sizes(len(self.hot), self._hot_pos, len(self.cold),
                                     self._cold_pos, self.run_length)
        self._round = (
            [("hot", int(i)) for i in self._hot_order[self._hot_pos:self._hot_pos + n_hot]]
            + [("cold", int(i)) for i in self._cold_order[self._cold_pos:self._cold_pos + n_cold]]
        )
        self._round.reverse()  # popped from the end
        self._hot_pos += n_hot
        self._cold_pos += n_cold

    def _epoch_done(self) -> bool:
        return (not self._round and self._hot_pos >= len(self.hot)
                and self._cold_pos >= len(self.cold))

    def needs_probe(self) -> bool:
        """True when the next minibatch starts a round and a held-out loss is due first."""
        if self.config.mode != "adaptive" or self._round or self.done:
            return False
        return self.emitted - self.last_probe >= self.config.adapt_every

    def next_kind(self) -> str | None:
        """Kind of the next minibatch if it belongs to the current round, else None."""
        return self._round[-1][0] if self._round else None

    @property
    def done(self) -> bool:
        return self.epoch >= self.epochs

    def next(self) -> tuple[int, BatchRef, str] | None:
        """The next minibatch as ``(epoch, ref, kind)``, or None after the last epoch."""
        if self.done:
            return None
        if self.needs_probe():
            raise RuntimeError("a held-out loss is due: call report() first")
        if not self._round:
            self._plan_round()
        kind, i = self._round.pop()
        epoch = self.epoch
        self.emitted += 1
        if self._epoch_done():
            self.epoch += 1
            self._hot_pos = self._cold_pos = 0
            if not self.done:
                self._new_epoch()
        return epoch, (self.hot[i] if kind == "hot" else self.cold[i]), kind

    # -- adaptation -----------------------------------------------------------------------
    def report(self, loss: float) -> None:
        """Take the held-out loss of a probe and adapt the run length."""
        self.last_probe = self.emitted
        old = self.run_length
        cfg = self.config
        if self.reference is None:
            self.reference = loss
            verdict = "reference"
        elif loss <= self.reference * (1.0 + cfg.tolerance):
            self.run_length = min(cfg.adapt_max, self.run_length * 2)
            verdict = "within tolerance"
        else:
            self.run_length = max(cfg.adapt_min, self.run_length // 2)
            verdict = "above tolerance"
        ref = self.reference
        self.reference = min(self.reference, loss)
        log.info("schedule: held-out loss %.5f (reference %.5f, %s) -> run length %d -> %d",
                 loss, ref, verdict, old, self.run_length)

    # -- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "config": asdict(self.config), "epoch": self.epoch, "emitted": self.emitted,
            "run_length": self.run_length, "reference": self.reference,
            "last_probe": self.last_probe, "hot_pos": self._hot_pos,
            "cold_pos": self._cold_pos,
            "round": [[k, i] for k, i in self._round],
            "batches": [len(self.hot), len(self.cold)],
        }

    def load_state_dict(self, state: dict[str, Any], same_batches: bool = True,
                        restart_epoch: int | None = None) -> None:
        """Continue where ``state`` stopped; with ``same_batches=False`` (another layout of
        the same vocabulary) keep the epoch and the run length but restart the epoch, with
        the count of minibatches handed out (the learning-rate decay's clock) at the
        epoch's start in this layout's minibatches. ``restart_epoch``: the epoch to
        restart (default: the state's; minibatches handed out but not trained may have
        taken the state into the next epoch).

        Raises:
            ValueError: ``state`` holds positions this schedule cannot have reached (the
                trainer names the checkpoint).
        """
        self.epoch = int(state["epoch"])
        self.emitted = int(state["emitted"])
        saved_mode = (state.get("config") or {}).get("mode", self.config.mode)
        if self.config.mode == "adaptive" and saved_mode == "adaptive":
            self.run_length = int(state["run_length"])  # else: start at 1, or today's option
        self.reference = state["reference"]
        self.last_probe = int(state["last_probe"])
        bpe = self.batches_per_epoch
        lengths = (self.config.adapt_min, max(self.config.adapt_max, self.config.switch_every))
        if self.epoch < 0 or not 0 <= self.last_probe <= self.emitted \
                or same_batches and not self.epoch * bpe <= self.emitted <= (self.epoch + 1) * bpe \
                or not lengths[0] <= self.run_length <= lengths[1] \
                or not (self.reference is None or isinstance(self.reference, float)
                        and math.isfinite(self.reference)):
            raise ValueError(f"schedule state out of range (epoch {self.epoch}, "
                             f"{self.emitted} minibatches, last probe {self.last_probe}, "
                             f"run length {self.run_length}, reference {self.reference!r})")
        self._new_epoch()
        if same_batches and list(state["batches"]) == [len(self.hot), len(self.cold)]:
            hot_pos, cold_pos = int(state["hot_pos"]), int(state["cold_pos"])
            round_ = [(str(k), int(i)) for k, i in state["round"]]
            bounds = {"hot": len(self.hot), "cold": len(self.cold)}
            if not (0 <= hot_pos <= len(self.hot) and 0 <= cold_pos <= len(self.cold)) or any(
                    k not in bounds or not 0 <= i < bounds[k] for k, i in round_) \
                    or len(set(round_)) != len(round_):
                raise ValueError(
                    f"schedule positions out of range (hot {hot_pos} of {len(self.hot)}, "
                    f"cold {cold_pos} of {len(self.cold)}, round {round_[:3]})")
            self._hot_pos, self._cold_pos, self._round = hot_pos, cold_pos, round_
        else:
            if restart_epoch is not None and restart_epoch != self.epoch:
                self.epoch = restart_epoch
                self._new_epoch()
            self._hot_pos = self._cold_pos = 0
            self._round = []
            self.emitted = self.last_probe = self.epoch * self.batches_per_epoch
