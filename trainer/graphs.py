"""CUDA graphs for hot minibatches (``--cuda-graphs``): one recorded step, replayed.

Measured on an H100, even ``gpu`` placement trained a 2048-row DLRM minibatch in 4-5 ms,
far above its arithmetic: the step is bound by the CPU that launches its ~150 kernels
(Python, the dispatcher, one launch each). A CUDA graph records the whole step once,
lookup, forward, backward, dense and sparse updates, and replays it with one launch.

What a graph needs and how the step provides it:

- Fixed shapes: only full minibatches of a layout without list columns are recorded (the
  last, short minibatch and Taobao histories run eagerly), and ids are deduplicated
  into a buffer as long as the minibatch (:func:`trainer.embedding.dedupe`) instead of
  ``torch.unique``, whose output length is only known on the host.
- Fixed addresses: the minibatch is copied into static input tensors, and the step reads
  and writes the placement's tables, the model's parameters and the optimizer state in
  place (none of them is ever reallocated after the first step).
- No host values: the learning rate is a 0-dim tensor filled before each replay, and the
  dense optimizer is written out with ``torch._foreach_*`` ops, which take it as a
  tensor (``torch.optim``'s ``step`` reads it as a Python number). Its rules are
  ``torch.optim.SGD``'s and ``Adagrad``'s (no momentum, no weight decay, no lr decay),
  rounded in one more step where ``addcdiv_`` may fuse two: SGD agrees to float noise,
  Adagrad closely (it magnifies differences where its accumulators are near zero).
  Adagrad's ``step`` counters, which only lr decay reads, are advanced on the host.
- Warm-up: the first eligible steps run the same step function eagerly (real steps), on
  a side stream as PyTorch's recipe for whole-network capture does, then it is
  captured; a capture that fails leaves eager steps for the rest of the run, with a
  warning.

Hot steps only (``fae``; every step under ``gpu``), one process (no data parallel). On a
CPU there is nothing to capture: the same fixed-shape step runs eagerly, which is how the
tests check its arithmetic against the eager trainer. Not yet measured on a GPU.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from trainer.data import Batch
from trainer.embedding import EmbeddingStore, dedupe

log = logging.getLogger(__name__)

#: Eager runs of the step function before it is captured.
WARMUP_STEPS = 2


class HotStepGraph:
    """The training step of full, list-free minibatches on one accelerator store."""

    def __init__(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 store: EmbeddingStore, scalar_base: torch.Tensor, batch_size: int,
                 num_dense: int, capture: bool) -> None:
        dev = store.device
        self.model, self.optimizer, self.store = model, optimizer, store
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.adagrad = isinstance(optimizer, torch.optim.Adagrad)
        features = int(scalar_base.numel())
        self.base = scalar_base.to(dev)
        self.ids = torch.zeros(features, batch_size, dtype=torch.int64, device=dev)
        self.dense = torch.zeros(batch_size, num_dense, device=dev)
        self.label = torch.zeros(batch_size, device=dev)
        self.lr = torch.zeros((), device=dev)
        self.loss = torch.zeros((), device=dev)
        self.batch_size = batch_size
        self.capture = capture and dev.type == "cuda"
        self.graph: torch.cuda.CUDAGraph | None = None
        self.eager_left = WARMUP_STEPS
        self.replays = 0
        self.failed = False

    def fits(self, batch: Batch) -> bool:
        """Whether ``batch`` has the recorded shape (full, no list columns)."""
        return (batch.rows == self.batch_size and not batch.lists
                and tuple(batch.ids.shape) == tuple(self.ids.shape))

    def step(self, batch: Batch, lr: float) -> torch.Tensor:
        """Train ``batch`` (see :meth:`fits`) at ``lr``; the loss (mean over rows)."""
        self.ids.copy_(batch.ids, non_blocking=True)
        self.dense.copy_(batch.dense, non_blocking=True)
        self.label.copy_(batch.label, non_blocking=True)
        self.lr.fill_(lr)
        if self.graph is None and self.capture and not self.failed and self.eager_left <= 0:
            self._record()
        if self.graph is not None:
            self.graph.replay()
            self.replays += 1
        else:
            self.eager_left -= 1
            self._eager()
        if self.adagrad:  # the counters torch.optim keeps (only lr decay reads them)
            for p in self.params:
                self.optimizer.state[p]["step"] += 1
        return self.loss.clone()

    def _eager(self) -> None:
        """The step run eagerly; before a capture, on a side stream (lazy initialisation
        of cuBLAS and the autograd engine happens off the stream that is captured)."""
        if not self.capture or self.failed:
            self._body()
            return
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._body()
        torch.cuda.current_stream().wait_stream(side)

    def _record(self) -> None:
        graph = torch.cuda.CUDAGraph()
        try:
            torch.cuda.synchronize()
            # thread_local: the prefetch thread pins host memory meanwhile, a CUDA call
            # that would invalidate a capture in the default ("global") mode.
            with torch.cuda.graph(graph, capture_error_mode="thread_local"):
                self._body()
        except Exception as exc:  # noqa: BLE001 - any capture failure: eager from here on
            self.failed = True
            log.warning("--cuda-graphs: recording the hot step failed (%s); hot steps run "
                        "eagerly", str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
            return
        self.graph = graph
        log.info("--cuda-graphs: hot step recorded (%d rows, %d ids)", self.batch_size,
                 self.ids.numel())

    def _body(self) -> None:
        """The whole step on the static tensors: no host sync, no shape from data."""
        store = self.store
        features, rows = self.ids.shape
        for p in self.params:
            p.grad = None  # backward assigns, never accumulates (recorded: its own memory)
        flat = (self.ids + self.base[:, None]).reshape(-1)
        uniq, inverse = dedupe(flat)
        leaf = (store.weight.index_select(0, uniq).index_select(0, inverse)
                .view(features, rows, store.dim).requires_grad_())
        logits = self.model(self.dense, leaf.transpose(0, 1))
        loss = F.binary_cross_entropy_with_logits(logits, self.label, reduction="sum") / rows
        loss.backward()
        self._dense_update([p.grad for p in self.params])
        assert leaf.grad is not None
        grad = torch.zeros(uniq.numel(), store.dim, device=uniq.device)
        grad.index_add_(0, inverse, leaf.grad.reshape(-1, store.dim))
        store.apply(uniq, grad, self.lr, padded=True)
        self.loss.copy_(loss.detach())

    def _dense_update(self, grads: Sequence[torch.Tensor | None]) -> None:
        """``torch.optim.SGD``/``Adagrad``'s update with the learning rate as a tensor."""
        pairs = [(p, g) for p, g in zip(self.params, grads) if g is not None]
        params = [p.detach() for p, _ in pairs]
        grads_ = [g for _, g in pairs]
        if not self.adagrad:  # p + (-lr) * g, as SGD's add_(g, alpha=-lr)
            torch._foreach_add_(params, torch._foreach_mul(grads_, -self.lr))
            return
        eps = self.optimizer.param_groups[0]["eps"]
        sums = [self.optimizer.state[p]["sum"] for p, _ in pairs]
        torch._foreach_addcmul_(sums, grads_, grads_)
        std = torch._foreach_sqrt(sums)
        torch._foreach_add_(std, eps)
        step = torch._foreach_div(grads_, std)
        torch._foreach_mul_(step, -self.lr)
        torch._foreach_add_(params, step)  # p + (-lr) * g / std, as Adagrad's addcdiv_
