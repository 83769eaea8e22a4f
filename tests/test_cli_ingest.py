"""Tests of the ``fae ingest`` (and ``fae synth``) commands through Typer's CliRunner."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from pipelines.cli import app

KAGGLE = "criteo_kaggle_train_head1000.tsv"
TAOBAO = "taobao_userbehavior_userorder84k.csv"
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@pytest.fixture
def runner() -> CliRunner:
    # A wide terminal so help text and error lines are not wrapped.
    return CliRunner(env={"COLUMNS": "200", "NO_COLOR": "1", "TERM": "dumb"})


def plain(text: str) -> str:
    return ANSI.sub("", text)


def test_ingest_json_summary(runner: CliRunner, shared_data: Path, tmp_path: Path) -> None:
    root = tmp_path / "root"
    res = runner.invoke(app, ["ingest", str(shared_data / KAGGLE), "--root", str(root), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["root"] == str(root)
    assert (summary["rows_in"], summary["rows_ok"], summary["rows_rejected"]) == (1000, 1000, 0)
    (part,) = summary["partitions"]
    assert part["partition"] == "criteo_kaggle_train_head1000"
    assert part["dataset"] == "criteo"
    assert part["status"] == "written"
    assert (root / "ingested" / "criteo" / "criteo_kaggle_train_head1000" / "_partition.json").is_file()

    res = runner.invoke(app, ["ingest", str(shared_data / TAOBAO), "--kind", "taobao",
                              "--root", str(root), "--dataset", "ub", "--partition", "head",
                              "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert summary["rows_ok"] == 84475
    assert summary["partitions"][0]["path"].endswith("ingested/ub/head")

    res = runner.invoke(app, ["ingest", str(shared_data / KAGGLE), "--root", str(root), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["partitions"][0]["status"] == "unchanged"


def test_ingest_human_summary(runner: CliRunner, shared_data: Path, tmp_path: Path) -> None:
    res = runner.invoke(app, ["ingest", str(shared_data / KAGGLE), "--root", str(tmp_path),
                              "--quiet"])
    assert res.exit_code == 0, res.output
    out = plain(res.stdout)
    assert "criteo_kaggle_train_head1000" in out
    assert "written" in out
    assert "1,000" in out


def _assert_one_error_line(res_stderr: str, name: str) -> str:
    lines = [ln for ln in plain(res_stderr).splitlines() if ln.strip()]
    assert len(lines) == 1, lines
    assert lines[0].startswith("error:"), lines
    assert name in lines[0]
    assert "Traceback" not in res_stderr
    return lines[0]


def test_ingest_missing_file_is_one_error_line(runner: CliRunner, tmp_path: Path) -> None:
    missing = tmp_path / "day_9.tsv"
    res = runner.invoke(app, ["ingest", str(missing), "--root", str(tmp_path / "root")])
    assert res.exit_code == 1
    line = _assert_one_error_line(res.stderr, str(missing))
    assert "no such file" in line
    assert res.stdout == ""
    assert not (tmp_path / "root" / "ingested" / "criteo" / "day_9").exists()


def test_ingest_bad_file_is_one_error_line(runner: CliRunner, shared_data: Path,
                                           tmp_path: Path) -> None:
    lines = (shared_data / KAGGLE).read_bytes()[:-1].split(b"\n")
    for i in range(0, 1000, 50):  # 20 bad labels: 2% > the default 1%
        lines[i] = b"7" + lines[i][1:]
    src = tmp_path / "day_1.tsv"
    src.write_bytes(b"\n".join(lines) + b"\n")
    root = tmp_path / "root"
    res = runner.invoke(app, ["ingest", str(src), "--root", str(root)])
    assert res.exit_code == 1
    line = _assert_one_error_line(res.stderr, str(src))
    assert "20 of 1000 lines refused" in line
    assert list((root / "ingested" / "criteo" / "day_1").glob("*")) == []

    # the option raises the limit
    res = runner.invoke(app, ["ingest", str(src), "--root", str(root),
                              "--max-reject-fraction", "0.05", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.stdout)["rows_rejected"] == 20


def test_ingest_header_file_is_one_error_line(runner: CliRunner, shared_data: Path,
                                              tmp_path: Path) -> None:
    res = runner.invoke(app, ["ingest", str(shared_data / "criteo_deepctr_sample200.csv"),
                              "--root", str(tmp_path)])
    assert res.exit_code == 1
    _assert_one_error_line(res.stderr, "criteo_deepctr_sample200.csv")


def test_error_text_is_printed_verbatim(runner: CliRunner, tmp_path: Path) -> None:
    for name in ("day[/x].tsv", "day[bold]1.tsv"):
        missing = tmp_path / name
        res = runner.invoke(app, ["ingest", str(missing), "--root", str(tmp_path / "root"),
                                  "--partition", "d"])
        assert res.exit_code == 1
        _assert_one_error_line(res.stderr, str(missing))


def test_a_root_that_is_a_file_is_one_error_line(runner: CliRunner, shared_data: Path,
                                                 tmp_path: Path) -> None:
    """An operating-system error nothing checked for (here: the root is a file) is one
    line naming the path, not a traceback; --debug still shows the exception."""
    root = tmp_path / "root"
    root.write_text("a file, not a folder")
    args = ["ingest", str(shared_data / KAGGLE), "--root", str(root)]
    res = runner.invoke(app, args)
    assert res.exit_code == 1
    line = _assert_one_error_line(res.stderr, str(root))
    assert "Not a directory" in line
    res = runner.invoke(app, [*args, "--debug"])
    assert isinstance(res.exception, NotADirectoryError)


def test_a_closed_stdout_is_no_traceback(tmp_path: Path) -> None:
    """`fae ... | head` where head has already exited: no traceback (Click exits 1)."""
    import subprocess
    import sys

    cmd = [sys.executable, "-c", "from pipelines.cli import main; main()", "synth", "criteo",
           "--rows", "10", "--days", "1", "--out", str(tmp_path), "--json"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # long before the child writes its summary
    stderr = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 1, stderr
    assert "Traceback" not in stderr and "BrokenPipeError" not in stderr


def test_ingest_debug_shows_the_exception(runner: CliRunner, tmp_path: Path) -> None:
    from fae_data.errors import InputError

    res = runner.invoke(app, ["ingest", str(tmp_path / "nope.tsv"), "--root", str(tmp_path),
                              "--debug"])
    assert res.exit_code != 0
    assert isinstance(res.exception, InputError)


def test_synth_then_ingest(runner: CliRunner, tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    res = runner.invoke(app, ["synth", "criteo", "--rows", "1000", "--scale", "0.001",
                              "--out", str(raw), "--json"])
    assert res.exit_code == 0, res.output
    files = json.loads(res.stdout)["files"]
    assert files == [str(raw / "day_0.tsv")]

    res = runner.invoke(app, ["ingest", *files, "--root", str(tmp_path / "root"), "--json"])
    assert res.exit_code == 0, res.output
    summary = json.loads(res.stdout)
    assert (summary["rows_in"], summary["rows_ok"], summary["rows_rejected"]) == (1000, 1000, 0)
    assert summary["partitions"][0]["partition"] == "day_0"


def test_help(runner: CliRunner) -> None:
    res = runner.invoke(app, ["--help"])
    assert res.exit_code == 0
    out = plain(res.output)
    for word in ("ingest", "synth", "--version"):
        assert word in out

    res = runner.invoke(app, ["ingest", "--help"])
    assert res.exit_code == 0
    out = plain(res.output)
    for option in ("--kind", "--root", "--dataset", "--partition", "--max-reject-fraction",
                   "--json", "--quiet", "--debug"):
        assert option in out, option


def test_ingest_compression_option(runner: CliRunner, shared_data: Path, tmp_path: Path) -> None:
    import pyarrow.parquet as pq

    root = tmp_path / "root"
    res = runner.invoke(app, ["ingest", str(shared_data / KAGGLE), "--root", str(root),
                              "--compression", "zstd", "--quiet"])
    assert res.exit_code == 0, res.output
    folder = root / "ingested" / "criteo" / "criteo_kaggle_train_head1000"
    marker = json.loads((folder / "_partition.json").read_text())
    meta = pq.ParquetFile(folder / marker["data"]).metadata
    assert meta.row_group(0).column(0).compression == "ZSTD"

    res = runner.invoke(app, ["ingest", str(shared_data / KAGGLE), "--root", str(root),
                              "--compression", "gzip9"])
    assert res.exit_code != 0
    assert "compression 'gzip9' unknown: use one of lz4, zstd, snappy, none" in plain(res.output)
