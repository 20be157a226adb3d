#!/usr/bin/env bash
# Sets up .venv if needed, then runs the linters and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
# One pytest-xdist worker per core (at most 4), idle ones taking tests queued for busy ones: much of the suite's
# time is single-threaded (starting the commands it tests, node, Chromium). On 2 cores: 6 min 56 s, against
# 14 min 23 s in one process (docs/testing.md).
.venv/bin/python -m pytest --numprocesses auto --maxprocesses 4 --dist worksteal "$@"
