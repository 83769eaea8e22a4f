"""The library's exception types.

Every error fae-data raises on purpose is a :class:`FaeError`; the CLI turns it into one
readable line and a non-zero exit code. Messages name the file (and line or column where
there is one), what was expected, what was found, and what to do.
"""

from __future__ import annotations


class FaeError(Exception):
    """Base class of all deliberate fae-data errors."""


class InputError(FaeError):
    """A source file or argument is not what the stage expects."""


class BudgetError(FaeError):
    """A memory budget cannot be honoured (too small, unparsable)."""


class ManifestError(FaeError):
    """A layout manifest is missing, malformed, unsafe or does not match its files."""


class StorageError(FaeError):
    """Reading or writing the storage root failed."""
