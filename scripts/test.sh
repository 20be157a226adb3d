#!/usr/bin/env bash
# Sets up .venv if needed, then runs the linters and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# One pytest-xdist worker per core, up to 4: most of the suite's time is single-threaded (starting the commands
# it tests, node, Chromium), so two cores run it in about half the time.
.venv/bin/python -m pytest --numprocesses auto --maxprocesses 4 "$@"
