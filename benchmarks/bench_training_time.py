"""Whole-run training time: the default student against its vanilla teacher, at equal steps, in one process, under
each CPU rasteriser backend.

    python benchmarks/bench_training_time.py [--output outputs/demo] [--steps N] [--rounds 2] [--backends torch cpp]

Needs a finished ``distilled-splat run`` / ``demo`` folder. Each round trains a vanilla teacher from its point
cloud and then the student from the folder's finished teacher, both for ``--steps`` steps (default: the run's),
into a temporary folder, so every run pays its whole cost: the student's teacher cache (training and pseudo
views), its importance passes, cuts and structural loss. Runs alternate (model, then backend) so that drifting
machine load affects all alike; prints one table with the median of each, the student/teacher ratio per backend,
and each backend's speed-up over the first of ``--backends`` (``DISTILLED_SPLAT_RASTERIZER``; default: today's).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from distilled_splat.recipe import Recipe
from distilled_splat.rendering.backend import BACKEND_VARIABLE, cpu_backend
from distilled_splat.run_configs import STUDENT
from distilled_splat.training import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("outputs/demo"))
    parser.add_argument("--steps", type=int, default=None, help="steps per model (default: the run's own)")
    parser.add_argument("--rounds", type=int, default=2, help="teacher-then-student rounds timed")
    parser.add_argument("--backends", nargs="+", default=None, help="CPU rasterisers to time (default: today's)")
    args = parser.parse_args()
    recipe = Recipe.load(args.output)
    settings = recipe.settings
    steps = args.steps or settings.steps
    backends = args.backends or [cpu_backend()]
    finished_teachers = recipe.configs.student_config(settings.recipe).pipeline.datamanager.teachers
    models = ("vanilla", STUDENT)
    seconds = {(name, backend): [] for name in models for backend in backends}
    with tempfile.TemporaryDirectory() as folder:
        for round_number in range(args.rounds):
            for backend in backends:
                os.environ[BACKEND_VARIABLE] = backend
                fresh = Recipe(
                    recipe.data,
                    Path(folder) / f"round-{round_number}-{backend}",
                    dataclasses.replace(settings, steps=steps, student_steps=steps),
                )
                configs = {
                    "vanilla": fresh.configs.method_config("vanilla"),
                    STUDENT: fresh.configs.method_config(STUDENT),
                }
                configs[STUDENT].pipeline.datamanager.teachers = finished_teachers
                for name in models:
                    start = time.perf_counter()
                    train(configs[name])
                    seconds[name, backend].append(time.perf_counter() - start)
    median = {key: statistics.median(values) for key, values in seconds.items()}
    title = f"{recipe.data}: {steps} steps per model, {args.rounds} rounds on {settings.device}"
    table = Table(title=title)
    for column in ("model", "backend", "median s", "ms per step", f"speed-up over {backends[0]}", "each round, s"):
        table.add_column(column)
    for name in models:
        label = "vanilla teacher" if name == "vanilla" else "student (default)"
        for backend in backends:
            runs = " ".join(f"{s:.1f}" for s in seconds[name, backend])
            speedup = f"{median[name, backends[0]] / median[name, backend]:.2f}"
            table.add_row(
                label,
                backend,
                f"{median[name, backend]:.1f}",
                f"{median[name, backend] / steps * 1e3:.0f}",
                speedup,
                runs,
            )
    for backend in backends:
        ratio = median[STUDENT, backend] / median["vanilla", backend]
        table.add_row("student / teacher", backend, f"{ratio:.2f}", "", "", "target <= 1.0")
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
