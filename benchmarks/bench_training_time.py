"""Whole-run training time: the default student against its vanilla teacher, at equal steps, in one process.

    python benchmarks/bench_training_time.py [--output outputs/demo] [--steps N] [--rounds 2]

Needs a finished ``distilled-splat run`` / ``demo`` folder. Each round trains a vanilla teacher from its point
cloud and then the student from the folder's finished teacher, both for ``--steps`` steps (default: the run's),
into a temporary folder, so every run pays its whole cost: the student's teacher cache (training and pseudo
views), its importance passes, cuts and structural loss. Runs alternate so that drifting machine load affects
both alike; prints one table with the median of each and their ratio.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from distilled_splat.recipe import STUDENT, Recipe
from distilled_splat.training import train


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("outputs/demo"))
    parser.add_argument("--steps", type=int, default=None, help="steps per model (default: the run's own)")
    parser.add_argument("--rounds", type=int, default=2, help="teacher-then-student rounds timed")
    args = parser.parse_args()
    recipe = Recipe.load(args.output)
    settings = recipe.settings
    steps = args.steps or settings.steps
    finished_teachers = recipe.student_config(settings.recipe).pipeline.datamanager.teachers
    seconds = {"vanilla": [], STUDENT: []}
    with tempfile.TemporaryDirectory() as folder:
        for round_number in range(args.rounds):
            fresh = Recipe(
                recipe.data,
                Path(folder) / f"round-{round_number}",
                dataclasses.replace(settings, steps=steps, student_steps=steps),
            )
            configs = {"vanilla": fresh.method_config("vanilla"), STUDENT: fresh.method_config(STUDENT)}
            configs[STUDENT].pipeline.datamanager.teachers = finished_teachers
            for name, config in configs.items():
                start = time.perf_counter()
                train(config)
                seconds[name].append(time.perf_counter() - start)
    teacher, student = (statistics.median(seconds[name]) for name in ("vanilla", STUDENT))
    table = Table(title=f"{recipe.data}: {steps} steps per model, {args.rounds} rounds on {settings.device}")
    for column in ("model", "median s", "ms per step", "each round, s"):
        table.add_column(column)
    for name, median in (("vanilla teacher", teacher), ("student (default)", student)):
        runs = seconds["vanilla" if name.startswith("vanilla") else STUDENT]
        table.add_row(name, f"{median:.1f}", f"{median / steps * 1e3:.0f}", " ".join(f"{s:.1f}" for s in runs))
    table.add_row("student / teacher", f"{student / teacher:.2f}", "", "target <= 1.0")
    Console().print(table)


if __name__ == "__main__":
    main()
