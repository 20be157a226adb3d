"""The frontier: every contender builds the config it declares, the post-hoc contenders start from exactly what
they claim (the pruned teacher, PUP's two rounds, the decimated teacher), results made under other settings
never mix, a killed frontier resumes, and the tables give mean and spread over seeds."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
from nerfstudio.engine.callbacks import TrainingCallbackAttributes
from plyfile import PlyData
from rich.progress import Progress

from distilled_splat.errors import DistilledSplatError
from distilled_splat.exports import splat_transform
from distilled_splat.frontier.contenders import CONTENDERS, DEFAULT_METHODS, markdown_table
from distilled_splat.frontier.frontier import Frontier, FrontierSettings, ModelSpec
from distilled_splat.frontier.report import summarise, table
from distilled_splat.importance import scene_importance
from distilled_splat.recipe import Recipe
from distilled_splat.run_configs import RecipeSettings
from distilled_splat.teachers import load_gaussians
from distilled_splat.training import export_ply, gaussian_count, last_step_checkpoint
from tests.conftest import BIN, built_once, required_tool
from tests.helpers import setup_pipeline, spy_on_growth, train_steps

STEPS = 40


@pytest.fixture(scope="module")
def frontier(tiny_scene, tmp_path_factory) -> Frontier:
    """A frontier on the tiny scene with its three teachers trained (40 steps each)."""

    def with_teachers(output):
        recipe = Recipe(tiny_scene, output, RecipeSettings(steps=STEPS, device="cpu"))
        made = Frontier(recipe, FrontierSettings(methods=tuple(CONTENDERS), budgets=(0.25,), seeds=1))
        with Progress(disable=True) as progress:
            made.train_teachers(progress)
        return made

    # Built once; every pytest-xdist worker then makes its own Frontier on that folder, which finds them trained.
    return with_teachers(built_once(tmp_path_factory, "frontier", lambda output: with_teachers(output).recipe.output))


def pipeline_of(frontier: Frontier, method: str, budget: float = 0.25, **model_settings):
    """The contender's training pipeline as the frontier configures it, ready for its first step."""
    config = frontier.configs.model_config(ModelSpec(method, budget, 42))
    for name, value in model_settings.items():
        setattr(config.pipeline.model, name, value)
    pipeline, optimizers = setup_pipeline(config)
    attributes = TrainingCallbackAttributes(optimizers=optimizers, grad_scaler=None, pipeline=pipeline, trainer=None)
    pipeline.get_training_callbacks(attributes)  # as the trainer does before its first step
    return config, pipeline, optimizers


CUTS_8 = (0, 3, 6, 9, 11, 14, 17, 20)
"""Eight cuts evenly over the first half of a 40-step run."""
NO_PSEUDO = (0, 0.0, "replace", ("interpolated", "jittered"))
PSEUDO = (64, 0.2, "add", ("interpolated",))
# What each contender's settings make of its method, at 40 teacher and 40 student steps: (cut steps, cut method,
# importance, first cut keep, distill weight, structure weight, (pseudo views, share, mode, families), cap, SH degree,
# densification stop). This is what each contender is (PUP's two Fisher rounds to 20% then the budget,
# LightGaussian's single cut, ...); where it starts, whom it learns from and how long it trains are checked against
# its declaration in CONTENDERS by the rules of the test below, not restated here.
MADE_OF = {
    "student": (CUTS_8, "auto", "blend-weight", None, 0.0, 0.03, PSEUDO, None, 3, 0),
    "student-paper": ((0,), "drop", "blend-weight", None, 0.4, 1.0, NO_PSEUDO, None, 3, 20),
    "pup-pruned": ((0, 20), "drop", "pup-fisher", 0.2, 0.0, 0.0, NO_PSEUDO, None, 3, 0),
    "pruned-finetuned": ((0,), "drop", "blend-weight", None, 0.0, 0.0, NO_PSEUDO, None, 3, 0),
    "capped-mcmc": (None, None, None, None, None, None, None, "budget", 3, 40),
    "decimated": (None, None, None, None, None, None, None, None, 3, 20),
    "decimated-finetuned": ((0,), "drop", "blend-weight", None, 0.0, 0.0, NO_PSEUDO, None, 3, 0),
    "student-no-distill": (CUTS_8, "auto", "blend-weight", None, 0.0, 0.0, NO_PSEUDO, None, 3, 0),
    "student-one-cut": ((0,), "auto", "blend-weight", None, 0.0, 0.03, PSEUDO, None, 3, 0),
    "student-no-structure": (CUTS_8, "auto", "blend-weight", None, 0.0, 0.0, PSEUDO, None, 3, 0),
    "student-no-pseudo": (CUTS_8, "auto", "blend-weight", None, 0.0, 0.03, NO_PSEUDO, None, 3, 0),
    "paper-no-distill": ((0,), "drop", "blend-weight", None, 0.0, 1.0, NO_PSEUDO, None, 3, 20),
    "paper-no-structure": ((0,), "drop", "blend-weight", None, 0.4, 0.0, NO_PSEUDO, None, 3, 20),
    "paper-vanilla-teacher": ((0,), "drop", "blend-weight", None, 0.4, 1.0, NO_PSEUDO, None, 3, 20),
}  # fmt: skip


