"""`distilled-splat compact`: a model the user already has (nerfstudio's own splatfacto run, or a 3DGS PLY in the
scene's world frame) becomes the vanilla teacher, untrained, and the student comes back in the input's frame."""

from __future__ import annotations

import copy
import csv
import json
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from numpy.lib.recfunctions import repack_fields
from plyfile import PlyData, PlyElement
from scipy.spatial.transform import Rotation

from distilled_splat.cli import Compact, CompactSettings, GivenOptions
from distilled_splat.errors import DistilledSplatError
from distilled_splat.exports import splat_transform
from distilled_splat.training import evaluate, export_ply
from tests.conftest import TEACHER_STEPS, required_tool, run_command

STUDENT = ["--steps", "30", "--target-gaussians", "30", "--device", "cpu"]


def nerfstudio_splatfacto_run(teacher_config: Path, folder: Path) -> Path:
    """The trained teacher as a run of nerfstudio's own ``splatfacto``: nerfstudio's config (its model, datamanager
    and dataparser, so its own train/eval split), the teacher's checkpoint without this package's extra state."""
    from nerfstudio.configs.method_configs import method_configs

    ours = yaml.load(teacher_config.read_text(), Loader=yaml.Loader)
    config = copy.deepcopy(method_configs["splatfacto"])
    config.pipeline.datamanager.data = ours.pipeline.datamanager.data
    config.output_dir, config.experiment_name, config.timestamp = folder, "scene", "splatfacto-run"
    config.max_num_iterations = TEACHER_STEPS
    config.save_config()
    run = config.get_base_dir()
    shutil.copy(teacher_config.parent / "dataparser_transforms.json", run)
    name = f"step-{TEACHER_STEPS - 1:09d}.ckpt"
    state = torch.load(teacher_config.parent / "nerfstudio_models" / name, map_location="cpu")
    state["pipeline"] = {key: value for key, value in state["pipeline"].items() if "_extra_state" not in key}
    (run / "nerfstudio_models").mkdir()
    torch.save(state, run / "nerfstudio_models" / name)
    return run


@pytest.fixture(scope="module")
def splatfacto_run(tmp_path_factory, teacher_runs) -> Path:
    run = nerfstudio_splatfacto_run(teacher_runs[0], tmp_path_factory.mktemp("splatfacto"))
    text = (run / "config.yml").read_text()
    assert "method_name: splatfacto\n" in text
    assert "!!python/object:nerfstudio.models.splatfacto.SplatfactoModelConfig" in text
    assert "!!python/object:nerfstudio.data.datamanagers.full_images_datamanager.FullImageDatamanagerConfig" in text
    return run


def held_out_psnr(config: Path, folder: Path) -> float:
    return evaluate(config, folder / f"{config.parent.name}-eval.json")["psnr"]


def test_a_nerfstudio_splatfacto_run_is_compacted_without_retraining(
    splatfacto_run, teacher_runs, tiny_scene, tmp_path
):
    output = tmp_path / "out"
    run_command("distilled-splat", "compact", "--data", str(tiny_scene), "--teacher", str(splatfacto_run),
                "--output", str(output), *STUDENT)  # fmt: skip
    report = json.loads((output / "report.json").read_text())
    # The given model itself, evaluated on the student's held-out views: what the teacher gives there.
    assert report["models"]["vanilla"]["psnr"] == pytest.approx(held_out_psnr(teacher_runs[0], tmp_path), abs=0.01)
    assert report["models"]["student"]["num_gaussians"] == 30
    assert len(PlyData.read(str(output / "student.ply"))["vertex"].data) <= 30
    for name in ("student.spz", "exports/student.ply", "report.md"):
        assert (output / name).is_file(), name
    given = json.loads(next((output / "runs").rglob("given.json")).read_text())
    assert given["frame_found"] == "run" and given["num_gaussians"] == report["models"]["vanilla"]["num_gaussians"]
    # Same scene, same parser: the run's frame is the training frame, so nothing was moved.
    assert np.allclose(given["to_training"]["rotation"], np.eye(3), atol=1e-5)


