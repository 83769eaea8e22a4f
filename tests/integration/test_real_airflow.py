"""Airflow for real: ``airflow standalone`` (api-server, scheduler, dag-processor,
triggerer; LocalExecutor, SQLite) on 127.0.0.1 and a free port, driven over the REST API.

The test takes a JWT from ``/auth/token``, checks that an invalid conf is refused with a
readable message, unpauses the DAGs, has fae_ingest ingest a landed day, triggers
fae_layout with a conf, checks the published manifest, and waits for what the Asset
events schedule on their own: a layout run after the ingest, and a fae_train run (a
stand-in trainer command) after each published layout. If Airflow cannot start, the test fails with
the tail of its output: it never skips. Every process is stopped in ``finally``.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from fae_data import manifest as mf
from fae_data.ingest import IngestParams
from fae_data.synth import write_criteo
from fae_data.verify import verify_layout
from pipelines.ingest import run_ingest

REPO = Path(__file__).resolve().parents[2]
DAYS = ("2024-01-01", "2024-01-02", "2024-01-03")
DAG_IDS = ("fae_ingest", "fae_layout", "fae_train")
START_TIMEOUT_S = 240
RUN_TIMEOUT_S = 300
STOP_TIMEOUT_S = 30
DB_ERROR_RETRIES = 5
USER = "fae"

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Airflow:
    """A running ``airflow standalone`` and a small REST client for it."""

    def __init__(self, home: Path, env: dict[str, str], port: int, password: str) -> None:
        self.home, self.env, self.password = home, env, password
        self.base = f"http://127.0.0.1:{port}"
        self.log_path = home / "standalone.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.token = ""

    # -- processes ----------------------------------------------------------------------
    def start(self) -> None:
        airflow = Path(sys.executable).with_name("airflow")
        if not airflow.exists():
            pytest.fail(f"{airflow} not found: Airflow is not installed in this venv "
                        "(requirements/airflow.txt, via dev.txt)", pytrace=False)
        self.home.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            # A session of its own: the whole process group is stopped in stop().
            self.proc = subprocess.Popen([str(airflow), "standalone"], env=self.env, cwd=self.home,
                                         stdout=log, stderr=subprocess.STDOUT,
                                         stdin=subprocess.DEVNULL, start_new_session=True)

    def stop(self) -> None:
        """SIGTERM to the whole process group, then SIGKILL to what is left."""
        if self.proc is None:
            return
        for sig, wait in ((signal.SIGTERM, STOP_TIMEOUT_S), (signal.SIGKILL, 10)):
            if not self._group_alive():
                return
            try:
                os.killpg(self.proc.pid, sig)
            except ProcessLookupError:
                return
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and self._group_alive():
                time.sleep(0.2)

    def _group_alive(self) -> bool:
        assert self.proc is not None
        self.proc.poll()  # reap the leader if it exited
        try:
            os.killpg(self.proc.pid, 0)
        except ProcessLookupError:
            return False
        return True

    def output_tail(self, chars: int = 6000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no output)"

    def fail(self, why: str) -> None:
        pytest.fail(f"{why}\n--- airflow standalone output (tail) ---\n{self.output_tail()}",
                    pytrace=False)

    # -- HTTP ---------------------------------------------------------------------------
    def request(self, method: str, path: str, body: Any = None) -> tuple[int, Any]:
        """One API call; a 500 "Database error" is retried a few times: with SQLite the
        API server's write can lose a lock race against the scheduler's (seen once in CI
        on a run trigger), and its transaction is then rolled back, so a retry is safe."""
        for attempt in range(DB_ERROR_RETRIES + 1):
            status, answer = self._request_once(method, path, body)
            if status != 500 or "Database error" not in str(answer) or attempt == DB_ERROR_RETRIES:
                return status, answer
            print(f"{method} {path}: {answer}; retrying", file=sys.stderr)
            time.sleep(2)
        raise AssertionError("unreachable")

    def _request_once(self, method: str, path: str, body: Any) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(self.base + path, data=data, method=method)
        req.add_header("Content-Type", "application/json")
        if self.token:
            req.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                status, raw = resp.status, resp.read()
        except urllib.error.HTTPError as exc:
            status, raw = exc.code, exc.read()
        try:
            return status, json.loads(raw) if raw else None
        except json.JSONDecodeError:
            return status, raw.decode(errors="replace")

    def wait_healthy(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        last: Any = None
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                self.fail(f"airflow standalone exited with code {self.proc.returncode} "
                          "before it was healthy")
            try:
                status, last = self.request("GET", "/api/v2/monitor/health")
                if status == 200 and all(
                    last.get(c, {}).get("status") == "healthy"
                    for c in ("metadatabase", "scheduler", "dag_processor", "triggerer")
                ):
                    return
            except (urllib.error.URLError, ConnectionError, TimeoutError, OSError) as exc:
                last = repr(exc)
            time.sleep(1)
        self.fail(f"Airflow not healthy after {START_TIMEOUT_S} s (last health: {last})")

    def login(self) -> None:
        status, body = self.request("POST", "/auth/token",
                                    {"username": USER, "password": self.password})
        if status not in (200, 201) or "access_token" not in (body or {}):
            self.fail(f"POST /auth/token answered {status}: {body}")
        self.token = body["access_token"]

    def wait_dag(self, dag_id: str) -> None:
        """Until the dag-processor has parsed the file and the API knows the DAG."""
        deadline = time.monotonic() + START_TIMEOUT_S
        body: Any = None
        while time.monotonic() < deadline:
            status, body = self.request("GET", f"/api/v2/dags/{dag_id}")
            if status == 200:
                return
            time.sleep(1)
        _, errors = self.request("GET", "/api/v2/importErrors")
        self.fail(f"DAG {dag_id} never appeared (last answer {body}; import errors {errors})")

    def wait_run(self, dag_id: str, run_id: str) -> dict[str, Any]:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        run: Any = None
        while time.monotonic() < deadline:
            status, run = self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}")
            if status == 200 and run["state"] in ("success", "failed"):
                break
            time.sleep(1)
        else:
            self.fail(f"{dag_id} run {run_id} not finished after {RUN_TIMEOUT_S} s: {run}")
        if run["state"] != "success":
            self.fail(f"{dag_id} run {run_id} {run['state']}: {self.task_report(dag_id, run_id)}")
        return dict(run)

    def wait_runs(self, dag_id: str, run_type: str, count: int) -> list[dict[str, Any]]:
        """Until ``count`` runs of ``run_type`` exist and have all succeeded."""
        deadline = time.monotonic() + RUN_TIMEOUT_S
        runs: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            _, body = self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns")
            runs = [r for r in body["dag_runs"] if r["run_type"] == run_type]
            if len(runs) >= count and all(r["state"] in ("success", "failed") for r in runs):
                break
            time.sleep(1)
        else:
            self.fail(f"expected {count} finished {run_type} runs of {dag_id}, found {runs}")
        for r in runs:
            if r["state"] != "success":
                self.fail(f"{dag_id} run {r['dag_run_id']} {r['state']}: "
                          f"{self.task_report(dag_id, r['dag_run_id'])}")
        return runs

    def xcom(self, dag_id: str, run_id: str, task_id: str) -> Any:
        status, body = self.request(
            "GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances/{task_id}"
            "/xcomEntries/return_value")
        assert status == 200, body
        value = body["value"]
        return json.loads(value) if isinstance(value, str) else value

    def task_instances(self, dag_id: str, run_id: str) -> list[dict[str, Any]]:
        _, body = self.request("GET", f"/api/v2/dags/{dag_id}/dagRuns/{run_id}/taskInstances")
        return list((body or {}).get("task_instances", []))

    def task_report(self, dag_id: str, run_id: str) -> str:
        states = {(t["task_id"], t["map_index"]): t["state"]
                  for t in self.task_instances(dag_id, run_id)}
        logs = []
        for path in sorted((self.home / "logs").rglob("*.log")):
            if f"dag_id={dag_id}" in str(path) and "failed" in str(states.values()):
                logs.append(f"--- {path} ---\n{path.read_text(errors='replace')[-3000:]}")
        return f"task states {states}\n" + "\n".join(logs[-3:])


@pytest.fixture()
def airflow(tmp_path: Path) -> Iterator[Airflow]:
    port = _free_port()
    home = tmp_path / "airflow-home"
    root = tmp_path / "root"
    password = secrets.token_urlsafe(16)
    home.mkdir()
    passwords = home / "passwords.json"
    passwords.write_text(json.dumps({USER: password}))
    bin_dir = str(Path(sys.executable).parent)
    env = {
        **os.environ,
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),  # standalone runs `airflow`
        "AIRFLOW_HOME": str(home),
        "AIRFLOW__CORE__LOAD_EXAMPLES": "False",
        "AIRFLOW__CORE__DAGS_FOLDER": str(REPO / "dags"),
        "AIRFLOW__CORE__PARALLELISM": "4",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS": f"{USER}:admin",
        "AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE": str(passwords),
        "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/",
        "AIRFLOW__API__HOST": "127.0.0.1",
        "AIRFLOW__API__PORT": str(port),
        "AIRFLOW__API__BASE_URL": f"http://127.0.0.1:{port}",
        "AIRFLOW__API__WORKERS": "1",
        "AIRFLOW__API__SECRET_KEY": secrets.token_hex(16),
        # One secret for every component, so tokens the api-server signs verify everywhere.
        "AIRFLOW__API_AUTH__JWT_SECRET": secrets.token_hex(32),
        "AIRFLOW__LOGGING__WORKER_LOG_SERVER_PORT": str(_free_port()),
        "AIRFLOW__LOGGING__TRIGGER_LOG_SERVER_PORT": str(_free_port()),
        "AIRFLOW__DAG_PROCESSOR__REFRESH_INTERVAL": "5",
        "AIRFLOW__SCHEDULER__SCHEDULER_HEARTBEAT_SEC": "2",
        "FAE_STORAGE_ROOT": str(root),
        "FAE_DATASETS": "criteo",
        "FAE_LANDING_URL": str(tmp_path / "landing" / "{dataset}" / "{ds}.tsv"),
        "FAE_LANDING_POKE_S": "5",
        "FAE_TRAIN_COMMAND": "{python} -m pipelines.cli verify {manifest} --json",
    }
    for key in [k for k in env if k.startswith("AIRFLOW_VAR_") or k == "AIRFLOW_CONFIG"]:
        del env[key]
    # Two days already ingested, the third one landed and waiting for fae_ingest.
    files = write_criteo(tmp_path / "raw", rows=2000, days=len(DAYS), scale=0.001, seed=1)
    run_ingest([str(f) for f in files[:-1]], str(root), IngestParams("criteo"),
               partitions=list(DAYS[:-1]))
    (tmp_path / "landing" / "criteo").mkdir(parents=True)
    files[-1].rename(tmp_path / "landing" / "criteo" / f"{DAYS[-1]}.tsv")
    af = Airflow(home, env, port, password)
    try:
        af.start()
        yield af
    finally:
        af.stop()


def test_ingest_layout_and_train_through_the_rest_api(airflow: Airflow, tmp_path: Path) -> None:
    started = time.monotonic()
    airflow.wait_healthy()
    airflow.login()
    for dag_id in DAG_IDS:
        airflow.wait_dag(dag_id)

    # A conf that breaks the Param schema is refused at the door, naming the Param.
    status, body = airflow.request("POST", "/api/v2/dags/fae_layout/dagRuns",
                                   {"logical_date": None, "conf": {"budget": "abc"}})
    assert status == 400 and "Invalid input for param budget: 'abc'" in str(body), body

    for dag_id in DAG_IDS:
        status, body = airflow.request("PATCH", f"/api/v2/dags/{dag_id}", {"is_paused": False})
        assert status == 200 and body["is_paused"] is False, body

    # The last day lands and is ingested by its daily run (sensor, ingest, Asset event).
    status, run = airflow.request("POST", "/api/v2/dags/fae_ingest/dagRuns",
                                  {"logical_date": f"{DAYS[-1]}T00:00:00Z"})
    assert status == 200, run
    airflow.wait_run("fae_ingest", run["dag_run_id"])
    root = tmp_path / "root"
    assert (root / "ingested" / "criteo" / DAYS[-1] / "_partition.json").is_file()

    # Reprocessing on demand: a layout with other Params, triggered over REST.
    conf = {"budget": "64KiB", "batch_size": 256, "seed": 7}
    status, run = airflow.request("POST", "/api/v2/dags/fae_layout/dagRuns",
                                  {"logical_date": None, "conf": conf})
    assert status == 200, run
    airflow.wait_run("fae_layout", run["dag_run_id"])
    built = airflow.xcom("fae_layout", run["dag_run_id"], "publish")
    # The shard stage fanned out: one encode task per partition, one shards task per stream.
    tis = airflow.task_instances("fae_layout", run["dag_run_id"])
    mapped = {task: sorted((t["map_index"], t["rendered_map_index"], t["state"])
                           for t in tis if t["task_id"] == task) for task in ("encode", "shards")}
    assert mapped["encode"] == [(i, d, "success") for i, d in enumerate(DAYS)], mapped
    assert mapped["shards"] == [(i, s, "success") for i, s in enumerate(
        ("train/hot", "train/cold", "val/all", "test/all"))], mapped
    manifest, store = mf.load(built["manifest"])
    assert manifest.layout_id == built["layout_id"] and manifest.params["batch_size"] == 256
    assert [p.name for p in manifest.dataset.partitions] == list(DAYS)
    assert all(c.ok for c in verify_layout(manifest, store))

    # The ingest event scheduled a layout with the default Params on its own...
    auto = airflow.wait_runs("fae_layout", "asset_triggered", 1)
    assert auto[0]["conf"] in ({}, None)
    # ...and the published layouts scheduled training: wait for the run that trained ours
    # (two events close together may be consumed by one run, which takes the newest).
    deadline = time.monotonic() + RUN_TIMEOUT_S
    trained: set[str] = set()
    while manifest.layout_id not in trained:
        if time.monotonic() > deadline:
            airflow.fail(f"no fae_train run trained layout {manifest.layout_id} after "
                         f"{RUN_TIMEOUT_S} s (trained: {trained})")
        for r in airflow.wait_runs("fae_train", "asset_triggered", 1):
            summary = airflow.xcom("fae_train", r["dag_run_id"], "train")["summary"]
            assert summary["ok"] is True, summary
            trained.add(summary["layout_id"])
        time.sleep(1)
    print(f"real Airflow: start, ingest, layouts and training took "
          f"{time.monotonic() - started:.0f} s")
