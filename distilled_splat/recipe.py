"""The full recipe on one scene: the teachers (the vanilla one by default; three with --recipe paper), the
student, evaluation, export and report. The models' configs come from run_configs.py, the places of their outputs
from run_folder.py; this module runs the stages.

Every stage leaves a complete result or nothing, so running the recipe again skips what is finished and
resumes what was interrupted.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from nerfstudio.engine.trainer import TrainerConfig
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from distilled_splat.data.datamanager import scene_notes
from distilled_splat.data.scene_checks import check_frames
from distilled_splat.data.scene_inputs import find_scene
from distilled_splat.errors import DistilledSplatError
from distilled_splat.exports.writer import export_compact
from distilled_splat.files import write_atomically
from distilled_splat.given_model import GivenTeacher
from distilled_splat.importing import (
    PreparedImport,
    prepare_import,
    training_to_given,
    write_imported_run,
    write_ply_in_frame,
)
from distilled_splat.notices import say_once
from distilled_splat.run_configs import STUDENT, RecipeSettings, RunConfigs
from distilled_splat.run_folder import RunFolder
from distilled_splat.training import (
    evaluate,
    export_ply,
    gaussian_count,
    is_trained,
    refuse_other_settings,
    train,
)


@dataclass
class Recipe:
    data: Path
    output: Path
    settings: RecipeSettings = field(default_factory=RecipeSettings)
    given: Optional[GivenTeacher] = None
    """A model the user already has, imported as the vanilla teacher instead of training one (`compact`)."""

    def __post_init__(self) -> None:
        self.settings.check()
        self.settings = self.settings.with_device_defaults()
        self.folder = RunFolder(self.output)
        self.configs = RunConfigs(self.data, self.folder.runs, self.settings, self.given)
        self.prepared: Optional[PreparedImport] = None

    def save(self) -> None:
        """Record what this output folder holds, for ``distilled-splat report`` and for re-runs."""
        record = {"data": str(self.data.resolve()), "settings": dataclasses.asdict(self.settings)}
        if self.given is not None:
            record["given"] = self.given.to_record()
        write_atomically(self.folder.record_path, lambda path: path.write_text(json.dumps(record, indent=1)))

    @staticmethod
    def load(output: Path) -> "Recipe":
        try:
            record = json.loads(RunFolder(output).record_path.read_text())
        except (OSError, ValueError):
            raise DistilledSplatError(
                f"{output} holds no finished `distilled-splat run` (no readable recipe.json)"
            ) from None
        settings = {k: tuple(v) if isinstance(v, list) else v for k, v in record["settings"].items()}
        given = GivenTeacher.from_record(record["given"]) if "given" in record else None
        return Recipe(Path(record["data"]), output, RecipeSettings(**settings), given)

    def execute(self) -> None:
        checked = check_frames(find_scene(self.data), self.settings.downscale)
        settings = self.settings
        student_steps = settings.student_steps
        teachers = f"{settings.steps} steps per teacher" if self.given is None else self.given.model.describe()
        print(
            f"scene: {checked.scene.describe()}, {len(checked.frames)} views (every 8th held out); "
            f"{teachers}, {student_steps} steps for the student, on {settings.device}"
        )
        for note in scene_notes(checked):
            say_once(note)
        models = self.configs.models()
        configs = {name: self.configs.method_config(name) for name in models}
        for config in configs.values():
            refuse_other_settings(config)  # before recipe.json says these settings made this folder's models
        self.prepare_given(configs["vanilla"])
        self.save()
        unused = [name for name in self.configs.teachers() if name != "vanilla"]
        student = configs[STUDENT].pipeline
        if unused and student.model.distill_weight == 0 and student.datamanager.pseudo_share == 0:
            print(
                f"note: this student learns from no teacher's renders (no distillation, no pseudo views), so "
                f"teachers {' '.join(unused)} do not change it"
            )
        with Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn(),
        ) as progress:  # fmt: skip
            overall = progress.add_task("Distilled-3DGS", total=3 * len(models))
            for name in models:
                self.train_stage(name, configs[name], progress)
                progress.advance(overall)
            for name in models:
                config_path = configs[name].get_base_dir() / "config.yml"
                if not self.folder.eval_path(name).is_file():
                    progress.console.print(f"evaluating {name} on the held-out views")
                    evaluate(config_path, self.folder.eval_path(name))
                progress.advance(overall)
                if not self.folder.ply_path(name).is_file():
                    export_ply(config_path, self.folder.ply_path(name))
                for fmt in self.folder.compact_formats():
                    if not self.folder.export_path(name, fmt).is_file():
                        export_compact(self.folder.export_path(name, fmt), fmt, ply=self.folder.ply_path(name))
                progress.advance(overall)
        # A given model's student goes back into that model's frame, so that it lands where the original was.
        back = training_to_given(configs["vanilla"].get_base_dir()) if self.given is not None else None
        if back is not None:
            moved = write_ply_in_frame(self.folder.ply_path(STUDENT), back, self.output / "student.ply")
        for fmt in [fmt for fmt in ("ply", "spz", "sog") if fmt in ("ply", *self.folder.compact_formats())]:
            exported, target = self.folder.export_path(STUDENT, fmt), self.output / f"student.{fmt}"
            if back is None:
                write_atomically(target, lambda path, src=exported: path.write_bytes(src.read_bytes()))
            elif fmt != "ply":
                export_compact(target, fmt, ply=moved)

    def prepare_given(self, config: TrainerConfig) -> None:
        """Read and check the given model before anything is written (once: the frontier asks again)."""
        if self.given is not None and self.prepared is None and not is_trained(config):
            self.prepared = prepare_import(config, self.given.model, self.settings.target_gaussians)

    def train_stage(self, name: str, config: TrainerConfig, progress: Progress) -> None:
        parts = refuse_other_settings(config)
        if is_trained(config):
            progress.console.print(f"{name}: already {'imported' if self.is_given(name) else 'trained'}, skipped")
            return
        # What was evaluated or exported from an earlier model of this name is not this model's.
        for path in self.folder.outputs_of(name):
            path.unlink(missing_ok=True)
        started = time.perf_counter()
        if self.is_given(name):  # imported, not trained: it has no training time of its own here
            self.prepare_given(config)
            write_imported_run(config, self.given, self.prepared, parts)
            progress.console.print(
                f"{name}: imported from {self.given.model.describe()}, {gaussian_count(config)} Gaussians"
            )
            return
        task = progress.add_task(f"training {name}", total=config.max_num_iterations)
        train(config, on_step=lambda step: progress.update(task, completed=step + 1))
        progress.remove_task(task)
        self.folder.add_training_time(name, time.perf_counter() - started)
        progress.console.print(f"{name}: trained, {gaussian_count(config)} Gaussians")

    def is_given(self, name: str) -> bool:
        return name == "vanilla" and self.given is not None
