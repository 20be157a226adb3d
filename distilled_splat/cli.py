"""The ``distilled-splat`` command."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional, get_args

import tyro

from distilled_splat.data.scene_checks import check_scene
from distilled_splat.data.synthetic import PRESETS, write_scene
from distilled_splat.devices import resolve_device
from distilled_splat.errors import DistilledSplatError
from distilled_splat.exports.exporters import Format
from distilled_splat.exports.writer import export_compact
from distilled_splat.frontier.frontier import Frontier, FrontierSettings
from distilled_splat.given_model import Frame, GivenModel, GivenTeacher
from distilled_splat.recipe import Recipe
from distilled_splat.report import write_report
from distilled_splat.run_configs import DEFAULT_STEPS, RecipeSettings, StudentRecipe


@dataclass
class Scene:
    """Write a built-in synthetic scene (ray-traced photographs) as a nerfstudio-format folder."""

    output: Path
    """Folder to write; replaced if it exists."""
    preset: Literal["demo", "tiny"] = "demo"
    """'demo': 48 views at 128x128; 'tiny': 16 views at 48x40, for tests."""

    def main(self) -> None:
        write_scene(self.output, PRESETS[self.preset])
        print(f"wrote {self.preset} scene to {self.output}")


@dataclass
class Run:
    """Train the teachers and the student on a scene, evaluate every model on the held-out views, export the
    student as a standard 3DGS .ply and write the report. Re-running skips finished stages and resumes
    interrupted ones."""

    data: Path
    """Scene: a folder with transforms.json (nerfstudio / instant-ngp, point cloud optional) or a COLMAP folder
    (images/ and sparse/0, as Mip-NeRF 360 ships), or the transforms.json itself."""
    output: Path
    """Folder for the runs, the teacher cache, student.ply and the report."""
    settings: tyro.conf.OmitArgPrefixes[RecipeSettings] = field(default_factory=RecipeSettings)

    def main(self) -> None:
        recipe = Recipe(self.data, self.output, self.settings)
        recipe.execute()
        write_report(recipe)


@dataclass
class Demo:
    """The whole recipe on the built-in demo scene (written to OUTPUT/scene on first use)."""

    output: Path = Path("outputs/demo")
    """Folder for the scene, the runs and the report."""
    settings: tyro.conf.OmitArgPrefixes[RecipeSettings] = field(default_factory=lambda: RecipeSettings(steps=1000))

    def main(self) -> None:
        scene = self.output / "scene"
        try:
            check_scene(scene)
        except DistilledSplatError:
            write_scene(scene, PRESETS["demo"])
        Run(scene, self.output, self.settings).main()


PLY_STEPS = 30_000
"""Steps counted for a given PLY's training, which the file does not record: 3DGS's and splatfacto's default."""


@dataclass
class GivenOptions:
    """The model you already have, used as the vanilla teacher: nothing is retrained."""

    teacher: Optional[Path] = None
    """A Gaussian splat run on --data (its folder or config.yml): nerfstudio's splatfacto or splatfacto-big, or one
    of distilled-splat's methods."""
    ply: Optional[Path] = None
    """Or: a 3DGS PLY of the scene at --data (from the reference 3DGS code, gsplat, ns-export, ...)."""
    frame: Frame = "auto"
    """Frame of the PLY: 'world' (the scene's own: COLMAP's, as the reference 3DGS code writes), 'normalised'
    (nerfstudio's training frame, as ns-export gaussian-splat writes) or 'auto' (whichever its renders line up
    with the photos in). The student is written back in the same frame."""
    sh_degree: Optional[int] = None
    """SH degree the given model must hold (default: whatever it holds); teacher and student use it."""
    teacher_steps: Optional[int] = None
    """Steps the given model was trained, counted in the total optimisation reports give (default: the run's own;
    30000, 3DGS's default, for a PLY)."""

    def given(self) -> Optional[GivenTeacher]:
        if self.teacher is not None and self.ply is not None:
            raise DistilledSplatError("give one of --teacher (a splat run) and --ply (a 3DGS PLY), not both")
        if self.teacher is None and self.ply is None:
            return None
        kind, path = ("run", self.teacher) if self.teacher is not None else ("ply", self.ply)
        if self.teacher is not None and self.frame != "auto":
            raise DistilledSplatError("--frame is for --ply: a run records its own frame")
        return GivenTeacher.of(GivenModel(kind, path, self.frame, self.sh_degree))

    def settings_for(self, given: GivenTeacher, settings: RecipeSettings) -> RecipeSettings:
        """``settings`` whose --steps (and --student-steps) are the student's; the teacher's are the given model's."""
        settings.check()
        student = settings.student_steps or settings.steps or DEFAULT_STEPS[resolve_device(settings.device)]
        teacher = self.teacher_steps or given.model.steps() or PLY_STEPS
        return dataclasses.replace(settings, steps=teacher, student_steps=student, teachers=("vanilla",))


@dataclass
class FrontierRecipeSettings(RecipeSettings):
    """The settings of `run`, less its single budget and recipe: the frontier's budgets come from --budgets, and it
    trains both students (`student`, `student-paper`) as contenders."""

    target_fraction: tyro.conf.Suppress[Optional[float]] = RecipeSettings.target_fraction
    target_gaussians: tyro.conf.Suppress[Optional[int]] = RecipeSettings.target_gaussians
    recipe: tyro.conf.Suppress[StudentRecipe] = RecipeSettings.recipe


