"""``fae clean``: old published layouts go (``--keep``), abandoned builds go once stale,
LATEST's layout and everything that is not a layout stay."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from fae_data import manifest as mf
from fae_data.errors import InputError
from fae_data.ingest import IngestParams
from fae_data.storage import Storage
from fae_data.synth import write_criteo
from fae_data.verify import verify_layout
from pipelines.clean import parse_age, run_clean
from pipelines.cli import app
from pipelines.ingest import run_ingest
from pipelines.layout import LayoutParams, run_layout

BUDGETS = ("32KiB", "64KiB", "128KiB")  # three layouts of one dataset, oldest first
DAY = 86400.0


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """A root with three published layouts of ``criteo`` (LATEST: the last), one of
    ``other``; returns the root and the criteo layout ids, oldest first."""
    work = tmp_path_factory.mktemp("clean")
    raw = write_criteo(work / "raw", rows=3000, days=2, scale=0.001, seed=1)
    root = work / "root"
    run_ingest([str(p) for p in raw], str(root), IngestParams("criteo"))
    run_ingest([str(p) for p in raw], str(root), IngestParams("criteo"), dataset="other")
    other = run_layout(str(root), LayoutParams(dataset="other", budget="32KiB"))
    ids = []
    for budget in BUDGETS:
        ids.append(run_layout(str(root), LayoutParams(dataset="criteo", budget=budget,
                                                      batch_size=256)).layout_id)
    assert other.layout_id not in ids and len(set(ids)) == 3
    return root, ids


@pytest.fixture
def root(built: tuple[Path, list[str]], tmp_path: Path) -> Path:
    copy = tmp_path / "root"
    shutil.copytree(built[0], copy)
    return copy


def _published(root: Path) -> set[str]:
    return {p.parent.name for p in (root / "layouts").glob(f"*/{mf.MANIFEST}")}


def _age(path: Path, seconds: float) -> None:
    """Make every file under ``path`` look last written ``seconds`` ago."""
    stamp = time.time() - seconds
    for p in [path, *path.rglob("*")]:
        os.utime(p, (stamp, stamp))


def test_without_keep_published_layouts_stay(root: Path, built: tuple[Path, list[str]]) -> None:
    before = _published(root)
    result = run_clean(str(root))
    assert result.removed == [] and _published(root) == before
    assert set(result.kept) == before


def test_keep_removes_all_but_the_newest_per_dataset(
        root: Path, built: tuple[Path, list[str]]) -> None:
    ids = built[1]
    other = _published(root) - set(ids)
    result = run_clean(str(root), keep=1)
    assert [r.layout_id for r in result.removed] == [ids[1], ids[0]]  # newest first
    assert all(r.bytes > 0 and r.dataset == "criteo" for r in result.removed)
    assert result.bytes_freed == sum(r.bytes for r in result.removed)
    assert _published(root) == {ids[2], *other}
    assert not (root / "layouts" / ids[0]).exists()  # the whole folder, not only the manifest
    for lid in _published(root):  # what stays is intact
        m, store = mf.load(str(root / "layouts" / lid))
        assert all(c.ok for c in verify_layout(m, store)), lid


def test_the_layout_latest_names_always_stays(root: Path, built: tuple[Path, list[str]]) -> None:
    ids = built[1]
    mf.set_latest(Storage(str(root)), ids[0])  # e.g. a rerun of the oldest parameters
    run_clean(str(root), keep=1)
    assert {ids[0], ids[2]} <= _published(root) and ids[1] not in _published(root)


def test_dry_run_removes_nothing(root: Path, built: tuple[Path, list[str]]) -> None:
    before = sorted(p.relative_to(root) for p in root.rglob("*"))
    result = run_clean(str(root), keep=1, dry_run=True)
    assert len(result.removed) == 2 and result.dry_run
    assert sorted(p.relative_to(root) for p in root.rglob("*")) == before


def test_an_abandoned_build_goes_once_stale(root: Path, built: tuple[Path, list[str]]) -> None:
    # An unfinished layout (no manifest) as a killed build leaves it.
    abandoned = root / "layouts" / "0123456789abcdef"
    shutil.copytree(root / "layouts" / built[1][0], abandoned)
    (abandoned / mf.MANIFEST).unlink()
    # A published layout with the staging folder and rebuild files of a failed --force.
    kept = root / "layouts" / built[1][2]
    (kept / "_build").mkdir()
    (kept / "_build" / "plan.json").write_text("{}")
    shutil.copytree(kept / "shards", kept / "shards-deadbeef")
    not_ours = root / "layouts" / "notes"  # not named like a layout: never touched
    not_ours.mkdir()
    (not_ours / "readme.txt").write_text("mine")

    fresh = run_clean(str(root))
    assert fresh.removed == [] and abandoned.exists() and (kept / "_build").exists()
    assert any("maybe by a running build" in n for n in fresh.notes)

    for p in (abandoned, kept / "_build", kept / "shards-deadbeef", not_ours):
        _age(p, 3 * DAY)
    result = run_clean(str(root))
    assert sorted(Path(r.path).name for r in result.removed) == [
        "0123456789abcdef", "_build", "shards-deadbeef"]
    assert not abandoned.exists() and not (kept / "_build").exists()
    assert not (kept / "shards-deadbeef").exists() and (kept / "shards").is_dir()
    assert (not_ours / "readme.txt").read_text() == "mine"
    m, store = mf.load(str(kept))
    assert all(c.ok for c in verify_layout(m, store))


def test_a_build_holding_its_lock_is_left_alone(root: Path) -> None:
    abandoned = root / "layouts" / "0123456789abcdef"
    (abandoned / "shards").mkdir(parents=True)
    (abandoned / "shards" / "x.parquet").write_bytes(b"x" * 10)
    _age(abandoned, 3 * DAY)
    storage = Storage(str(root))
    with storage.lock(mf.LAYOUTS_DIR, ".0123456789abcdef.lock", what="a build"):
        result = run_clean(str(root))
    assert result.removed == [] and abandoned.exists()
    assert any("is being built" in n for n in result.notes)


def test_an_unreadable_manifest_is_left_to_a_person(root: Path, built: tuple[Path, list[str]]) -> None:
    lid = built[1][0]
    (root / "layouts" / lid / mf.MANIFEST).write_text("{not json")
    result = run_clean(str(root), keep=1)
    assert (root / "layouts" / lid).exists()
    assert any(lid in n and "unreadable" in n for n in result.notes)


def test_bad_arguments_are_refused() -> None:
    assert parse_age("48h") == 48 * 3600 and parse_age("2d") == 2 * DAY
    assert parse_age("90") == 90 and parse_age("1.5m") == 90
    with pytest.raises(InputError, match="'soon' not understood"):
        parse_age("soon")
    with pytest.raises(InputError, match="keep"):
        run_clean("/nonexistent", keep=0)


def test_cli(root: Path, built: tuple[Path, list[str]]) -> None:
    runner = CliRunner()
    res = runner.invoke(app, ["clean", "--root", str(root), "--keep", "2", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert f"would remove {root / 'layouts' / built[1][0]}" in res.output.replace("\n", "")
    res = runner.invoke(app, ["clean", "--root", str(root), "--keep", "2", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    assert [r["layout_id"] for r in out["removed"]] == [built[1][0]]
    assert out["bytes_freed"] > 0 and out["dry_run"] is False
    res = runner.invoke(app, ["clean", "--root", str(root), "--stale-after", "soon"])
    assert res.exit_code == 1 and "error: age 'soon' not understood" in res.output


def test_links_bad_latest_and_undated_layouts(root: Path, built: tuple[Path, list[str]],
                                              tmp_path: Path) -> None:
    """A linked layout's files belong elsewhere (clean removed the target's manifest through
    the link, then crashed on it); a LATEST naming no layout protects nothing known; a
    manifest without a readable created_at cannot be ranked; a dry run writes nothing."""
    ids = built[1]
    elsewhere = tmp_path / "elsewhere"
    shutil.move(str(root / "layouts" / ids[0]), elsewhere)
    (root / "layouts" / ids[0]).symlink_to(elsewhere, target_is_directory=True)
    manifest = root / "layouts" / ids[1] / mf.MANIFEST
    d = json.loads(manifest.read_text())
    d["created_at"] = None
    manifest.write_text(json.dumps(d))
    for lock in (root / "layouts").glob(".*.lock"):
        lock.unlink()
    dry = run_clean(str(root), keep=1, dry_run=True)
    assert dry.removed == [] and not list((root / "layouts").glob(".*.lock"))
    result = run_clean(str(root), keep=1)
    assert result.removed == [] and (elsewhere / mf.MANIFEST).is_file()
    assert any("is a link" in n for n in result.notes)
    assert any(ids[1] in n and "not a time" in n for n in result.notes)
    (root / "layouts" / "LATEST").write_text("0123456789abcdef\n")
    with pytest.raises(InputError, match="names '0123456789abcdef', which is no published"):
        run_clean(str(root), keep=1)
