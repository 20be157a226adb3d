"""The one-command recipe: every model trained, evaluated and exported, a readable report, and resumption."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from plyfile import PlyData

from distilled_splat import recipe as recipe_module
from distilled_splat.cli import Run
from distilled_splat.errors import DistilledSplatError
from distilled_splat.fingerprints import fingerprint_parts, scene_fingerprint
from distilled_splat.recipe import Recipe
from distilled_splat.run_configs import RecipeSettings
from distilled_splat.training import last_step_checkpoint
from tests.conftest import BIN, built_once, required_tool, run_command
from tests.helpers import pruned_teacher_psnr, untrained_psnr

STEPS = 60


def settings(**overrides):
    return RecipeSettings(steps=STEPS, device="cpu", student_args="--pipeline.model.refine-every 20", **overrides)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, tiny_scene):
    def run(output):
        Run(tiny_scene, output, settings()).main()
        return output

    return built_once(tmp_path_factory, "recipe", run)


def test_report_has_every_model_with_sane_numbers(finished_run):
    report = json.loads((finished_run / "report.json").read_text())
    # The default recipe (gradual) distils from nothing but the vanilla teacher's Gaussians: no other teachers.
    assert set(report["models"]) == {"vanilla", "student"}
    assert not (finished_run / "runs" / "distilled" / "distilled-teacher-noise").exists()
    recipe = Recipe.load(finished_run)
    for name, row in report["models"].items():
        # Every model beats its own start by a margin: the teacher its untrained seed points, the student (started
        # from the teacher) the teacher cut to the student's count without fine-tuning.
        config = recipe.configs.method_config(name).get_base_dir() / "config.yml"
        if name == "student":
            teacher = recipe.configs.method_config("vanilla").get_base_dir() / "config.yml"
            baseline, margin = pruned_teacher_psnr(teacher, row["num_gaussians"]), 0.5
        else:
            baseline, margin = untrained_psnr(config), 1.0
        print(f"{name}: {row['psnr']:.2f} dB against {baseline:.2f} dB before its own training")
        assert row["psnr"] > baseline + margin and 0 < row["ssim"] <= 1, (name, row["psnr"], baseline)
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
    checkpoint = torch.load(last_step_checkpoint(recipe.configs.method_config("student")), map_location="cpu")
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
    # The default student learns from every teacher it is given (pseudo views of their aggregate): no note.
    assert "do not change it" not in capsys.readouterr().out
    teacher_checkpoint = last_step_checkpoint(recipe.configs.method_config("vanilla"))
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


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--steps", "0"], "--steps must be a positive number of steps, got 0"),
        (["--student-steps", "0"], "--student-steps must be a positive number of steps, got 0"),
        (["--steps", "-5"], "--steps must be a positive number of steps, got -5"),
    ],
)
def test_bad_settings_fail_in_one_line_with_nothing_written(tiny_scene, tmp_path, arguments, message):
    result = run_command(
        "distilled-splat", "run", "--data", str(tiny_scene), "--output", str(tmp_path / "out"), *arguments,
        check=False,
    )  # fmt: skip
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines() == [f"distilled-splat: error: {message}"], result.stderr
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
    return any((output / "runs" / "distilled" / "distilled-splatfacto").glob("teacher-cache/.*.partial-*"))


def student_checkpoint_saved(output):
    return any((output / "runs" / "distilled" / "distilled-splatfacto").glob("*/nerfstudio_models/*.ckpt"))


def killable_args(output, tiny_scene):
    return [
        "distilled-splat", "run", "--data", str(tiny_scene), "--output", str(output), "--steps", str(STEPS),
        "--device", "cpu", "--teachers", "vanilla", "dropout", "--student-args=--pipeline.model.refine-every 20",
    ]  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted_report(tmp_path_factory, tiny_scene):
    def run(output):
        run_command(*killable_args(output, tiny_scene))
        return json.loads((output / "report.json").read_text())

    return built_once(tmp_path_factory, "uninterrupted-run", run)


def test_a_run_killed_at_each_moment_completes_when_run_again(tiny_scene, tmp_path, uninterrupted_report):
    """Killed (SIGKILL: no clean-up code runs) once a teacher checkpoint is saved, run again and killed once the
    teacher cache's build has started, run again and killed once a student checkpoint is saved, then run to its
    end: each run resumes from what the killed one left."""
    output = tmp_path / "out"
    args = killable_args(output, tiny_scene)
    for moment in (teacher_checkpoint_saved, cache_build_started, student_checkpoint_saved):
        process = subprocess.Popen(
            [str(BIN / args[0]), *args[1:]], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        deadline = time.time() + 300
        while not moment(output) and process.poll() is None and time.time() < deadline:
            time.sleep(0.02)
        process.kill()
        process.wait()
        assert moment(output), f"the run ended before the moment to kill it ({moment.__name__})"
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
    assert RecipeSettings(device="cpu", steps=7).with_device_defaults().student_steps == 7, "the student's: --steps"
    assert RecipeSettings(device="cpu", steps=7, student_steps=5).with_device_defaults().student_steps == 5
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    concrete = RecipeSettings(device="cuda", steps=30_000, student_steps=30_000)
    assert RecipeSettings(device="auto").with_device_defaults() == concrete


# One changed value for every option of `run` (RecipeSettings): each must change what some model is made of.
CHANGED_OPTIONS = {
    "steps": STEPS + 2,
    "student_steps": STEPS + 2,
    "device": "cuda",
    "downscale": 2,
    "teachers": ("vanilla", "noise"),
    "target_fraction": 0.2,
    "target_gaussians": 40,
    "teacher_args": "--pipeline.model.sh-degree 2",
    "student_args": "--pipeline.model.refine-every 20 --pipeline.model.ssim-lambda 0.3",
    "seed": 43,
    "recipe": "paper",
}


def model_fingerprints(scene: Path, output: Path, recipe_settings: RecipeSettings) -> dict:
    recipe = Recipe(scene, output, recipe_settings)
    return {name: fingerprint_parts(recipe.configs.method_config(name)) for name in recipe.configs.models()}


def test_every_run_option_changes_what_decides_a_model(tiny_scene, tmp_path, monkeypatch):
    """An option of `run` missing from the fingerprint would let a folder's models pass as another run's (as
    --downscale did: a full-size run reported as the half-size one)."""
    assert set(CHANGED_OPTIONS) == {field.name for field in dataclasses.fields(RecipeSettings)}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # --device cuda builds its configs here too
    base = model_fingerprints(tiny_scene, tmp_path, settings())
    assert model_fingerprints(tiny_scene, tmp_path / "moved", settings()) == base, "the folders are not settings"
    for option, value in CHANGED_OPTIONS.items():
        changed = model_fingerprints(tiny_scene, tmp_path, dataclasses.replace(settings(), **{option: value}))
        assert any(changed.get(name) != parts for name, parts in base.items()), option


def test_every_scene_file_the_fingerprint_covers_changes_it(tiny_scene, tmp_path):
    """Cameras, point cloud, and each image's name and size: changing any one changes the scene fingerprint."""
    base = scene_fingerprint(tiny_scene)
    frames = json.loads((tiny_scene / "transforms.json").read_text())["frames"]
    first_image = frames[0]["file_path"]

    def nudge_camera(scene):
        transforms = json.loads((scene / "transforms.json").read_text())
        transforms["frames"][0]["transform_matrix"][0][3] += 0.01
        (scene / "transforms.json").write_text(json.dumps(transforms))

    def drop_two_frames(scene):
        transforms = json.loads((scene / "transforms.json").read_text())
        transforms["frames"] = transforms["frames"][:-2]
        (scene / "transforms.json").write_text(json.dumps(transforms))

    def move_a_point(scene):
        ply = PlyData.read(str(scene / "sparse_pc.ply"))
        ply["vertex"].data["x"][0] += 0.01
        ply.write(str(scene / "sparse_pc.ply"))

    def resize_an_image(scene):
        with open(scene / first_image, "ab") as handle:
            handle.write(b"\0")

    def rename_an_image(scene):
        transforms = json.loads((scene / "transforms.json").read_text())
        new_name = first_image.replace(".png", "-renamed.png")
        (scene / first_image).rename(scene / new_name)
        transforms["frames"][0]["file_path"] = new_name
        (scene / "transforms.json").write_text(json.dumps(transforms))

    for change in (nudge_camera, drop_two_frames, move_a_point, resize_an_image, rename_an_image):
        copy = tmp_path / change.__name__
        shutil.copytree(tiny_scene, copy)
        assert scene_fingerprint(copy) == base, "a copy elsewhere is the same scene"
        change(copy)
        assert scene_fingerprint(copy) != base, change.__name__


