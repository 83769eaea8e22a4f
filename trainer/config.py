"""Every option of a training run (the defaults of ``fae-train``'s flags come from these
fields) and the choice of device."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from trainer.distributed import DistContext
from trainer.embedding import SPARSE_OPTIMIZERS
from trainer.errors import TrainerError
from trainer.placement import MODES

DECAYS = ("none", "linear", "cosine")
DEVICES = ("auto", "cpu", "cuda")


@dataclass
class TrainConfig:
    target: str  # manifest.json, a layout folder, or a storage root (its LATEST layout)
    placement: str = "fae"
    optimizer: str = "sgd"
    lr: float = 0.1
    warmup_steps: int = 0
    decay: str = "none"  # after warmup: none | linear | cosine (to 0 at decay_steps)
    decay_steps: int | None = None  # default: the run's end (epochs, or max_steps alone)
    epochs: int | None = None  # None: 1, or with max_steps as many as it needs
    max_steps: int | None = None
    eval_every: int = 0  # 0: evaluate at epoch ends only
    eval_batches: int | None = None  # cap on val/test minibatches per evaluation
    log_every: int = 50
    checkpoint: str | None = None  # folder
    resume: str | None = None  # checkpoint file or folder
    schedule: str = "fixed"
    switch_every: int = 8
    adapt_every: int = 50
    adapt_tolerance: float = 0.01
    adapt_batches: int = 4
    adapt_max: int = 1024
    seed: int = 0
    device: str = "auto"
    prefetch: int = 4
    cuda_graphs: bool = False  # record hot steps as CUDA graphs (trainer/graphs.py)
    # Model shape; None: DLRM's Kaggle default (the bottom MLP ending in the layout's
    # embedding dimension), or on resume the checkpoint's. Given, it must agree with a
    # checkpoint's.
    bottom_mlp: tuple[int, ...] | None = None
    top_mlp: tuple[int, ...] | None = None
    list_pooling: str | None = None

    def __post_init__(self) -> None:
        checks = [
            (self.placement in MODES, f"placement {self.placement!r}: use {'|'.join(MODES)}"),
            (self.optimizer in SPARSE_OPTIMIZERS,
             f"optimizer {self.optimizer!r}: use {'|'.join(SPARSE_OPTIMIZERS)}"),
            (self.decay in DECAYS, f"decay {self.decay!r}: use {'|'.join(DECAYS)}"),
            (self.device in DEVICES, f"device {self.device!r}: use {'|'.join(DEVICES)}"),
            (math.isfinite(self.lr) and self.lr > 0, f"lr ({self.lr}) must be finite and > 0"),
            (0 <= self.seed < 2**63, f"seed ({self.seed}) must be in [0, 2**63)"),
            (math.isfinite(self.adapt_tolerance) and self.adapt_tolerance >= 0,
             f"adapt_tolerance ({self.adapt_tolerance}) must be finite and >= 0"),
            *((value is None or value >= 1, f"{name} ({value}) must be >= 1") for name, value in (
                ("eval_batches", self.eval_batches), ("decay_steps", self.decay_steps))),
            (self.epochs is None or self.epochs >= 1, f"epochs ({self.epochs}) must be >= 1"),
            (self.max_steps is None or self.max_steps >= 0,
             f"max_steps ({self.max_steps}) must be >= 0"),
            *((value >= 0, f"{name} ({value}) must be >= 0") for name, value in (
                ("warmup_steps", self.warmup_steps), ("eval_every", self.eval_every),
                ("log_every", self.log_every))),
            *((value >= 1, f"{name} ({value}) must be >= 1") for name, value in (
                ("prefetch", self.prefetch), ("adapt_batches", self.adapt_batches),
                ("switch_every", self.switch_every), ("adapt_every", self.adapt_every),
                ("adapt_max", self.adapt_max))),
            (not self.cuda_graphs or self.placement in ("fae", "gpu"),
             f"--cuda-graphs needs --placement fae or gpu (the hot rows on the accelerator), "
             f"not {self.placement}"),
            (self.decay_steps is None or self.decay == "none"
             or self.decay_steps > self.warmup_steps,
             f"decay_steps ({self.decay_steps}) must be larger than warmup_steps "
             f"({self.warmup_steps}): the decay runs from the end of the warmup to it"),
        ]
        for ok, message in checks:
            if not ok:
                raise TrainerError(message)
        for name in ("bottom_mlp", "top_mlp"):
            if getattr(self, name) is not None:
                setattr(self, name, tuple(getattr(self, name)))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for name in ("bottom_mlp", "top_mlp"):
            d[name] = None if d[name] is None else list(d[name])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known})


def resolve_device(name: str, ctx: DistContext | None = None) -> torch.device:
    if ctx is not None:
        return ctx.device
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainerError("--device cuda, but torch sees no CUDA device (a CPU build?)")
    if name == "cuda" or (name == "auto" and torch.cuda.is_available()):
        return torch.device("cuda")
    return torch.device("cpu")
