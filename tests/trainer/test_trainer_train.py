"""End to end: the model learns, resuming equals not stopping, the CLI and its summary."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from trainer_testlib import CPU_TINY, Layouts

from trainer.errors import CheckpointError, TrainerError
from trainer.cli import main
from trainer.train import TrainConfig, Trainer

log = logging.getLogger(__name__)


def config(target: str, **kw: object) -> TrainConfig:
    options = {"log_every": 0, "eval_batches": 2, **CPU_TINY, **kw}
    return TrainConfig(target, **options)  # type: ignore[arg-type]


def params(t: Trainer) -> dict[str, torch.Tensor]:
    weight, state = t.placement.full_tables()
    out = {f"model.{k}": v.detach().cpu().clone() for k, v in t.model.state_dict().items()}
    out["tables"] = weight.cpu().clone()
    if state is not None:
        out["tables.state"] = state.cpu().clone()
    for i, group in enumerate(t.optimizer.state_dict()["state"].values()):
        for k, v in group.items():
            if isinstance(v, torch.Tensor) and v.numel() > 1:
                out[f"opt.{i}.{k}"] = v.cpu().clone()
    return out


def test_model_learns(layouts: Layouts) -> None:
    summary = Trainer(config(layouts.criteo, optimizer="sgd", lr=0.3, epochs=8,
                             eval_batches=None)).fit()
    auc = summary["test"]["auc"]
    print(f"\ntest AUC after 8 epochs on the synthetic layout: {auc:.4f} "
          f"(val {summary['val']['auc']:.4f}, logloss {summary['test']['logloss']:.4f})")
    assert auc > 0.6
    assert summary["steps"] == 8 * 11 and summary["samples"] == 8 * 20_000
    assert summary["switches"] >= 8 and summary["seconds"]["hot"] > 0
    # Epochs are counted from 1 where people read them (the summary said epoch 7 here).
    assert summary["epoch"] == 8


def test_max_steps_alone_trains_that_many_steps(layouts: Layouts) -> None:
    """--max-steps without --epochs runs as many epochs as it needs (it used to stop at
    the end of the first: `fae demo` announced 100 steps and trained 11); --epochs given
    still bounds it."""
    trainer = Trainer(config(layouts.criteo, max_steps=25, eval_batches=1))
    assert trainer.cfg.epochs == 3  # 11 training minibatches an epoch
    summary = trainer.fit()
    assert summary["steps"] == 25 and summary["epoch"] == 3
    bounded = Trainer(config(layouts.criteo, max_steps=25, epochs=1, eval_batches=1)).fit()
    assert bounded["steps"] == 11
    assert Trainer(config(layouts.criteo)).cfg.epochs == 1


@pytest.mark.parametrize("optimizer,schedule", [("sgd", "fixed"), ("adagrad", "adaptive")])
def test_resume_equals_uninterrupted(layouts: Layouts, tmp_path: Path, optimizer: str,
                                     schedule: str) -> None:
    common = {"optimizer": optimizer, "lr": 0.05, "epochs": 2, "schedule": schedule,
              "switch_every": 3, "adapt_every": 3, "warmup_steps": 4, "decay": "linear"}
    first = Trainer(config(layouts.criteo, max_steps=7, checkpoint=str(tmp_path), **common))
    first.fit()
    resumed = Trainer(config(layouts.criteo, max_steps=16, resume=str(tmp_path), **common))
    assert resumed.step == 7
    resumed.fit()
    straight = Trainer(config(layouts.criteo, max_steps=16, **common))
    straight.fit()
    assert resumed.step == straight.step == 16 and resumed.epoch == 1
    assert resumed.schedule.state_dict() == straight.schedule.state_dict()
    # The summary's counters cover the whole run (switches counted only this process's).
    assert resumed.switches == straight.switches and resumed.batches == straight.batches
    a, b = params(resumed), params(straight)
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0, msg=k)


def test_resume_from_an_epoch_end_checkpoint(layouts: Layouts, tmp_path: Path) -> None:
    """The checkpoint written at an epoch's end (the only one by default) once lacked the
    next epoch's first minibatch: a resumed run trained one step less, to other weights."""
    common = {"lr": 0.05, "epochs": 2, "switch_every": 3}
    straight = Trainer(config(layouts.criteo, checkpoint=str(tmp_path), **common))
    straight.fit()
    per_epoch = straight.steps_per_epoch
    resumed = Trainer(config(layouts.criteo, resume=str(tmp_path / f"ckpt-{per_epoch:08d}.pt"),
                             **common))
    assert (resumed.step, resumed.epoch) == (per_epoch, 1)
    # The epoch-end evaluation belongs to the epoch that ended (it said epoch 2).
    assert resumed.last_eval["epoch"] == 1 and resumed.last_eval["why"] == "epoch 1 end"
    assert Trainer(config(layouts.criteo, resume=str(tmp_path / f"ckpt-{per_epoch:08d}.pt"),
                          **{**common, "epochs": 1})).fit()["epoch"] == 1
    resumed.fit()
    assert resumed.step == straight.step == 2 * per_epoch
    a, b = params(resumed), params(straight)
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=1e-6, rtol=0, msg=k)