def made_of(config) -> tuple:
    model, datamanager = config.pipeline.model, config.pipeline.datamanager

    def get(name):
        return getattr(model, name, None)

    pseudo = None
    if hasattr(datamanager, "pseudo_views"):
        pseudo = (
            datamanager.pseudo_views, datamanager.pseudo_share, datamanager.pseudo_mode, datamanager.pseudo_families
        )  # fmt: skip
    cuts = model.cut_steps() if hasattr(model, "cut_steps") else None
    return (
        cuts, get("cut_method"), get("importance"), get("first_cut_keep"), get("distill_weight"),
        get("structure_weight"), pseudo, get("cap_max"), model.sh_degree, model.stop_split_at,
    )  # fmt: skip


def test_every_contender_builds_the_config_it_declares(frontier):
    assert set(MADE_OF) == set(CONTENDERS), "every contender has its row here"
    recipe, cap = frontier.recipe, frontier.plan.budget_count(0.25)
    for name, contender in CONTENDERS.items():
        config = frontier.configs.model_config(ModelSpec(name, 0.25, 42))
        model, datamanager = config.pipeline.model, config.pipeline.datamanager
        assert made_of(config) == tuple(cap if v == "budget" else v for v in MADE_OF[name]), name
        # It is the method it declares, trained for its own steps; its total adds every teacher it builds on.
        own, total = frontier.plan.own_and_total_steps(name)
        assert config.method_name == contender.method.config.method_name, name
        assert own == {"none": 0, "student": STEPS, "matched": 2 * STEPS}[contender.own_steps], name
        assert total == own + STEPS * len(contender.teachers_used(recipe)), name
        if contender.trains:
            assert config.max_num_iterations == own, name
        # It starts where it declares: the trained teacher's Gaussians, the point cloud, or the decimated PLY.
        decimated = str(frontier.configs.decimated_checkpoint(0.25))
        starts = {"teacher": "teacher", "points": "points", "teacher-ply": "teacher"}[contender.start]
        if contender.trains and name != "capped-mcmc":
            assert model.init == starts, name
            assert (str(model.start_checkpoint) == decimated) == (contender.start == "teacher-ply"), name
        # Its datamanager serves exactly the teacher runs it learns from, by path.
        if hasattr(datamanager, "teachers"):
            expected = tuple(recipe.configs.teacher_config_path(teacher) for teacher in contender.teachers(recipe))
            assert tuple(Path(path) for path in datamanager.teachers) == expected, name
        # Whoever learns from nobody's renders has no distillation, structural loss or pseudo views.
        if contender.distils == "none" and hasattr(model, "distill_weight"):
            assert (model.distill_weight, model.structure_weight, datamanager.pseudo_views) == (0, 0, 0), name
    assert {CONTENDERS[n].teachers(recipe) for n in ("student-paper", "paper-no-distill")} == {
        ("vanilla", "noise", "dropout")
    }
    own = Frontier(frontier.recipe, FrontierSettings(compute="own"))
    assert own.plan.own_and_total_steps("capped-mcmc") == (40, 40) and own.plan.own_and_total_steps("student") == (
        40,
        80,
    )
    assert set(DEFAULT_METHODS) >= {"student", "pup-pruned", "capped-mcmc", "decimated", "decimated-finetuned"}