@pytest.mark.parametrize("change", ["downscale", "scene"])
def test_a_finished_run_on_another_scene_or_size_is_refused(finished_run, tiny_scene, tmp_path, change):
    """A run folder never reports models made at another size or from another scene as this run's: the run stops
    in one line before it writes anything, recipe.json included."""
    recipe_json = (finished_run / "recipe.json").read_bytes()
    checkpoint = last_step_checkpoint(Recipe.load(finished_run).configs.method_config("vanilla"))
    before = checkpoint.stat().st_mtime_ns
    scene, run_settings = tiny_scene, settings()
    if change == "downscale":
        run_settings = dataclasses.replace(run_settings, downscale=2)
    else:
        scene = tmp_path / "other_scene"
        shutil.copytree(tiny_scene, scene)
        transforms = json.loads((scene / "transforms.json").read_text())
        transforms["frames"] = transforms["frames"][:-2]
        (scene / "transforms.json").write_text(json.dumps(transforms))
    expected = "settings" if change == "downscale" else "scene"
    with pytest.raises(DistilledSplatError, match=f"holds a run made with other {expected} than this one"):
        Run(scene, finished_run, run_settings).main()
    assert (finished_run / "recipe.json").read_bytes() == recipe_json
    assert checkpoint.stat().st_mtime_ns == before


