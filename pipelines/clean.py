"""Removing what a storage root no longer needs: old layouts and abandoned builds.

Every new partition makes a new layout with a full copy of the training data, and a
build that fails and is never rerun (its parameters changed, its run was cleared) leaves
its files in ``layouts/<id>/``, invisible to readers but on disk. :func:`run_clean`
removes, from ``ROOT/layouts/``:

- **old published layouts**, with ``keep``: of each dataset, all but the ``keep`` newest
  (by ``created_at``), never the one ``LATEST`` names. Without ``keep`` no published
  layout is removed. A trainer still reading an older layout loses it: choose ``keep``
  to cover the layouts in use.
- **abandoned builds**: folders named like a layout id (16 hex digits) without
  ``manifest.json``, and, inside published layouts, the staging folder ``_build`` and
  rebuild folders (``shards-<tag>``, ``vocab-<tag>``) that the manifest does not name,
  once nothing under them was written for ``stale_after_s`` seconds (default 48 hours:
  far longer than any pause between the stages of a running build).

A published layout is removed manifest first, so a concurrent reader finds an unfinished
layout (refused with a clear message), never one with files missing. On a local root each
layout's build lock is taken without waiting: a layout being built is skipped, and
``LATEST`` is read again under the lock (a rerun may have pointed it back meanwhile).
Nothing else under the root is touched: ingested partitions, counts, ``LATEST``, folders
that do not look like a layout, and links (their files belong to another place) stay.
``LATEST`` is one per root: with several datasets, only the last one published or asked
for is protected beyond ``keep``. A LATEST that names no published layout refuses the
clean. A dry run writes nothing (no lock files either), so it cannot see running builds.
"""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

from fae_data import manifest as mf
from fae_data.errors import BackendError, InputError, ManifestError, StorageError
from fae_data.storage import Storage
from pipelines.layout_stages import BUILD_DIR
from pipelines.publish import unnamed_folders

log = logging.getLogger(__name__)

#: Abandoned builds are removed once untouched this long (seconds).
DEFAULT_STALE_AFTER_S = 48 * 3600
_BUILD_ID = re.compile(r"^[0-9a-f]{16}$")  # what mf.layout_id makes


@dataclass(frozen=True)
class Removal:
    """One folder removed (or, in a dry run, to be removed) and why."""

    path: str
    layout_id: str
    dataset: str | None
    reason: str
    bytes: int


@dataclass
class CleanResult:
    removed: list[Removal] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # published layouts left in place
    notes: list[str] = field(default_factory=list)  # what was left alone, and why
    dry_run: bool = False

    @property
    def bytes_freed(self) -> int:
        return sum(r.bytes for r in self.removed)

    def to_dict(self) -> dict[str, object]:
        return {"removed": [asdict(r) for r in self.removed], "kept": self.kept,
                "notes": self.notes, "dry_run": self.dry_run, "bytes_freed": self.bytes_freed}