def assert_holds_the_most_important(model, source, importance, count, what):
    kept = torch.topk(importance, count).indices.sort().values
    for name, param in model.gauss_params.items():
        assert torch.equal(param.detach(), source[name][kept]), f"{name} differ from {what}'s {count} most important"


def teacher_importance(frontier: Frontier, cameras, mode="blend-weight"):
    teacher = load_gaussians(last_step_checkpoint(frontier.plan.vanilla_config()))
    splats = {
        "means": teacher["means"], "quats": teacher["quats"], "scales": torch.exp(teacher["scales"]),
        "opacities": torch.sigmoid(teacher["opacities"]).squeeze(-1),
        "colors": torch.cat([teacher["features_dc"][:, None], teacher["features_rest"]], 1),
    }  # fmt: skip
    return teacher, scene_importance(splats, cameras, mode, sh_degree=3)


def test_pruned_and_finetuned_starts_from_exactly_the_pruned_teacher_and_never_grows(frontier):
    budget = frontier.plan.budget_count(0.25)
    # Refinement switched on with a threshold every Gaussian passes: only the budget's ceiling can stop growth.
    settings = dict(stop_split_at=STEPS, refine_every=4, densify_grad_thresh=1e-9, reset_alpha_every=1000)
    config, pipeline, optimizers = pipeline_of(frontier, "pruned-finetuned", **settings)
    model = pipeline.model
    refused = spy_on_growth(model.strategy)
    model.step_cb(optimizers, 0)
    teacher, importance = teacher_importance(frontier, pipeline.datamanager.train_dataset.cameras)
    assert len(teacher["means"]) > budget
    assert_holds_the_most_important(model, teacher, importance, budget, "the teacher")
    for name, optimizer in optimizers.optimizers.items():
        if name in model.gauss_params:
            assert optimizer.param_groups[0]["params"][0] is model.gauss_params[name]
    counts = []
    for step in range(1, 21):
        train_steps(pipeline, optimizers, range(step, step + 1))
        counts.append(model.num_points)
    assert max(counts) <= budget and sum(refused) > 0, ("growth tried and refused at the budget", counts, refused)


def walk_the_cuts(frontier: Frontier, check_cut, **model_settings) -> None:
    """Train the registered default student (``student``: its 8 cuts over the first half of the run) through every
    cut; ``check_cut(model, optimizers, source, importance, count)`` checks each cut against the model just before
    it."""
    budget = frontier.plan.budget_count(0.25)
    _, pipeline, optimizers = pipeline_of(frontier, "student", **model_settings)
    model = pipeline.model
    cuts = model.config.cut_steps()
    assert cuts == CUTS_8
    source, importance = teacher_importance(frontier, pipeline.datamanager.train_dataset.cameras)
    counts, previous = [len(source["means"])], None
    for remaining, step in zip(range(len(cuts), 0, -1), cuts):
        if previous is not None:
            train_steps(pipeline, optimizers, range(previous + 1, step))  # callbacks once each; the cut's below
            assert model.num_points == counts[-1], "nothing is cut or grown between cuts"
            source = {name: param.detach().clone() for name, param in model.gauss_params.items()}
            importance = model.importance()
        model.step_cb(optimizers, step)
        # Equal ratios: each cut takes the count the same fraction of the way to the budget.
        expected = round(counts[-1] * (budget / counts[-1]) ** (1 / remaining))
        assert model.num_points == expected and budget <= expected < counts[-1], (step, model.num_points, expected)
        check_cut(model, optimizers, source, importance, expected)
        counts.append(expected)
        previous = step
    assert counts[-1] == budget
    ratios = [b / a for a, b in zip(counts, counts[1:])]
    assert max(ratios) - min(ratios) < 0.1, ratios
    train_steps(pipeline, optimizers, range(previous + 1, previous + 4))
    assert model.num_points == budget and torch.isfinite(model.means).all()


