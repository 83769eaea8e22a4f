# Airflow 3 with fae-data installed: one image for the api-server, scheduler,
# dag-processor, triggerer, Celery worker and the init job (docker-compose.yml).
# Built from python:3.11-slim with the repository's exact pins (requirements/base.txt,
# requirements/airflow.txt, docker/airflow-image.txt), so the image runs the package set
# the tests ran, not the Airflow project's constraints file.
#
#   docker build -f docker/airflow.Dockerfile -t fae-airflow .
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    AIRFLOW_HOME=/opt/airflow \
    AIRFLOW__CORE__DAGS_FOLDER=/opt/fae/dags \
    AIRFLOW__CORE__LOAD_EXAMPLES=False

# tini reaps the task processes Airflow forks; procps gives `ps` for debugging.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tini procps \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 50000 --gid 0 --home-dir /opt/airflow --create-home airflow

WORKDIR /opt/fae
# Dependencies first: this layer is rebuilt only when a pin changes.
COPY requirements/base.txt requirements/airflow.txt requirements/
COPY docker/airflow-image.txt docker/
RUN pip install -r requirements/base.txt -r requirements/airflow.txt -r docker/airflow-image.txt

COPY pyproject.toml README.md ./
COPY fae_data fae_data
COPY pipelines pipelines
COPY trainer trainer
COPY dags dags
RUN pip install --no-deps . \
 && mkdir -p /opt/airflow/logs /opt/airflow/config \
 && chown -R 50000:0 /opt/airflow

USER 50000
WORKDIR /opt/airflow
ENTRYPOINT ["/usr/bin/tini", "--", "airflow"]
CMD ["version"]
