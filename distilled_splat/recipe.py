"""The full recipe on one scene: the teachers (the vanilla one by default; three with --recipe paper), the
student, evaluation, export and report.

Every stage leaves a complete result or nothing, so running the recipe again skips what is finished and
resumes what was interrupted.
"""

from __future__ import annotations

import dataclasses
import json
import shlex
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Literal, Optional, Tuple

import tyro
from nerfstudio.engine.trainer import TrainerConfig
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from distilled_splat.data.datamanager import scene_notes
from distilled_splat.data.scene_checks import check_frames
from distilled_splat.data.scene_inputs import dataparser_for, find_scene
from distilled_splat.devices import resolve_device
from distilled_splat.errors import DistilledSplatError
from distilled_splat.exports import splat_transform
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
from distilled_splat.method_configs import (
    distilled_splatfacto,
    distilled_splatfacto_paper,
    distilled_teacher,
    distilled_teacher_dropout,
    distilled_teacher_noise,
)
from distilled_splat.notices import say_once
from distilled_splat.schedules import scale_to_run_length
from distilled_splat.training import (
    evaluate,
    export_ply,
    gaussian_count,
    is_trained,
    refuse_other_settings,
    train,
)

TeacherName = Literal["vanilla", "noise", "dropout"]
TEACHER_METHODS = {"vanilla": distilled_teacher, "noise": distilled_teacher_noise, "dropout": distilled_teacher_dropout}
STUDENT = "student"
StudentRecipe = Literal["gradual", "paper"]
STUDENT_METHODS = {"gradual": distilled_splatfacto, "paper": distilled_splatfacto_paper}
RECIPE_TEACHERS: Dict[str, Tuple[TeacherName, ...]] = {
    "gradual": ("vanilla",),  # distils from the vanilla teacher alone: one teacher to train (README's frontier)
    "paper": ("vanilla", "noise", "dropout"),
}
COMPACT_FORMATS = ("spz", "splat", "sog")
"""Written for every model next to its PLY (see distilled_splat/exports/exporters.py); sog where splat-transform is."""
DEFAULT_STEPS = {"cuda": 30_000, "cpu": 1000}
"""Steps per model when --steps is not given: the paper's 30000 with gsplat on a GPU. On a 2-core CPU the vanilla
teacher of the 135x240 fox capture trained at about 130 steps a minute (28,000 Gaussians by step 900), so four
2000-step models took about an hour; 1000 steps keeps a run to about half of that."""


