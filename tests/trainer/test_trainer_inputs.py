"""Bad layouts and checkpoints are refused with one clear error before the first step."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from trainer_testlib import CPU_TINY, Layouts

from fae_data.errors import FaeError, ManifestError
from trainer.cli import main
from trainer.data import BatchRef, LayoutReader, stream
from trainer.errors import CheckpointError, TrainerError
from trainer.train import TrainConfig, Trainer


def edit_manifest(path: Path, change) -> None:  # type: ignore[no-untyped-def]
    d = json.loads(path.read_text())
    change(d)
    path.write_text(json.dumps(d))


def rewrite_shard(manifest: Path, index: int, change) -> None:  # type: ignore[no-untyped-def]
    """Rewrite a shard through ``change(table)`` and record its new size and sha256."""
    d = json.loads(manifest.read_text())
    shard = d["shards"][index]
    path = manifest.parent / shard["path"]
    table = change(pq.read_table(path))
    pq.write_table(table, path, row_group_size=d["params"]["batch_size"])
    data = path.read_bytes()
    shard["bytes"], shard["sha256"] = len(data), hashlib.sha256(data).hexdigest()
    manifest.write_text(json.dumps(d))


def first_shard(manifest: Path) -> Path:
    return manifest.parent / json.loads(manifest.read_text())["shards"][0]["path"]


def flip_byte(manifest: Path) -> None:
    path = first_shard(manifest)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def rename_column(manifest: Path) -> None:
    rewrite_shard(manifest, 0, lambda t: t.rename_columns(
        ["X1" if n == "I1" else n for n in t.column_names]))


CASES = {
    "format": (lambda m: edit_manifest(m, lambda d: d.update(format="fae.layout/v9")),
               ManifestError, r"format 'fae.layout/v9' is not supported"),
    "checksum": (flip_byte, ManifestError, r"train-hot-00000.parquet: sha256 .* manifest says"),
    "missing": (lambda m: first_shard(m).unlink(), ManifestError,
                r"1 of 4 shards do not match .*train-hot-00000.parquet: missing"),
    "columns": (rename_column, ManifestError,
                r"column X1 \(float\) where the manifest has I1 \(float\)"),
    "hot_rows": (lambda m: edit_manifest(m, lambda d: d["tables"][2].update(hot_rows=10**9)),
                 ManifestError, r"table C3: hot_rows \(1000000000\) must be between 0 and "
                 r"vocab_size"),
    "label": (lambda m: edit_manifest(m, lambda d: d["columns"][0].update(role="dense")),
              TrainerError, r"expected one label column, found \[\]"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_layout_refused_before_training(case: str, layout_copy, capsys) -> None:  # type: ignore[no-untyped-def]
    damage, error, message = CASES[case]
    manifest = layout_copy()
    damage(manifest)
    with pytest.raises(error, match=message):
        Trainer(TrainConfig(str(manifest), **CPU_TINY))  # type: ignore[arg-type]
    assert main([str(manifest), "--max-steps", "1"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    assert issubclass(error, FaeError)


def test_hot_rows_beyond_the_planned_budget_are_warned_about(layout_copy, caplog) -> None:  # type: ignore[no-untyped-def]
    """The planner sized k_t for the layout's dtype and optimizer slots; float32 tables
    with Adagrad state may need more accelerator memory than that budget."""
    import logging

    from fae_data import manifest as mf
    from trainer.train import hot_budget_overrun

    manifest = layout_copy()
    m, _ = mf.load(str(manifest))
    need = sum(t.hot_rows * t.dim for t in m.tables) * 4
    assert need > 0
    edit_manifest(manifest, lambda d: d["params"].update(budget_bytes=need, dtype="float16"))
    m, _ = mf.load(str(manifest))
    assert hot_budget_overrun(m, "sgd") is None  # float32, no state: exactly the budget
    message = hot_budget_overrun(m, "adagrad")
    assert message is not None and f"puts {2 * need:,} B on the accelerator" in message
    assert "--dtype float32 --optimizer-slots 1" in message
    with caplog.at_level(logging.WARNING, logger="trainer.train"):
        Trainer(TrainConfig(str(manifest), placement="fae", optimizer="adagrad",
                            **CPU_TINY))  # type: ignore[arg-type]
    assert message in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="trainer.train"):
        Trainer(TrainConfig(str(manifest), placement="hybrid", optimizer="adagrad",
                            **CPU_TINY))  # type: ignore[arg-type]
    assert "planned its hot rows" not in caplog.text  # no hot table on the accelerator


def test_unwritable_checkpoint_folder_is_one_error_line(layout_copy, tmp_path, capsys) -> None:  # type: ignore[no-untyped-def]
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    manifest = layout_copy()
    assert main([str(manifest), "--checkpoint", str(blocker / "ck"), "--quiet"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    # refused before the first step (it used to be found at the epoch's end, after training)
    assert err == [f"error (storage): --checkpoint {blocker / 'ck'}: cannot write checkpoints there "
                   "(Not a directory)"]


def test_a_closed_stdout_is_no_traceback(layout_copy) -> None:  # type: ignore[no-untyped-def]
    """`fae-train ... | head` where head has already exited: exit 141, no traceback."""
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "trainer.cli", str(layout_copy()), "--max-steps", "1",
           "--eval-batches", "1", "--quiet"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # long before the summary is printed
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=300) == 141, stderr
    assert "Traceback" not in stderr


def test_out_of_range_id_in_a_hot_shard(layout_copy) -> None:  # type: ignore[no-untyped-def]
    import pyarrow as pa
    import pyarrow.compute as pc

    manifest = layout_copy()
    rewrite_shard(manifest, 0, lambda t: t.set_column(
        t.column_names.index("C3"), "C3", pc.add(t["C3"], pa.scalar(10**6, pa.uint32()))))
    reader = LayoutReader(str(manifest))  # checksums match the rewritten file
    with pytest.raises(TrainerError, match=r"column C3 has id \d+ outside \[0, hot_rows"):
        reader.read(BatchRef(0, 0))


def test_checkpoint_of_another_vocabulary_is_refused(layouts: Layouts, tmp_path: Path) -> None:
    Trainer(TrainConfig(layouts.criteo, max_steps=2, log_every=0, eval_batches=1,
                        checkpoint=str(tmp_path), **CPU_TINY)).fit()  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match=r"table C3 has vocab_size \d+ in the checkpoint"):
        Trainer(TrainConfig(layouts.criteo_other_vocab, resume=str(tmp_path),
                            **CPU_TINY))  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match="was trained with --optimizer sgd"):
        Trainer(TrainConfig(layouts.criteo, resume=str(tmp_path), optimizer="adagrad",
                            **CPU_TINY))  # type: ignore[arg-type]
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="not a readable trainer checkpoint"):
        Trainer(TrainConfig(layouts.criteo, resume=str(tmp_path / "junk.pt")))


def test_checkpoint_of_another_model_shape_is_refused(layouts: Layouts, tmp_path: Path) -> None:
    """A checkpoint whose weights do not fit its model (another trainer version): a clear
    error naming it, not torch's state_dict traceback."""
    import torch

    from trainer import checkpoint as ckpt_io

    Trainer(TrainConfig(layouts.criteo, max_steps=2, log_every=0, eval_batches=1,
                        checkpoint=str(tmp_path), **CPU_TINY)).fit()  # type: ignore[arg-type]
    saved = ckpt_io.load(tmp_path)
    path = Path(saved.pop("path"))
    saved["model"] = {**saved["model"], "bottom.9.weight": torch.zeros(1)}
    torch.save(saved, path.with_suffix(".tmp"))  # the loaded tensors map the old file
    path.with_suffix(".tmp").replace(path)
    with pytest.raises(CheckpointError, match=r"weights do not fit the model.*without --resume"):
        Trainer(TrainConfig(layouts.criteo, resume=str(tmp_path), **CPU_TINY))  # type: ignore[arg-type]


