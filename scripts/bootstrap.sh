#!/usr/bin/env bash
# Create (or refresh) a virtualenv from the committed pins. Safe to re-run: it reinstalls only when
# the pins, pyproject.toml or the Python interpreter changed.
#   scripts/bootstrap.sh [VENV_DIR] [CONSTRAINTS_FILE] [EXTRAS]
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${1:-.venv}
CONSTRAINTS=${2:-constraints/constraints-airflow-3.3.2.txt}
EXTRAS=${3:-test,dev,s3,obs}
PYTHON=${PYTHON:-python3}

stamp_of() { cat "$CONSTRAINTS" pyproject.toml | sha256sum | cut -c1-16; echo "$EXTRAS $($PYTHON -VV)"; }
want=$(stamp_of)
if [ -x "$VENV/bin/python" ] && [ -f "$VENV/.bootstrap-stamp" ] && [ "$(cat "$VENV/.bootstrap-stamp")" = "$want" ]; then
  exit 0
fi
echo "==> Creating $VENV from $CONSTRAINTS (extras: $EXTRAS)"
[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --upgrade "pip>=24" wheel
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check -c "$CONSTRAINTS" -e ".[${EXTRAS}]"
echo "$want" > "$VENV/.bootstrap-stamp"
echo "==> $VENV ready"
