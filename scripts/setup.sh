#!/usr/bin/env bash
# Creates .venv with the pinned versions from constraints.txt and installs this package in it.
# Safe to re-run: a finished install is skipped unless pyproject.toml or constraints.txt changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
stamp=.venv/.distilled-splat-installed
wanted=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)

# open3d, which nerfstudio imports to read point clouds and to export, links the system libusb.
if ! ldconfig -p | grep -q 'libusb-1.0.so.0'; then
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && apt-get install -y -qq libusb-1.0-0 >/dev/null
    else
        sudo apt-get update -qq && sudo apt-get install -y -qq libusb-1.0-0 >/dev/null
    fi
fi

if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ]; then
    exit 0
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt -e ".[dev]"
echo "$wanted" > "$stamp"