def test_mcmc_fine_tune_relocates_the_dead_at_the_budget_from_the_last_cut_on(frontier):
    budget = frontier.plan.budget_count(0.25)
    _, pipeline, optimizers = pipeline_of(frontier, "student", fine_tune="mcmc", refine_every=5)
    model = pipeline.model
    last_cut = model.config.cut_steps()[-1]
    train_steps(pipeline, optimizers, range(0, last_cut))
    _, losses, _ = pipeline.get_train_loss_dict(last_cut - 1)
    assert "opacity_reg" not in losses, "before the last cut it trains as the default student"
    train_steps(pipeline, optimizers, range(last_cut, last_cut + 1))
    assert model.num_points == budget
    _, losses, _ = pipeline.get_train_loss_dict(last_cut)
    regulariser = model.config.fine_tune_regulariser
    assert regulariser == pytest.approx(0.01 * STEPS / 30_000), "3DGS-MCMC's 0.01 scaled by the run's length"
    opacity_mean = torch.sigmoid(model.opacities).mean()
    assert float(losses["opacity_reg"]) == pytest.approx(float(regulariser * opacity_mean), rel=1e-5)
    assert float(losses["scale_reg_mcmc"]) == pytest.approx(
        float(regulariser * torch.exp(model.scales).mean()), rel=1e-5
    )
    # Kill a few Gaussians just before a relocation step: they come back on live ones, the count stays.
    relocation = next(step for step in range(last_cut + 1, 40) if step % 5 == 0)
    train_steps(pipeline, optimizers, range(last_cut + 1, relocation))
    with torch.no_grad():
        model.gauss_params["opacities"][:3] = -10.0
    train_steps(pipeline, optimizers, range(relocation, relocation + 1))
    alive = torch.sigmoid(model.opacities.squeeze(-1)) > 0.005
    assert model.num_points == budget and bool(alive.all()), "the dead were relocated onto live Gaussians"
    # Those that fade after the last relocation move at the run's last step too: an export keeps every one.
    with torch.no_grad():
        model.gauss_params["opacities"][:2] = -10.0
    model.relocate_the_faded(relocation + 1)
    assert bool((torch.sigmoid(model.opacities.squeeze(-1)) > 0.005).all()) and model.num_points == budget
    for name, optimizer in optimizers.optimizers.items():
        if name in model.gauss_params:
            assert optimizer.param_groups[0]["params"][0] is model.gauss_params[name]


def test_gradual_cuts_reach_the_budget_in_equal_ratios_keeping_the_most_important(frontier):
    """The default student's cuts with --pipeline.model.cut-method drop: each keeps the most important."""

    def keeps_the_most_important(model, optimizers, source, importance, count):
        assert_holds_the_most_important(model, source, importance, count, "the model before the cut")

    walk_the_cuts(frontier, keeps_the_most_important, cut_method="drop")


def test_pup_rounds_keep_the_most_sensitive_fifth_then_cut_to_the_budget(frontier):
    budget = frontier.plan.budget_count(0.1)
    _, pipeline, optimizers = pipeline_of(frontier, "pup-pruned", budget=0.1)
    model = pipeline.model
    cameras = pipeline.datamanager.train_dataset.cameras
    teacher, sensitivity = teacher_importance(frontier, cameras, "pup-fisher")
    model.step_cb(optimizers, 0)
    fifth = round(0.2 * len(teacher["means"]))
    assert model.num_points == fifth > budget
    assert_holds_the_most_important(model, teacher, sensitivity, fifth, "the teacher's (PUP score)")
    train_steps(pipeline, optimizers, range(1, 20))
    assert model.num_points == fifth, "fine-tuned, not cut, until the second round"
    before = {name: param.detach().clone() for name, param in model.gauss_params.items()}
    sensitivity = model.importance()
    model.step_cb(optimizers, 20)
    assert model.num_points == budget
    assert_holds_the_most_important(model, before, sensitivity, budget, "the fine-tuned model's (PUP score)")


