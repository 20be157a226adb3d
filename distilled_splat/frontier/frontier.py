"""The budget-quality frontier: the student against the strongest ways to get a small splat model, at the same
Gaussian count, on the same scene and held-out views, at matched total optimisation, over several seeds.

Every model is an ordinary nerfstudio run under OUTPUT/runs/frontier, named by its fingerprint (configs.py), and
its result a small JSON file (results.py): re-running skips finished models and resumes interrupted trainings.
This module runs the plan (plan.py): teachers first, then each model trained, evaluated and exported.
"""

from __future__ import annotations

import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Dict, List, Optional

import torch
from nerfstudio.engine.trainer import TrainerConfig
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from distilled_splat.decimation import decimate_gaussians, gaussians_from_ply
from distilled_splat.exports.exporters import read_3dgs_ply
from distilled_splat.exports.writer import export_compact
from distilled_splat.files import write_atomically
from distilled_splat.frontier.configs import ModelConfigs
from distilled_splat.frontier.contenders import CONTENDERS
from distilled_splat.frontier.plan import FrontierPlan, FrontierSettings, ModelSpec
from distilled_splat.frontier.report import write_frontier
from distilled_splat.frontier.results import ResultStore
from distilled_splat.recipe import Recipe
from distilled_splat.training import (
    evaluate,
    export_ply,
    gaussian_count,
    is_trained,
    last_step_checkpoint,
    refuse_other_settings,
    train,
)

__all__ = ["Frontier", "FrontierSettings", "ModelSpec"]


@dataclass
class Frontier:
    """Trains, evaluates and exports every model of the plan that is not finished, then writes the tables."""

    recipe: Recipe
    settings: FrontierSettings = field(default_factory=FrontierSettings)

    def __post_init__(self) -> None:
        self.plan = FrontierPlan(self.recipe, self.settings)
        self.configs = ModelConfigs(self.plan)
        self.results = ResultStore(self.configs)

    def train_teachers(self, progress: Progress) -> None:
        for name in self.plan.teachers_needed():
            config = self.plan.teacher_config(name)
            refuse_other_settings(config)
            if is_trained(config):
                progress.console.print(f"reusing the {name} teacher: {config.get_base_dir()}")
            else:
                self.recipe.train_stage(name, config, progress)

    def execute(self) -> List[Dict]:
        if not self.recipe.folder.record_path.is_file():  # a run's record stays the run's
            self.recipe.save()
        with Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn(),
        ) as progress:  # fmt: skip
            self.train_teachers(progress)
            for name, reason in self.plan.unavailable.items():
                if name in (*self.settings.methods, *self.settings.ablations):
                    progress.console.print(f"[yellow]{name}: not available ({reason})")
            specs = self.plan.specs()
            pending = [spec for spec in specs if not self.results.result_path(spec).is_file()]
            done = len(specs) - len(pending)
            if done:
                progress.console.print(f"reusing {done} finished frontier models from {self.results.folder / 'models'}")
            overall = progress.add_task("frontier", total=len(specs), completed=done)
            if self.settings.jobs == 1:
                for spec in pending:
                    self.train_and_evaluate(spec, progress)
                    self.finished(progress, overall)
            else:
                self.run_parallel(pending, progress, overall)
        current, other = self.results.rows()
        print(write_frontier(self.results.record(current, other), self.recipe.output))
        return current

    def finished(self, progress: Progress, overall) -> None:
        """After each model: the tables and plot cover what is finished so far, so an interrupted frontier has them."""
        progress.advance(overall)
        write_frontier(self.results.record(*self.results.rows()), self.recipe.output)

    def run_parallel(self, pending: List[ModelSpec], progress: Progress, overall) -> None:
        # Decimations, and the first model of each teacher cache, run here alone; the others then only read them.
        first: Dict[str, ModelSpec] = {}
        for spec in pending:
            datamanager = self.configs.model_config(spec).pipeline.datamanager
            key = str(getattr(datamanager, "teacher_cache_dir", None)) if CONTENDERS[spec.method].trains else spec.name
            first.setdefault(key, spec)
        for spec in first.values():
            self.train_and_evaluate(spec, progress)
            self.finished(progress, overall)
        rest = [spec for spec in pending if spec not in first.values()]
        with ProcessPoolExecutor(self.settings.jobs, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(train_in_worker, self, spec, self.settings.jobs): spec for spec in rest}
            for future in as_completed(futures):
                row = future.result()
                progress.console.print(
                    f"{futures[future].name}: {row['num_gaussians']} Gaussians, {row['psnr']:.2f} dB"
                )
                self.finished(progress, overall)

    def produce(self, spec: ModelSpec, config: TrainerConfig, progress: Optional[Progress]) -> None:
        """Train the model, or for a contender that is not trained, make it (a decimated teacher)."""
        if not CONTENDERS[spec.method].trains:
            if not is_trained(config):
                decimate_run(self.plan.vanilla_config(), self.plan.budget_count(spec.budget), config)
            return
        if progress is None:
            train(config)
            return
        task = progress.add_task(f"training {spec.name}", total=config.max_num_iterations)
        train(config, on_step=lambda step: progress.update(task, completed=step + 1))
        progress.remove_task(task)

    def train_and_evaluate(self, spec: ModelSpec, progress: Optional[Progress] = None) -> Dict:
        config = self.configs.model_config(spec)
        stem = config.timestamp
        started = time.perf_counter()
        seconds_before = self.results.read_seconds(stem)
        self.produce(spec, config, progress)
        seconds = seconds_before + time.perf_counter() - started
        self.results.write_seconds(stem, seconds)
        config_path = config.get_base_dir() / "config.yml"
        metrics = evaluate(config_path, self.results.folder / "evals" / f"{stem}.json")
        spz = export_compact(self.results.folder / "exports" / f"{stem}.spz", "spz", load_config=config_path)
        contender = CONTENDERS[spec.method]
        own_steps, total_steps = self.plan.own_and_total_steps(spec.method)
        teachers_used = contender.teachers_used(self.recipe)
        teacher_seconds = self.recipe.folder.read_timings()
        row = {
            "method": spec.method, "budget": spec.budget, "seed": spec.seed, "fingerprint": self.configs.fingerprint(spec),
            "settings": self.configs.settings_record(), "start": contender.start, "teachers_used": list(teachers_used),
            "num_gaussians": gaussian_count(config), "psnr": metrics["psnr"], "ssim": metrics["ssim"],
            "lpips": metrics.get("lpips"), "spz_bytes": (self.results.folder / "exports" / f"{stem}.spz").stat().st_size,
            "own_steps": own_steps, "total_steps": total_steps, "train_seconds": round(seconds, 2),
            "train_seconds_total": round(seconds + sum(teacher_seconds[name] for name in teachers_used), 2)
            if all(name in teacher_seconds for name in teachers_used) else None,
        }  # fmt: skip
        self.results.write_row(spec, row)
        if progress is not None:
            progress.console.print(f"{spec.name}: {row['num_gaussians']} Gaussians, {row['psnr']:.2f} dB; {spz}")
        return row


