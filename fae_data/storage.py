"""One place for reading and writing files, local or on an object store (fsspec).

Everything that touches the storage root goes through :class:`Storage`, so the rest of the
library is indifferent to whether the root is ``/data/fae`` or ``s3://bucket/fae``.

Atomicity: on a local filesystem a file is written under a temporary name in the same
folder and moved into place with ``os.replace`` (atomic on POSIX). On an object store an
object appears whole or not at all (one PUT, or a completed multipart upload), so the
object is written in place without autocommit and committed only when the block
succeeds. Multi-file results are committed by writing one small marker object last (a
partition's ``_partition.json``, a layout's ``manifest.json``); readers look for the
marker first.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import posixpath
import sys
import uuid
from collections.abc import Iterator
from typing import IO, TYPE_CHECKING, Any

import fsspec
from fsspec.implementations.local import LocalFileSystem
from fsspec.registry import known_implementations

from fae_data.errors import BackendError, InputError, StorageError

try:
    import fcntl
except ImportError:  # not POSIX: Storage.lock does nothing
    fcntl = None  # type: ignore[assignment]

if TYPE_CHECKING:
    import pyarrow as pa

_HASH_BLOCK = 8 << 20
#: botocore's errors for credentials that are missing or unusable, by name (botocore is
#: only imported by s3fs, and only on an s3:// URL).
_BOTO_CREDENTIAL_ERRORS = (
    "NoCredentialsError", "PartialCredentialsError", "CredentialRetrievalError",
    "UnknownCredentialError", "ProfileNotFound", "NoAuthTokenError", "TokenRetrievalError",
    "SSOError",
)
log = logging.getLogger(__name__)


def filesystem(
    url: str, what: str, **options: Any
) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem of ``url`` (with backend ``options``) and the path on it.

    ``what`` names the argument in messages ("storage root", "source"). Raises
    :class:`BackendError` naming the URL, its protocol and the remedy when fsspec knows
    no such protocol or the package that implements it is not installed.
    """
    protocol = url.split("://", 1)[0] if "://" in url else "file"
    try:
        return fsspec.core.url_to_fs(url, **options)  # type: ignore[no-any-return]
    except ImportError as exc:
        package = _backend_package(protocol)
        raise BackendError(
            f"{what} {url}: the {protocol}:// protocol needs an fsspec backend that is not "
            f"installed ({exc}); install it (pip install {package}) or use a local path"
        ) from None
    except ValueError as exc:
        if "Protocol not known" not in str(exc):
            raise
        raise BackendError(
            f"{what} {url}: unknown protocol {protocol}:// (no fsspec backend has that "
            "name); use a local path or a URL such as s3://bucket/prefix, or install the "
            "fsspec backend that provides it"
        ) from None


def _backend_package(protocol: str) -> str:
    """The package fsspec's registry names for ``protocol`` ("gcs" -> "gcsfs")."""
    known = known_implementations.get(protocol, {})
    return str(known.get("class", protocol)).split(".", 1)[0]


def backend_error(exc: BaseException, target: str) -> BackendError | None:
    """``exc`` as one BackendError naming ``target``, when it is an object-store client
    error that is not an OSError (s3fs passes botocore's own errors through: no
    credentials, endpoint unreachable); None for any other exception."""
    boto = sys.modules.get("botocore.exceptions")
    if boto is None or not isinstance(exc, boto.BotoCoreError):
        return None
    credentials = tuple(getattr(boto, n) for n in _BOTO_CREDENTIAL_ERRORS if hasattr(boto, n))
    if isinstance(exc, credentials):
        return BackendError(
            f"{target}: the s3:// object store has no usable credentials ({exc}); configure "
            "them (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or "
            "~/.aws/credentials) and rerun"
        )
    return BackendError(
        f"{target}: cannot reach the object store ({exc}); check the network and the "
        "endpoint (AWS_ENDPOINT_URL), then rerun"
    )


@contextlib.contextmanager
def backend_errors(target: str) -> Iterator[None]:
    """Turn object-store client errors raised in the block into a BackendError naming
    ``target`` (see :func:`backend_error`); other exceptions pass unchanged."""
    try:
        yield
    except Exception as exc:
        translated = backend_error(exc, target)
        if translated is None:
            raise
        raise translated from None