def test_a_finished_run_made_with_other_settings_is_refused_not_reused(finished_run, tiny_scene):
    """A run folder whose student was trained with other settings (an earlier version's defaults, or other
    options) is never reported as this run's student."""
    student = Recipe.load(finished_run).configs.method_config("student")
    checkpoint = last_step_checkpoint(student)
    before = checkpoint.stat().st_mtime_ns
    changed = RecipeSettings(
        steps=STEPS, device="cpu", student_args="--pipeline.model.refine-every 20 --pipeline.model.ssim-lambda 0.3"
    )
    with pytest.raises(DistilledSplatError, match="holds a run made with other settings than this one"):
        Run(tiny_scene, finished_run, changed).main()
    assert checkpoint.stat().st_mtime_ns == before


def test_a_run_folder_without_a_fingerprint_is_refused(finished_run, tiny_scene, tmp_path):
    """A run that records no fingerprint (made by an earlier version) cannot be told from one with other settings:
    it is refused in one line, not reported."""
    copy = tmp_path / "earlier"
    shutil.copytree(finished_run, copy)
    vanilla = Recipe.load(copy).configs.method_config("vanilla").get_base_dir()
    (vanilla / "fingerprint.json").unlink()
    with pytest.raises(DistilledSplatError, match="records no fingerprint.json"):
        Run(tiny_scene, copy, settings()).main()


BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
NUMBER = r"\d+(\.\d+)?"
TOY_BENCHMARKS = {
    "bench_rasterizer.py": (
        lambda run: ["--counts", "200", "--sizes", "16x16", "--repeats", "1"],
        [
            rf"random 200 16x16 +\d+ +{backend} +200 +16x16( +{NUMBER}){{4}} +yes +{NUMBER}"
            for backend in ("torch", "cpp")
        ],
    ),
    "bench_distillation.py": (
        lambda run: ["--output", str(run), "--steps", "2", "--structure-counts", "500"],
        [rf"importance, all training views +│ +{NUMBER} s", rf"render, student +│ +{NUMBER} ms = {NUMBER} fps"],
    ),
    "bench_structure_gradient.py": (
        lambda run: ["--output", str(run), "--views", "2", "--weights", "1", "0.03"],
        [rf"squared, per element: median {NUMBER}, 90th percentile {NUMBER}"]
        + [rf"weight {weight}: median position step at step \d+ {NUMBER}, at \d+ {NUMBER}" for weight in ("1", "0.03")],
    ),
    "bench_training_time.py": (
        lambda run: ["--output", str(run), "--steps", "20", "--rounds", "1", "--backends", "torch", "cpp"],
        [
            rf"{model} +│ +{backend} +│ +{NUMBER} +│ +{NUMBER} +│ +{NUMBER}"
            for model in ("vanilla teacher", "student \\(default\\)")
            for backend in ("torch", "cpp")
        ]
        + [rf"student / teacher +│ +{backend} +│ +{NUMBER}" for backend in ("torch", "cpp")],
    ),
}
"""Each CPU benchmark's arguments at toy size (given a finished run) and the rows it must print, with numbers where
its measurements go."""
GPU_BENCHMARKS = {
    "gpu_check.sh": lambda folder: [],
    "gpu_frontier.sh": lambda folder: ["", str(folder / "gpu"), "60", "1"],
}
"""The GPU scripts, each with its arguments (gpu_env.sh, which they source, has no run of its own)."""