def decimate_run(source: TrainerConfig, count: int, target: TrainerConfig) -> int:
    """Write ``target`` (the ``source`` run's config with another output folder) as a run holding ``source``'s
    Gaussians merged down to ``count`` by splat-transform; returns the count read back.

    The checkpoint is ``source``'s final one with the Gaussians replaced, written last and atomically, so a killed
    decimation leaves no run that looks finished.
    """
    checkpoint = torch.load(last_step_checkpoint(source), map_location="cpu")
    with tempfile.TemporaryDirectory() as folder:
        ply = export_ply(source.get_base_dir() / "config.yml", Path(folder) / "source.ply")
        decimated = gaussians_from_ply(read_3dgs_ply(ply))
    for name, value in decimate_gaussians(decimated, count).items():
        checkpoint["pipeline"][f"_model.gauss_params.{name}"] = value
    checkpoint.pop("optimizers", None)  # the source's Adam moments belong to Gaussians that no longer exist
    checkpoint.pop("scalers", None)
    target.get_base_dir().mkdir(parents=True, exist_ok=True)
    target.save_config()
    write_atomically(last_step_checkpoint(target), lambda path: torch.save(checkpoint, path))
    return gaussian_count(target)


def train_in_worker(frontier: Frontier, spec: ModelSpec, jobs: int) -> Dict:
    """One model in a worker process; nerfstudio's output goes to frontier/logs/NAME.log, not the terminal."""
    import torch

    torch.set_num_threads(max(1, (os.cpu_count() or 1) // jobs))
    log = frontier.results.folder / "logs" / f"{spec.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as handle:
        os.dup2(handle.fileno(), 1)
        os.dup2(handle.fileno(), 2)
    return frontier.train_and_evaluate(spec)