def test_bad_options() -> None:
    with pytest.raises(TrainerError, match="placement 'tpu'"):
        TrainConfig("x", placement="tpu")
    with pytest.raises(TrainerError, match="must end in the embedding dimension 16"):
        from trainer.model import DLRMConfig

        DLRMConfig(bottom_mlp=(64, 8))


def test_stream_reads_minibatches_in_order(layouts: Layouts) -> None:
    reader = LayoutReader(layouts.criteo)
    m = reader.manifest
    refs = reader.refs("train", "cold")[::-1] + reader.refs("val")
    batches = list(stream(reader, refs, depth=2))
    assert [b.ref for b in batches] == refs
    assert [b.rows for b in batches] == [reader.rows(r) for r in refs]
    assert batches[0].rows == m.shards[refs[0].shard].last_batch_rows  # the short last one
    b = batches[1]
    assert b.dense.shape == (m.batch_size, 13) and b.ids.shape == (26, m.batch_size)
    assert b.label.dtype == b.dense.dtype and b.ids.dtype.is_floating_point is False
    direct = pq.ParquetFile(reader.store.path(m.shards[refs[1].shard].path)).read_row_group(
        refs[1].group)
    assert b.ids[0].tolist() == direct["C1"].to_pylist()


def test_resume_with_another_model_shape_is_refused(layouts: Layouts, tmp_path: Path) -> None:
    """Resume takes the model's shape from the checkpoint: a shape option that says
    otherwise was silently ignored; now it is refused, while leaving it out still works."""
    Trainer(TrainConfig(layouts.criteo, max_steps=2, log_every=0, eval_batches=1,
                        checkpoint=str(tmp_path), **CPU_TINY)).fit()  # type: ignore[arg-type]
    other = {**CPU_TINY, "bottom_mlp": (64, 16)}
    with pytest.raises(CheckpointError, match="trained with --bottom-mlp 32-16, not 64-16; "
                                              "resume without --bottom-mlp"):
        Trainer(TrainConfig(layouts.criteo, resume=str(tmp_path), **other))  # type: ignore[arg-type]
    # A layout without list columns pools nothing: --list-pooling does not apply to it.
    Trainer(TrainConfig(layouts.criteo, resume=str(tmp_path), list_pooling="sum",
                        **CPU_TINY))  # type: ignore[arg-type]
    resumed = Trainer(TrainConfig(layouts.criteo, resume=str(tmp_path), device="cpu"))
    assert resumed.model_config.bottom_mlp == (32, 16)  # the checkpoint's, not the default
    # The default typed out is a shape option given too (it used to pass unnoticed).
    with pytest.raises(CheckpointError, match="trained with --top-mlp 32-1, not 512-256-1"):
        Trainer(TrainConfig(layouts.criteo, resume=str(tmp_path), top_mlp=(512, 256, 1),
                            device="cpu"))