def parse_age(text: str) -> float:
    """``"48h"``, ``"2d"``, ``"30m"``, ``"90s"`` or plain seconds -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*", text)
    if match is None:
        raise InputError(f"age {text!r} not understood: use a number with s, m, h or d, "
                         "e.g. 48h or 2d")
    return float(match[1]) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400}[match[2]]


def run_clean(
    root: str, *, keep: int | None = None, stale_after_s: float = DEFAULT_STALE_AFTER_S,
    dry_run: bool = False, now: float | None = None,
) -> CleanResult:
    """Remove old published layouts (``keep`` newest per dataset) and abandoned builds
    under ``root``; with ``dry_run`` only say what would go. See the module docstring."""
    if keep is not None and keep < 1:
        raise InputError(f"keep ({keep}) must be >= 1: the newest layout of a dataset stays")
    if stale_after_s < 0:
        raise InputError(f"the age of an abandoned build ({stale_after_s:g} s) must be >= 0")
    storage = Storage(root)
    now = time.time() if now is None else now
    result = CleanResult(dry_run=dry_run)
    latest = _latest(storage)
    published: dict[str, list[mf.Manifest]] = {}
    for name in storage.listdir(mf.LAYOUTS_DIR):
        if name.startswith(".") or name == mf.LATEST or \
                not storage.fs.isdir(storage.path(mf.LAYOUTS_DIR, name)):
            continue
        if _is_link(storage, mf.LAYOUTS_DIR, name):  # its files belong to another place
            result.notes.append(f"{storage.display(mf.LAYOUTS_DIR, name)} is a link; left "
                                "alone")
            continue
        if storage.exists(mf.LAYOUTS_DIR, name, mf.MANIFEST):
            manifest = _manifest(storage, name, result)
            if manifest is not None:
                published.setdefault(manifest.dataset.name, []).append(manifest)
        elif _BUILD_ID.match(name):
            _clean_build(storage, name, None, (), "unfinished build", stale_after_s, now,
                         result)
    for dataset, manifests in sorted(published.items()):
        undated = [m for m in manifests if mf.created_time(m) is None]
        for m in undated:
            result.notes.append(f"layout {m.layout_id}: created_at {m.created_at!r} is not a "
                                "time; kept")
        manifests = sorted((m for m in manifests if m not in undated),
                           key=lambda m: (mf.created_time(m), m.layout_id), reverse=True)
        result.kept += [m.layout_id for m in undated]
        for rank, manifest in enumerate(manifests):
            lid = manifest.layout_id
            if keep is None or rank < keep or lid == latest:
                result.kept.append(lid)
                extra = [*unnamed_folders(storage, manifest), BUILD_DIR]
                _clean_build(storage, lid, dataset, extra, "files of an abandoned rebuild",
                             stale_after_s, now, result)
            else:
                _remove_layout(storage, manifest, f"older than the {keep} newest of "
                               f"dataset {dataset}", result)
    return result


def _latest(storage: Storage) -> str | None:
    """The layout LATEST names; refuse a LATEST that names no published layout, since
    what it was meant to protect is then unknown."""
    latest = mf.latest(storage)  # malformed: ManifestError
    if latest is not None and not storage.exists(mf.LAYOUTS_DIR, latest, mf.MANIFEST):
        raise InputError(f"{storage.display(mf.LAYOUTS_DIR, mf.LATEST)} names {latest!r}, "
                         "which is no published layout: point it at one (`fae layout` with "
                         "that layout's parameters rewrites it) before cleaning")
    return latest


def _is_link(storage: Storage, *parts: str) -> bool:
    return storage.is_local and os.path.islink(storage.path(*parts))


def _manifest(storage: Storage, name: str, result: CleanResult) -> mf.Manifest | None:
    """The published manifest of folder ``name``, or None (noted) when it cannot be read
    or names another layout: such a folder is left to a person."""
    try:
        manifest = mf.from_dict(storage.read_json(mf.LAYOUTS_DIR, name, mf.MANIFEST),
                                storage.display(mf.LAYOUTS_DIR, name, mf.MANIFEST))
    except BackendError:
        raise
    except (ManifestError, StorageError, ValueError) as exc:  # StorageError: not JSON
        result.notes.append(f"layout {name}: manifest unreadable ({exc}); left alone")
        return None
    if manifest.layout_id != name:
        result.notes.append(f"layout folder {name} holds the manifest of layout "
                            f"{manifest.layout_id} (a copy?); left alone")
        return None
    return manifest


def _clean_build(storage: Storage, lid: str, dataset: str | None, parts: Sequence[str],
                 reason: str, stale_after_s: float, now: float, result: CleanResult) -> None:
    """Remove the folder of layout ``lid`` (``parts`` empty) or its sub-folders ``parts``
    once nothing under them was written for ``stale_after_s`` seconds, unless a build of
    the layout holds its lock."""
    targets = [(mf.LAYOUTS_DIR, lid, p) for p in parts] if parts else [(mf.LAYOUTS_DIR, lid)]
    stale = []
    for target in targets:
        if _is_link(storage, *target):
            result.notes.append(f"{storage.display(*target)} is a link; left alone")
            continue
        size, newest = storage.usage(*target)
        if newest is None and not storage.exists(*target):
            continue
        age = now - newest if newest is not None else float("inf")
        if age < stale_after_s:
            result.notes.append(f"{storage.display(*target)}: written {age / 3600:.1f} h ago, "
                                "maybe by a running build; left alone")
            continue
        stale.append((target, size))
    if not stale:
        return
    with _build_lock(storage, lid, result.dry_run) as ok:
        if not ok:
            result.notes.append(f"layout {lid} is being built; its files were left alone")
            return
        for target, size in stale:
            result.removed.append(Removal(storage.display(*target), lid, dataset, reason, size))
            if not result.dry_run:
                log.info("removing %s (%s)", storage.display(*target), reason)
                storage.remove(*target, recursive=True)


@contextmanager
def _build_lock(storage: Storage, lid: str, dry_run: bool) -> Iterator[bool]:
    """The build lock of ``lid`` without waiting (False: a build holds it); a dry run
    writes nothing, not even a lock file, and cannot tell (True)."""
    if dry_run:
        yield True
        return
    with storage.lock(mf.LAYOUTS_DIR, f".{lid}.lock", what=f"layout {lid}", wait=False) as ok:
        yield ok


def _remove_layout(storage: Storage, manifest: mf.Manifest, reason: str,
                   result: CleanResult) -> None:
    lid = manifest.layout_id
    folder = mf.layout_folder(lid)
    with _build_lock(storage, lid, result.dry_run) as ok:
        if not ok:
            result.kept.append(lid)
            result.notes.append(f"layout {lid} is being rebuilt; kept")
            return
        if mf.latest(storage) == lid:  # a rerun of its parameters pointed LATEST back
            result.kept.append(lid)
            result.notes.append(f"layout {lid} became LATEST meanwhile; kept")
            return
        size, _ = storage.usage(*folder)
        result.removed.append(Removal(storage.display(*folder), lid, manifest.dataset.name,
                                      reason, size))
        if not result.dry_run:
            log.info("removing layout %s (%s)", lid, reason)
            # The manifest first: a reader meanwhile sees an unfinished layout, not one
            # with files missing, and a crash here leaves an abandoned build for later.
            storage.remove(*folder, mf.MANIFEST)
            storage.remove(*folder, recursive=True)
