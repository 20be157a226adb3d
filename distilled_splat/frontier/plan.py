"""What a frontier trains: its settings, and the models they plan (contender, budget, seed), with the counts and
steps each gets and the teachers they need."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import tyro
from nerfstudio.engine.trainer import TrainerConfig
from typing_extensions import Annotated

from distilled_splat.errors import DistilledSplatError
from distilled_splat.exports import splat_transform
from distilled_splat.frontier.contenders import (
    CONTENDERS,
    DEFAULT_ABLATIONS,
    DEFAULT_METHODS,
    Compute,
    ContenderName,
)
from distilled_splat.recipe import Recipe
from distilled_splat.run_configs import TEACHER_METHODS
from distilled_splat.training import gaussian_count

CHOICES = "; ".join(f"{name}: {contender.description}" for name, contender in CONTENDERS.items())


@dataclass(frozen=True)
class ModelSpec:
    method: str
    budget: float
    seed: int

    @property
    def name(self) -> str:
        return f"{self.method}-b{self.budget:g}-s{self.seed}"


@dataclass
class FrontierSettings:
    """Which contenders, budgets and seeds the frontier trains, and how their compute is matched."""

    budgets: Tuple[float, ...] = (0.05, 0.1, 0.2, 0.4)
    """Budgets as fractions of the vanilla teacher's Gaussian count."""
    methods: Annotated[
        Tuple[ContenderName, ...], tyro.conf.arg(help=f"Contenders trained at every budget: {CHOICES}")
    ] = DEFAULT_METHODS
    ablations: Annotated[
        Tuple[ContenderName, ...], tyro.conf.arg(help="Contenders trained only at --ablation-budgets.")
    ] = DEFAULT_ABLATIONS
    ablation_budgets: Tuple[float, ...] = (0.1, 0.2)
    """Budgets of the ablations (each costs a full training per seed)."""
    seeds: int = 3
    """Seeds per model: --seed, --seed + 1, ...; the tables give mean and spread over them. A contender nothing
    random goes into (decimated) runs once."""
    teacher_started_seeds: Optional[int] = None
    """Seeds for the contenders that start from the trained teacher (the student, PUP, pruning, decimation):
    given the teacher only the order of the views varies, so their spread over seeds is small (README); default:
    --seeds. Contenders from the point cloud always get --seeds."""
    compute: Compute = "total"
    """'total': every contender gets the same total optimisation: one that uses no teacher trains the teacher's
    steps plus the student's. 'own': every trained contender trains the student's steps, whatever it starts from."""
    jobs: int = 1
    """Models trained at once (each in its own process, with an equal share of the CPU threads)."""
    other_settings: bool = False
    """Also list the results this output folder holds from frontiers with other settings, in tables of their own."""

    def check(self) -> None:
        budgets = (*self.budgets, *self.ablation_budgets)
        if any(not 0 < budget <= 1 for budget in budgets):
            raise DistilledSplatError(f"budgets must be fractions in (0, 1], got {' '.join(map(str, budgets))}")
        if (
            self.seeds < 1
            or self.jobs < 1
            or (self.teacher_started_seeds is not None and self.teacher_started_seeds < 1)
        ):
            raise DistilledSplatError("--seeds, --teacher-started-seeds and --jobs must be positive")


@dataclass
class FrontierPlan:
    """The models a frontier's settings ask for, and what each is given."""

    recipe: Recipe
    settings: FrontierSettings = field(default_factory=FrontierSettings)

    def __post_init__(self) -> None:
        self.settings.check()
        self.cached: Dict[Tuple, object] = {}  # fingerprints and counts of files that do not change under a frontier
        self.unavailable: Dict[str, str] = {}
        if splat_transform.find() is None:
            for name, contender in CONTENDERS.items():
                if contender.start == "teacher-ply":
                    self.unavailable[name] = splat_transform.HOW_TO_GET

    def specs(self) -> List[ModelSpec]:
        """Every model this frontier trains, seed by seed (an interrupted frontier has each at least once first)."""
        settings, first, teacher_seed = self.settings, self.recipe.settings.seed, self.teacher_seed()
        specs = []
        for seed in range(first, first + settings.seeds):
            planned = [(m, b) for b in settings.budgets for m in settings.methods]
            planned += [(m, b) for b in settings.ablation_budgets for m in settings.ablations]
            for method, budget in planned:
                contender = CONTENDERS[method]
                if method in self.unavailable or (seed != first and not contender.seed_matters):
                    continue
                few = settings.teacher_started_seeds
                if few is not None and contender.start != "points" and seed >= first + few:
                    continue
                if CONTENDERS[method].start == "teacher-ply" and method != "decimated":
                    specs.append(ModelSpec("decimated", budget, teacher_seed))  # what it starts from
                specs.append(ModelSpec(method, budget, seed if contender.seed_matters else teacher_seed))
        # Decimated teachers first: their fine-tuned contenders start from them.
        return sorted(dict.fromkeys(specs), key=lambda spec: CONTENDERS[spec.method].trains)

    def vanilla_config(self) -> TrainerConfig:
        return self.teacher_config("vanilla")

    def budget_count(self, budget: float) -> int:
        return max(1, round(budget * self.vanilla_count()))

    def vanilla_count(self) -> int:
        return self.once(("vanilla count",), lambda: gaussian_count(self.vanilla_config()))

    def once(self, key: Tuple, compute):
        if key not in self.cached:
            self.cached[key] = compute()
        return self.cached[key]

    def own_and_total_steps(self, method: str) -> Tuple[int, int]:
        return CONTENDERS[method].steps(self.recipe, self.settings.compute)

    def teachers_needed(self) -> List[str]:
        needed = {"vanilla"}
        for spec in self.specs():
            needed |= set(CONTENDERS[spec.method].teachers_used(self.recipe))
        return [name for name in TEACHER_METHODS if name in needed]

    def teacher_config(self, name: str) -> TrainerConfig:
        """The one place a frontier builds a teacher's config (to train it, find its checkpoint, count it; its
        folder, where students find it, does not depend on the seed), under the teachers' seed."""
        config = self.recipe.configs.method_config(name)
        config.machine.seed = self.teacher_seed()
        return config

    def teacher_seed(self) -> int:
        """The seed of the run that trained this folder's teachers (its recipe.json; --seed before there is one,
        which is what this frontier then writes there). --seed only sets the contenders' first seed, so `--seed 43`
        adds seeds on the same teachers, and a model nothing random goes into (a decimated teacher) is made once,
        under this seed."""
        return self.once(("teacher seed",), self.read_teacher_seed)

    def read_teacher_seed(self) -> int:
        if self.recipe.folder.record_path.is_file():
            return Recipe.load(self.recipe.output).settings.seed
        return self.recipe.settings.seed