def test_damaged_checkpoints_are_named(layouts: Layouts, tmp_path: Path) -> None:
    """An incomplete checkpoint was a KeyError deep in the trainer; a file holding Python
    objects got torch's page of advice (including "load it with weights_only=False")."""
    import argparse

    import torch

    from trainer import checkpoint as ckpt_io

    Trainer(TrainConfig(layouts.criteo, max_steps=2, log_every=0, eval_batches=1,
                        checkpoint=str(tmp_path / "ck"), **CPU_TINY)).fit()  # type: ignore[arg-type]
    saved = ckpt_io.load(tmp_path / "ck")
    del saved["path"], saved["schedule"], saved["pending"]
    torch.save(saved, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match=r"partial.pt: an incomplete "
                       r"fae.trainer-checkpoint/v1 checkpoint, without schedule, pending;"):
        ckpt_io.load(tmp_path / "partial.pt")
    torch.save({"format": ckpt_io.FORMAT, "options": argparse.Namespace()}, tmp_path / "obj.pt")
    with pytest.raises(CheckpointError) as info:
        ckpt_io.load(tmp_path / "obj.pt")
    message = str(info.value)
    assert "refused, it holds Python objects" in message and "argparse.Namespace" in message
    assert "weights_only=False" not in message and "\n" not in message
    (tmp_path / "half.pt").write_bytes((tmp_path / "partial.pt").read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="half.pt: not a readable trainer checkpoint"):
        ckpt_io.load(tmp_path / "half.pt")


def test_a_killed_save_leaves_no_temporary_behind(layouts: Layouts, tmp_path: Path) -> None:
    """A save killed mid-write left a ``.tmp-<pid>-ckpt-*.pt`` as large as the tables for
    ever; the next save removes those of dead processes (and keeps a live one's)."""
    import os

    dead = tmp_path / ".tmp-999999999-ckpt-00000004.pt"  # above any pid_max: no such process
    live = tmp_path / f".tmp-{os.getppid()}-ckpt-00000004.pt"
    for f in (dead, live):
        f.write_bytes(b"half a checkpoint")
    Trainer(TrainConfig(layouts.criteo, max_steps=2, log_every=0, eval_batches=1,
                        checkpoint=str(tmp_path), **CPU_TINY)).fit()  # type: ignore[arg-type]
    assert not dead.exists() and live.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(".")) == [
        "LATEST", "ckpt-00000002.pt"]