def test_resume_with_another_seed_is_refused(layouts: Layouts, tmp_path: Path) -> None:
    """The seed orders every epoch's minibatches: another seed on resume once visited some
    minibatches twice and others never."""
    Trainer(config(layouts.criteo, max_steps=3, checkpoint=str(tmp_path), seed=5)).fit()
    with pytest.raises(CheckpointError, match="trained with --seed 5, not 0; resume with --seed 5"):
        Trainer(config(layouts.criteo, resume=str(tmp_path), seed=0))


def test_resume_on_other_hot_rows(layouts: Layouts, tmp_path: Path) -> None:
    first = Trainer(config(layouts.criteo, max_steps=5, checkpoint=str(tmp_path)))
    first.fit()
    saved, _ = first.placement.full_tables()
    other = Trainer(config(layouts.criteo_other_budget, resume=str(tmp_path), max_steps=9))
    assert [t.hot_rows for t in other.placement.tables] != [
        t.hot_rows for t in first.placement.tables]
    torch.testing.assert_close(other.placement.full_tables()[0], saved)
    summary = other.fit()
    assert summary["steps"] == 9 and summary["layout_id"] != first.reader.manifest.layout_id


def test_resume_on_another_layout_restarts_the_decay_clock(layouts: Layouts,
                                                           tmp_path: Path) -> None:
    """The epoch restarts over the new layout's minibatches, and so does the decay's count
    of them: it kept the abandoned part of the epoch, in the old layout's minibatches, and
    could leave the rest of the run at lr 0."""
    common = {"epochs": 2, "decay": "linear", "eval_batches": 1}
    first = Trainer(config(layouts.criteo, max_steps=8, checkpoint=str(tmp_path), **common))
    first.fit()
    other = Trainer(config(layouts.criteo_other_budget, resume=str(tmp_path), **common))
    per_epoch = other.schedule.batches_per_epoch
    assert other.batches == other.schedule.emitted == 0  # epoch 1 starts again
    assert other.lr_at(other.step, other.batches) == pytest.approx(0.1)
    other.fit()
    assert other.batches == 2 * per_epoch and other._last_lr > 0


def test_a_fixed_run_resumed_adaptive_starts_adapting_at_one(layouts: Layouts,
                                                             tmp_path: Path) -> None:
    Trainer(config(layouts.criteo, max_steps=3, switch_every=8, checkpoint=str(tmp_path))).fit()
    resumed = Trainer(config(layouts.criteo, resume=str(tmp_path), schedule="adaptive"))
    assert resumed.schedule.run_length == 1


def test_adaptive_schedule_lengthens_runs(layouts: Layouts) -> None:
    t = Trainer(config(layouts.criteo, schedule="adaptive", adapt_every=2, adapt_tolerance=1.0,
                       epochs=2, lr=0.05))
    summary = t.fit()
    assert summary["run_length"] > 1
    assert summary["seconds"]["probe"] > 0


