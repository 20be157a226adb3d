"""The nerfstudio configs of a run's models: the settings a user gives (``RecipeSettings``), and from them each
teacher's and the student's config on this scene, device, seed and run length."""

from __future__ import annotations

import dataclasses
import shlex
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Literal, Optional, Tuple

import tyro
from nerfstudio.engine.trainer import TrainerConfig

from distilled_splat.data.scene_inputs import dataparser_for, find_scene
from distilled_splat.devices import resolve_device
from distilled_splat.errors import DistilledSplatError
from distilled_splat.given_model import GivenTeacher
from distilled_splat.method_configs import (
    distilled_splatfacto,
    distilled_splatfacto_paper,
    distilled_teacher,
    distilled_teacher_dropout,
    distilled_teacher_noise,
)
from distilled_splat.schedules import scale_to_run_length

TeacherName = Literal["vanilla", "noise", "dropout"]
TEACHER_METHODS = {"vanilla": distilled_teacher, "noise": distilled_teacher_noise, "dropout": distilled_teacher_dropout}
STUDENT = "student"
StudentRecipe = Literal["gradual", "paper"]
STUDENT_METHODS = {"gradual": distilled_splatfacto, "paper": distilled_splatfacto_paper}
RECIPE_TEACHERS: Dict[str, Tuple[TeacherName, ...]] = {
    "gradual": ("vanilla",),  # distils from the vanilla teacher alone: one teacher to train (README's frontier)
    "paper": ("vanilla", "noise", "dropout"),
}
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
    budget (in 8 cuts over the first half of a run under 2000 steps, in one merge at step 0 from 2000 on),
    fine-tuned on the real images and on the teachers' cached renders at pseudo views, with the structural loss,
    relocating faded Gaussians at the budget as 3DGS-MCMC does. 'paper' (ns-train distilled-splatfacto-paper):
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
class RunConfigs:
    """The configs of the models a run on ``data`` trains under ``runs`` (``given``: the model imported as the
    vanilla teacher, whose run name and SH degree the configs take)."""

    data: Path
    runs: Path
    settings: RecipeSettings
    given: Optional[GivenTeacher] = None

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