def test_ctrl_c_is_one_line(layouts: Layouts, tmp_path: Path, monkeypatch, capsys) -> None:  # type: ignore[no-untyped-def]
    """Ctrl-C printed a traceback; now one line saying what can be resumed, exit 130."""
    import trainer.cli as cli

    def interrupted(*_args, **_kwargs):  # type: ignore[no-untyped-def]
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "train", interrupted)
    assert main([layouts.criteo, "--quiet"]) == 130
    assert capsys.readouterr().err.strip().splitlines() == [
        "interrupted: nothing was saved (--checkpoint DIR makes a run resumable)"]
    ck = tmp_path / "ck"
    assert main([layouts.criteo, "--quiet", "--checkpoint", str(ck)]) == 130
    assert "no checkpoint was written to" in capsys.readouterr().err
    Trainer(TrainConfig(layouts.criteo, max_steps=1, log_every=0, eval_batches=1,
                        checkpoint=str(ck), **CPU_TINY)).fit()  # type: ignore[arg-type]
    assert main([layouts.criteo, "--quiet", "--checkpoint", str(ck)]) == 130
    assert capsys.readouterr().err.strip() == (
        f"interrupted: continue from the last checkpoint with --resume {ck} --checkpoint {ck}")


def test_a_changed_vocabulary_is_refused(layout_copy) -> None:  # type: ignore[no-untyped-def]
    """The reader verified every shard checksum but not the vocabularies, whose sha256 it
    computes anyway (the checkpoint fingerprint): a vocabulary changed after publish now
    stops the run before the first step."""
    import polars as pl

    manifest = layout_copy()
    table = json.loads(manifest.read_text())["tables"][0]
    vocab = manifest.parent / table["vocab_path"]
    frame = pl.read_parquet(vocab)
    frame.with_columns(pl.col("value").reverse()).write_parquet(vocab)
    with pytest.raises(ManifestError, match=rf"vocabulary .*{table['name']}.parquet of table "
                       rf"{table['name']} has sha256 .* changed after the layout was published"):
        Trainer(TrainConfig(str(manifest), **CPU_TINY))  # type: ignore[arg-type]


def test_a_layouts_folder_is_no_checkpoint_folder(layouts: Layouts, tmp_path: Path) -> None:
    """--checkpoint ROOT/layouts replaced the root's LATEST with a checkpoint's name, and
    the root then pointed at no layout."""
    from trainer import checkpoint as ckpt_io

    layouts_dir = Path(layouts.criteo).parent.parent
    before = (layouts_dir / "LATEST").read_text()
    with pytest.raises(CheckpointError, match="its LATEST names .* not a checkpoint"):
        Trainer(TrainConfig(layouts.criteo, checkpoint=str(layouts_dir), **CPU_TINY))  # type: ignore[arg-type]
    assert (layouts_dir / "LATEST").read_text() == before
    with pytest.raises(CheckpointError, match="it holds a layout"):
        ckpt_io.check_folder(Path(layouts.criteo).parent)
    with pytest.raises(CheckpointError, match="it is a storage root"):
        ckpt_io.check_folder(layouts_dir.parent)
    shards = Path(layouts.criteo).parent / "shards"
    with pytest.raises(CheckpointError, match="it holds Parquet data"):
        ckpt_io.check_folder(shards)
    ckpt_io.check_folder(tmp_path / "new")  # a new or a checkpoint folder is fine
    (tmp_path / "other" / "child").mkdir(parents=True)  # some manifest.json further down
    (tmp_path / "other" / "child" / "manifest.json").write_text("{}")
    ckpt_io.check_folder(tmp_path / "other")


