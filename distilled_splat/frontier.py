"""The budget-quality frontier: the student against the obvious ways to get a small splat model, at the same
Gaussian count, same scene, same steps, several seeds, in one run.

Every model is an ordinary nerfstudio run under OUTPUT/runs/frontier and its result a small JSON file under
OUTPUT/frontier/models, written when its evaluation is done: re-running skips finished models and resumes
interrupted trainings from their checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Dict, List, Literal, Optional, Tuple

from nerfstudio.engine.trainer import TrainerConfig
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from distilled_splat.errors import DistilledSplatError
from distilled_splat.method_configs import distilled_mcmc, distilled_splatfacto_paper, from_teacher
from distilled_splat.recipe import TEACHER_METHODS, Recipe
from distilled_splat.training import evaluate, gaussian_count, is_trained, train, write_atomically

FrontierMethod = Literal[
    "student",
    "student-paper",
    "pruned-finetuned",
    "capped-mcmc",
    "student-no-distill",
    "student-no-structure",
    "student-vanilla-teacher",
    "student-one-cut",
    "student-distilled",
]
METHOD_HELP = {
    "student": "the student as `run` trains it (its --recipe)",
    "student-paper": "the student of --recipe paper: Distilled-3DGS as published",
    "pruned-finetuned": "vanilla teacher importance-pruned to the budget, fine-tuned on the real images (LightGaussian)",
    "capped-mcmc": "splatfacto never above the budget, densifying by relocation (3DGS-MCMC, gsplat's MCMCStrategy)",
    "student-no-distill": "the student without the distillation term",
    "student-no-structure": "the student without the structural loss",
    "student-vanilla-teacher": "the student distilled from the vanilla teacher alone",
    "student-one-cut": "a student started from the teacher, cut to the budget at once instead of gradually",
    "student-distilled": "the student plus --recipe paper's distillation (from its three teachers) and structural loss",
}
ALTERNATIVES = ("pruned-finetuned", "capped-mcmc")
"""The ways to a small model that are not the student: what the student has to beat."""
PAPER_TEACHER_METHODS = ("student-paper", "student-distilled")
"""Methods that distil from --recipe paper's teachers, whatever the run's recipe."""


@dataclass(frozen=True)
class ModelSpec:
    method: FrontierMethod
    budget: float
    seed: int

    @property
    def name(self) -> str:
        return f"{self.method}-b{self.budget:g}-s{self.seed}"


@dataclass
class FrontierSettings:
    """Which methods, budgets and seeds the frontier trains."""

    budgets: Tuple[float, ...] = (0.05, 0.1, 0.2, 0.4)
    """Budgets as fractions of the vanilla teacher's Gaussian count."""
    methods: Tuple[FrontierMethod, ...] = ("student", "student-paper", "pruned-finetuned", "capped-mcmc")
    """Methods trained at every budget."""
    ablations: Tuple[FrontierMethod, ...] = ("student-distilled",)
    """Methods trained only at --ablation-budgets."""
    ablation_budgets: Tuple[float, ...] = (0.1, 0.2)
    """Budgets of the ablations (each costs a full training per seed)."""
    seeds: int = 3
    """Seeds per model: --seed, --seed + 1, ...; the tables give mean and spread over them."""
    jobs: int = 1
    """Models trained at once (each in its own process, with an equal share of the CPU threads)."""

    def check(self) -> None:
        budgets = (*self.budgets, *self.ablation_budgets)
        if any(not 0 < budget <= 1 for budget in budgets):
            raise DistilledSplatError(f"budgets must be fractions in (0, 1], got {' '.join(map(str, budgets))}")
        if self.seeds < 1 or self.jobs < 1:
            raise DistilledSplatError("--seeds and --jobs must be positive")