@dataclass
class RecipeSettings:
    """What to train and how; shared by ``run`` and ``demo``."""

    steps: Optional[int] = None
    """Training steps of every teacher (default: 30000 on CUDA as in the paper, 1000 on CPU); all schedules are
    scaled from their 30k-step values to this length."""
    student_steps: Optional[int] = None
    """Training steps of the student (default: --steps)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """'auto' uses CUDA (gsplat) when present, otherwise the CPU rasteriser."""
    downscale: Optional[int] = None
    """Train every model on images at 1/N size: images_N/ where the scene has it, otherwise resized when loaded.
    Default: nerfstudio's choice (full size up to 1600 pixels, else the next power of two)."""
    teachers: Optional[Tuple[TeacherName, ...]] = None
    """Teachers to train and distil from; 'vanilla' is required (the student's start, structural loss target and
    budget reference). Default: the recipe's (vanilla alone for 'gradual', vanilla noise dropout for 'paper')."""
    target_fraction: Optional[float] = 0.1
    """Student budget as a fraction of the vanilla teacher's Gaussians."""
    target_gaussians: Optional[int] = None
    """Student budget as a number of Gaussians (overrides --target-fraction)."""
    teacher_args: str = ""
    """Extra ns-train arguments for every teacher, e.g. --teacher-args="--pipeline.model.sh-degree 2". Applied after
    the schedule is scaled to --steps: step numbers in them are taken as given."""
    student_args: str = ""
    """Extra ns-train arguments for the student, e.g. --student-args="--pipeline.model.structure-mode joint". Applied
    after the schedule is scaled to --student-steps: step numbers in them are taken as given."""
    seed: int = 42
    """Random seed of every model."""
    recipe: StudentRecipe = "gradual"
    """How the student is made. 'gradual' (ns-train distilled-splatfacto): the trained vanilla teacher cut to the
    budget in 8 cuts over the first half of the run, fine-tuned on the real images and on the teachers' cached
    renders at pseudo views, with the structural loss. 'paper' (ns-train distilled-splatfacto-paper):
    Distilled-3DGS as published, from the point cloud with distillation, the structural loss and importance
    pruning."""

    def check(self) -> None:
        for name, steps in (("--steps", self.steps), ("--student-steps", self.student_steps)):
            if steps is not None and steps < 1:
                raise DistilledSplatError(f"{name} must be a positive number of steps, got {steps}")
        if self.teachers is not None and "vanilla" not in self.teachers:
            raise DistilledSplatError(
                "--teachers must include vanilla (the structural loss target and budget reference)"
            )
        if self.teachers is not None and len(set(self.teachers)) != len(self.teachers):
            raise DistilledSplatError(f"--teachers lists a teacher twice: {' '.join(self.teachers)}")
        if self.downscale is not None and self.downscale < 1:
            raise DistilledSplatError(f"--downscale must be a positive integer, got {self.downscale}")

    def with_device_defaults(self) -> "RecipeSettings":
        """These settings with the device and the default step count made concrete."""
        device = resolve_device(self.device)
        steps = self.steps if self.steps is not None else DEFAULT_STEPS[device]
        student_steps = self.student_steps if self.student_steps is not None else steps
        return dataclasses.replace(self, device=device, steps=steps, student_steps=student_steps)


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
        self.prepared: Optional[PreparedImport] = None

    @property
    def runs(self) -> Path:
        return self.output.resolve() / "runs"

    def method_config(self, name: str) -> TrainerConfig:
        if name == STUDENT:
            return self.student_config(self.settings.recipe)
        settings = self.settings
        config = self.run_config(TEACHER_METHODS[name].config, settings.steps)
        if name == "vanilla" and self.given is not None:
            config.timestamp = self.given.run_name
            config.pipeline.model.sh_degree = self.given.sh_degree
        return self.with_args(config, settings.teacher_args)

    def student_config(self, recipe: StudentRecipe) -> TrainerConfig:
        """The student of ``recipe`` on this scene, distilled from this recipe's teachers."""
        settings = self.settings
        config = self.run_config(STUDENT_METHODS[recipe].config, settings.student_steps)
        config.timestamp = f"{config.timestamp}-{recipe}"
        config.pipeline.datamanager.teachers = tuple(self.teacher_config_path(t) for t in self.teachers(recipe))
        config.pipeline.model.target_fraction = settings.target_fraction
        config.pipeline.model.target_gaussians = settings.target_gaussians
        if self.given is not None:
            config.pipeline.model.sh_degree = self.given.sh_degree
        return self.with_args(config, settings.student_args)

    @staticmethod
    def with_args(config: TrainerConfig, args: str) -> TrainerConfig:
        """``config`` with extra ns-train arguments applied."""
        if not args:
            return config
        return tyro.cli(type(config), default=config, args=shlex.split(args), config=(tyro.conf.FlagConversionOff,))

    def run_config(self, method: TrainerConfig, steps: int) -> TrainerConfig:
        """``method`` set up to train ``steps`` steps on this recipe's scene, device and seed, under its runs."""
        settings = self.settings
        config = scale_to_run_length(method, steps)
        config.pipeline.datamanager.data = self.data.resolve()
        config.pipeline.datamanager.dataparser = dataparser_for(find_scene(self.data.resolve()), settings.downscale)
        config.output_dir = self.runs
        config.experiment_name = "distilled"
        config.timestamp = f"{steps}-steps"
        config.machine.device_type = settings.device
        config.machine.seed = settings.seed
        config.vis = "tensorboard"
        config.logging.local_writer.enable = False  # the recipe shows its own progress bars
        # The recipe evaluates every model once, at the end; evaluating during training only costs time.
        config.steps_per_eval_image = config.steps_per_eval_all_images = config.steps_per_eval_batch = steps + 1
        return config

    def teacher_config_path(self, name: str) -> Path:
        config = self.method_config(name)
        return config.get_base_dir() / "config.yml"

    def teachers(self, recipe: Optional[StudentRecipe] = None) -> Tuple[TeacherName, ...]:
        """The teachers of ``recipe`` (default: this run's): --teachers if given, otherwise the recipe's own."""
        if self.settings.teachers is not None:
            return self.settings.teachers
        return RECIPE_TEACHERS[recipe or self.settings.recipe]

    def models(self) -> List[str]:
        return [*self.teachers(), STUDENT]

    def eval_path(self, name: str) -> Path:
        return self.output / "evals" / f"{name}.json"

    def ply_path(self, name: str) -> Path:
        return self.export_path(name, "ply")

    def export_path(self, name: str, fmt: str) -> Path:
        return self.output / "exports" / f"{name}.{fmt}"

    @staticmethod
    def compact_formats() -> Tuple[str, ...]:
        """The compact formats this machine can write: SOG needs splat-transform."""
        return (
            COMPACT_FORMATS if splat_transform.find() is not None else tuple(f for f in COMPACT_FORMATS if f != "sog")
        )

    def timings_path(self) -> Path:
        return self.output / "timings.json"

    def save(self) -> None:
        """Record what this output folder holds, for ``distilled-splat report`` and for re-runs."""
        record = {"data": str(self.data.resolve()), "settings": dataclasses.asdict(self.settings)}
        if self.given is not None:
            record["given"] = self.given.to_record()
        write_atomically(self.output / "recipe.json", lambda path: path.write_text(json.dumps(record, indent=1)))

    @staticmethod
    def load(output: Path) -> "Recipe":
        try:
            record = json.loads((output / "recipe.json").read_text())
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
        models = self.models()
        configs = {name: self.method_config(name) for name in models}
        for config in configs.values():
            refuse_other_settings(config)  # before recipe.json says these settings made this folder's models
        self.prepare_given(configs["vanilla"])
        self.save()
        unused = [name for name in self.teachers() if name != "vanilla"]
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
                if not self.eval_path(name).is_file():
                    progress.console.print(f"evaluating {name} on the held-out views")
                    evaluate(config_path, self.eval_path(name))
                progress.advance(overall)
                if not self.ply_path(name).is_file():
                    export_ply(config_path, self.ply_path(name))
                for fmt in self.compact_formats():
                    if not self.export_path(name, fmt).is_file():
                        export_compact(self.export_path(name, fmt), fmt, ply=self.ply_path(name))
                progress.advance(overall)
        # A given model's student goes back into that model's frame, so that it lands where the original was.
        back = training_to_given(configs["vanilla"].get_base_dir()) if self.given is not None else None
        if back is not None:
            moved = write_ply_in_frame(self.ply_path(STUDENT), back, self.output / "student.ply")
        for fmt in [fmt for fmt in ("ply", "spz", "sog") if fmt in ("ply", *self.compact_formats())]:
            exported, target = self.export_path(STUDENT, fmt), self.output / f"student.{fmt}"
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
        for path in [self.eval_path(name), self.ply_path(name), *(self.export_path(name, f) for f in COMPACT_FORMATS)]:
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
        timings = self.read_timings()
        timings[name] = timings.get(name, 0.0) + time.perf_counter() - started
        write_atomically(self.timings_path(), lambda path: path.write_text(json.dumps(timings, indent=1)))
        progress.console.print(f"{name}: trained, {gaussian_count(config)} Gaussians")

    def is_given(self, name: str) -> bool:
        return name == "vanilla" and self.given is not None

    def read_timings(self) -> Dict[str, float]:
        try:
            return json.loads(self.timings_path().read_text())
        except (OSError, ValueError):
            return {}
