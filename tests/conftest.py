"""Shared scenes and runs. Everything here is real: ray-traced images, trained models, files on disk."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path
from typing import Callable, Optional, TypeVar

import pytest
from filelock import FileLock

from distilled_splat.data.synthetic import PRESETS, write_scene

BIN = Path(sys.executable).parent
if "PYTEST_XDIST_WORKER_COUNT" in os.environ:
    # pytest-xdist workers share the cores: each worker, and every command it starts, gets its share of threads.
    # More threads than cores make each process's waiting OpenMP threads take the others' time.
    # torch is imported here, after the package, which sets libgomp's spin count before torch loads it.
    import torch

    THREADS = max(1, len(os.sched_getaffinity(0)) // int(os.environ["PYTEST_XDIST_WORKER_COUNT"]))
    os.environ["OMP_NUM_THREADS"] = str(THREADS)
    torch.set_num_threads(THREADS)
TEACHER_STEPS = 60
Built = TypeVar("Built")


def built_once(tmp_path_factory, name: str, build: Callable[[Path], Built]) -> Built:
    """``build(folder)``'s value, built once per test run even where pytest-xdist spreads the tests over several
    workers (scripts/test.sh): the first worker to ask builds it in a folder all of them share, under a file lock,
    and the others wait for it and read the value it pickled. A failed build leaves nothing that counts as built."""
    root = tmp_path_factory.getbasetemp()
    if "PYTEST_XDIST_WORKER" in os.environ:
        root = root.parent  # each worker's basetemp is a folder of the run's
    folder, value = root / f"built-{name}", root / f"built-{name}.pickle"
    with FileLock(f"{folder}.lock"):
        if not value.is_file():
            folder.mkdir(exist_ok=True)
            made = build(folder)
            value.with_suffix(".partial").write_bytes(pickle.dumps(made))
            value.with_suffix(".partial").rename(value)
        return pickle.loads(value.read_bytes())


def required_tool(path: Optional[Path], missing: str) -> Path:
    """``path``, or a skip with the reason ``missing`` where it does not exist; under CI (``CI=true``, set by
    .ci/run after scripts/setup.sh installed every tool) a missing tool fails the test instead."""
    if path is not None and Path(path).is_file():
        return Path(path)
    if os.environ.get("CI") == "true":
        pytest.fail(f"{missing}, but CI=true: scripts/setup.sh should have installed it")
    pytest.skip(missing)


def cpp_kernels():
    """The C++ CPU kernels, or a skip where they could not be built (a failure under CI, where setup built them)."""
    from distilled_splat.rendering import cpp_backend

    if cpp_backend.load_kernels() is None:
        if os.environ.get("CI") == "true":
            pytest.fail("the C++ kernels could not be built, but CI=true: scripts/setup.sh should have built them")
        pytest.skip("the C++ kernels could not be built here")
    return cpp_backend.CppKernels()


@pytest.fixture(params=["torch", "cpp"])
def cpu_kernels(request):
    """Each CPU backend in turn, as ``rasterize_torch``'s ``kernels`` argument: None (PyTorch) or the C++ ones."""
    return None if request.param == "torch" else cpp_kernels()


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
    return built_once(tmp_path_factory, "tiny-scene", lambda folder: write_scene(folder / "tiny", PRESETS["tiny"]))


def ns_train(method: str, scene: Path, output: Path, *settings: str, steps: int = TEACHER_STEPS) -> Path:
    """Train ``method`` with ``ns-train`` on CPU (with the C++ rasteriser, as users get it) and return the run's
    config.yml."""
    result = run_command(
        "ns-train", method, "--data", str(scene), "--output-dir", str(output), "--timestamp", "run",
        "--max-num-iterations", str(steps), "--machine.device-type", "cpu", "--vis", "tensorboard", *settings,
    )  # fmt: skip
    if os.environ.get("CI") == "true":  # where setup built the kernels, ns-train must use them
        assert "C++ CPU rasteriser is unavailable" not in result.stdout + result.stderr, "fell back to PyTorch"
    config = output / scene.name / method / "run" / "config.yml"
    assert config.is_file()
    return config


@pytest.fixture(scope="session")
def trained_teacher(tmp_path_factory, tiny_scene) -> Path:
    """config.yml of a distilled-teacher trained by ``ns-train`` on the tiny scene on CPU.

    Schedules scaled to 60 steps (so the learning rates decay as in a full run), refining every 20 steps so that
    the run densifies (at step 20) before densification stops (step 30).
    """
    return built_once(
        tmp_path_factory, "teacher",
        lambda folder: ns_train("distilled-teacher", tiny_scene, folder, "--pipeline.model.refine-every", "20"),
    )  # fmt: skip


@pytest.fixture(scope="session")
def teacher_runs(tmp_path_factory, tiny_scene):
    """config.yml of the three teachers (vanilla first), trained in-process for 60 steps on the tiny scene."""
    from distilled_splat.method_configs import distilled_teacher, distilled_teacher_dropout, distilled_teacher_noise
    from tests.helpers import train_run

    specs = (distilled_teacher, distilled_teacher_noise, distilled_teacher_dropout)
    return built_once(
        tmp_path_factory, "teachers",
        lambda folder: tuple(train_run(spec.config, tiny_scene, folder, TEACHER_STEPS) for spec in specs),
    )  # fmt: skip


def ns_train_student(method, tmp_path_factory, tiny_scene, teacher_runs) -> Path:
    return built_once(
        tmp_path_factory, method,
        lambda folder: ns_train(
            method, tiny_scene, folder,
            "--pipeline.datamanager.teachers", *map(str, teacher_runs), "--pipeline.model.target-gaussians", "30",
        ),
    )  # fmt: skip


@pytest.fixture(scope="session")
def trained_student(tmp_path_factory, tiny_scene, teacher_runs) -> Path:
    """config.yml of a distilled-splatfacto (started from the vanilla teacher) trained by ``ns-train`` on CPU,
    at most 30 Gaussians."""
    return ns_train_student("distilled-splatfacto", tmp_path_factory, tiny_scene, teacher_runs)


@pytest.fixture(scope="session")
def trained_paper_student(tmp_path_factory, tiny_scene, teacher_runs) -> Path:
    """config.yml of a distilled-splatfacto-paper (from the point cloud) trained by ``ns-train``, at most 30."""
    return ns_train_student("distilled-splatfacto-paper", tmp_path_factory, tiny_scene, teacher_runs)
