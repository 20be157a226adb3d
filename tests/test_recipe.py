"""The one-command recipe: every model trained, evaluated and exported, a readable report, and resumption."""

from __future__ import annotations

import json
import subprocess
import time

import pytest
import torch
from PIL import Image
from plyfile import PlyData

from distilled_splat import recipe as recipe_module
from distilled_splat.cli import Run
from distilled_splat.recipe import Recipe, RecipeSettings
from distilled_splat.training import final_checkpoint
from tests.conftest import BIN, run_command
from tests.helpers import untrained_psnr

STEPS = 60


def settings(**overrides):
    return RecipeSettings(steps=STEPS, device="cpu", student_args="--pipeline.model.refine-every 20", **overrides)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_scene):
    output = tmp_path_factory.mktemp("recipe")
    Run(tiny_scene, output, settings()).main()
    return output


def test_report_has_every_model_with_sane_numbers(finished_run):
    report = json.loads((finished_run / "report.json").read_text())
    # The default recipe (gradual) distils from nothing but the vanilla teacher's Gaussians: no other teachers.
    assert set(report["models"]) == {"vanilla", "student"}
    assert not (finished_run / "runs" / "distilled" / "distilled-teacher-noise").exists()
    recipe = Recipe.load(finished_run)
    for name, row in report["models"].items():
        # Every model beats its untrained start by a margin; the student, at a tenth of the teacher's count, beats
        # as many untrained seed points as it keeps.
        config = recipe.method_config(name).get_base_dir() / "config.yml"
        baseline = untrained_psnr(config, count=row["num_gaussians"] if name == "student" else None)
        assert row["psnr"] > baseline + 1.0 and 0 < row["ssim"] <= 1, (name, row["psnr"], baseline)
        assert row["lpips"] is None or 0 <= row["lpips"] <= 1
        assert row["num_gaussians"] > 0 and row["ply_bytes"] > 200 * row["num_gaussians"]
        assert 0 < row["spz_bytes"] < row["splat_bytes"] < row["ply_bytes"]
        assert row["render_ms"] > 0 and row["train_seconds"] > 0
    student, vanilla = report["models"]["student"], report["models"]["vanilla"]
    assert student["num_gaussians"] <= round(0.1 * vanilla["num_gaussians"])  # the default budget
    assert report["student_vs_vanilla"]["num_gaussians"] == pytest.approx(
        student["num_gaussians"] / vanilla["num_gaussians"]
    )
    assert (finished_run / "student.spz").read_bytes() == (finished_run / "exports" / "student.spz").read_bytes()
    markdown = (finished_run / "report.md").read_text()
    assert "| student |" in markdown and "psnr_vs_gaussians.png" in markdown
    assert Image.open(finished_run / "report" / "psnr_vs_gaussians.png").size[0] > 100


def test_side_by_side_images_show_every_held_out_view(finished_run, tiny_scene):
    report = json.loads((finished_run / "report.json").read_text())
    held_out = len(json.loads((tiny_scene / "transforms.json").read_text())["frames"][::8])
    assert len(report["views"]) == held_out
    for view in report["views"]:
        image = Image.open(finished_run / view)
        image.load()
        assert image.size[0] == 3 * 48  # three panels at the views' own 48-pixel width


def test_student_ply_holds_exactly_the_students_gaussians(finished_run):
    recipe = Recipe.load(finished_run)
    checkpoint = torch.load(final_checkpoint(recipe.method_config("student")), map_location="cpu")
    count = checkpoint["pipeline"]["_model.gauss_params.means"].shape[0]
    vertices = PlyData.read(str(finished_run / "student.ply"))["vertex"]
    assert len(vertices.data) == count
    assert {"x", "y", "z", "opacity", "scale_0", "rot_0", "f_dc_0"} <= {p.name for p in vertices.properties}


def test_report_command_regenerates_the_report(finished_run):
    (finished_run / "report.json").unlink()
    result = run_command("distilled-splat", "report", str(finished_run))
    assert "student" in result.stdout
    assert json.loads((finished_run / "report.json").read_text())["models"]["student"]["num_gaussians"] > 0


def test_interrupted_run_resumes_without_redoing_finished_models(tiny_scene, tmp_path, monkeypatch, capsys):
    real_train = recipe_module.train
    started_at = {}

    def interrupt_student(config, on_step=None):
        def counting(step):
            started_at.setdefault(config.method_name, step)
            if config.method_name == "distilled-splatfacto" and step == 45 and "interrupted" not in started_at:
                started_at["interrupted"] = step
                raise KeyboardInterrupt
            on_step(step)

        return real_train(config, on_step=counting)

    monkeypatch.setattr(recipe_module, "train", interrupt_student)
    recipe = Recipe(tiny_scene, tmp_path / "out", settings(teachers=("vanilla", "dropout")))
    with pytest.raises(KeyboardInterrupt):
        recipe.execute()
    assert "teachers dropout do not change it" in capsys.readouterr().out, "the gradual student does not distil"
    teacher_checkpoint = final_checkpoint(recipe.method_config("vanilla"))
    teacher_stamp = teacher_checkpoint.stat().st_mtime_ns
    assert not (tmp_path / "out" / "student.ply").exists()

    started_at.clear()
    started_at["interrupted"] = -1
    recipe.execute()
    assert "distilled-teacher" not in started_at, "finished teachers must not be retrained"
    assert started_at["distilled-splatfacto"] > 0, "the student should resume from its last checkpoint"
    assert teacher_checkpoint.stat().st_mtime_ns == teacher_stamp
    assert (tmp_path / "out" / "student.ply").is_file()


