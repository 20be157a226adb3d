"""The budget-quality frontier: the student against the strongest ways to get a small splat model, at the same
Gaussian count, on the same scene and held-out views, at matched total optimisation, over several seeds.

Every model is an ordinary nerfstudio run under OUTPUT/runs/frontier and its result a small JSON file under
OUTPUT/frontier/models, written when its evaluation is done: re-running skips finished models and resumes
interrupted trainings. Both are named by a fingerprint of everything that decides the model (scene, teacher
checkpoints, its config after scaling, steps, seed), so a frontier with other settings never reuses a result or
resumes a run made under different ones.
"""

from __future__ import annotations

import copy
import json
import os
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
import tyro
from nerfstudio.engine.trainer import TrainerConfig
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from typing_extensions import Annotated

from distilled_splat.data.distilled_datamanager import DistilledDatamanagerConfig
from distilled_splat.decimation import decimate_gaussians, gaussians_from_ply
from distilled_splat.errors import DistilledSplatError
from distilled_splat.exports import splat_transform
from distilled_splat.exports.exporters import read_3dgs_ply
from distilled_splat.exports.writer import export_compact
from distilled_splat.files import write_atomically
from distilled_splat.fingerprints import combined_fingerprint, fingerprint_parts
from distilled_splat.frontier.contenders import (
    CONTENDERS,
    DEFAULT_ABLATIONS,
    DEFAULT_METHODS,
    Compute,
    ContenderName,
    Setup,
)
from distilled_splat.frontier.report import summarise, write_frontier
from distilled_splat.recipe import TEACHER_METHODS, Recipe
from distilled_splat.teachers import fingerprint as file_fingerprint
from distilled_splat.training import (
    evaluate,
    export_ply,
    gaussian_count,
    is_trained,
    last_step_checkpoint,
    refuse_other_settings,
    train,
)

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
class Frontier:
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

    @property
    def folder(self) -> Path:
        return self.recipe.output / "frontier"

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

    def base_config(self, spec: ModelSpec) -> TrainerConfig:
        """The contender's config for this budget and seed, before it is given its run folder."""
        contender, recipe = CONTENDERS[spec.method], self.recipe
        if not contender.trains:
            config = copy.deepcopy(self.vanilla_config())  # a decimated teacher is stored as the teacher's runs are
        else:
            config = recipe.run_config(contender.method.config, self.own_and_total_steps(spec.method)[0])
            if isinstance(config.pipeline.datamanager, DistilledDatamanagerConfig):
                try:
                    config = recipe.with_args(config, recipe.settings.student_args)
                except DistilledSplatError as error:
                    raise DistilledSplatError(f"--student-args do not fit contender {spec.method}: {error}") from error
                teachers = contender.teachers(recipe)
                datamanager = config.pipeline.datamanager
                datamanager.teachers = tuple(recipe.teacher_config_path(name) for name in teachers)
                datamanager.teacher_cache_dir = recipe.runs / "frontier" / "teacher-cache" / "+".join(teachers)
                config.pipeline.model.target_fraction, config.pipeline.model.target_gaussians = spec.budget, None
        setup = Setup(self.budget_count(spec.budget), lambda: str(self.decimated_checkpoint(spec.budget)))
        contender.settings(config, setup)
        config.output_dir = recipe.runs
        config.experiment_name = "frontier"
        config.machine.seed = spec.seed if contender.seed_matters else self.teacher_seed()
        return config

    def decimated_checkpoint(self, budget: float) -> Path:
        return last_step_checkpoint(self.model_config(ModelSpec("decimated", budget, self.teacher_seed())))

    def fingerprint(self, spec: ModelSpec) -> str:
        """sha256 of everything that decides the model: its config after scaling (paths inside the output folder
        and the scene written relative to them), the scene's files, the checkpoints of the teachers it uses, its
        seed (in the config), and splat-transform's version where it decimates."""
        return self.once(("fingerprint", spec), lambda: self.compute_fingerprint(spec))

    def compute_fingerprint(self, spec: ModelSpec) -> str:
        config, contender = self.base_config(spec), CONTENDERS[spec.method]
        extra = {
            "teachers": {name: self.teacher_fingerprint(name) for name in contender.teachers_used(self.recipe)},
            "splat_transform": splat_transform.installed_version() if contender.start == "teacher-ply" else None,
            # A model made without training has nothing in its config that tells its budget.
            **({} if contender.trains else {"decimated_to": self.budget_count(spec.budget)}),
            # cut-method auto merges only where splat-transform is installed.
            **(
                {"merges": splat_transform.find() is not None}
                if getattr(config.pipeline.model, "cut_method", None) == "auto"
                else {}
            ),
        }
        return combined_fingerprint(fingerprint_parts(config), extra)

    def fingerprint_if_buildable(self, spec: ModelSpec) -> Optional[str]:
        """The fingerprint, or None for a contender these settings cannot build (--student-args that do not fit
        it): its stored results were made under other settings."""
        try:
            return self.fingerprint(spec)
        except DistilledSplatError:
            return None

    def teacher_fingerprint(self, name: str) -> str:
        return self.once(("teacher", name), lambda: file_fingerprint(last_step_checkpoint(self.teacher_config(name))))

    def stem(self, spec: ModelSpec) -> str:
        """The model's name and the start of its fingerprint: its run folder and result file are named so."""
        return f"{spec.name}-{self.fingerprint(spec)[:12]}"

    def model_config(self, spec: ModelSpec) -> TrainerConfig:
        config = self.base_config(spec)
        config.timestamp = self.stem(spec)
        return config

    def result_path(self, spec: ModelSpec) -> Path:
        return self.folder / "models" / f"{self.stem(spec)}.json"

    def settings_record(self) -> Dict:
        """The frontier-wide settings a result was made under (what its table states once)."""
        settings = self.recipe.settings
        return {
            "data": str(self.recipe.data.resolve()), "teacher_steps": settings.steps,
            "student_steps": settings.student_steps, "compute": self.settings.compute, "device": settings.device,
            "downscale": settings.downscale, "teachers": list(self.recipe.teachers("gradual")),
            "student_args": settings.student_args, "teacher_args": settings.teacher_args,
        }  # fmt: skip

    def teachers_needed(self) -> List[str]:
        needed = {"vanilla"}
        for spec in self.specs():
            needed |= set(CONTENDERS[spec.method].teachers_used(self.recipe))
        return [name for name in TEACHER_METHODS if name in needed]

    def teacher_config(self, name: str) -> TrainerConfig:
        """The one place a frontier builds a teacher's config (to train it, find its checkpoint, count it; its
        folder, where students find it, does not depend on the seed), under the teachers' seed."""
        config = self.recipe.method_config(name)
        config.machine.seed = self.teacher_seed()
        return config

    def teacher_seed(self) -> int:
        """The seed of the run that trained this folder's teachers (its recipe.json; --seed before there is one,
        which is what this frontier then writes there). --seed only sets the contenders' first seed, so `--seed 43`
        adds seeds on the same teachers, and a model nothing random goes into (a decimated teacher) is made once,
        under this seed."""
        return self.once(("teacher seed",), self.read_teacher_seed)

    def read_teacher_seed(self) -> int:
        if (self.recipe.output / "recipe.json").is_file():
            return Recipe.load(self.recipe.output).settings.seed
        return self.recipe.settings.seed

    def train_teachers(self, progress: Progress) -> None:
        for name in self.teachers_needed():
            config = self.teacher_config(name)
            refuse_other_settings(config)
            if is_trained(config):
                progress.console.print(f"reusing the {name} teacher: {config.get_base_dir()}")
            else:
                self.recipe.train_stage(name, config, progress)

    def execute(self) -> List[Dict]:
        if not (self.recipe.output / "recipe.json").is_file():  # a run's record stays the run's
            self.recipe.save()
        with Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn(),
        ) as progress:  # fmt: skip
            self.train_teachers(progress)
            for name, reason in self.unavailable.items():
                if name in (*self.settings.methods, *self.settings.ablations):
                    progress.console.print(f"[yellow]{name}: not available ({reason})")
            specs = self.specs()
            pending = [spec for spec in specs if not self.result_path(spec).is_file()]
            done = len(specs) - len(pending)
            if done:
                progress.console.print(f"reusing {done} finished frontier models from {self.folder / 'models'}")
            overall = progress.add_task("frontier", total=len(specs), completed=done)
            if self.settings.jobs == 1:
                for spec in pending:
                    self.train_and_evaluate(spec, progress)
                    self.finished(progress, overall)
            else:
                self.run_parallel(pending, progress, overall)
        current, other = self.rows()
        print(write_frontier(self.record(current, other), self.recipe.output))
        return current

    def finished(self, progress: Progress, overall) -> None:
        """After each model: the tables and plot cover what is finished so far, so an interrupted frontier has them."""
        progress.advance(overall)
        write_frontier(self.record(*self.rows()), self.recipe.output)

    def record(self, rows: List[Dict], other_rows: List[Dict]) -> Dict:
        """What frontier.json holds for ``rows`` (and ``other_rows``, made under other settings, where asked for):
        everything its tables and plot are made from."""
        record = {
            "settings": self.settings_record(),
            "frontier": {name: getattr(self.settings, name) for name in self.settings.__dataclass_fields__},
            "vanilla_teacher": self.vanilla_result(),
            # The plan of the command that wrote this file; "rows" holds every model of these settings the folder
            # has, whichever command made it.
            "this_command": {"models_planned": len(self.specs()), "models_finished": self.finished_count()},
            "rows_count": len(rows),
            "unavailable": self.unavailable,
            "rows": rows,
            "summary": summarise(rows),
        }
        if self.settings.other_settings:
            record["other_rows"] = other_rows
        return record

    def vanilla_result(self) -> Dict:
        """The vanilla teacher's count, held-out metrics and SPZ size (evaluated and exported once)."""
        config = self.vanilla_config()
        config_path = config.get_base_dir() / "config.yml"
        evaluation = self.folder / "evals" / "vanilla.json"
        metrics = (
            json.loads(evaluation.read_text())["results"] if evaluation.is_file() else evaluate(config_path, evaluation)
        )
        spz = self.folder / "exports" / "vanilla.spz"
        if not spz.is_file():
            export_compact(spz, "spz", load_config=config_path)
        return {
            "num_gaussians": gaussian_count(config), "psnr": metrics["psnr"], "ssim": metrics["ssim"],
            "spz_bytes": spz.stat().st_size,
        }  # fmt: skip

    def run_parallel(self, pending: List[ModelSpec], progress: Progress, overall) -> None:
        # Decimations, and the first model of each teacher cache, run here alone; the others then only read them.
        first: Dict[str, ModelSpec] = {}
        for spec in pending:
            datamanager = self.model_config(spec).pipeline.datamanager
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
                decimate_run(self.vanilla_config(), self.budget_count(spec.budget), config)
            return
        if progress is None:
            train(config)
            return
        task = progress.add_task(f"training {spec.name}", total=config.max_num_iterations)
        train(config, on_step=lambda step: progress.update(task, completed=step + 1))
        progress.remove_task(task)

    def train_and_evaluate(self, spec: ModelSpec, progress: Optional[Progress] = None) -> Dict:
        config = self.model_config(spec)
        stem = config.timestamp
        started = time.perf_counter()
        seconds_before = self.read_result_seconds(stem)
        self.produce(spec, config, progress)
        seconds = seconds_before + time.perf_counter() - started
        write_atomically(self.seconds_path(stem), lambda path: path.write_text(f"{seconds}"))
        config_path = config.get_base_dir() / "config.yml"
        metrics = evaluate(config_path, self.folder / "evals" / f"{stem}.json")
        spz = export_compact(self.folder / "exports" / f"{stem}.spz", "spz", load_config=config_path)
        contender = CONTENDERS[spec.method]
        own_steps, total_steps = self.own_and_total_steps(spec.method)
        teachers_used = contender.teachers_used(self.recipe)
        teacher_seconds = self.recipe.read_timings()
        row = {
            "method": spec.method, "budget": spec.budget, "seed": spec.seed, "fingerprint": self.fingerprint(spec),
            "settings": self.settings_record(), "start": contender.start, "teachers_used": list(teachers_used),
            "num_gaussians": gaussian_count(config), "psnr": metrics["psnr"], "ssim": metrics["ssim"],
            "lpips": metrics.get("lpips"), "spz_bytes": (self.folder / "exports" / f"{stem}.spz").stat().st_size,
            "own_steps": own_steps, "total_steps": total_steps, "train_seconds": round(seconds, 2),
            "train_seconds_total": round(seconds + sum(teacher_seconds[name] for name in teachers_used), 2)
            if all(name in teacher_seconds for name in teachers_used) else None,
        }  # fmt: skip
        write_atomically(self.result_path(spec), lambda path: path.write_text(json.dumps(row, indent=1)))
        if progress is not None:
            progress.console.print(f"{spec.name}: {row['num_gaussians']} Gaussians, {row['psnr']:.2f} dB; {spz}")
        return row

    def seconds_path(self, stem: str) -> Path:
        return self.folder / "models" / f"{stem}.train-seconds"

    def read_result_seconds(self, stem: str) -> float:
        """Training time spent before an interruption (the model resumes; its time adds up)."""
        try:
            return float(self.seconds_path(stem).read_text())
        except (OSError, ValueError):
            return 0.0

    def rows(self) -> Tuple[List[Dict], List[Dict]]:
        """(current, other): the results in this output folder made under this frontier's settings (its own and
        earlier frontiers' with more seeds or budgets), and the rest, made under other settings."""
        current, other = [], []
        for path in sorted((self.folder / "models").glob("*.json")):
            row = json.loads(path.read_text())
            spec = ModelSpec(row["method"], row["budget"], row["seed"])
            belongs = row["method"] in CONTENDERS and row.get("fingerprint") == self.fingerprint_if_buildable(spec)
            (current if belongs else other).append(row)
        key = lambda row: (row["budget"], row["method"], row["seed"])  # noqa: E731
        return sorted(current, key=key), sorted(other, key=key)

    def finished_count(self) -> int:
        return sum(1 for spec in self.specs() if self.result_path(spec).is_file())


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
    log = frontier.folder / "logs" / f"{spec.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as handle:
        os.dup2(handle.fileno(), 1)
        os.dup2(handle.fileno(), 2)
    return frontier.train_and_evaluate(spec)