@dataclass
class Frontier:
    recipe: Recipe
    settings: FrontierSettings = field(default_factory=FrontierSettings)

    def __post_init__(self) -> None:
        self.settings.check()

    @property
    def folder(self) -> Path:
        return self.recipe.output / "frontier"

    def specs(self) -> List[ModelSpec]:
        settings, first = self.settings, self.recipe.settings.seed
        seeds = range(first, first + settings.seeds)
        # Seed by seed, so that an interrupted frontier has every model at least once before any twice.
        specs = []
        for seed in seeds:
            specs += [ModelSpec(m, b, seed) for b in settings.budgets for m in settings.methods]
            specs += [ModelSpec(m, b, seed) for b in settings.ablation_budgets for m in settings.ablations]
        return list(dict.fromkeys(specs))

    def result_path(self, spec: ModelSpec) -> Path:
        return self.folder / "models" / f"{spec.name}.json"

    def vanilla_config(self) -> TrainerConfig:
        return self.recipe.method_config("vanilla")

    def model_config(self, spec: ModelSpec) -> TrainerConfig:
        recipe = self.recipe
        steps = recipe.settings.student_steps or recipe.settings.steps
        if spec.method == "capped-mcmc":
            config = recipe.run_config(distilled_mcmc.config, steps)
            config.pipeline.model.cap_max = max(1, round(spec.budget * gaussian_count(self.vanilla_config())))
        else:
            config = recipe.student_config("paper" if spec.method == "student-paper" else recipe.settings.recipe)
            model, datamanager = config.pipeline.model, config.pipeline.datamanager
            model.target_fraction, model.target_gaussians = spec.budget, None
            if spec.method == "student-vanilla-teacher":
                teachers = ("vanilla",)
            else:
                teachers = recipe.teachers("paper" if spec.method in PAPER_TEACHER_METHODS else None)
            datamanager.teachers = tuple(recipe.teacher_config_path(name) for name in teachers)
            datamanager.teacher_cache_dir = self.recipe.runs / "frontier" / "teacher-cache" / "+".join(teachers)
            if spec.method == "student-distilled":
                paper = distilled_splatfacto_paper.config.pipeline.model
                model.distill_weight, model.structure_weight = paper.distill_weight, paper.structure_weight
            if spec.method == "student-no-distill":
                model.distill_weight = 0.0
            if spec.method == "student-no-structure":
                model.structure_weight = 0.0
            if spec.method in ("student-one-cut", "pruned-finetuned"):
                from_teacher(config, budget_cuts=1)
            if spec.method == "pruned-finetuned":
                model.distill_weight, model.structure_weight = 0.0, 0.0
        config.output_dir = self.recipe.runs
        config.experiment_name = "frontier"
        config.timestamp = spec.name
        config.machine.seed = spec.seed
        return config

    def train_teachers(self, progress: Progress) -> None:
        needed = set(self.recipe.teachers())
        if any(spec.method in PAPER_TEACHER_METHODS for spec in self.specs()):
            needed |= set(self.recipe.teachers("paper"))
        for name in [name for name in TEACHER_METHODS if name in needed]:
            config = self.recipe.method_config(name)
            if is_trained(config):
                progress.console.print(f"reusing the {name} teacher: {config.get_base_dir()}")
            else:
                self.recipe.train_stage(name, config, progress)

    def execute(self) -> List[Dict]:
        recipe = self.recipe
        recipe.save()
        specs = self.specs()
        pending = [spec for spec in specs if not self.result_path(spec).is_file()]
        with Progress(
            TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TimeRemainingColumn(),
        ) as progress:  # fmt: skip
            self.train_teachers(progress)
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
        rows = self.rows()
        print(write_frontier(self, rows))
        return rows

    def finished(self, progress: Progress, overall) -> None:
        """After each model: the tables and plot cover what is finished so far, so an interrupted frontier has them."""
        progress.advance(overall)
        write_frontier(self, self.rows())

    def run_parallel(self, pending: List[ModelSpec], progress: Progress, overall) -> None:
        # The first model of each teacher set builds its cache alone; the others then only read it.
        caches: Dict[str, ModelSpec] = {}
        for spec in pending:
            if spec.method != "capped-mcmc":
                caches.setdefault(str(self.model_config(spec).pipeline.datamanager.teacher_cache_dir), spec)
        for spec in caches.values():
            self.train_and_evaluate(spec, progress)
            self.finished(progress, overall)
        rest = [spec for spec in pending if spec not in caches.values()]
        with ProcessPoolExecutor(self.settings.jobs, mp_context=get_context("spawn")) as pool:
            futures = {pool.submit(train_in_worker, self, spec, self.settings.jobs): spec for spec in rest}
            for future in as_completed(futures):
                row = future.result()
                progress.console.print(
                    f"{futures[future].name}: {row['num_gaussians']} Gaussians, {row['psnr']:.2f} dB"
                )
                self.finished(progress, overall)

    def train_and_evaluate(self, spec: ModelSpec, progress: Optional[Progress] = None) -> Dict:
        config = self.model_config(spec)
        started = time.perf_counter()
        seconds_before = self.read_result_seconds(spec)
        if progress is not None:
            task = progress.add_task(f"training {spec.name}", total=config.max_num_iterations)
            train(config, on_step=lambda step: progress.update(task, completed=step + 1))
            progress.remove_task(task)
        else:
            train(config)
        trained = time.perf_counter() - started
        partial = self.folder / "models" / f"{spec.name}.train-seconds"
        total_seconds = seconds_before + trained
        write_atomically(partial, lambda path: path.write_text(f"{total_seconds}"))
        metrics = evaluate(config.get_base_dir() / "config.yml", self.folder / "evals" / f"{spec.name}.json")
        row = {
            "method": spec.method,
            "budget": spec.budget,
            "seed": spec.seed,
            "num_gaussians": gaussian_count(config),
            "psnr": metrics["psnr"],
            "ssim": metrics["ssim"],
            "lpips": metrics.get("lpips"),
            "train_seconds": round(total_seconds, 2),
        }
        write_atomically(self.result_path(spec), lambda path: path.write_text(json.dumps(row, indent=1)))
        if progress is not None:
            progress.console.print(f"{spec.name}: {row['num_gaussians']} Gaussians, {row['psnr']:.2f} dB")
        return row

    def read_result_seconds(self, spec: ModelSpec) -> float:
        """Training time spent before an interruption (the model resumes; its time adds up)."""
        try:
            return float((self.folder / "models" / f"{spec.name}.train-seconds").read_text())
        except (OSError, ValueError):
            return 0.0

    def rows(self) -> List[Dict]:
        """Results of every model finished in this output folder: this frontier's and those of earlier frontiers
        there (so that, say, three seeds at two budgets and one at the others make one table)."""
        rows = [json.loads(path.read_text()) for path in (self.folder / "models").glob("*.json")]
        return sorted(rows, key=lambda row: (row["budget"], row["method"], row["seed"]))

    def finished_count(self) -> int:
        return sum(1 for spec in self.specs() if self.result_path(spec).is_file())


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


