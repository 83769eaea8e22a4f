"""The library's exception types.

Every error fae-data raises on purpose is a :class:`FaeError`; the CLI turns it into one
readable line and a non-zero exit code. Messages name the file (and line or column where
there is one), what was expected, what was found, and what to do.
"""

from __future__ import annotations


class FaeError(Exception):
    """Base class of all deliberate fae-data errors."""

    #: The CLI's exit status for this kind of error.
    exit_code: int = 1


class InputError(FaeError):
    """A source file or argument is not what the stage expects."""


class BudgetError(FaeError):
    """A memory budget cannot be honoured (too small, unparsable)."""


class ManifestError(FaeError):
    """A layout manifest is missing, malformed, unsafe or does not match its files."""


class StorageError(FaeError):
    """Reading or writing the storage root failed."""


class BackendError(StorageError):
    """A path or URL cannot be used as configured: its protocol is unknown, the fsspec
    backend for it is not installed, the object store finds no credentials, or its
    endpoint cannot be reached.

    A problem of the setup rather than of the data, so the CLI exits 2, as for its
    usage errors, and callers that repair damaged files on a StorageError must not
    take it for damage.
    """

    exit_code = 2


def first_line(exc: BaseException) -> str:
    """An exception's own message without what follows its first line (Polars appends a
    context stack, torch a page of advice), or its type's name when it has none."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def os_error_message(exc: OSError) -> str:
    """One line for an operating-system error the library did not anticipate (a storage
    root that is a file, a full disk, a missing permission): the path first, as the
    library's own messages do, then the system's reason."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.filename is None:
        return reason
    target = f" -> {exc.filename2}" if exc.filename2 is not None else ""
    return f"{exc.filename}{target}: {reason}"