def test_decimated_teacher_holds_the_count_splat_transform_wrote(frontier, tmp_path):
    required_tool(splat_transform.find(), splat_transform.HOW_TO_GET)
    spec = ModelSpec("decimated", 0.25, 42)
    config = frontier.configs.model_config(spec)
    frontier.produce(spec, config, None)
    budget = frontier.plan.budget_count(0.25)
    assert gaussian_count(config) == budget
    ply = export_ply(config.get_base_dir() / "config.yml", tmp_path / "decimated.ply")
    assert len(PlyData.read(str(ply))["vertex"].data) == budget
    # The fine-tuned contender starts from exactly these Gaussians.
    _, pipeline, optimizers = pipeline_of(frontier, "decimated-finetuned")
    pipeline.model.step_cb(optimizers, 0)
    decimated = load_gaussians(last_step_checkpoint(config))
    for name, param in pipeline.model.gauss_params.items():
        assert torch.equal(param.detach(), decimated[name]), name


def frontier_command(scene, output, *extra):
    return [
        str(BIN / "distilled-splat"), "frontier", "--data", str(scene), "--output", str(output), "--steps", "40",
        "--device", "cpu", "--teachers", "vanilla", "--budgets", "0.25", "--seeds", "1", *extra,
    ]  # fmt: skip