def test_nerfstudio_splatfacto_runs_teach_through_ns_train_on_cpu(splatfacto_run, tiny_scene, tmp_path):
    run_command(
        "ns-train", "distilled-splatfacto", "--data", str(tiny_scene), "--output-dir", str(tmp_path),
        "--timestamp", "run", "--max-num-iterations", "30", "--machine.device-type", "cpu", "--vis", "tensorboard",
        "--pipeline.datamanager.teachers", str(splatfacto_run), "--pipeline.model.target-gaussians", "30",
    )  # fmt: skip
    assert (tmp_path / tiny_scene.name / "distilled-splatfacto" / "run" / "nerfstudio_models").is_dir()


SIMILARITY = (Rotation.from_euler("xyz", [180.0, 0.0, 90.0], degrees=True).as_matrix(), np.array([4.0, -2.0, 7.0]), 3.0)
"""A world frame far from the scene's: turned upside down and a quarter turn, moved and three times larger."""


def moved_scene(scene: Path, output: Path) -> Path:
    """``scene`` with every pose and point taken into the world frame ``SIMILARITY``."""
    rotation, translation, scale = SIMILARITY
    shutil.copytree(scene, output)
    meta = json.loads((output / "transforms.json").read_text())
    for frame in meta["frames"]:
        pose = np.asarray(frame["transform_matrix"])
        pose[:3, :3] = rotation @ pose[:3, :3]
        pose[:3, 3] = scale * rotation @ pose[:3, 3] + translation
        frame["transform_matrix"] = pose.tolist()
    (output / "transforms.json").write_text(json.dumps(meta))
    cloud = PlyData.read(str(output / meta["ply_file_path"]))
    vertex = cloud["vertex"].data.copy()
    points = scale * np.stack([vertex[a] for a in "xyz"], 1) @ rotation.T + translation
    for i, axis in enumerate("xyz"):
        vertex[axis] = points[:, i]
    PlyData([PlyElement.describe(vertex, "vertex")]).write(str(output / meta["ply_file_path"]))
    return output


def zero_sh(vertex: np.ndarray) -> None:
    """Clear the view-dependent colour: frames then act on positions, rotations and scales alone (the SH rotation is
    checked against gsplat's own SH evaluation in test_sh_rotation_keeps_every_colour)."""
    for name in vertex.dtype.names:
        if name.startswith("f_rest_"):
            vertex[name] = 0.0


def ply_of(teacher_config: Path, target: Path, world: bool) -> Path:
    """The teacher's Gaussians without view-dependent colour, in nerfstudio's frame (``world`` False) or written
    with numpy and scipy, from the 3DGS format alone, in ``SIMILARITY``'s world frame: the inverse of the teacher's
    dataparser transform, then ``SIMILARITY``."""
    exported = export_ply(teacher_config, target.parent / f"{target.stem}-export.ply")
    vertex = PlyData.read(str(exported))["vertex"].data.copy()
    zero_sh(vertex)
    if world:
        record = json.loads((teacher_config.parent / "dataparser_transforms.json").read_text())
        forward = np.asarray(record["transform"])
        rotation, translation, scale = SIMILARITY
        turn = Rotation.from_matrix(rotation) * Rotation.from_matrix(forward[:3, :3]).inv()
        points = np.stack([vertex[a] for a in "xyz"], 1).astype(np.float64) / record["scale"] - forward[:3, 3]
        points = scale * Rotation.from_matrix(rotation).apply(Rotation.from_matrix(forward[:3, :3]).inv().apply(points))
        points += translation
        for i, axis in enumerate("xyz"):
            vertex[axis] = points[:, i]
        for i in range(3):
            vertex[f"scale_{i}"] += np.log(scale / record["scale"])
        quats = np.stack([vertex[f"rot_{i}"] for i in range(4)], 1).astype(np.float64)  # w x y z
        turned = (turn * Rotation.from_quat(quats[:, [1, 2, 3, 0]])).as_quat()[:, [3, 0, 1, 2]]
        for i in range(4):
            vertex[f"rot_{i}"] = turned[:, i]
    PlyData([PlyElement.describe(vertex, "vertex")]).write(str(target))
    return target


