"""Trainer checkpoints: ``torch.save`` files read back with ``torch.load(weights_only=True)``.

A checkpoint holds plain data only (tensors, numbers, strings, lists, dicts): the training
and model configs it was trained with, the step, the dense model and optimizer state, the
full embedding tables with their sparse optimizer state, the scheduler state and the
minibatches already handed out but not yet trained, the torch RNG state, and where it
came from: ``layout_id`` and a *vocabulary fingerprint* (every table's name and
vocab_size, plus the sha256 of every vocabulary file).

Ids mean values only through the vocabulary, so a checkpoint resumes on any layout with
the same fingerprint (the same vocabulary with another budget, i.e. other ``hot_rows``,
is fine: hot rows are just a prefix) and is refused, before any step, on another one.

Files go to ``DIR/ckpt-<step>.pt`` (written to a temporary name, then renamed) and
``DIR/LATEST`` names the newest; ``--resume`` takes a file or such a folder.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from fae_data.errors import ManifestError, first_line, os_error_message
from trainer.data import LayoutReader
from trainer.errors import CheckpointError, CheckpointWriteError

FORMAT = "fae.trainer-checkpoint/v1"
LATEST = "LATEST"
#: What :meth:`trainer.train.Trainer` reads back from a checkpoint.
REQUIRED = ("config", "model_config", "step", "epoch", "samples", "layout_id", "vocab",
            "model", "dense_optimizer", "embedding", "schedule", "pending", "rng")
_TMP = ".tmp-"


def vocab_fingerprint(reader: LayoutReader) -> dict[str, Any]:
    """Names and sizes of the tables and the sha256 of their vocabulary files, each
    checked against the manifest's where it records one (before the first step)."""
    m, store = reader.manifest, reader.store
    shas = {}
    for t in m.tables:
        if not store.exists(t.vocab_path):
            raise ManifestError(f"layout {m.layout_id}: vocabulary {store.display(t.vocab_path)} "
                                f"of table {t.name} is missing")
        shas[t.name] = store.sha256(t.vocab_path)
        if t.vocab_sha256 is not None and shas[t.name] != t.vocab_sha256:
            raise ManifestError(
                f"layout {m.layout_id}: vocabulary {store.display(t.vocab_path)} of table "
                f"{t.name} has sha256 {shas[t.name][:12]}..., the manifest says "
                f"{t.vocab_sha256[:12]}...: it changed after the layout was published; "
                "rebuild the layout (fae layout --force)")
    tables = [[t.name, t.vocab_size] for t in m.tables]
    digest = hashlib.sha256(json.dumps([tables, shas], sort_keys=True).encode()).hexdigest()
    return {"tables": tables, "sha256": shas, "digest": digest}


def check_vocab(saved: dict[str, Any], current: dict[str, Any], saved_layout: str,
                layout: str) -> None:
    """Refuse a checkpoint trained on another vocabulary, naming the first difference."""
    if saved["digest"] == current["digest"]:
        return
    old, new = dict(map(tuple, saved["tables"])), dict(map(tuple, current["tables"]))
    if list(old) != list(new):
        why = f"tables {list(old)[:4]}... vs {list(new)[:4]}..."
    else:
        diff = [n for n in old if old[n] != new[n]]
        if diff:
            n = diff[0]
            why = f"table {n} has vocab_size {old[n]} in the checkpoint, {new[n]} here"
        else:
            n = next(n for n in old if saved["sha256"][n] != current["sha256"][n])
            why = f"the vocabulary file of table {n} differs (ids map to other values)"
    raise CheckpointError(
        f"checkpoint was trained on layout {saved_layout} with vocabulary "
        f"{saved['digest'][:12]}, layout {layout} has vocabulary {current['digest'][:12]}: "
        f"{why}. Resume only on a layout built from the same vocabulary, or train from scratch."
    )


def save(folder: str | os.PathLike[str], step: int, payload: dict[str, Any]) -> Path:
    """Write ``payload`` as ``folder/ckpt-<step>.pt`` and point ``folder/LATEST`` at it."""
    out = Path(folder)
    out.mkdir(parents=True, exist_ok=True)
    final = out / f"ckpt-{step:08d}.pt"
    _remove_stale_temporaries(out)
    tmp = out / f"{_TMP}{os.getpid()}-{final.name}"
    latest_tmp = out / f"{_TMP}{os.getpid()}-{LATEST}"
    previous = _latest_name(out)
    try:
        torch.save({"format": FORMAT, **payload}, tmp)
        os.replace(tmp, final)
        latest_tmp.write_text(final.name + "\n")
        os.replace(latest_tmp, out / LATEST)
    except (OSError, RuntimeError) as exc:  # a full disk (torch: "unexpected pos"), read-only
        for junk in (tmp, latest_tmp):
            with contextlib.suppress(OSError):  # on a read-only disk, unlinking fails too
                junk.unlink(missing_ok=True)
        reason = os_error_message(exc) if isinstance(exc, OSError) else first_line(exc)
        raise CheckpointWriteError(
            f"{final}: could not be saved ({reason}); "
            + (f"the last checkpoint, {out / previous}, is intact" if previous
               else "no checkpoint was saved")) from None
    return final


