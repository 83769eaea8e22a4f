"""Adapters of the train DAG: run the trainer as its own process.

Training runs in a child process (``FAE_TRAIN_COMMAND``), not inside the Airflow task,
so that it can use torchrun, another interpreter or a container, and so that a killed
task also ends the trainer; this module starts it, streams its output into the task log
and returns its summary.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from fae_data.errors import InputError

log = logging.getLogger(__name__)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_REFUSAL = re.compile(r"^(?:\[rank\d+\]:\s*)?(?:[\w.-]+: )?error: ")  # torchrun may prefix


class TrainerRefused(RuntimeError):
    """The trainer refused its input with one ``error:`` line (a bad layout, a checksum
    mismatch, another vocabulary's checkpoint): a retry meets the same input, so the DAG
    fails the task at once instead (a crash, a kill or a timeout is retried)."""


def train_target(root: str, manifest: str | None, events: Sequence[Mapping[str, Any]],
                 not_after: dt.datetime | None = None) -> str:
    """What to train on: the ``manifest`` Param, else the newest published layout of the
    dataset of the newest triggering event, else the root (the trainer follows
    ``layouts/LATEST``).

    The newest layout rather than the event's own: fae_train runs one at a time, and a
    run that was queued while another trained starts with the event that queued it, while
    layouts published after that event do not queue another run; and the event's own
    layout may be gone (``fae clean`` keeps the newest per dataset). Layouts are found by
    their manifests, not through ``LATEST``, which is one per root (another dataset may
    hold it). ``not_after`` (the run's start) pins the choice: a retry of the run trains
    the same layout, and can resume its checkpoints, whatever was published since.
    """
    if manifest:
        return manifest
    for extra in reversed(list(events)):
        if extra.get("manifest"):
            dataset = extra.get("dataset")
            newest = newest_layout(root, str(dataset), not_after) if dataset else None
            return newest or str(extra["manifest"])
    if not_after is not None:  # pinned too: LATEST's dataset, as of the run's start
        pinned = _latest_as_of(root, not_after)
        if pinned is not None:
            return pinned
    return root


def _latest_as_of(root: str, not_after: dt.datetime) -> str | None:
    """The newest layout of ``LATEST``'s dataset created by ``not_after``: what LATEST
    named when the run started (or the newest before, if it was pointed back since)."""
    from fae_data import manifest as mf
    from fae_data.errors import BackendError, FaeError

    try:
        current, _ = mf.load(root)
    except BackendError:
        raise
    except FaeError:  # no LATEST yet: the trainer says so
        return None
    return newest_layout(root, current.dataset.name, not_after)


def newest_layout(root: str, dataset: str, not_after: dt.datetime | None = None
                  ) -> str | None:
    """The manifest path of the newest published layout of ``dataset`` under ``root``
    (created no later than ``not_after``), or None. Unreadable manifests are skipped."""
    from fae_data import manifest as mf
    from fae_data.errors import BackendError, FaeError
    from fae_data.storage import Storage

    storage = Storage(root)
    if not_after is not None and not_after.tzinfo is None:
        not_after = not_after.replace(tzinfo=dt.timezone.utc)
    best: tuple[dt.datetime, str] | None = None
    for name in storage.listdir(mf.LAYOUTS_DIR):
        if name.startswith(".") or name == mf.LATEST:
            continue
        try:
            m = mf.from_dict(storage.read_json(mf.LAYOUTS_DIR, name, mf.MANIFEST))
        except BackendError:
            raise
        except (FaeError, ValueError) as exc:  # no manifest (a build), or damaged
            if storage.exists(mf.LAYOUTS_DIR, name, mf.MANIFEST):
                log.warning("layout %s is not a candidate: its manifest is damaged (%s)",
                            name, exc)
            continue
        created = mf.created_time(m)
        if m.dataset.name != dataset or m.layout_id != name or created is None \
                or (not_after is not None and created > not_after):
            continue
        if best is None or (created, name) > best:
            best = (created, name)
    if best is None:
        return None
    log.info("training layout %s, the newest of dataset %s", best[1], dataset)
    return storage.display(mf.LAYOUTS_DIR, best[1], mf.MANIFEST)


def run_training(
    command: str, *, root: str, manifest: str | None = None,
    events: Sequence[Mapping[str, Any]] = (), max_steps: int = 1000, timeout_s: float | None = None,
    run_id: str = "manual", not_after: dt.datetime | None = None,
) -> dict[str, Any]:
    """Run the trainer as its own process and wait for it.

    ``command`` is a template (``FAE_TRAIN_COMMAND``) with ``{python}``, ``{manifest}``,
    ``{root}``, ``{max_steps}`` and ``{run_id}`` (the Airflow run, made safe for a file
    name: the same in every attempt of a run, so ``--checkpoint DIR/{run_id} --resume
    DIR/{run_id}`` lets a retry continue where the failed attempt stopped); it is split
    like a shell line *before* filling in, so paths with spaces stay one argument, and no
    shell is involved. The child's output is logged line by line; its last JSON line, if
    any, is the summary returned. ``not_after`` (the run's start) pins the layout a run
    trains (:func:`train_target`), so that every attempt trains the same.

    Raises:
        RuntimeError: the trainer exited non-zero (the message holds its last lines) or
            ran past ``timeout_s``.
    """
    target = train_target(root, manifest, events, not_after)
    log.info("training on %s (manifest param %r, %d layout event(s))", target, manifest,
             len(events))
    values = {"python": sys.executable, "manifest": target, "root": root,
              "max_steps": str(max_steps), "run_id": re.sub(r"[^A-Za-z0-9_.-]", "_", run_id)}
    try:
        argv = [tok.format(**values) for tok in shlex.split(command)]
    except (KeyError, IndexError, ValueError) as exc:
        raise InputError(f"train command {command!r}: {exc!r}; the placeholders are "
                         "{python}, {manifest}, {root}, {max_steps} and {run_id}") from None
    log.info("starting trainer: %s", shlex.join(argv))
    # A session of its own, so that killing it also ends what it started (torchrun ranks).
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                text=True, start_new_session=True)
    except OSError as exc:  # no such program, not executable: the setting is wrong
        raise InputError(f"train command {command!r}: cannot start {argv[0]!r} "
                         f"({exc.strerror or exc}); check FAE_TRAIN_COMMAND") from None
    expired = threading.Event()

    def kill() -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)

    def expire() -> None:
        expired.set()
        kill()

    timer = threading.Timer(timeout_s, expire) if timeout_s else None
    lines: list[str] = []
    refusals = 0  # "error: ..." lines anywhere (under torchrun its traceback follows)
    try:
        if timer is not None:
            timer.start()
        assert proc.stdout is not None  # PIPE was asked for
        for line in proc.stdout:
            line = line.rstrip("\n")
            log.info("trainer: %s", line)
            lines.append(line)
            refusals += bool(_REFUSAL.match(_ANSI.sub("", line)))  # FORCE_COLOR styles it
            del lines[:-200]  # the tail is enough for the error message and the summary
        code = proc.wait()
    except BaseException:  # the task is being killed: never leave the trainer running
        kill()
        proc.wait()
        raise
    finally:
        if timer is not None:
            timer.cancel()
    tail = "\n".join(lines[-20:])
    if expired.is_set():
        raise RuntimeError(f"trainer ran past {timeout_s} s and was killed: "
                           f"{shlex.join(argv)}\n{tail}")
    if code != 0:
        # "error: ..." is the trainer's refusal of its input, "fae-train: error: ..." a usage
        # error of FAE_TRAIN_COMMAND: a retry meets either again. "error (storage): ..."
        # (storage not reachable, a full disk) is retried.
        refused = code in (1, 2) and refusals > 0
        raise (TrainerRefused if refused else RuntimeError)(
            f"trainer exited with code {code}: {shlex.join(argv)}\n{tail}")
    return {"target": target, "exit_code": code, "summary": _last_json(lines)}


def _last_json(lines: Sequence[str]) -> Any:
    """The trainer's ``--json`` summary: the last parseable JSON value printed (it may
    span several lines), or None."""
    text = "\n".join(lines)
    for start in [i for i, ch in enumerate(text) if ch in "{["][::-1][:2000]:
        try:
            value = json.loads(text[start:])
        except json.JSONDecodeError:
            continue
        return value
    return None