def bounds(points: np.ndarray) -> np.ndarray:
    """The 5th and 95th percentiles of each axis: a bounding box that a few outliers do not move."""
    return np.percentile(points, [5, 95], axis=0)


def ply_points(path: Path) -> np.ndarray:
    vertex = PlyData.read(str(path))["vertex"]
    return np.stack([np.asarray(vertex[a], dtype=np.float64) for a in "xyz"], 1)


def read_back_by_splat_transform(path: Path, folder: Path) -> np.ndarray:
    """Positions of a splat file as PlayCanvas's splat-transform reads them (through its CSV writer)."""
    tool = required_tool(splat_transform.find(), "splat-transform is not installed")
    target = folder / f"{path.name}.csv"
    subprocess.run([str(tool), "-q", "-w", str(path), str(target)], check=True, capture_output=True, timeout=120)
    with open(target) as handle:
        rows = list(csv.DictReader(handle))
    return np.array([[float(row[a]) for a in "xyz"] for row in rows])


def test_a_world_frame_ply_is_found_in_its_frame_and_the_student_goes_back_there(teacher_runs, tiny_scene, tmp_path):
    scene = moved_scene(tiny_scene, tmp_path / "moved-scene")
    world = ply_of(teacher_runs[0], tmp_path / "world.ply", world=True)
    normalised = ply_of(teacher_runs[0], tmp_path / "normalised.ply", world=False)
    moved, reference = tmp_path / "moved", tmp_path / "reference"
    run_command("distilled-splat", "compact", "--data", str(scene), "--ply", str(world), "--output", str(moved),
                *STUDENT)  # fmt: skip
    run_command("distilled-splat", "compact", "--data", str(tiny_scene), "--ply", str(normalised), "--output",
                str(reference), *STUDENT)  # fmt: skip
    given = json.loads(next((moved / "runs").rglob("given.json")).read_text())
    assert given["frame_found"] == "world"
    assert json.loads(next((reference / "runs").rglob("given.json")).read_text())["frame_found"] == "normalised"
    # The same Gaussians, read in either frame, are the same model on the same photos.
    psnr = [json.loads((out / "report.json").read_text())["models"]["vanilla"]["psnr"] for out in (moved, reference)]
    assert psnr[0] == pytest.approx(psnr[1], abs=0.02)
    # Round trip: the student, read back by splat-transform from its SOG, lies where the given model lies.
    given_box = bounds(ply_points(world))
    extent = float(np.max(given_box[1] - given_box[0]))
    student_box = bounds(read_back_by_splat_transform(moved / "student.sog", tmp_path))
    assert np.abs(student_box - given_box).max() < 0.2 * extent, (student_box, given_box)
    assert np.abs(bounds(ply_points(moved / "student.ply")) - given_box).max() < 0.2 * extent
    # ... and not where the training frame has it.
    training_box = bounds(ply_points(moved / "exports" / "student.ply"))
    assert np.linalg.norm(training_box.mean(0) - given_box.mean(0)) > 0.5 * extent


