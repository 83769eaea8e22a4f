# The FAE trainer on a GPU: PyTorch with CUDA, fae-data's manifest reader and trainer/.
# Needs an NVIDIA driver and the NVIDIA container toolkit on the host
# (docker-compose.yml reserves the GPUs). PyPI's Linux wheel of torch 2.13.0 is a CUDA
# build that brings its own CUDA runtime, so a slim Python base is enough.
#
#   docker build -f docker/trainer.Dockerfile -t fae-trainer .
#   docker run --gpus all -e FSSPEC_S3_ENDPOINT_URL=... fae-trainer s3://fae/root --json
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

WORKDIR /opt/fae
COPY requirements/ requirements/
# torch first and exactly pinned (the README's rule): a loose pin pulls another build.
RUN if [ -f requirements/train.txt ]; then pip install -r requirements/train.txt; \
    else pip install torch==2.13.0; fi
# s3fs for an s3:// (MinIO) storage root, at the versions docker/airflow-image.txt pins.
RUN pip install -r requirements/base.txt s3fs==2025.10.0 aiobotocore==2.26.0 botocore==1.41.5 \
    python-dateutil==2.9.0.post0 wrapt==1.17.3

COPY pyproject.toml README.md ./
COPY fae_data fae_data
COPY pipelines pipelines
COPY trainer trainer
RUN pip install --no-deps . \
 && useradd --uid 50000 --gid 0 --create-home trainer \
 && mkdir -p /checkpoints && chown 50000:0 /checkpoints

USER 50000
ENTRYPOINT ["python", "-m", "trainer.cli"]
CMD ["--help"]
