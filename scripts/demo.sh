#!/usr/bin/env bash
# The README's demo: create .venv from the committed pins (first run only), then run the example DAGs
# against the local ModelArts emulator under `airflow dags test` and show what they archived.
#   scripts/demo.sh [--archive-dir DIR] [--keep-home] [--dag-timeout SECONDS] ...
# Safe to re-run; Ctrl-C stops every process it started.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh .venv
exec .venv/bin/python scripts/demo.py "$@"