def test_cli_json_summary(layouts: Layouts, tmp_path: Path, capsys, caplog) -> None:  # type: ignore[no-untyped-def]
    caplog.set_level(logging.INFO)
    code = main([layouts.criteo, "--max-steps", "4", "--log-every", "2", "--eval-every", "2",
                 "--eval-batches", "1", "--bottom-mlp", "32-16", "--top-mlp", "32-1",
                 "--optimizer", "adagrad", "--lr", "0.01", "--switch-every", "1", "--device", "cpu",
                 "--checkpoint", str(tmp_path), "--json"])
    assert code == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["steps"] == 4 and summary["placement"] == "fae"
    assert set(summary["seconds"]) >= {"hot", "cold", "sync"}
    assert summary["samples_per_s"] > 0 and 0 <= summary["test"]["auc"] <= 1
    assert Path(summary["checkpoint"]).is_file()
    lines = [r.getMessage() for r in caplog.records]
    assert sum(line.startswith("step ") and " | loss " in line for line in lines) == 2
    assert any("switch" in line for line in lines)
    # steps 2 and 4; the end is step 4 again, not evaluated (nor checkpointed) twice
    assert sum(line.startswith("eval ") for line in lines) == 2


def test_no_dense_features_means_no_bottom_mlp() -> None:
    """Taobao layouts have no dense column: the model is the embeddings' pairwise dots."""
    from trainer.errors import TrainerError
    from trainer.model import DLRM, DLRMConfig

    cfg = DLRMConfig(num_dense=0, num_sparse=5, embedding_dim=4, bottom_mlp=(4,), top_mlp=(8, 1))
    assert cfg.interaction_dim == 10
    model = DLRM(cfg)
    assert model.bottom is None
    embedded = torch.randn(3, 5, 4)
    logits = model(torch.zeros(3, 0), embedded)
    assert logits.shape == (3,)
    z = embedded @ embedded.transpose(1, 2)
    li, lj = torch.tril_indices(5, 5, offset=-1)
    torch.testing.assert_close(logits, model.top(z[:, li, lj]).squeeze(1))
    with pytest.raises(TrainerError, match="at least 2 sparse features"):
        DLRMConfig(num_dense=0, num_sparse=1, embedding_dim=4, bottom_mlp=(4,))


def test_dlrm_interaction_matches_pairwise_dots_written_out() -> None:
    """DLRM's interaction against plain loops: the bottom MLP's output and every pair
    (i > j) of [x, e_1, ..., e_F] dotted once, row by row, then the top MLP."""
    from trainer.model import DLRM, DLRMConfig

    cfg = DLRMConfig(num_dense=3, num_sparse=4, embedding_dim=2, bottom_mlp=(5, 2),
                     top_mlp=(6, 1))
    model = DLRM(cfg, seed=3)
    dense, embedded = torch.randn(7, 3), torch.randn(7, 4, 2)
    x = model.bottom(dense)
    rows = []
    for b in range(7):
        vectors = [x[b], *embedded[b]]
        dots = [float(vectors[i] @ vectors[j]) for i in range(len(vectors)) for j in range(i)]
        rows.append([*x[b].tolist(), *dots])
    want = model.top(torch.tensor(rows)).squeeze(1)
    torch.testing.assert_close(model(dense, embedded), want)


def test_a_diverged_run_reports_nan_not_a_traceback(layouts: Layouts, capsys, caplog) -> None:  # type: ignore[no-untyped-def]
    """A learning rate far too high: the summary says nan (AUC included, not 0.5) and a
    warning says why; it used to end in a TypeError formatting the summary."""
    code = main([layouts.criteo, "--max-steps", "3", "--lr", "1e30", "--eval-batches", "2",
                 "--bottom-mlp", "32-16", "--top-mlp", "32-1", "--device", "cpu"])
    assert code == 0
    out = capsys.readouterr().out
    assert "test auc nan logloss nan" in out
    assert any("training diverged" in r.getMessage() for r in caplog.records)