class Storage:
    """A storage root: a local folder or an fsspec URL such as ``s3://bucket/prefix``."""

    def __init__(self, root: str | os.PathLike[str], **storage_options: Any) -> None:
        root_str = os.fspath(root)
        # An empty root would silently mean the current folder.
        if not root_str.strip():
            raise InputError(
                f"storage root {root_str!r} is empty: give a folder or a URL such as "
                "s3://bucket/prefix (--root)"
            )
        self.fs, path = filesystem(root_str, "storage root", **storage_options)
        self.root = path.rstrip("/") or "/"
        self.url = root_str
        self.is_local = isinstance(self.fs, LocalFileSystem)

    # -- paths -----------------------------------------------------------------------
    def path(self, *parts: str) -> str:
        """The full filesystem path of ``parts`` joined under the root."""
        return posixpath.join(self.root, *parts)

    def display(self, *parts: str) -> str:
        """A path for messages: a URL for object stores, a plain path locally."""
        p = self.path(*parts)
        return p if self.is_local else f"{self.fs.unstrip_protocol(p)}"

    def _reach(self, *parts: str) -> contextlib.AbstractContextManager[None]:
        """Object-store client errors in the block (no credentials, no connection) as one
        BackendError naming ``parts``: s3fs creates its client lazily, so the first call
        that touches the store is where they surface."""
        return backend_errors(self.display(*parts))

    # -- reading ---------------------------------------------------------------------
    def exists(self, *parts: str) -> bool:
        with self._reach(*parts):
            return bool(self.fs.exists(self.path(*parts)))

    def read_bytes(self, *parts: str) -> bytes:
        try:
            with self._reach(*parts), self.fs.open(self.path(*parts), "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise StorageError(f"{self.display(*parts)}: no such file") from None
        except OSError as exc:
            raise StorageError(f"{self.display(*parts)}: cannot read ({exc})") from None

    def read_json(self, *parts: str) -> Any:
        raw = self.read_bytes(*parts)
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise StorageError(f"{self.display(*parts)}: not valid JSON ({exc})") from None

    def read_table(self, *parts: str, columns: list[str] | None = None) -> pa.Table:
        """A whole Parquet file (or some of its columns) as an Arrow table.

        Read through ``pq.ParquetFile``, never ``pq.read_table`` on a Python file object:
        read_table goes through Arrow's dataset scanner, whose I/O threads may drop the
        last reference to the Python file wrapper after the read has returned. When that
        happens while the interpreter exits, the thread cannot take the GIL and the
        process aborts with "terminate called without an active exception" (apache/arrow
        #34314; seen here as ``fae verify`` exiting with 134 under load).

        A missing, truncated or foreign file raises a :class:`StorageError` naming it.
        """
        import pyarrow.parquet as pq

        with self._parquet_errors(parts), self._reach(*parts):
            if self.is_local:
                with pq.ParquetFile(self.path(*parts)) as pf:
                    return pf.read(columns=columns)
            with self.fs.open(self.path(*parts), "rb") as f, pq.ParquetFile(f) as pf:
                return pf.read(columns=columns)

    def parquet_metadata(self, *parts: str) -> Any:
        """The footer (``pyarrow.parquet.FileMetaData``) of a Parquet file: its row count,
        row groups and schema, without reading the data. A missing, truncated or foreign
        file raises a :class:`StorageError` that names it."""
        import pyarrow.parquet as pq

        with self._parquet_errors(parts), self._reach(*parts), \
                self.fs.open(self.path(*parts), "rb") as f:
            return pq.ParquetFile(f).metadata

    @contextlib.contextmanager
    def _parquet_errors(self, parts: tuple[str, ...]) -> Iterator[None]:
        """Reader errors of the Parquet file ``parts`` as one StorageError naming it."""
        import pyarrow as pa

        try:
            yield
        except (OSError, pa.ArrowException) as exc:
            raise StorageError(
                f"{self.display(*parts)}: not a readable Parquet file ({exc})"
            ) from None

    def listdir(self, *parts: str) -> list[str]:
        """Names (not paths) directly under ``parts``; empty if the folder is missing."""
        p = self.path(*parts)
        try:
            with self._reach(*parts):
                entries = self.fs.ls(p, detail=False)
        except FileNotFoundError:
            return []
        return sorted(posixpath.basename(e.rstrip("/")) for e in entries)

    def sizes(self, *parts: str) -> dict[str, int]:
        """Sizes in bytes of the files directly under ``parts`` (one listing), by name;
        empty if the folder is missing."""
        p = self.path(*parts)
        try:
            with self._reach(*parts):
                entries = self.fs.ls(p, detail=True)
        except FileNotFoundError:
            return {}
        # Not only "file": fsspec calls a symbolic link "other" (a layout copied with
        # `cp -s`), and its size is the target's.
        return {posixpath.basename(e["name"].rstrip("/")): int(e.get("size") or 0)
                for e in entries if e.get("type") != "directory"}

    def usage(self, *parts: str) -> tuple[int, float | None]:
        """Bytes of all files under ``parts`` (a file or a folder, recursively) and the
        newest modification time among them (unix seconds; None when empty or missing):
        how big something is and how long nobody has written to it."""
        p = self.path(*parts)
        try:
            with self._reach(*parts):
                found = self.fs.find(p, detail=True)
        except FileNotFoundError:
            return 0, None
        total, newest = 0, None
        for info in found.values():
            total += int(info.get("size") or 0)
            stamp = _modified(info)
            if stamp is not None and (newest is None or stamp > newest):
                newest = stamp
        return total, newest

    def sha256(self, *parts: str) -> str:
        with self._reach(*parts):
            return file_sha256(self.fs, self.path(*parts))

    # -- writing ---------------------------------------------------------------------
    def makedirs(self, *parts: str) -> None:
        if self.is_local:
            self.fs.makedirs(self.path(*parts), exist_ok=True)

    def open_write(self, *parts: str, block_size: int | None = None) -> IO[bytes]:
        """Open ``parts`` for plain binary writing (callers commit it by a marker).

        ``block_size``: bytes an object-store file buffers before it uploads a part
        (s3fs: 50 MiB by default; many files open at once want less).
        """
        p = self.path(*parts)
        if self.is_local:
            os.makedirs(posixpath.dirname(p), exist_ok=True)
        options = {} if block_size is None else {"block_size": block_size}
        try:
            with self._reach(*parts):
                return self.fs.open(p, "wb", **options)  # type: ignore[no-any-return]
        except OSError as exc:
            raise StorageError(f"{self.display(*parts)}: cannot write ({exc})") from None

    @contextlib.contextmanager
    def open_atomic(self, *parts: str) -> Iterator[IO[bytes]]:
        """Open ``parts`` for binary writing; the file appears only if the block succeeds."""
        final = self.path(*parts)
        if not self.is_local:
            yield from self._open_atomic_remote(final, parts)
            return
        folder = posixpath.dirname(final)
        os.makedirs(folder, exist_ok=True)
        tmp = posixpath.join(folder, f".tmp-{uuid.uuid4().hex}-{posixpath.basename(final)}")
        try:
            with open(tmp, "wb") as f:
                yield f
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
            raise

    def _open_atomic_remote(self, final: str, parts: tuple[str, ...]) -> Iterator[IO[bytes]]:
        # Not autocommitted: closing uploads the bytes (s3fs: the parts of a multipart
        # upload) but only commit() makes the object appear (s3fs: one PUT or the
        # completed multipart upload), so a failure inside the block, or a partial
        # upload, never replaces or creates the object; discard() aborts the upload.
        try:
            with self._reach(*parts):
                f = self.fs.open(final, "wb", autocommit=False)
        except OSError as exc:
            raise StorageError(f"{self.display(*parts)}: cannot write ({exc})") from None
        try:
            yield f
            f.close()
            f.commit()
        except BaseException:
            with contextlib.suppress(Exception):
                f.close()
            with contextlib.suppress(Exception):
                f.discard()
            raise

    def write_bytes_atomic(self, data: bytes, *parts: str) -> None:
        with self.open_atomic(*parts) as f:
            f.write(data)

    def write_json_atomic(self, obj: Any, *parts: str) -> None:
        self.write_bytes_atomic(
            (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode(), *parts
        )

    @contextlib.contextmanager
    def lock(self, *parts: str, what: str, wait: bool = True) -> Iterator[bool]:
        """Hold an exclusive lock on the lock file ``parts`` while the block runs (local
        roots; on an object store a no-op: callers document that one writer at a time is
        their scheduler's job). A second holder waits, after a warning naming ``what``;
        with ``wait=False`` it does not, and the block gets False (not locked) instead of
        True. The lock dies with its process, so a killed run leaves no stale lock; the
        lock file must not be one that a clean-up removes while it is held."""
        if not self.is_local or fcntl is None:
            yield True
            return
        path = self.path(*parts)
        os.makedirs(posixpath.dirname(path), exist_ok=True)
        with open(path, "a") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                if not wait:
                    yield False
                    return
                log.warning("%s is busy in another run; waiting for it to finish", what)
                fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield True
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def remove(self, *parts: str, recursive: bool = False) -> None:
        """Remove a file or folder; a missing one is not an error."""
        p = self.path(*parts)
        with contextlib.suppress(FileNotFoundError), self._reach(*parts):
            self.fs.rm(p, recursive=recursive)


def _modified(info: dict[str, Any]) -> float | None:
    """A listing entry's modification time in unix seconds: local files and most
    backends give ``mtime``, s3fs a ``LastModified`` datetime."""
    stamp = info.get("mtime", info.get("LastModified"))
    if stamp is None:
        return None
    return stamp.timestamp() if hasattr(stamp, "timestamp") else float(stamp)


def file_sha256(fs: fsspec.AbstractFileSystem, path: str) -> str:
    """Hex sha256 of the bytes of ``path`` on ``fs`` (as stored, not decompressed)."""
    h = hashlib.sha256()
    with fs.open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            h.update(block)
    return h.hexdigest()
