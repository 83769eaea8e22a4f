"""docker-compose.yml, the Dockerfiles and .env.example hang together.

No Docker engine runs here, so the stack is checked as text: services, profiles, health
checks, dependencies, volumes, environment, and that every file it names exists.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
import yaml

REPO = Path(__file__).resolve().parents[2]
AIRFLOW_SERVICES = ("airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
                    "airflow-triggerer", "airflow-worker")
ONE_SHOT = ("minio-init", "airflow-init")
_VAR = re.compile(r"(?<!\$)\$\{([A-Z0-9_]+)(:?[-?][^}]*)?\}")  # $${X} is a literal


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    return yaml.safe_load((REPO / "docker-compose.yml").read_text())


@pytest.fixture(scope="module")
def env_example() -> dict[str, str]:
    out = {}
    for line in (REPO / ".env.example").read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            key, sep, value = line.partition("=")
            assert sep, f".env.example: {line!r} is not KEY=VALUE"
            out[key.strip()] = value
    return out


def test_services_and_profiles(compose: dict[str, Any]) -> None:
    services = compose["services"]
    assert set(services) == {"postgres", "redis", "minio", *ONE_SHOT, *AIRFLOW_SERVICES,
                             "trainer"}
    profiles = {name: s.get("profiles", []) for name, s in services.items()}
    assert profiles["redis"] == profiles["airflow-worker"] == ["celery"]
    assert profiles["trainer"] == ["train"]
    default = [n for n, p in profiles.items() if not p]
    assert set(default) == {"postgres", "minio", *ONE_SHOT, *AIRFLOW_SERVICES[:4]}


def test_airflow_components_and_executor(compose: dict[str, Any]) -> None:
    services = compose["services"]
    commands = {n: services[n]["command"] for n in AIRFLOW_SERVICES}
    assert commands["airflow-apiserver"][0] == "api-server"
    assert commands["airflow-scheduler"] == ["scheduler"]
    assert commands["airflow-dag-processor"] == ["dag-processor"]
    assert commands["airflow-triggerer"] == ["triggerer"]
    assert commands["airflow-worker"] == ["celery", "worker"]
    env = services["airflow-scheduler"]["environment"]
    assert env["AIRFLOW__CORE__EXECUTOR"] == "${AIRFLOW_EXECUTOR:-LocalExecutor}"
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql+psycopg2://")
    assert "@postgres:5432/" in env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"]
    assert env["AIRFLOW__CELERY__BROKER_URL"] == "redis://redis:6379/0"
    assert env["AIRFLOW__CORE__EXECUTION_API_SERVER_URL"] == \
        "http://airflow-apiserver:8080/execution/"
    for name in AIRFLOW_SERVICES + ("airflow-init",):
        s = services[name]
        assert s["build"]["dockerfile"] == "docker/airflow.Dockerfile"
        # One secret for every component, or tasks cannot talk to the execution API.
        assert s["environment"]["AIRFLOW__API_AUTH__JWT_SECRET"] == env[
            "AIRFLOW__API_AUTH__JWT_SECRET"]


def test_health_checks_and_start_order(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, s in services.items():
        if name in ONE_SHOT or name == "trainer":
            assert s["restart"] == "no", name
            continue
        check = s.get("healthcheck")
        assert check and check["test"][0] in ("CMD", "CMD-SHELL"), name
        assert {"interval", "timeout", "retries"} <= set(check), name
    for name in AIRFLOW_SERVICES:
        deps = services[name]["depends_on"]
        assert deps["postgres"]["condition"] == "service_healthy"
        assert deps["airflow-init"]["condition"] == "service_completed_successfully"
        assert deps["minio-init"]["condition"] == "service_completed_successfully"
    assert services["airflow-scheduler"]["depends_on"]["airflow-apiserver"]["condition"] == \
        "service_healthy"
    assert services["airflow-worker"]["depends_on"]["redis"]["condition"] == "service_healthy"
    assert services["minio-init"]["depends_on"]["minio"]["condition"] == "service_healthy"
    assert "mc mb --ignore-existing" in services["minio-init"]["command"][0]
    assert "airflow db migrate" in services["airflow-init"]["command"][0]


def test_storage_is_shared_with_the_trainer(compose: dict[str, Any]) -> None:
    services = compose["services"]
    airflow_env = services["airflow-scheduler"]["environment"]
    trainer = services["trainer"]
    assert airflow_env["FSSPEC_S3_ENDPOINT_URL"] == trainer["environment"][
        "FSSPEC_S3_ENDPOINT_URL"] == "http://minio:9000"
    assert airflow_env["AWS_ACCESS_KEY_ID"] == trainer["environment"]["AWS_ACCESS_KEY_ID"]
    assert "FAE_STORAGE_ROOT" in trainer["command"][0]
    gpus = trainer["deploy"]["resources"]["reservations"]["devices"]
    assert gpus == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]


def test_volumes_and_files_exist(compose: dict[str, Any]) -> None:
    declared = set(compose["volumes"])
    for name, s in compose["services"].items():
        for vol in s.get("volumes", []):
            source = vol.split(":")[0]
            if source.startswith((".", "/")):
                assert (REPO / source).exists(), f"{name}: bind mount {source} is missing"
            else:
                assert source in declared, f"{name}: volume {source} is not declared"
        if "build" in s:
            context = REPO / s["build"]["context"]
            dockerfile = context / s["build"]["dockerfile"]
            assert dockerfile.is_file(), f"{name}: {dockerfile} is missing"
            _check_dockerfile(dockerfile, context)


def _check_dockerfile(dockerfile: Path, context: Path) -> None:
    """Every COPY source exists, and pip installs only exact pins or files."""
    for line in dockerfile.read_text().splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (context / source).exists(), f"{dockerfile.name}: COPY {source} missing"
    text = dockerfile.read_text().replace("\\\n", " ")
    for cmd in re.findall(r"pip install ([^&;\n]*)", text):
        for arg in cmd.split():
            if arg.startswith("-") or arg == "." or arg.endswith(".txt"):
                continue  # options, the project itself, requirement files (below)
            assert re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[A-Za-z0-9_.+]+", arg), (
                f"{dockerfile.name}: unpinned `pip install {arg}`")
    for req in re.findall(r"-r (\S+\.txt)", text):
        assert (context / req).is_file() or "train.txt" in req, f"{dockerfile.name}: {req}"


def test_every_variable_is_in_env_example(compose: dict[str, Any], env_example: dict[str, str]
                                          ) -> None:
    text = (REPO / "docker-compose.yml").read_text()
    for name, default in _VAR.findall(text):
        if not default.startswith((":-", "-")):
            assert name in env_example, f"${{{name}}} is required but not in .env.example"
    for name in ("FAE_STORAGE_ROOT", "FAE_LANDING_URL", "FAE_DATASETS", "FAE_TRAIN_COMMAND"):
        assert name in env_example


def test_env_example_values_are_usable(env_example: dict[str, str]) -> None:
    from pipelines import tasks

    assert tasks.landing_url(env_example["FAE_LANDING_URL"], dataset="criteo",
                             ds="2024-01-31") == "s3://fae/landing/criteo/2024-01-31.tsv"
    assert tasks.parse_datasets(env_example["FAE_DATASETS"])
    assert env_example["FAE_STORAGE_ROOT"].startswith("s3://" + env_example["FAE_BUCKET"] + "/")
    assert env_example["AIRFLOW_EXECUTOR"] == "LocalExecutor"
    assert tasks.env_flag(env_example["FAE_INGEST_CATCHUP"]) is False
    placeholders = set(re.findall(r"\{(\w+)\}", env_example["FAE_TRAIN_COMMAND"]))
    assert placeholders <= {"python", "manifest", "root", "max_steps", "run_id"}


def test_image_pins_are_exact_and_disjoint() -> None:
    def pins(path: Path) -> dict[str, str]:
        out = {}
        for line in path.read_text().splitlines():
            if line.strip() and not line.startswith(("#", "-r")):
                name, sep, version = line.partition("==")
                assert sep and version, f"{path.name}: {line!r} is not an exact pin"
                out[re.sub(r"[-_.]+", "-", name).lower()] = version
        return out

    base = pins(REPO / "requirements" / "base.txt")
    airflow = pins(REPO / "requirements" / "airflow.txt")
    image = pins(REPO / "docker" / "airflow-image.txt")
    assert not set(base) & set(airflow) and not set(base) & set(image)
    assert not set(airflow) & set(image)
    assert airflow["apache-airflow"].startswith("3.")


def test_every_setting_the_dags_read_reaches_them() -> None:
    """Five FAE_* settings the DAGs read were not passed by the compose file, so setting
    them in .env did nothing."""
    read = set()
    for path in [*(REPO / "dags").glob("*.py"), REPO / "pipelines" / "tasks_config.py"]:
        read |= set(re.findall(r"\b(FAE_[A-Z_]+)\b", path.read_text()))
    text = (REPO / "docker-compose.yml").read_text()
    passed = set(re.findall(r"^\s+(FAE_[A-Z_]+):", text, flags=re.M))
    assert read - passed - {"FAE_BUCKET"} == set()