def test_frontier_resumes_after_a_kill_and_reuses_finished_models(tiny_scene, tmp_path):
    output = tmp_path / "frontier"
    models = output / "frontier" / "models"
    methods = ("--methods", "pruned-finetuned", "capped-mcmc", "student", "student-paper")
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    process = subprocess.Popen(
        frontier_command(tiny_scene, output, *methods), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
    )
    deadline = time.monotonic() + 300
    while not list(models.glob("*.json")) and time.monotonic() < deadline and process.poll() is None:
        time.sleep(0.1)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = list(models.glob("*.json"))
    assert len(finished) == 1, "killed after the first model"
    first = finished[0]
    first_text, first_time = first.read_text(), first.stat().st_mtime_ns
    result = subprocess.run(
        frontier_command(tiny_scene, output, *methods), capture_output=True, text=True, env=env, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "reusing the vanilla teacher" in result.stdout and "reusing 1 finished frontier models" in result.stdout
    assert first.read_text() == first_text and first.stat().st_mtime_ns == first_time
    record = json.loads((output / "frontier.json").read_text())
    assert record["this_command"] == {"models_planned": 4, "models_finished": 4}
    assert record["rows_count"] == len(record["rows"])
    rows = {row["method"]: row for row in record["rows"]}
    budget = round(0.25 * record["vanilla_teacher"]["num_gaussians"])
    assert rows["pruned-finetuned"]["num_gaussians"] == rows["student"]["num_gaussians"] == budget
    assert rows["capped-mcmc"]["num_gaussians"] <= budget and 0 < rows["student-paper"]["num_gaussians"] <= budget
    assert all(row["spz_bytes"] > 0 and row["total_steps"] >= row["own_steps"] for row in rows.values())
    assert (output / "frontier.png").stat().st_size > 0 and "| 0.25 | capped-mcmc | points | 1 |" in (
        output / "frontier.md"
    ).read_text()


def test_other_settings_train_anew_and_never_show_in_the_new_table(tiny_scene, tmp_path):
    output = tmp_path / "frontier"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    method = ("--methods", "pruned-finetuned")

    def frontier(*extra):
        result = subprocess.run(
            frontier_command(tiny_scene, output, *method, *extra), capture_output=True, text=True, env=env,
            timeout=300,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr[-2000:]
        return json.loads((output / "frontier.json").read_text())["rows"], (output / "frontier.md").read_text()

    first, _ = frontier()
    runs = output / "runs" / "frontier" / "distilled-splatfacto"
    assert len(first) == 1 and len(list(runs.iterdir())) == 1
    seeds, _ = frontier("--seed", "43")
    assert sorted(row["seed"] for row in seeds) == [42, 43], "--seed 43 adds a seed, on the same teachers"
    shutil.rmtree(runs / next(p.name for p in runs.iterdir() if "-s43-" in p.name))
    for path in (output / "frontier" / "models").glob("*-s43-*"):
        path.unlink()
    changed, table = frontier("--student-args=--pipeline.model.ssim-lambda 0.3")
    assert len(changed) == 1 and changed[0]["fingerprint"] != first[0]["fingerprint"]
    assert len(list(runs.iterdir())) == 2, "trained anew in a run folder of its own, not resumed from the old one"
    assert table.split("## Best")[0].count("| 0.25 | pruned-finetuned |") == 1, "the new result alone"
    longer, _ = frontier("--steps", "44")
    assert len(longer) == 1 and longer[0]["own_steps"] == 44 and len(list(runs.iterdir())) == 3
    _, with_others = frontier("--steps", "44", "--other-settings")
    others = with_others.split("## Results made under other settings")[1]
    assert others.count("| 0.25 | pruned-finetuned |") == 2, "both earlier results, in tables of their own"


def test_summary_gives_mean_and_sample_spread_per_method_and_budget():
    def row(method, budget, seed, psnr, ssim, seconds, total=None):
        return {
            "method": method, "budget": budget, "seed": seed, "num_gaussians": 10 + seed, "psnr": psnr, "ssim": ssim,
            "train_seconds": seconds, "train_seconds_total": total, "spz_bytes": 100 + seed, "start": "teacher",
            "own_steps": 10, "total_steps": 20,
        }  # fmt: skip

    rows = [row("b", 0.05, 0, 25.0, 0.6, 2.0)]
    rows += [
        row("a", 0.1, s, p, q, t, t + 5)
        for s, p, q, t in ((0, 20.0, 0.5, 1.0), (1, 21.0, 0.6, 2.0), (2, 22.2, 0.8, 4.0))
    ]
    rows += [row("b", 0.1, 0, 25.0, 0.6, 2.0, 3.0), row("a", 0.05, 0, 19.0, 0.4, 1.0, 2.0)]
    summary = summarise(rows)
    assert [(entry["budget"], entry["method"]) for entry in summary] == [
        (0.05, "a"),
        (0.05, "b"),
        (0.1, "a"),
        (0.1, "b"),
    ]
    assert {key: round(value, 4) if isinstance(value, float) else value for key, value in summary[2].items()} == {
        "method": "a", "budget": 0.1, "seeds": 3, "start": "teacher", "num_gaussians": 11, "spz_bytes": 101,
        "own_steps": 10, "total_steps": 20, "psnr": 21.0667, "psnr_std": 1.1015, "ssim": 0.6333, "ssim_std": 0.1528,
        "train_seconds": 2.3333, "train_seconds_total": 7.3333,
    }  # fmt: skip
    assert summary[1]["psnr_std"] == 0.0 and summary[1]["seeds"] == 1
    assert summary[1]["train_seconds_total"] is None, "a total unknown for any seed is unknown, not averaged away"
    two = summarise([row("c", 0.1, 0, 20.0, 0.5, 1.0), row("c", 0.1, 1, 21.0, 0.5, 1.0)])
    assert round(two[0]["psnr_std"], 4) == 0.7071, "two seeds have a spread"
    # Two seeds of the 4000-step demo frontier: mean 31.4154 dB, which a mean rounded first to 31.415 printed as 31.41.
    close = summarise([row("d", 0.1, 0, 31.3806, 0.9, 1.0), row("d", 0.1, 1, 31.4503, 0.9, 1.0)])
    assert "| 31.42 ± 0.05 |" in "\n".join(table(close)), "the table rounds the mean once"
    # 869.46 s, rounded first to 869.5, printed as 870 (round half to even).
    slow = summarise([row("e", 0.1, 0, 30.0, 0.9, 869.46, 1869.46)])
    assert "| 869 / 1869 |" in "\n".join(table(slow)), "the table rounds train seconds once"


def test_readme_lists_exactly_the_declared_contenders():
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    assert markdown_table() in readme, "README's contender table is contenders.markdown_table()'s output"


def test_seeds_go_where_they_matter(frontier):
    settings = FrontierSettings(
        methods=("student", "capped-mcmc", "decimated-finetuned"), budgets=(0.1,), seeds=3, teacher_started_seeds=1
    )
    specs = Frontier(frontier.recipe, settings).plan.specs()
    seeds = {method: sorted(spec.seed for spec in specs if spec.method == method) for method in CONTENDERS}
    assert seeds["capped-mcmc"] == [42, 43, 44], "from the point cloud: every seed"
    assert seeds["student"] == seeds["decimated-finetuned"] == [42], "started from the teacher: one seed"
    assert seeds["decimated"] == [42] and specs[0].method == "decimated", "made first, for what starts from it"


def test_later_seeds_reuse_the_one_decimated_teacher(frontier, tmp_path):
    """`--seed 43` adds seeds on the same teachers; the decimated teacher, nothing random in it, is not made again
    under the new seed's name."""
    # A copy of the frontier's folder, so that the recipe.json written here changes no other test's fixture.
    output = tmp_path / "frontier"
    shutil.copytree(frontier.recipe.output, output)
    Recipe(frontier.recipe.data, output, frontier.recipe.settings).save()  # what `run` writes: the teachers' seed
    settings = dataclasses.replace(frontier.recipe.settings, seed=43)
    later = Frontier(
        Recipe(frontier.recipe.data, output, settings),
        FrontierSettings(methods=("decimated-finetuned", "decimated"), budgets=(0.25,), seeds=2),
    )
    assert [(spec.method, spec.seed) for spec in later.plan.specs()] == [
        ("decimated", 42),
        ("decimated-finetuned", 43),
        ("decimated-finetuned", 44),
    ]
    decimated = ModelSpec("decimated", 0.25, 42)
    assert later.configs.stem(decimated) == frontier.configs.stem(decimated), (
        "the same decimated teacher, the same fingerprint"
    )
    assert later.configs.model_config(ModelSpec("decimated-finetuned", 0.25, 43)).machine.seed == 43


def test_merge_cuts_reach_the_budget_in_equal_ratios_through_splat_transform(frontier):
    """The default student as registered (cut-method auto: merge wherever splat-transform is installed): each cut is
    the model merged by splat-transform down to that cut's count, and the optimiser goes on with the merged
    Gaussians."""
    from distilled_splat.decimation import decimate_gaussians

    required_tool(splat_transform.find(), splat_transform.HOW_TO_GET)

    def is_the_model_merged(model, optimizers, source, importance, count):
        merged = decimate_gaussians(source, count)
        for name, param in model.gauss_params.items():
            torch.testing.assert_close(param.detach(), merged[name], msg=f"{name}: not the model merged to {count}")
        for name, optimizer in optimizers.optimizers.items():
            if name in model.gauss_params:
                assert optimizer.param_groups[0]["params"][0] is model.gauss_params[name]

    walk_the_cuts(frontier, is_the_model_merged)


def test_student_args_that_do_not_fit_a_contender_stop_it_before_training_and_leave_its_rows_aside(frontier):
    """A student setting the paper's student cannot take (a pseudo-view share without pseudo views) refuses that
    contender up front, and the table of a frontier that does not train it puts its stored rows with the others."""
    settings = dataclasses.replace(frontier.recipe.settings, student_args="--pipeline.datamanager.pseudo-share 0.1")
    other = Frontier(Recipe(frontier.recipe.data, frontier.recipe.output, settings), frontier.settings)
    paper, student = ModelSpec("student-paper", 0.25, 42), ModelSpec("student", 0.25, 42)
    with pytest.raises(DistilledSplatError, match="--student-args do not fit contender student-paper"):
        other.configs.fingerprint(paper)
    models = other.results.folder / "models"
    models.mkdir(parents=True, exist_ok=True)
    stored = []
    for spec, fingerprint in (
        (paper, frontier.configs.fingerprint(paper)),
        (student, other.configs.fingerprint(student)),
    ):
        row = {"method": spec.method, "budget": spec.budget, "seed": spec.seed, "fingerprint": fingerprint}
        stored.append(models / f"{spec.name}-test.json")
        stored[-1].write_text(json.dumps(row))
    try:
        current, others = other.results.rows()
        assert [row["method"] for row in current] == ["student"]
        assert [row["method"] for row in others] == ["student-paper"]
    finally:
        for path in stored:
            path.unlink()