def mean_and_spread(values: List[float]) -> Tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value)."""
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(rows: List[Dict]) -> List[Dict]:
    """Mean and spread per method and budget, ordered by budget, then method."""
    groups: Dict[Tuple[str, float], List[Dict]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["budget"]), []).append(row)
    summary = []
    for (method, budget), group in sorted(groups.items(), key=lambda item: (item[0][1], item[0][0])):
        psnr, psnr_std = mean_and_spread([row["psnr"] for row in group])
        ssim, ssim_std = mean_and_spread([row["ssim"] for row in group])
        summary.append(
            {
                "method": method, "budget": budget, "seeds": len(group),
                "num_gaussians": round(statistics.fmean(row["num_gaussians"] for row in group)),
                "psnr": round(psnr, 3), "psnr_std": round(psnr_std, 3),
                "ssim": round(ssim, 4), "ssim_std": round(ssim_std, 4),
                "train_seconds": round(statistics.fmean(row["train_seconds"] for row in group), 1),
            }
        )  # fmt: skip
    return summary


def markdown(frontier: Frontier, summary: List[Dict], vanilla: Dict) -> str:
    settings = frontier.recipe.settings
    lines = [
        f"# Frontier: {frontier.recipe.data}",
        "",
        f"{settings.student_steps or settings.steps} steps per model on {settings.device}; "
        f"vanilla teacher: {vanilla['num_gaussians']:,} Gaussians, {vanilla['psnr']:.2f} dB, SSIM {vanilla['ssim']:.4f}. "
        "PSNR and SSIM on the held-out views: mean ± sample standard deviation over seeds.",
        "",
        "| budget | method | seeds | Gaussians | PSNR | SSIM | train s |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in summary:
        lines.append(
            f"| {row['budget']:g} | {row['method']} | {row['seeds']} | {row['num_gaussians']:,} | "
            f"{row['psnr']:.2f} ± {row['psnr_std']:.2f} | {row['ssim']:.4f} ± {row['ssim_std']:.4f} | "
            f"{row['train_seconds']:.0f} |"
        )
    lines += ["", "## Best at each budget", ""]
    for budget in sorted({row["budget"] for row in summary}):
        ranked = sorted((row for row in summary if row["budget"] == budget), key=lambda row: -row["psnr"])
        best = ranked[0]
        if len(ranked) == 1:
            lines.append(f"- {budget:g}: {best['method']} (alone)")
            continue
        second = ranked[1]
        lead = best["psnr"] - second["psnr"]
        if min(best["seeds"], second["seeds"]) < 2:
            lines.append(
                f"- {budget:g}: {best['method']} leads {second['method']} by {lead:.2f} dB (one seed: no spread)"
            )
            continue
        beyond = lead > best["psnr_std"] + second["psnr_std"]
        lines.append(
            f"- {budget:g}: {best['method']} leads {second['method']} by {lead:.2f} dB "
            f"({'beyond' if beyond else 'within'} the spread of {best['psnr_std'] + second['psnr_std']:.2f})"
        )
    lines += ["", "## The student against the best alternative", ""]
    for budget in sorted({row["budget"] for row in summary}):
        student = next((row for row in summary if row["budget"] == budget and row["method"] == "student"), None)
        others = [row for row in summary if row["budget"] == budget and row["method"] in ALTERNATIVES]
        if student is None or not others:
            continue
        best = max(others, key=lambda row: row["psnr"])
        lead, spread = student["psnr"] - best["psnr"], student["psnr_std"] + best["psnr_std"]
        verdict = "one seed: no spread" if min(student["seeds"], best["seeds"]) < 2 else (
            f"{'beyond' if abs(lead) > spread else 'within'} the spread of {spread:.2f}"
        )  # fmt: skip
        lines.append(
            f"- {budget:g}: student {lead:+.2f} dB against {best['method']} ({verdict}); SSIM "
            f"{student['ssim'] - best['ssim']:+.4f}; {student['num_gaussians']:,} against {best['num_gaussians']:,} Gaussians"
        )
    lines += ["", "## Methods", ""] + [f"- `{name}`: {text}" for name, text in METHOD_HELP.items()]
    return "\n".join(lines) + "\n"


def plot(summary: List[Dict], vanilla: Dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from distilled_splat.report import save_psnr_plot

    figure, axes = plt.subplots(figsize=(6.5, 4))
    for method in dict.fromkeys(row["method"] for row in summary):
        points = sorted((row for row in summary if row["method"] == method), key=lambda row: row["num_gaussians"])
        axes.errorbar(
            [row["num_gaussians"] for row in points], [row["psnr"] for row in points],
            yerr=[row["psnr_std"] for row in points], marker="o", markersize=4, capsize=3, label=method,
        )  # fmt: skip
    axes.scatter(vanilla["num_gaussians"], vanilla["psnr"], s=120, marker="*", color="black", label="vanilla teacher")
    axes.legend(loc="lower right", fontsize="x-small")
    save_psnr_plot(figure, axes, path)


def write_frontier(frontier: Frontier, rows: List[Dict]) -> str:
    """Write frontier.json, frontier.md and frontier.png for ``rows``; returns the markdown."""
    vanilla_config = frontier.vanilla_config()
    vanilla_eval = frontier.folder / "evals" / "vanilla.json"
    metrics = (
        json.loads(vanilla_eval.read_text())["results"]
        if vanilla_eval.is_file()
        else evaluate(vanilla_config.get_base_dir() / "config.yml", vanilla_eval)
    )
    vanilla = {"num_gaussians": gaussian_count(vanilla_config), "psnr": metrics["psnr"], "ssim": metrics["ssim"]}
    summary = summarise(rows)
    record = {
        "data": str(frontier.recipe.data.resolve()),
        "settings": {**dataclasses.asdict(frontier.recipe.settings), **dataclasses.asdict(frontier.settings)},
        "vanilla_teacher": vanilla,
        "models_planned": len(frontier.specs()),
        "models_finished": frontier.finished_count(),
        "rows": rows,
        "summary": summary,
    }
    folder = frontier.recipe.output
    write_atomically(folder / "frontier.json", lambda path: path.write_text(json.dumps(record, indent=1)))
    write_atomically(folder / "frontier.md", lambda path: path.write_text(markdown(frontier, summary, vanilla)))
    plot(summary, vanilla, folder / "frontier.png")
    return markdown(frontier, summary, vanilla)