def test_adaptive_schedule_without_validation_is_refused_up_front(
        layouts: Layouts, monkeypatch: pytest.MonkeyPatch) -> None:
    """Refused before the first step, not after the first --adapt-every steps."""
    from trainer.data import LayoutReader

    refs = LayoutReader.refs
    monkeypatch.setattr(LayoutReader, "refs", lambda self, split, kind=None:
                        [] if split == "val" else refs(self, split, kind))
    with pytest.raises(TrainerError, match="adaptive needs validation minibatches"):
        Trainer(config(layouts.criteo, schedule="adaptive"))


@pytest.mark.parametrize(("option", "value", "match"), [
    ("seed", -1, r"seed \(-1\) must be in"),
    ("lr", float("inf"), "finite"),
    ("eval_batches", 0, r"eval_batches \(0\) must be >= 1"),
    ("eval_batches", -1, r"eval_batches \(-1\)"),
    ("decay_steps", -5, r"decay_steps \(-5\)"),
    ("adapt_tolerance", float("nan"), "adapt_tolerance"),
])
def test_bad_options_are_refused(layouts: Layouts, option: str, value: object,
                                 match: str) -> None:
    with pytest.raises(TrainerError, match=match):
        config(layouts.criteo, **{option: value})


def test_learning_rate_schedule_and_its_log_line(layouts: Layouts, caplog) -> None:  # type: ignore[no-untyped-def]
    """One process: linear decay from the end of the warmup to the end of the last epoch.
    The log line once showed the next step's rate instead of the one just used."""
    t = Trainer(config(layouts.criteo, lr=0.1, warmup_steps=2, decay="linear", epochs=2))
    total = 2 * t.schedule.batches_per_epoch
    assert [t.lr_at(s, s) for s in (0, 1)] == [0.05, 0.1]
    for step in (2, 7, total - 1):
        assert t.lr_at(step, step) == pytest.approx(0.1 * (1 - (step - 2) / (total - 2)))
    with pytest.raises(TrainerError, match=r"decay_steps \(2\) must be larger than "
                                           r"warmup_steps \(5\)"):
        config(layouts.criteo, warmup_steps=5, decay_steps=2, decay="linear")
    caplog.set_level(logging.INFO, logger="trainer.train")
    Trainer(config(layouts.criteo, lr=0.1, warmup_steps=4, log_every=1, max_steps=1)).fit()
    line = next(r.getMessage() for r in caplog.records if r.getMessage().startswith("step 1 "))
    assert "| lr 0.025 |" in line  # step 1 trained at 0.1 * 1/4


def test_resume_with_fewer_epochs_trains_no_more(layouts: Layouts, tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    """A checkpoint taken early in epoch 2, resumed with --epochs 1, trained the minibatches
    of epoch 2 it had already handed out: a partial epoch nobody asked for."""
    per_epoch = Trainer(config(layouts.criteo)).schedule.batches_per_epoch
    first = Trainer(config(layouts.criteo, epochs=2, max_steps=per_epoch + 2,
                           checkpoint=str(tmp_path)))
    first.fit()
    with caplog.at_level(logging.WARNING, logger="trainer.train"):
        resumed = Trainer(config(layouts.criteo, epochs=1, resume=str(tmp_path)))
    assert "are not trained" in caplog.text
    summary = resumed.fit()
    assert summary["steps"] == per_epoch + 2  # nothing more was trained


def test_options_of_the_schedule_are_refused_before_the_layout_is_read() -> None:
    """--switch-every 0 was refused only after every shard's checksum was verified."""
    for option in ("switch_every", "adapt_every", "adapt_max"):
        with pytest.raises(TrainerError, match=rf"{option} \(0\) must be >= 1"):
            TrainConfig("/nonexistent", **{option: 0})  # type: ignore[arg-type]
