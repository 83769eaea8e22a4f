"""FAE trainer: a DLRM-style model trained from an ``fae.layout/v1`` layout.

Hot minibatches (every id in the hot prefix ``[0, k_t)`` of its table) train against small
accelerator-resident hot tables; cold minibatches go through the full CPU tables; a
scheduler interleaves the two. Entry point: ``fae-train`` (:mod:`trainer.cli`).

This package depends on torch, numpy, pyarrow and the manifest contract
(:mod:`fae_data.manifest`, :mod:`fae_data.verify`), never on pipeline internals.
"""

from __future__ import annotations
