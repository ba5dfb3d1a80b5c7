#!/bin/sh
# Create .venv (if missing) and install the pinned requirements and this package into it.
# Safe to run again: pip skips what is already there.
set -eu
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install --quiet --upgrade pip
.venv/bin/python -m pip install --quiet -r requirements.txt
.venv/bin/python -m pip install --quiet --no-deps -e .
echo "setup.sh: environment ready in .venv"