def test_run_refuses_a_recipe_without_the_vanilla_teacher_in_one_line(tiny_scene, tmp_path):
    result = run_command(
        "distilled-splat", "run", "--data", str(tiny_scene), "--output", str(tmp_path / "out"), "--teachers", "noise",
        check=False,
    )  # fmt: skip
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "distilled-splat: error: --teachers must include vanilla" in result.stderr
    assert not (tmp_path / "out").exists()


def test_report_of_a_folder_without_a_run_fails_in_one_line(tmp_path):
    result = run_command("distilled-splat", "report", str(tmp_path), check=False)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert "holds no finished `distilled-splat run`" in result.stderr


def test_demo_writes_its_scene_once_and_runs_the_recipe_on_it(tmp_path, monkeypatch):
    from distilled_splat import cli
    from distilled_splat.data.synthetic import PRESETS

    monkeypatch.setitem(PRESETS, "demo", PRESETS["tiny"])  # the wiring, not the 128-pixel scene, is under test
    cli.Demo(tmp_path, settings(teachers=("vanilla",))).main()
    scene_stamp = (tmp_path / "scene" / "transforms.json").stat().st_mtime_ns
    assert json.loads((tmp_path / "report.json").read_text())["models"]["student"]["num_gaussians"] > 0
    cli.Demo(tmp_path, settings(teachers=("vanilla",))).main()  # everything finished: only the report again
    assert (tmp_path / "scene" / "transforms.json").stat().st_mtime_ns == scene_stamp


def teacher_checkpoint_saved(output):
    return any((output / "runs" / "distilled" / "distilled-teacher").glob("*/nerfstudio_models/*.ckpt"))


def cache_build_started(output):
    return any((output / "runs" / "distilled" / "distilled-splatfacto").glob(".teacher-cache.partial-*"))


def student_checkpoint_saved(output):
    return any((output / "runs" / "distilled" / "distilled-splatfacto").glob("*/nerfstudio_models/*.ckpt"))


def killable_args(output, tiny_scene):
    return [
        "distilled-splat", "run", "--data", str(tiny_scene), "--output", str(output), "--steps", str(STEPS),
        "--device", "cpu", "--teachers", "vanilla", "dropout", "--student-args=--pipeline.model.refine-every 20",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted_report(tmp_path_factory, tiny_scene):
    output = tmp_path_factory.mktemp("uninterrupted")
    run_command(*killable_args(output, tiny_scene))
    return json.loads((output / "report.json").read_text())


@pytest.mark.parametrize("moment", [teacher_checkpoint_saved, cache_build_started, student_checkpoint_saved])
def test_killed_run_completes_when_run_again(tiny_scene, tmp_path, moment, uninterrupted_report):
    output = tmp_path / "out"
    args = killable_args(output, tiny_scene)
    process = subprocess.Popen([str(BIN / args[0]), *args[1:]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 300
    while not moment(output) and process.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    process.kill()  # SIGKILL: no clean-up code runs
    process.wait()
    assert moment(output), "the run ended before the moment to kill it"
    run_command(*args)
    report = json.loads((output / "report.json").read_text())
    student = report["models"]["student"]
    assert 0 < student["num_gaussians"] <= round(0.1 * report["models"]["vanilla"]["num_gaussians"])
    assert len(PlyData.read(str(output / "student.ply"))["vertex"].data) == student["num_gaussians"]
    assert not list(output.rglob(".*partial*")), "a killed build must not leave staging folders behind"
    # Same seeds, and checkpoints carry the random state, densification statistics and camera order: the
    # interrupted run ends where the uninterrupted one does (up to float rounding, which is not bitwise
    # reproducible on CPU).
    assert set(report["models"]) == set(uninterrupted_report["models"])
    for name, row in report["models"].items():
        expected = uninterrupted_report["models"][name]
        assert row["psnr"] == pytest.approx(expected["psnr"], abs=0.005), name
        assert row["num_gaussians"] == expected["num_gaussians"], name


def test_default_steps_fit_the_device(monkeypatch):
    assert RecipeSettings(device="cpu").with_device_defaults().steps == 1000
    assert RecipeSettings(device="cpu", steps=7).with_device_defaults().steps == 7
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert RecipeSettings(device="auto").with_device_defaults() == RecipeSettings(device="cuda", steps=30_000)