def test_a_manifest_listing_a_shard_or_table_twice_is_refused(layout_copy) -> None:  # type: ignore[no-untyped-def]
    """A shard listed twice was trained twice per epoch (57,206 samples of 40,000 rows)."""
    manifest = layout_copy()
    edit_manifest(manifest, lambda d: d["shards"].append(dict(d["shards"][0])))
    with pytest.raises(ManifestError, match=r"shard .* is listed more than once"):
        LayoutReader(str(manifest))
    edit_manifest(manifest, lambda d: (d["shards"].pop(), d["tables"].append(dict(d["tables"][0]))))
    with pytest.raises(ManifestError, match=r"table C1 is listed more than once"):
        LayoutReader(str(manifest))


def test_a_shard_damaged_after_the_start_is_one_error(layout_copy) -> None:  # type: ignore[no-untyped-def]
    """Verified at start, then overwritten: a pyarrow traceback, now one message."""
    manifest = layout_copy()
    reader = LayoutReader(str(manifest))
    first_shard(manifest).write_bytes(b"not parquet any more")
    with pytest.raises(TrainerError, match=r"row group 0: unreadable .*run `fae verify`"):
        reader.read(BatchRef(0, 0))


class _Payload:
    """What a malicious checkpoint would hold: loading it must never run this."""

    def __reduce__(self):  # type: ignore[no-untyped-def]
        import os

        return (os.system, ("echo pwned",))


