#!/usr/bin/env bash
# Create (or reuse) .venv and install the pinned dependencies plus this project.
# Usage: bash scripts/setup.sh [base|dev|train]   (default: dev)
#   base: fae (no torch, no Airflow); train: base + torch (fae and fae-train, what the
#   demo needs); dev: everything, Airflow and the test tools included.
set -euo pipefail
cd "$(dirname "$0")/.."
profile="${1:-dev}"
python="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --upgrade "pip>=23.2"
# Torch first and exactly pinned: a loose requirement would pull a multi-GB CUDA build.
if [ "$profile" = "train" ] || [ "$profile" = "dev" ]; then
  if [ -f requirements/train.txt ]; then
    .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements/train.txt
  fi
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r "requirements/$profile.txt"
# The trainer reads manifests and shards through fae_data (numpy, pyarrow): train.txt
# holds torch alone so that it installs first, so the train profile adds the base pins.
if [ "$profile" = "train" ]; then
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements/base.txt
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -e .
