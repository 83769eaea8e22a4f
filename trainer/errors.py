"""The trainer's exception types (all :class:`fae_data.errors.FaeError`).

The ``fae-train`` CLI turns any of them into one ``error: ...`` line and exit code 1;
:class:`CheckpointWriteError` (like fae_data's StorageError) into ``error (storage): ...``,
which a scheduler may retry.
"""

from __future__ import annotations

from fae_data.errors import FaeError


class TrainerError(FaeError):
    """An option, a layout or a checkpoint cannot be used for training."""


class CheckpointError(TrainerError):
    """A checkpoint is unreadable or does not belong to this layout's vocabulary."""


class CheckpointWriteError(CheckpointError):
    """A checkpoint could not be written (a full or read-only disk): storage, not input."""
