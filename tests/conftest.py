"""Shared scenes and runs. Everything here is real: ray-traced images, trained models, files on disk."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from distilled_splat.data.synthetic import PRESETS, write_scene

BIN = Path(sys.executable).parent
TEACHER_STEPS = 60


def run_command(*args: str, check: bool = True, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run an installed console script (ns-train, ns-export, ...) from this environment."""
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    result = subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True, timeout=timeout, env=env)
    if check and result.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


@pytest.fixture(scope="session")
def tiny_scene(tmp_path_factory) -> Path:
    return write_scene(tmp_path_factory.mktemp("scenes") / "tiny", PRESETS["tiny"])


@pytest.fixture(scope="session")
def trained_teacher(tmp_path_factory, tiny_scene) -> Path:
    """config.yml of a distilled-teacher trained by ``ns-train`` on the tiny scene on CPU."""
    output = tmp_path_factory.mktemp("runs")
    run_command(
        "ns-train",
        "distilled-teacher",
        "--data",
        str(tiny_scene),
        "--output-dir",
        str(output),
        "--timestamp",
        "run",
        "--max-num-iterations",
        str(TEACHER_STEPS),
        "--machine.device-type",
        "cpu",
        "--vis",
        "tensorboard",
        "--pipeline.model.warmup-length",
        "10",
        "--pipeline.model.refine-every",
        "20",
    )
    config = output / "tiny" / "distilled-teacher" / "run" / "config.yml"
    assert config.is_file()
    return config