def test_every_benchmark_script_has_a_toy_run():
    scripts = {path.name for path in BENCHMARKS.iterdir() if path.suffix in (".py", ".sh")}
    assert set(TOY_BENCHMARKS) | set(GPU_BENCHMARKS) | {"gpu_env.sh"} == scripts, "a new script needs a toy run"


@pytest.mark.parametrize("name", sorted(TOY_BENCHMARKS))
def test_benchmark_script_runs_at_toy_size(finished_run, name):
    """Each script in benchmarks/ runs to its end on a finished run (the README's commands, at toy size), so a
    benchmark cannot rot unseen."""
    arguments, rows = TOY_BENCHMARKS[name]
    result = subprocess.run(
        [str(BIN / "python"), f"benchmarks/{name}", *arguments(finished_run)], cwd=BENCHMARKS.parent,
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert result.returncode == 0, (name, result.stderr[-3000:])
    assert "Traceback" not in result.stderr, (name, result.stderr[-2000:])
    for row in rows:
        assert re.search(row, result.stdout), (name, row, result.stdout[-2000:])


@pytest.mark.skipif(torch.cuda.is_available(), reason="benchmarks/gpu_check.sh runs them on a GPU")
@pytest.mark.parametrize("name", sorted(GPU_BENCHMARKS))
def test_gpu_script_stops_at_its_cuda_check_without_a_gpu(name, tmp_path):
    env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}"}  # python3 is this environment's, with torch
    result = subprocess.run(
        ["bash", f"benchmarks/{name}", *GPU_BENCHMARKS[name](tmp_path)], cwd=BENCHMARKS.parent, capture_output=True,
        text=True, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode != 0 and "no CUDA device visible to torch" in result.stderr, (name, result)


def test_every_wheel_the_gpu_machine_needs_is_pinned():
    """gpu_wheels.txt names what the GPU machine lacks; constraints.txt must give each one's version, or the
    download there would fetch whatever is newest."""
    canonical = lambda name: re.sub(r"[-_.]+", "-", name).lower()  # noqa: E731
    pinned = {canonical(line.split("==")[0]) for line in (BENCHMARKS.parent / "constraints.txt").read_text().split()}
    wanted = [line for line in (BENCHMARKS / "gpu_wheels.txt").read_text().splitlines() if line and line[0] != "#"]
    assert "nerfstudio" in wanted and "gsplat" in wanted
    assert [name for name in wanted if canonical(name) not in pinned] == []


def test_report_without_splat_transform_says_how_to_get_it_and_keeps_the_rest(finished_run, monkeypatch):
    from distilled_splat.exports import splat_transform
    from distilled_splat.report import write_report

    # The finished run's page exists where splat-transform does (always under CI, where setup installed it).
    required_tool(splat_transform.find(), "splat-transform is not installed (scripts/setup.sh installs it)")
    assert (finished_run / "report" / "viewer" / "student.html").is_file()
    monkeypatch.setenv(splat_transform.ENVIRONMENT_VARIABLE, str(finished_run / "no-such-program"))
    report = write_report(Recipe.load(finished_run))
    markdown = (finished_run / "report.md").read_text()
    assert "No interactive pages: splat-transform was not found: ./scripts/setup.sh installs it" in markdown
    assert report["viewer_pages"] == {} and report["models"]["student"]["sog_bytes"] is None
    assert report["models"]["student"]["spz_bytes"] > 0 and "| student |" in markdown


def test_report_links_the_viewer_pages_and_gives_sog_bytes(finished_run):
    from distilled_splat.exports import splat_transform
    from distilled_splat.report import write_report

    required_tool(splat_transform.find(), splat_transform.HOW_TO_GET)
    report = write_report(Recipe.load(finished_run))
    markdown = (finished_run / "report.md").read_text()
    assert "[the student](report/viewer/student.html)" in markdown
    for page in report["viewer_pages"].values():
        text = (finished_run / page).read_text()
        assert text.startswith("<!DOCTYPE html>") and '"startMode":"animTrack"' in text.replace(" ", "")
    assert 0 < report["models"]["student"]["sog_bytes"] and (finished_run / "student.sog").is_file()


def test_our_commands_print_no_third_party_deprecation_notices(tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "PYTHONWARNINGS"}
    result = subprocess.run(
        [str(BIN / "distilled-splat"), "scene", "--output", str(tmp_path / "tiny"), "--preset", "tiny"],
        capture_output=True, text=True, env=env, timeout=300, check=True,
    )  # fmt: skip
    assert "Warning" not in result.stderr and "deprecated" not in result.stderr, result.stderr
