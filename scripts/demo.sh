#!/usr/bin/env bash
# README command 1: set up and run the whole pipeline on synthetic data (no Airflow, no GPU).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh train  # fae and the trainer; no Airflow, no test tools
exec .venv/bin/fae demo "$@"
