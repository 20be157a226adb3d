"""The frontier's contenders, declared as data: what each starts from, whose renders it learns from, how many
steps it trains and which settings make it. The frontier's command line, its tables and the tests read this one
table; a new contender is one entry."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Literal, Tuple

from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.plugins.types import MethodSpecification

from distilled_splat.method_configs import (
    distilled_mcmc,
    distilled_splatfacto,
    distilled_splatfacto_paper,
    distilled_teacher,
    from_teacher,
    without_distillation,
    without_pseudo_views,
)
from distilled_splat.recipe import Recipe
from distilled_splat.run_configs import TeacherName

Start = Literal["teacher", "points", "teacher-ply"]
Distils = Literal["none", "student", "paper", "vanilla"]
OwnSteps = Literal["student", "matched", "none"]
Compute = Literal["total", "own"]
Role = Literal["student", "alternative", "ablation"]

PUP_FIRST_ROUND_KEEP = 0.2
"""PUP-3DGS's first round prunes 80% of the trained model's Gaussians."""


@dataclass(frozen=True)
class Setup:
    """What a contender's settings may depend on beyond the method's config."""

    budget_count: int
    """The budget in Gaussians (the fraction of the vanilla teacher's count, rounded)."""
    decimated_checkpoint: Callable[[], str]
    """Path of the decimated teacher at this budget (the ``decimated`` contender's checkpoint)."""


def no_settings(config: TrainerConfig, setup: Setup) -> None:
    return None


@dataclass(frozen=True)
class Contender:
    name: str
    description: str
    start: Start
    """What the model starts from: the trained vanilla teacher's Gaussians, the scene's point cloud, or the
    teacher's exported PLY."""
    distils: Distils
    """Whose aggregated renders it learns from: nobody, the student's teachers (the recipe's, or --teachers),
    Distilled-3DGS's three, or the vanilla teacher alone."""
    method: MethodSpecification
    """The nerfstudio method it is built from (for ``decimated``, the teacher's: the layout its checkpoint has)."""
    own_steps: OwnSteps
    """'student': the student's steps. 'matched': uses no teacher, so with --compute total it trains the
    teacher's steps and the student's. 'none': not trained."""
    settings: Callable[[TrainerConfig, Setup], None] = no_settings
    """Changes to the method's config that make this contender; applied after --student-args, so they win."""
    role: Role = "alternative"
    """'alternative': a way to a small model the student has to beat; 'student': the student or a variant every
    table shows; 'ablation': trained only at --ablation-budgets."""

    @property
    def trains(self) -> bool:
        return self.own_steps != "none"

    @property
    def seed_matters(self) -> bool:
        """A model nothing random goes into (no training) gives the same result for every seed: one is run."""
        return self.trains

    def teachers(self, recipe: Recipe) -> Tuple[TeacherName, ...]:
        """The teachers whose renders this contender's datamanager serves (the vanilla teacher alone when it
        distils from nobody: the student's start and budget reference)."""
        return {
            "none": ("vanilla",),
            "vanilla": ("vanilla",),
            "student": recipe.configs.teachers("gradual"),
            "paper": recipe.configs.teachers("paper"),
        }[self.distils]

    def teachers_used(self, recipe: Recipe) -> Tuple[TeacherName, ...]:
        """Teachers whose training this contender builds on (its start, or the renders it learns from)."""
        used = set(self.teachers(recipe)) if self.distils != "none" else set()
        if self.start != "points":
            used.add("vanilla")
        return tuple(name for name in ("vanilla", "noise", "dropout") if name in used)

    def steps(self, recipe: Recipe, compute: Compute) -> Tuple[int, int]:
        """(own steps, total steps): total adds the steps of every teacher it builds on."""
        settings = recipe.settings
        own = {
            "none": 0,
            "student": settings.student_steps,
            "matched": settings.student_steps + (settings.steps if compute == "total" else 0),
        }[self.own_steps]
        return own, own + settings.steps * len(self.teachers_used(recipe))


def as_published(config: TrainerConfig) -> None:
    """The settings a published pruning method fine-tunes with, whatever the student's defaults: drop cuts and
    splatfacto's own fine-tuning (no relocation or regularisers)."""
    config.pipeline.model.cut_method = "drop"
    config.pipeline.model.fine_tune = "default"


def one_cut(config: TrainerConfig, setup: Setup) -> None:
    without_distillation(from_teacher(config, budget_cuts=1))
    as_published(config)


def pup_rounds(config: TrainerConfig, setup: Setup) -> None:
    """PUP-3DGS: keep the 20% most sensitive, fine-tune half the run, cut to the budget, fine-tune the rest."""
    without_distillation(from_teacher(config, budget_cuts=2))
    as_published(config)
    config.pipeline.model.importance = "pup-fisher"
    config.pipeline.model.first_cut_keep = PUP_FIRST_ROUND_KEEP


def capped(config: TrainerConfig, setup: Setup) -> None:
    config.pipeline.model.cap_max = setup.budget_count


def from_decimated(config: TrainerConfig, setup: Setup) -> None:
    one_cut(config, setup)  # the decimated model is at the budget already: the cut at step 0 keeps every Gaussian
    config.pipeline.model.start_checkpoint = setup.decimated_checkpoint()


def no_distillation(config: TrainerConfig, setup: Setup) -> None:
    without_distillation(config)


def one_cut_distilled(config: TrainerConfig, setup: Setup) -> None:
    from_teacher(config, budget_cuts=1)


def no_structure(config: TrainerConfig, setup: Setup) -> None:
    config.pipeline.model.structure_weight = 0.0


def no_pseudo_views(config: TrainerConfig, setup: Setup) -> None:
    without_pseudo_views(config)


def paper_no_distill(config: TrainerConfig, setup: Setup) -> None:
    config.pipeline.model.distill_weight = 0.0


CONTENDERS: Dict[str, Contender] = {
    contender.name: contender
    for contender in (
        Contender(
            "student", "the student: distilled-splatfacto with --student-args", "teacher", "student",
            distilled_splatfacto, "student", role="student",
        ),
        Contender(
            "student-paper", "Distilled-3DGS as published: from the point cloud, distilled from three teachers",
            "points", "paper", distilled_splatfacto_paper, "student", role="student",
        ),
        Contender(
            "pup-pruned", "PUP-3DGS: the vanilla teacher pruned by Fisher sensitivity in two rounds (to 20%, then "
            "the budget), fine-tuned after each", "teacher", "none", distilled_splatfacto, "student", pup_rounds,
        ),
        Contender(
            "pruned-finetuned", "LightGaussian: the vanilla teacher cut once to its most important Gaussians "
            "(total blending weight), fine-tuned", "teacher", "none", distilled_splatfacto, "student", one_cut,
        ),
        Contender(
            "capped-mcmc", "splatfacto never above the budget, densifying by relocation (3DGS-MCMC, gsplat's "
            "MCMCStrategy)", "points", "none", distilled_mcmc, "matched", capped,
        ),
        Contender(
            "decimated", "the vanilla teacher's PLY merged down to the budget by splat-transform (NanoGS), no "
            "training", "teacher-ply", "none", distilled_teacher, "none",
        ),
        Contender(
            "decimated-finetuned", "the decimated teacher fine-tuned on the real images (merge instead of drop)",
            "teacher-ply", "none", distilled_splatfacto, "student", from_decimated,
        ),
        Contender(
            "student-no-distill", "the student without distillation, structural loss or pseudo views",
            "teacher", "none", distilled_splatfacto, "student", no_distillation, role="student",
        ),
        Contender(
            "student-one-cut", "the student cut to the budget at once, before the first step", "teacher",
            "student", distilled_splatfacto, "student", one_cut_distilled, role="ablation",
        ),
        Contender(
            "student-no-structure", "the student without the structural loss", "teacher", "student",
            distilled_splatfacto, "student", no_structure, role="ablation",
        ),
        Contender(
            "student-no-pseudo", "the student distilled at the training views only (no pseudo views)",
            "teacher", "student", distilled_splatfacto, "student", no_pseudo_views, role="ablation",
        ),
        Contender(
            "paper-no-distill", "Distilled-3DGS without the distillation term", "points", "paper",
            distilled_splatfacto_paper, "student", paper_no_distill, role="ablation",
        ),
        Contender(
            "paper-no-structure", "Distilled-3DGS without the structural loss", "points", "paper",
            distilled_splatfacto_paper, "student", no_structure, role="ablation",
        ),
        Contender(
            "paper-vanilla-teacher", "Distilled-3DGS distilled from the vanilla teacher alone", "points",
            "vanilla", distilled_splatfacto_paper, "student",
            role="ablation",
        ),
    )
}  # fmt: skip

ContenderName = Literal[tuple(CONTENDERS)]  # type: ignore[valid-type]
"""The names of CONTENDERS, as command-line choices."""
ALTERNATIVES = tuple(name for name, contender in CONTENDERS.items() if contender.role == "alternative")
"""The ways to a small model that are not the student: what the student has to beat."""
DEFAULT_METHODS = tuple(name for name, contender in CONTENDERS.items() if contender.role != "ablation")
DEFAULT_ABLATIONS: Tuple[str, ...] = ()


def markdown_table() -> str:
    """The contenders as the README and frontier.md list them."""
    own = {"student": "the student's", "matched": "teacher's + student's", "none": "none (not trained)"}
    lines = [
        "| contender | starts from | learns from the renders of | own steps | role | what it is |",
        "|---|---|---|---|---|---|",
    ]
    for name, contender in CONTENDERS.items():
        lines.append(
            f"| `{name}` | {contender.start} | {contender.distils} | {own[contender.own_steps]} | {contender.role} "
            f"| {contender.description} |"
        )
    return "\n".join(lines)