def _latest_name(folder: Path) -> str | None:
    try:
        return (folder / LATEST).read_text().strip() or None
    except OSError:
        return None


def _remove_stale_temporaries(folder: Path) -> None:
    """Delete the half-written files of saves whose process is gone (killed mid-save):
    a checkpoint can be as large as the embedding tables, and nothing else removes them.
    A live process's temporaries (another run writing into the same folder) stay."""
    for tmp in folder.glob(f"{_TMP}*"):
        pid = tmp.name[len(_TMP):].split("-", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def check_folder(folder: str | os.PathLike[str], resumed: str | None = None) -> None:
    """Create ``folder`` and write a probe file there, so that an unusable checkpoint
    folder is refused before the first step, not after a whole epoch of training; refuse
    a layout folder or a storage root's ``layouts/``, whose ``LATEST`` a checkpoint
    would overwrite (the root then named a checkpoint as its newest layout), and a folder
    holding the checkpoints of another run: one not ``resumed`` (the checkpoint file this
    run continues) from there, whose ``LATEST`` the new run would move back."""
    if re.match(r"^[A-Za-z][\w+.-]*:/", str(folder)):  # s3://x, or s3:/x as paths mangle it
        raise CheckpointError(f"--checkpoint {folder}: checkpoints go to a local (or mounted) "
                              "folder, not a URL")
    out = Path(folder)
    if problem := _not_for_checkpoints(out):
        raise CheckpointError(f"--checkpoint {folder}: {problem}; give a folder of its own")
    if (out / LATEST).is_file() and (resumed is None or Path(resumed).parent.resolve()
                                     != out.resolve()):
        raise CheckpointError(
            f"--checkpoint {folder}: holds the checkpoints of another run (LATEST: "
            f"{(out / LATEST).read_text().strip()[:40]}); continue it with --resume {folder}, "
            "or give a folder of its own")
    if out.exists() and not out.is_dir():
        raise CheckpointError(f"--checkpoint {folder}: is a file, not a folder; give a folder")
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f"{_TMP}{os.getpid()}-probe"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as exc:
        raise CheckpointWriteError(f"--checkpoint {folder}: cannot write checkpoints there "
                              f"({exc.strerror or exc})") from None


def _not_for_checkpoints(out: Path) -> str | None:
    """Why ``out`` holds data that checkpoints would damage or mix with: a layouts folder
    (its ``LATEST`` names a layout), a layout or its shards, a storage root. Unreadable
    entries are not judged here: the probe write of :func:`check_folder` is."""
    try:
        if not out.is_dir():
            return None
        latest = out / LATEST
        if latest.is_file():
            named = latest.read_text(errors="replace").strip()
            if not (named.startswith("ckpt-") and named.endswith(".pt")):
                return f"its {LATEST} names {named[:40]!r}, not a checkpoint (a layouts folder?)"
        if (out / "manifest.json").is_file():
            return "it holds a layout (manifest.json)"
        if (out / "layouts").is_dir() or (out / "ingested").is_dir():
            return "it is a storage root (layouts/, ingested/)"
        if next(out.glob("*.parquet"), None) is not None:
            return "it holds Parquet data (a layout's shards?)"
    except OSError:
        return None
    return None


def nothing_saved_yet(resume: str | None, checkpoint: str | None) -> bool:
    """``--resume DIR --checkpoint DIR`` where DIR holds no checkpoint yet: "continue this
    run's folder", so the first attempt starts the run and a retry resumes it (a resume
    from any other missing place stays an error)."""
    if not resume or not checkpoint:
        return False
    r, c = Path(resume), Path(checkpoint)
    return (r.resolve() == c.resolve() and not (r / LATEST).is_file()
            and (not r.exists() or r.is_dir()))


def resolve(path: str | os.PathLike[str]) -> Path:
    """A checkpoint file, or the one ``LATEST`` names in a checkpoint folder."""
    p = Path(path)
    if p.is_dir():
        if not (p / LATEST).is_file():
            raise CheckpointError(f"{p}: a folder without {LATEST}; pass a ckpt-*.pt file")
        p = p / (p / LATEST).read_text().strip()
    if not p.is_file():
        raise CheckpointError(f"{p}: no such checkpoint file")
    return p


def load(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a checkpoint (tensors land on the CPU); refuse anything that is not one."""
    p = resolve(path)
    if not zipfile.is_zipfile(p):  # torch.save writes zip archives (mmap needs one)
        raise CheckpointError(f"{p}: not a readable trainer checkpoint (not a torch.save "
                              "archive: truncated, or another kind of file)")
    try:
        # mmap: the tables are read as they are copied into place, not all up front
        data = torch.load(p, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as exc:  # weights_only refused an object
        raise CheckpointError(
            f"{p}: refused, it holds Python objects beyond tensors and plain data "
            f"({_unpickler_reason(exc)}); checkpoints are read with weights_only=True, "
            "never unpickled") from None
    except Exception as exc:  # noqa: BLE001 - any other failure means "not a checkpoint"
        first = first_line(exc)
        raise CheckpointError(f"{p}: not a readable trainer checkpoint ({first})") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        found = data.get("format") if isinstance(data, dict) else type(data).__name__
        raise CheckpointError(f"{p}: format {found!r}, expected {FORMAT!r}")
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise CheckpointError(f"{p}: an incomplete {FORMAT} checkpoint, without "
                              f"{', '.join(missing)}; resume from another checkpoint")
    wrong = _malformed(data)
    if wrong:
        raise CheckpointError(f"{p}: a damaged {FORMAT} checkpoint ({wrong}); resume from "
                              "another checkpoint")
    data["path"] = str(p)
    return data


def _malformed(data: dict[str, Any]) -> str | None:
    """What in a checkpoint's plain fields has the wrong type or range, or None. (Tensors
    and the optimizer state are checked as they are put in place.)"""
    for key in ("step", "epoch", "samples"):
        if type(data[key]) is not int or data[key] < 0:
            return f"{key} {data[key]!r} is not a count"
    for key in ("config", "model_config", "schedule"):
        if not isinstance(data.get(key), dict):
            return f"{key} is a {type(data.get(key)).__name__}, not a mapping"
    for key in ("epochs", "max_steps"):  # a resume may continue the run with them
        value = data["config"].get(key)
        if value is not None and (type(value) is not int or value < 1):
            return f"its config's {key} {value!r} is not a count"
    vocab = data["vocab"]
    if not isinstance(vocab, dict) or not isinstance(vocab.get("digest"), str):
        return "its vocabulary fingerprint has no digest"
    if not isinstance(data["layout_id"], str):
        return "its layout_id is not text"
    return _malformed_counters(data.get("counters"))


def _malformed_counters(counters: Any) -> str | None:
    """What is wrong with the counters a summary reports (absent in older checkpoints)."""
    if counters is None:
        return None
    if not isinstance(counters, dict):
        return "its counters are not a mapping"
    seconds = counters.get("seconds")
    if not isinstance(seconds, dict) or not all(
            _is_amount(v) for v in [*seconds.values(), counters.get("sync_seconds")]):
        return "its time counters are not finite non-negative seconds"
    for key in ("switches", "syncs"):
        if type(counters.get(key)) is not int or counters[key] < 0:
            return f"its {key} counter {counters.get(key)!r} is not a count"
    last = counters.get("last_eval")
    if not isinstance(last, dict):
        return "its last evaluation is not a mapping"
    if last and (type(last.get("step")) is not int or not isinstance(last.get("why"), str)
                 or not all(_is_metrics(last[k]) for k in ("val", "test") if k in last)):
        return "its last evaluation is not the step, the reason and val/test metrics"
    return None


def _is_metrics(value: Any) -> bool:
    """``{auc, logloss, accuracy, samples}``: numbers, or None (nan in JSON)."""
    return isinstance(value, dict) and all(
        v is None or type(v) in (int, float) for v in value.values())


def _is_amount(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value) and value >= 0


def _unpickler_reason(exc: Exception) -> str:
    """The one line of torch's weights_only refusal that names the object (its message is
    a page of advice, part of which is to load without weights_only: never repeated)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:
        if "WeightsUnpickler error:" in line:
            return line.split("WeightsUnpickler error:", 1)[1].strip().split(". ")[0]
    for line in lines:  # torch 2.6+: "Trying to load unsupported GLOBAL posix.system ..."
        if "unsupported GLOBAL" in line or "Unsupported global" in line:
            return line.split(" whose module")[0].split(". ")[0]
    return "an object torch's weights_only loader does not allow"
