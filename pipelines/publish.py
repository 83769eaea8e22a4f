"""Publishing a layout safely: rebuilds beside the published files, a check before the
commit, the clean-up after it, and one build per layout at a time on a local root.

A layout is published once its ``manifest.json`` is written, and from then on readers
may be using the files it names. A rebuild of a published layout (``fae layout
--force``, the DAG's ``force``) therefore never touches them: it writes its shards and
vocabularies into folders of its own (``shards-<tag>/``, ``vocab-<tag>/``), the atomic
replacement of ``manifest.json`` switches readers from the old files to the new ones,
and only then are the folders that no manifest names removed. A crash at any point
leaves the published layout readable; a later build removes the crashed one's folders.

Two builds of the same layout at once would remove each other's files. On a local root
:func:`layout_lock` serialises them (the second waits, then finds the layout published);
object stores have no such lock, and the Airflow DAG runs one layout at a time
(``max_active_runs=1``). As a last guard, :func:`check_files` refuses to commit a
manifest that names a file which is not there.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from fae_data import manifest as mf
from fae_data.errors import StorageError
from fae_data.shard_types import SHARD_DIR
from fae_data.storage import Storage

log = logging.getLogger(__name__)

#: The folder (inside the layout folder) of a first build's vocabularies.
VOCAB_DIR = "vocab"


def build_dirs(published: bool) -> tuple[str, str]:
    """The shard and vocabulary folders a build writes: the plain ones for a first build,
    folders of its own when it rebuilds a ``published`` layout (readers keep the old)."""
    if not published:
        return SHARD_DIR, VOCAB_DIR
    tag = uuid.uuid4().hex[:8]
    return f"{SHARD_DIR}-{tag}", f"{VOCAB_DIR}-{tag}"


def _layout_files(manifest: mf.Manifest) -> list[str]:
    return [s.path for s in manifest.shards] + [t.vocab_path for t in manifest.tables]


def check_files(storage: Storage, manifest: mf.Manifest) -> None:
    """Refuse to publish a manifest that names a missing file (removed by a concurrent
    build of the same layout, for instance): better a failed run than a broken layout."""
    missing = missing_files(storage, manifest)
    if missing:
        raise StorageError(
            f"layout {manifest.layout_id}: {len(missing)} file(s) of this build are gone "
            f"before its manifest was written ({', '.join(missing[:3])}); another build of "
            "the same layout may have removed them. Nothing was published; run again"
        )


def missing_files(storage: Storage, manifest: mf.Manifest) -> list[str]:
    """The shard and vocabulary files ``manifest`` names that are not in its folder, or
    not of the size it records (truncated, or replaced by another file): what a rerun
    must rebuild rather than call unchanged. One listing per folder, not one request per
    file; checksums are `fae verify`'s job."""
    folder = mf.layout_folder(manifest.layout_id)
    storage.fs.invalidate_cache(storage.path(*folder))  # files other workers wrote
    listed: dict[str, dict[str, int]] = {}
    missing = []
    expected = [(s.path, s.bytes) for s in manifest.shards] + [
        (t.vocab_path, t.vocab_bytes) for t in manifest.tables]
    for path, size in expected:
        sub, _, name = path.rpartition("/")
        if sub not in listed:
            listed[sub] = storage.sizes(*folder, *([sub] if sub else []))
        found = listed[sub].get(name)
        if found is None or (size is not None and found != size):
            missing.append(path)
    return missing


def unnamed_folders(storage: Storage, manifest: mf.Manifest) -> list[str]:
    """The shard and vocabulary folders in the layout folder of ``manifest`` that it does
    not name: the files it replaced, or those of a crashed (or running) rebuild."""
    keep = {p.split("/")[0] for p in _layout_files(manifest)}
    return [name for name in storage.listdir(*mf.layout_folder(manifest.layout_id))
            if name not in keep and any(name == d or name.startswith(f"{d}-")
                                        for d in (SHARD_DIR, VOCAB_DIR))]


def prune_layout(storage: Storage, manifest: mf.Manifest) -> None:
    """Remove the :func:`unnamed_folders` of the layout that ``manifest`` (just committed)
    names. Best effort: the layout is published already, so a folder that cannot be
    removed is a warning naming it (``fae clean`` retries), not a failed run."""
    folder = mf.layout_folder(manifest.layout_id)
    for name in unnamed_folders(storage, manifest):
        log.info("layout %s: removing %s, which the manifest no longer names",
                 manifest.layout_id, name)
        try:
            storage.remove(*folder, name, recursive=True)
        except (OSError, StorageError) as exc:
            log.warning("layout %s is published, but %s could not be removed (%s); "
                        "`fae clean` removes it later", manifest.layout_id,
                        storage.display(*folder, name), getattr(exc, "strerror", None) or exc)


@contextmanager
def layout_lock(storage: Storage, lid: str) -> Iterator[None]:
    """Hold the build lock of layout ``lid`` (local roots; elsewhere a no-op). A second
    build of the same layout waits here until the first is done: it then finds the
    layout published and does nothing."""
    with storage.lock(mf.LAYOUTS_DIR, f".{lid}.lock", what=f"layout {lid}"):
        yield
