#!/usr/bin/env bash
# Run the whole test suite (unit + integration: the tests start the emulator, moto and an SMTP
# server on 127.0.0.1 themselves). Creates .venv from the committed pins on first use.
#   scripts/test.sh [pytest args...]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh .venv
exec .venv/bin/python -m pytest "$@"
