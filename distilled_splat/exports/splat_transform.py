"""PlayCanvas's ``splat-transform`` (npm ``@playcanvas/splat-transform``), run as a separate program: training-free
decimation, SOG and the single-file HTML viewer. ``scripts/setup.sh`` installs it into ``.venv/node``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Optional, Sequence

from distilled_splat.errors import DistilledSplatError
from distilled_splat.notices import say_once

VERSION = "2.7.1"
"""The version setup installs and this package's uses are checked with (the fingerprint records the installed one:
:func:`installed_version`)."""
HOW_TO_GET = (
    "splat-transform was not found: ./scripts/setup.sh installs it where npm exists "
    f"(npm install --prefix .venv/node @playcanvas/splat-transform@{VERSION}), or put it on PATH"
)
ENVIRONMENT_VARIABLE = "DISTILLED_SPLAT_SPLAT_TRANSFORM"
"""Path of the splat-transform executable to use, overriding the search."""


def find() -> Optional[Path]:
    """The splat-transform executable: $DISTILLED_SPLAT_SPLAT_TRANSFORM, this environment's node folder (where
    setup puts it), or PATH; None if there is none."""
    configured = os.environ.get(ENVIRONMENT_VARIABLE)
    if configured:
        return Path(configured) if Path(configured).is_file() else None
    beside = Path(sys.prefix) / "node" / "node_modules" / ".bin" / "splat-transform"
    if beside.is_file():
        return beside
    found = shutil.which("splat-transform")
    return Path(found) if found else None


def installed_version() -> str:
    """The version of the splat-transform that :func:`find` finds (from its package.json), 'unknown' where that
    cannot be read, 'missing' where there is none; a version other than :data:`VERSION` is said once."""
    executable = find()
    if executable is None:
        return "missing"
    version = "unknown"
    for folder in list(executable.resolve().parents)[:3]:
        try:
            version = json.loads((folder / "package.json").read_text())["version"]
            break
        except (OSError, ValueError, KeyError):
            continue
    if version != VERSION:
        say_once(f"splat-transform {version} is installed at {executable}; this package is checked with {VERSION}")
    return version


def require() -> Path:
    executable = find()
    if executable is None:
        raise DistilledSplatError(HOW_TO_GET)
    return executable


def run(arguments: Sequence[str], timeout: float = 1800) -> str:
    """Run splat-transform with ``-w`` (overwrite) and ``-g cpu`` (no GPU adapter needed); its output, or a
    one-line error with the last line it printed."""
    command = [str(require()), "-w", "-g", "cpu", *map(str, arguments)]
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise DistilledSplatError(f"splat-transform did not finish in {timeout:.0f} s: {' '.join(command)}") from None
    if result.returncode != 0:
        said = (result.stderr.strip() or result.stdout.strip() or "no output").splitlines()[-1]
        raise DistilledSplatError(f"splat-transform failed ({result.returncode}): {said}")
    return result.stdout


def decimate(ply: Path, count: int, output: Path) -> Path:
    """``ply`` merged pairwise down to ``count`` Gaussians (NanoGS), written as a 3DGS PLY at ``output``."""
    run([ply, "--decimate", str(count), output])
    return output
