"""Tests of the ``fae ingest`` (and ``fae synth``) commands through Typer's CliRunner."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

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
    # "error (storage):" for storage that could not be used: a scheduler retries those.
    assert lines[0].startswith(("error:", "error (storage):")), lines
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


# --- storage that cannot be used, empty names, Ctrl-C -----------------------------------


@pytest.mark.usefixtures("no_aws_credentials")
@pytest.mark.parametrize(("url", "protocol", "remedy"), [
    ("s3://bucket/x", "s3://", "no usable credentials"),
    ("nosuchproto://x", "nosuchproto://", "unknown protocol"),
    ("gcs://x", "gcs://", "pip install gcsfs"),
])
@pytest.mark.parametrize("where", ["root", "source"])
def test_unusable_storage_is_one_error_line(runner: CliRunner, shared_data: Path,
                                            tmp_path: Path, url: str, protocol: str,
                                            remedy: str, where: str) -> None:
    """No credentials, an unknown protocol, a backend that is not installed: one line
    naming the URL, the protocol and the remedy, exit code 2 (a setup problem), no
    traceback; whether the URL is the storage root or a source."""
    import importlib.util
    import time

    if protocol == "gcs://" and importlib.util.find_spec("gcsfs") is not None:
        pytest.skip("gcsfs is installed")
    if where == "root":
        args = ["ingest", str(shared_data / KAGGLE), "--root", url]
    else:
        args = ["ingest", f"{url}/day_0.tsv", "--root", str(tmp_path / "root")]
    start = time.monotonic()
    res = runner.invoke(app, args)
    assert time.monotonic() - start < 5
    assert res.exit_code == 2, res.output
    line = _assert_one_error_line(res.stderr, url)
    assert protocol in line and remedy in line
    assert not (tmp_path / "root" / "ingested" / "criteo" / "day_0").exists()


@pytest.mark.parametrize(("option", "message"), [
    ("--root", "storage root '' is empty: give a folder or a URL"),
    ("--dataset", "dataset name is empty"),
])
def test_empty_root_or_dataset_is_refused(runner: CliRunner, shared_data: Path,
                                          tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          option: str, message: str) -> None:
    monkeypatch.chdir(tmp_path)  # an empty root used to mean the current folder
    args = ["ingest", str(shared_data / KAGGLE), "--root", str(tmp_path / "root"), option, ""]
    res = runner.invoke(app, args)
    assert res.exit_code == 1, res.output
    assert message in _assert_one_error_line(res.stderr, "empty")
    assert list(tmp_path.iterdir()) == []


def _interrupt(*args: object, **kwargs: object) -> None:
    raise KeyboardInterrupt


def _assert_interrupted(res: Any) -> None:
    assert res.exit_code == 130, res.output
    lines = [ln for ln in plain(res.stderr).splitlines() if ln.strip()]
    assert lines == ["interrupted: committed results are intact; rerun to finish"]
    assert "Traceback" not in res.output


def test_ctrl_c_during_ingest_is_one_line_and_keeps_the_committed_partition(
        runner: CliRunner, shared_data: Path, tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    src, root = tmp_path / "day_0.tsv", tmp_path / "root"
    src.write_bytes((shared_data / KAGGLE).read_bytes())
    res = runner.invoke(app, ["ingest", str(src), "--root", str(root), "--quiet"])
    assert res.exit_code == 0, res.output
    folder = root / "ingested" / "criteo" / "day_0"
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    src.write_bytes(src.read_bytes() * 2)  # a changed source: its partition is replaced
    monkeypatch.setattr("fae_data.block_reader._process_block", _interrupt)
    _assert_interrupted(runner.invoke(app, ["ingest", str(src), "--root", str(root)]))
    # the replacement in progress left nothing behind; the committed partition is as it was
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before

    first = tmp_path / "day_1.tsv"
    first.write_bytes(src.read_bytes())
    _assert_interrupted(runner.invoke(app, ["ingest", str(first), "--root", str(root)]))
    assert not (root / "ingested" / "criteo" / "day_1").exists()  # no partition at all


def test_ctrl_c_while_loading_the_ingest_stage_is_one_line(
        runner: CliRunner, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Loading pyarrow and polars takes a moment after `fae ingest` starts: a Ctrl-C then
    is the same one line and 130 (it was Click's "Aborted!" and exit code 1)."""
    import importlib.abc
    import sys

    class Interrupting(importlib.abc.MetaPathFinder):
        def find_spec(self, name: str, *args: object) -> None:
            if name == "pipelines.ingest":
                raise KeyboardInterrupt

    monkeypatch.delitem(sys.modules, "pipelines.ingest", raising=False)
    monkeypatch.setattr(sys, "meta_path", [Interrupting(), *sys.meta_path])
    _assert_interrupted(runner.invoke(app, ["ingest", str(tmp_path / "x.tsv"),
                                            "--root", str(tmp_path / "root")]))


def test_the_cli_starts_without_loading_the_data_libraries() -> None:
    """Until a command runs, a Ctrl-C can only be Python's traceback: loading the CLI must
    stay quick, the data libraries being loaded by the command, inside its guard."""
    import subprocess
    import sys

    code = ("import sys, pipelines.cli; "
            "print(sorted(m for m in ('pyarrow', 'polars', 'numpy', 'fae_data.ingest') "
            "if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    assert out.stdout.strip() == "[]", out.stderr