def test_sh_rotation_keeps_every_colour():
    from gsplat.cuda._torch_impl import _spherical_harmonics

    from distilled_splat.frames import sh_rotation

    rotation = Rotation.from_euler("xyz", [30.0, -70.0, 125.0], degrees=True).as_matrix()
    directions = torch.nn.functional.normalize(torch.randn(200, 3, dtype=torch.float64), dim=-1)
    for degree in (1, 2, 3):
        count = (degree + 1) ** 2
        coefficients = torch.randn(count, 3, dtype=torch.float64)
        turned = coefficients.clone()
        turned[1:] = sh_rotation(rotation, degree) @ coefficients[1:]
        before = _spherical_harmonics(degree, directions, coefficients.expand(200, count, 3))
        after = _spherical_harmonics(degree, directions @ torch.from_numpy(rotation).T, turned.expand(200, count, 3))
        assert torch.allclose(before, after, atol=1e-9), degree


def compact(tiny_scene: Path, output: Path, **given) -> None:
    settings = CompactSettings(steps=30, device="cpu", target_gaussians=given.pop("budget", 30))
    Compact(tiny_scene, output, GivenOptions(**given), settings).main()


def broken_inputs(splatfacto_run: Path, teacher_runs, tmp_path: Path):
    """(what, given options, the one-line error's words) for every bad input the issue names."""
    from nerfstudio.configs.method_configs import method_configs

    nerfacto = copy.deepcopy(method_configs["nerfacto"])
    nerfacto.output_dir, nerfacto.experiment_name, nerfacto.timestamp = tmp_path / "nerfacto", "scene", "run"
    nerfacto.save_config()
    unfinished = shutil.copytree(splatfacto_run, tmp_path / "unfinished")
    last = next((unfinished / "nerfstudio_models").glob("*.ckpt"))
    last.rename(last.with_name("step-000000020.ckpt"))
    truncated = shutil.copytree(splatfacto_run, tmp_path / "truncated")
    checkpoint = next((truncated / "nerfstudio_models").glob("*.ckpt"))
    checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    good = ply_of(teacher_runs[0], tmp_path / "good.ply", world=False)
    vertex = PlyData.read(str(good))["vertex"].data
    fields = [name for name in vertex.dtype.names if not name.startswith("rot_")]
    kept = repack_fields(vertex[fields])
    PlyData([PlyElement.describe(kept, "vertex")]).write(str(tmp_path / "no-rotations.ply"))
    far = vertex.copy()
    far["x"] += 1000.0
    PlyData([PlyElement.describe(far, "vertex")]).write(str(tmp_path / "elsewhere.ply"))
    count = len(vertex)
    return [
        ("nerfacto", {"teacher": nerfacto.get_base_dir()}, "not a Gaussian splat method"),
        ("unfinished", {"teacher": unfinished}, "is unfinished"),
        ("truncated", {"teacher": truncated}, "unreadable"),
        ("missing fields", {"ply": tmp_path / "no-rotations.ply"}, "it lacks ['rot_0', 'rot_1', 'rot_2', 'rot_3']"),
        ("other SH degree", {"ply": good, "sh_degree": 1}, "holds SH degree 3, not the --sh-degree 1 asked for"),
        ("budget", {"ply": good, "budget": count + 1}, f"is above the {count} Gaussians"),
        ("elsewhere", {"ply": tmp_path / "elsewhere.ply"}, "does not line up with this scene's photos"),
    ]


def test_bad_inputs_fail_in_one_line_with_nothing_written(splatfacto_run, teacher_runs, tiny_scene, tmp_path):
    for what, given, words in broken_inputs(splatfacto_run, teacher_runs, tmp_path):
        output = tmp_path / f"out-{what}"
        with pytest.raises(DistilledSplatError) as raised:
            compact(tiny_scene, output, **given)
        assert words in str(raised.value) and "\n" not in str(raised.value), (what, str(raised.value))
        assert not output.exists(), what
    result = run_command("distilled-splat", "compact", "--data", str(tiny_scene), "--ply", str(tmp_path / "elsewhere.ply"),
                         "--output", str(tmp_path / "cli"), *STUDENT, check=False)  # fmt: skip
    assert result.returncode != 0 and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "cli").exists()