@dataclass
class FrontierCommand:
    """Train the student and the alternatives to it (PUP-3DGS pruning, LightGaussian pruning, MCMC-capped
    splatfacto, splat-transform decimation with and without fine-tuning, the paper's student) at the same Gaussian
    budgets, seeds and total optimisation, evaluate them on the held-out views and write frontier.json,
    frontier.md and frontier.png (PSNR against Gaussians and against SPZ bytes). Reuses the teachers of a `run` in
    the same output folder (or trains them); re-running skips finished models, and never reuses one made under
    other settings."""

    data: Path
    """Scene (as for `run`)."""
    output: Path
    """Output folder; the same as a `run`'s reuses its teachers."""
    settings: tyro.conf.OmitArgPrefixes[FrontierRecipeSettings] = field(default_factory=FrontierRecipeSettings)
    frontier: tyro.conf.OmitArgPrefixes[FrontierSettings] = field(default_factory=FrontierSettings)
    given: tyro.conf.OmitArgPrefixes[GivenOptions] = field(default_factory=GivenOptions)
    """With --teacher or --ply, the contenders start from that model instead of a trained vanilla teacher; --steps
    are then the students'."""

    def main(self) -> None:
        given = self.given.given()
        settings = self.settings if given is None else self.given.settings_for(given, self.settings)
        Frontier(Recipe(self.data, self.output, settings, given), self.frontier).execute()


@dataclass
class CompactSettings(RecipeSettings):
    """The settings of `run` for the student; there is no teacher to train."""

    steps: Optional[int] = None
    """Training steps of the student (default: 30000 on CUDA, 1000 on CPU); all schedules are scaled from their
    30k-step values to this length."""
    student_steps: Optional[int] = None
    """Same as --steps (overrides it)."""
    teachers: tyro.conf.Suppress[Optional[tuple]] = None
    teacher_args: tyro.conf.Suppress[str] = ""
    recipe: tyro.conf.Suppress[StudentRecipe] = "gradual"


@dataclass
class Compact:
    """Make a model you already have small: a splatfacto run or a 3DGS PLY becomes the vanilla teacher, unchanged
    and untrained, and the student is trained from it as `run` trains it. Writes what `run` writes (student.ply,
    .spz, .sog, exports/, report.md); the given model is evaluated on the same held-out views as the student."""

    data: Path
    """The scene the model was trained on (as for `run`)."""
    output: Path
    """Folder for the runs, the student's files and the report."""
    given: tyro.conf.OmitArgPrefixes[GivenOptions] = field(default_factory=GivenOptions)
    settings: tyro.conf.OmitArgPrefixes[CompactSettings] = field(default_factory=CompactSettings)

    def main(self) -> None:
        given = self.given.given()
        if given is None:
            raise DistilledSplatError("give the model to compact: --teacher RUN or --ply MODEL.ply")
        recipe = Recipe(self.data, self.output, self.given.settings_for(given, self.settings), given)
        recipe.execute()
        write_report(recipe)


@dataclass
class Report:
    """Regenerate report.json, report.md and the images of a finished `distilled-splat run` folder."""

    output: tyro.conf.Positional[Path]
    """The folder given as --output to `distilled-splat run`."""

    def main(self) -> None:
        write_report(Recipe.load(self.output))


@dataclass
class Export:
    """Write a trained model (any splatfacto run of nerfstudio, ours included) or a 3DGS PLY as a standard PLY,
    an antimatter15 .splat, a Niantic SPZ (version 2), a PlayCanvas SOG, or a single-file interactive page
    (.html: PlayCanvas's SuperSplat viewer with the splats inside, opening at the run's first held-out camera).
    SOG and .html go through splat-transform, which scripts/setup.sh installs."""

    output: Path
    """File to write; its suffix (.ply, .splat, .spz, .sog, .html) picks the format unless --format is given."""
    load_config: Optional[Path] = None
    """config.yml of a trained run (exported with ns-export gaussian-splat first)."""
    ply: Optional[Path] = None
    """Or: a 3DGS PLY to convert."""
    format: Optional[Format] = None
    """Output format (default: from the output's suffix)."""
    sh_degree: Optional[int] = None
    """Keep view-dependent colour up to this degree (0: base colour only; default: all the model has)."""
    min_opacity: Optional[float] = None
    """Drop Gaussians less opaque than this (each adds at most this much to any pixel); default: keep all."""

    def main(self) -> None:
        fmt = self.format or self.output.suffix.lstrip(".")
        if fmt not in get_args(Format):
            raise DistilledSplatError(
                f"cannot tell the format of {self.output}: use .ply, .splat, .spz, .sog or .html, or --format"
            )
        if (self.load_config is None) == (self.ply is None):
            raise DistilledSplatError("give exactly one of --load-config (a trained run) and --ply (a 3DGS PLY)")
        print(export_compact(self.output, fmt, self.load_config, self.ply, self.sh_degree, self.min_opacity))


def entrypoint() -> None:
    commands = {
        "run": Run, "compact": Compact, "demo": Demo, "frontier": FrontierCommand, "report": Report, "scene": Scene, "export": Export,
    }  # fmt: skip
    tyro.extras.subcommand_cli_from_dict(commands).main()
