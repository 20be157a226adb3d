"""The frontier's baselines and bookkeeping: pruned-and-finetuned starts from exactly the pruned teacher, the
frontier resumes after a kill and reuses what was finished, and its tables give mean and spread over seeds."""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import time

import pytest
import torch
from nerfstudio.engine.callbacks import TrainingCallbackAttributes

from distilled_splat.frontier import summarise
from distilled_splat.importance import view_importance
from distilled_splat.method_configs import distilled_splatfacto_paper, from_teacher
from distilled_splat.models.portable_splatfacto import gsplat_viewmats
from distilled_splat.teachers import final_checkpoint, load_gaussians
from tests.conftest import BIN
from tests.helpers import build_pipeline, train_steps


def finetuned_student(tiny_scene, teacher_runs, tmp_path, budget, **model):
    """The student set up as pruned-finetuned (no distillation or structure), ready for its first step."""
    config = from_teacher(copy.deepcopy(distilled_splatfacto_paper.config), budget_cuts=1)
    _, pipeline, optimizers = build_pipeline(
        config, tiny_scene, steps=60, datamanager={"teachers": teacher_runs, "teacher_cache_dir": tmp_path / "cache"},
        target_gaussians=budget, distill_weight=0.0, structure_weight=0.0, **model,
    )  # fmt: skip
    attributes = TrainingCallbackAttributes(optimizers=optimizers, grad_scaler=None, pipeline=pipeline, trainer=None)
    pipeline.get_training_callbacks(attributes)  # as the trainer does before its first step
    return pipeline, optimizers


def teacher_importance(teacher, cameras):
    splats = {
        "means": teacher["means"], "quats": teacher["quats"], "scales": torch.exp(teacher["scales"]),
        "opacities": torch.sigmoid(teacher["opacities"]).squeeze(-1), "colors": None,
    }  # fmt: skip
    return sum(
        view_importance(
            splats,
            gsplat_viewmats(cameras.camera_to_worlds[i : i + 1])[0],
            cameras[i : i + 1].get_intrinsics_matrices()[0],
            int(cameras.width[i]),
            int(cameras.height[i]),
        )  # fmt: skip
        for i in range(len(cameras))
    )


def assert_holds_the_most_important(model, source, importance, count, what):
    kept = torch.topk(importance, count).indices.sort().values
    for name, param in model.gauss_params.items():
        assert torch.equal(param.detach(), source[name][kept]), f"{name} differ from {what}'s {count} most important"


def test_pruned_and_finetuned_starts_from_exactly_the_pruned_teacher(tiny_scene, teacher_runs, tmp_path):
    budget = 60
    pipeline, optimizers = finetuned_student(tiny_scene, teacher_runs, tmp_path, budget)
    pipeline.model.step_cb(optimizers, 0)
    teacher = load_gaussians(final_checkpoint(teacher_runs[0]))
    assert len(teacher["means"]) > budget
    importance = teacher_importance(teacher, pipeline.datamanager.train_dataset.cameras)
    model = pipeline.model
    assert_holds_the_most_important(model, teacher, importance, budget, "the teacher")
    for name, optimizer in optimizers.optimizers.items():
        if name in model.gauss_params:
            assert optimizer.param_groups[0]["params"][0] is model.gauss_params[name]
    train_steps(pipeline, optimizers, range(0, 20))
    assert model.num_points <= budget, "fine-tuning never grows"


def test_gradual_cuts_reach_the_budget_in_equal_ratios_keeping_the_most_important(tiny_scene, teacher_runs, tmp_path):
    budget = 60
    pipeline, optimizers = finetuned_student(
        tiny_scene, teacher_runs, tmp_path, budget, budget_cuts=3, cuts_stop=10
    )  # fmt: skip
    model = pipeline.model
    assert model.config.cut_steps() == (0, 5, 10)
    teacher = load_gaussians(final_checkpoint(teacher_runs[0]))
    total = len(teacher["means"])
    ratio = (budget / total) ** (1 / 3)
    model.step_cb(optimizers, 0)
    first = round(total * ratio)
    assert model.num_points == first and budget < first < total
    importance = teacher_importance(teacher, pipeline.datamanager.train_dataset.cameras)
    assert_holds_the_most_important(model, teacher, importance, first, "the teacher")
    train_steps(pipeline, optimizers, range(1, 5))  # each step's callbacks run once, step 0's already ran
    assert model.num_points == first, "nothing is cut or grown between cuts"
    before = {name: param.detach().clone() for name, param in model.gauss_params.items()}
    importance = model.importance()
    model.step_cb(optimizers, 5)
    second = round(first * (budget / first) ** (1 / 2))
    assert model.num_points == second and budget < second < first
    assert_holds_the_most_important(model, before, importance, second, "the fine-tuned model")
    train_steps(pipeline, optimizers, range(6, 12))
    assert model.num_points == budget
    assert abs(second / first - first / total) < 0.05 and abs(budget / second - second / first) < 0.05


def frontier_command(scene, output):
    return [
        str(BIN / "distilled-splat"), "frontier", "--data", str(scene), "--output", str(output), "--steps", "40",
        "--device", "cpu", "--teachers", "vanilla", "--budgets", "0.25", "--seeds", "1",
        "--methods", "pruned-finetuned", "capped-mcmc", "student", "student-paper", "--ablations",
    ]  # fmt: skip


def test_frontier_resumes_after_a_kill_and_reuses_finished_models(tiny_scene, tmp_path):
    output = tmp_path / "frontier"
    models = output / "frontier" / "models"
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    process = subprocess.Popen(
        frontier_command(tiny_scene, output), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env
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
    result = subprocess.run(frontier_command(tiny_scene, output), capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "reusing the vanilla teacher" in result.stdout and "reusing 1 finished frontier models" in result.stdout
    assert first.read_text() == first_text and first.stat().st_mtime_ns == first_time
    record = json.loads((output / "frontier.json").read_text())
    assert record["models_planned"] == record["models_finished"] == 4
    rows = {row["method"]: row for row in record["rows"]}
    budget = round(0.25 * record["vanilla_teacher"]["num_gaussians"])
    assert rows["pruned-finetuned"]["num_gaussians"] == budget
    assert rows["capped-mcmc"]["num_gaussians"] <= budget
    assert rows["student"]["num_gaussians"] == budget and 0 < rows["student-paper"]["num_gaussians"] <= budget
    assert (output / "frontier.png").stat().st_size > 0 and "| 0.25 | capped-mcmc | 1 |" in (
        output / "frontier.md"
    ).read_text()


def test_summary_gives_mean_and_sample_spread_per_method_and_budget():
    rows = [
        {"method": "a", "budget": 0.1, "seed": s, "num_gaussians": 10, "psnr": p, "ssim": 0.5, "train_seconds": 1.0}
        for s, p in enumerate((20.0, 21.0, 22.0))
    ] + [
        {"method": "b", "budget": 0.1, "seed": 0, "num_gaussians": 10, "psnr": 25.0, "ssim": 0.6, "train_seconds": 2.0}
    ]
    summary = {row["method"]: row for row in summarise(rows)}
    assert (
        summary["a"]["psnr"] == 21.0 and summary["a"]["psnr_std"] == pytest.approx(1.0) and summary["a"]["seeds"] == 3
    )
    assert summary["b"]["psnr_std"] == 0.0 and summary["b"]["seeds"] == 1