def test_forged_checkpoint_fields_are_one_error(layouts: Layouts, tmp_path: Path) -> None:
    """A checkpoint in the right format with fields of the wrong type or range ended in
    AttributeError, ZeroDivisionError or an IndexError in the prefetch thread; one
    pointing the schedule past the epoch silently skipped minibatches."""
    import torch

    from trainer import checkpoint as ckpt_io

    Trainer(TrainConfig(layouts.criteo, max_steps=2, log_every=0, eval_batches=1,
                        checkpoint=str(tmp_path / "ck"), **CPU_TINY)).fit()  # type: ignore[arg-type]
    good = ckpt_io.load(tmp_path / "ck")
    del good["path"]
    forgeries = {
        "step": lambda c: c.update(step=-5),
        "config": lambda c: c.update(config=["x"]),
        "vocab": lambda c: c.update(vocab="abc"),
        "hot_pos": lambda c: c["schedule"].update(hot_pos=10**6),
        "round": lambda c: c["schedule"].update(round=[["hot", 999]]),
        "pending": lambda c: c.update(pending=[[0, [[99, 0]], "hot"]]),
        "optimizer": lambda c: c.update(dense_optimizer={}),
        "counters": lambda c: c["counters"].update(seconds=3),
    }
    for name, forge in forgeries.items():
        c = {**good, "schedule": dict(good["schedule"]), "counters": dict(good["counters"])}
        forge(c)
        torch.save(c, tmp_path / f"{name}.pt")
        with pytest.raises(CheckpointError, match=rf"{name}\.pt: "):
            Trainer(TrainConfig(layouts.criteo, resume=str(tmp_path / f"{name}.pt"),
                                log_every=0, **CPU_TINY))  # type: ignore[arg-type]
    torch.save({**good, "extra": _Payload()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError) as info:
        ckpt_io.load(tmp_path / "evil.pt")
    message = str(info.value)  # the object is named; torch's advice is not repeated
    assert "system" in message and "weights_only=False" not in message, message


def test_a_fresh_run_does_not_overwrite_another_runs_checkpoints(
        layouts: Layouts, tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    ck = tmp_path / "ck"
    Trainer(TrainConfig(layouts.criteo, max_steps=2, log_every=0, eval_batches=1,
                        checkpoint=str(ck), **CPU_TINY)).fit()  # type: ignore[arg-type]
    with pytest.raises(CheckpointError, match="holds the checkpoints of another run"):
        Trainer(TrainConfig(layouts.criteo, checkpoint=str(ck), **CPU_TINY))  # type: ignore[arg-type]
    # Continuing it is fine; resuming without --checkpoint says that nothing is saved.
    Trainer(TrainConfig(layouts.criteo, checkpoint=str(ck), resume=str(ck), **CPU_TINY))  # type: ignore[arg-type]
    Trainer(TrainConfig(layouts.criteo, resume=str(ck), **CPU_TINY))  # type: ignore[arg-type]
    assert any("saves no checkpoints" in r.getMessage() for r in caplog.records)


def test_a_checkpoint_that_cannot_be_written_is_one_error(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A full disk ended in torch's 'unexpected pos' traceback and left the half-written
    temporary file on the full disk."""
    import torch

    from trainer import checkpoint as ckpt_io

    ckpt_io.save(tmp_path, 1, {"x": torch.zeros(2)})

    def full(obj, f):  # type: ignore[no-untyped-def]
        Path(f).write_bytes(b"half")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 58560")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(CheckpointError, match=r"ckpt-00000002.pt: could not be saved "
                       r"\(.*unexpected pos.*ckpt-00000001.pt, is intact"):
        ckpt_io.save(tmp_path, 2, {"x": torch.zeros(2)})
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LATEST", "ckpt-00000001.pt"]


def test_a_resume_with_nothing_left_says_so(layouts: Layouts, tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    ck = tmp_path / "ck"
    Trainer(TrainConfig(layouts.criteo, epochs=1, log_every=0, eval_batches=1,
                        checkpoint=str(ck), **CPU_TINY)).fit()  # type: ignore[arg-type]
    summary = Trainer(TrainConfig(layouts.criteo, epochs=1, log_every=0, eval_batches=1,
                                  resume=str(ck), **CPU_TINY)).fit()  # type: ignore[arg-type]
    assert summary["steps"] == 11 and summary["samples_per_s"] is None
    assert any("nothing left to train" in r.getMessage() for r in caplog.records)


def test_option_errors_name_the_flag(layouts: Layouts, tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    assert main([layouts.criteo, "--switch-every", "0"]) == 1
    assert "error: --switch-every (0) must be >= 1" in capsys.readouterr().err
    (tmp_path / "f").write_text("x")
    assert main([layouts.criteo, "--checkpoint", str(tmp_path / "f")]) == 1
    assert "is a file, not a folder" in capsys.readouterr().err


def test_resume_and_checkpoint_on_one_empty_folder_start_then_continue(
        layouts: Layouts, tmp_path: Path) -> None:
    """What a retried Airflow attempt runs: the same command starts the run in an empty
    folder and, after a crash, continues it; a resume from any other missing place is
    still an error."""
    ck = str(tmp_path / "run-1")
    first = Trainer(TrainConfig(layouts.criteo, max_steps=3, log_every=0, eval_every=3,
                                eval_batches=1, checkpoint=ck, resume=ck, **CPU_TINY))  # type: ignore[arg-type]
    assert first.step == 0 and first.cfg.resume is None
    first.fit()
    again = Trainer(TrainConfig(layouts.criteo, max_steps=5, log_every=0, eval_batches=1,
                                checkpoint=ck, resume=ck, **CPU_TINY))  # type: ignore[arg-type]
    assert again.step == 3
    with pytest.raises(CheckpointError, match="empty: no such checkpoint file"):
        Trainer(TrainConfig(layouts.criteo, resume=str(tmp_path / "empty"),
                            checkpoint=str(tmp_path / "other"), **CPU_TINY))  # type: ignore[arg-type]


def test_more_forgeries_are_one_error(layouts: Layouts, tmp_path: Path) -> None:
    """Fields read outside the restore (the model's widths, the vocabulary fingerprint,
    the counters a summary prints), tensors that are not finite or of another shape, a
    minibatch of the wrong kind, a round naming one minibatch three times."""
    import torch

    from trainer import checkpoint as ckpt_io

    Trainer(TrainConfig(layouts.criteo, max_steps=2, log_every=0, eval_batches=1,
                        optimizer="adagrad", lr=0.01, checkpoint=str(tmp_path / "ck"),
                        **CPU_TINY)).fit()  # type: ignore[arg-type]
    good = ckpt_io.load(tmp_path / "ck")
    del good["path"]
    hot = {r for r in Trainer(TrainConfig(layouts.criteo, **CPU_TINY)).reader.refs(  # type: ignore[arg-type]
        "train", "hot")}
    cold_ref = next(r for r in Trainer(TrainConfig(layouts.criteo, **CPU_TINY)).reader.refs(  # type: ignore[arg-type]
        "train") if r not in hot)

    def nan_table(c):  # type: ignore[no-untyped-def]
        c["embedding"] = {**c["embedding"], "weight": c["embedding"]["weight"].clone()}
        c["embedding"]["weight"][0, 0] = float("nan")

    forgeries = {
        "widths": lambda c: c.update(model_config={**c["model_config"], "bottom_mlp": "x"}),
        "huge": lambda c: c.update(model_config={**c["model_config"], "top_mlp": [10**13, 1]}),
        "fingerprint": lambda c: c.update(vocab={"digest": "x", "tables": 5}),
        "seconds": lambda c: c["counters"]["seconds"].update(hot=float("nan")),
        "last_eval": lambda c: c["counters"].update(last_eval={"step": 2}),
        "nan_table": nan_table,
        "state_shape": lambda c: c.update(embedding={**c["embedding"], "state": torch.zeros(1)}),
        "kind": lambda c: c.update(pending=[[0, [[cold_ref.shard, cold_ref.group]], "hot"]]),
        "round": lambda c: c["schedule"].update(round=[["cold", 1]] * 3),
        "emitted": lambda c: c["schedule"].update(emitted=10**12),
    }
    for name, forge in forgeries.items():
        c = {**good, "schedule": dict(good["schedule"]),
             "counters": {**good["counters"], "seconds": dict(good["counters"]["seconds"])}}
        forge(c)
        torch.save(c, tmp_path / f"{name}.pt")
        options = {**CPU_TINY, "top_mlp": None, "bottom_mlp": None}  # the checkpoint's
        with pytest.raises(CheckpointError, match=rf"{name}\.pt: "):
            Trainer(TrainConfig(layouts.criteo, resume=str(tmp_path / f"{name}.pt"),
                                optimizer="adagrad", lr=0.01, log_every=0, **options))  # type: ignore[arg-type]


def test_max_steps_decays_to_its_end_and_resumes_to_it(layouts: Layouts, tmp_path: Path) -> None:
    """--max-steps alone: the decay ends at its last step, not at the end of the last
    whole epoch; a resume with --max-steps counts from where the checkpoint stands (it
    once refused to train with steps left)."""
    t = Trainer(TrainConfig(layouts.criteo, max_steps=25, decay="linear", log_every=0,
                            eval_batches=1, checkpoint=str(tmp_path / "ck"), eval_every=15,
                            **CPU_TINY))  # type: ignore[arg-type]
    assert t.lr_at(24, 24) == pytest.approx(0.1 / 25) and t.lr_at(25, 25) == 0.0
    t.fit()
    ck = tmp_path / "ck" / "ckpt-00000015.pt"
    resumed = Trainer(TrainConfig(layouts.criteo_other_budget, resume=str(ck), max_steps=40,
                                  log_every=0, eval_batches=1, **CPU_TINY))  # type: ignore[arg-type]
    assert resumed.fit()["steps"] == 40


def test_a_resume_continues_a_max_steps_run_to_its_end(layouts: Layouts, tmp_path: Path) -> None:
    """A run that --max-steps alone set, resumed without it: it trained on to the end of
    the derived epochs, its lr jumping back up."""
    ck = str(tmp_path / "ck")
    Trainer(TrainConfig(layouts.criteo, max_steps=15, decay="linear", log_every=0,
                        eval_every=10, eval_batches=1, checkpoint=ck, **CPU_TINY)).fit()  # type: ignore[arg-type]
    resumed = Trainer(TrainConfig(layouts.criteo, resume=str(Path(ck) / "ckpt-00000010.pt"),
                                  decay="linear", log_every=0, eval_batches=1, **CPU_TINY))  # type: ignore[arg-type]
    assert resumed.cfg.max_steps == 15 and resumed.fit()["steps"] == 15
    for url in ("s3://bucket/ck", "s3:/bucket/ck"):  # the second: what paths make of it
        with pytest.raises(CheckpointError, match="a local .*folder, not a URL"):
            Trainer(TrainConfig(layouts.criteo, checkpoint=url, **CPU_TINY))  # type: ignore[arg-type]


def test_cuda_graphs_on_a_layout_with_lists_says_it_records_nothing(layouts: Layouts,
                                                                     caplog) -> None:  # type: ignore[no-untyped-def]
    Trainer(TrainConfig(layouts.lists, cuda_graphs=True, **CPU_TINY))  # type: ignore[arg-type]
    assert any("--cuda-graphs records none of its steps" in r.getMessage()
               for r in caplog.records)
