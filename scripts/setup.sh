#!/usr/bin/env bash
# Creates .venv with the pinned versions from constraints.txt and installs this package in it.
# Safe to re-run: a finished install is skipped unless pyproject.toml, constraints.txt or this script changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
stamp=.venv/.distilled-splat-installed
wanted=$(cat pyproject.toml constraints.txt scripts/setup.sh | sha256sum | cut -d' ' -f1)

# open3d, which nerfstudio imports to read point clouds and to export, links the system libusb; the viewer test
# opens ns-viewer in Debian's headless chromium.
sudo=""
[ "$(id -u)" = 0 ] || sudo=sudo
if ! ldconfig -p | grep -q 'libusb-1.0.so.0'; then
    $sudo apt-get update -qq && $sudo apt-get install -y -qq libusb-1.0-0 >/dev/null
fi
# g++ builds the C++ CPU rasteriser (distilled_splat/rendering/cpu); without it rendering falls back to PyTorch.
if ! command -v g++ >/dev/null 2>&1; then
    { $sudo apt-get update -qq && $sudo apt-get install -y -qq g++ >/dev/null; } ||
        echo "setup: g++ could not be installed; the C++ CPU rasteriser will not be built" >&2
fi
if ! command -v chromium >/dev/null 2>&1; then
    { $sudo apt-get update -qq && $sudo apt-get install -y -qq chromium >/dev/null; } ||
        echo "setup: chromium could not be installed; the browser tests will be skipped (and fail under CI=true)" >&2
fi

# Compiles the C++ CPU rasteriser once per machine (torch caches it and rebuilds only when a source changes, so
# this takes seconds after the first time). A failed build never fails setup: rendering then uses PyTorch, and
# says so once.
build_cpu_kernels() {
    .venv/bin/python -c "from distilled_splat.rendering.cpp_backend import load_kernels; exit(load_kernels() is None)" ||
        echo "setup: the C++ CPU rasteriser could not be built; rendering will use PyTorch" >&2
}

splat_transform=.venv/node/node_modules/.bin/splat-transform
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$wanted" ] &&
    { [ -x "$splat_transform" ] || ! command -v npm >/dev/null 2>&1; }; then
    build_cpu_kernels
    exit 0
fi
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -c constraints.txt -e ".[dev]"
# PlayCanvas's splat-transform: the frontier's training-free decimation, the SOG and HTML viewer exports, and the
# tests' reader of our compact exports (a reader that is not ours). Where npm exists it must install: a failure
# stops setup before the stamp is written, so the next run tries again. npm 11 has been seen to stall for good
# after fetching, with no error: each try gets $NPM_TRY_SECONDS (default 300), and there are three.
install_splat_transform() {
    local attempt
    for attempt in 1 2 3; do
        if timeout "${NPM_TRY_SECONDS:-300}" npm install --silent --no-audit --no-fund --prefix .venv/node \
            "@playcanvas/splat-transform@2.7.1" >/dev/null && [ -x "$splat_transform" ]; then
            return 0
        fi
        echo "setup: npm did not install @playcanvas/splat-transform@2.7.1 (try $attempt of 3)" >&2
    done
    return 1
}
if command -v npm >/dev/null 2>&1 && ! install_splat_transform; then
    echo "setup: npm could not install @playcanvas/splat-transform@2.7.1 into .venv/node" >&2
    exit 1
fi
echo "$wanted" > "$stamp"
build_cpu_kernels
