"""Real captures: COLMAP folders (text and binary), lens distortion, no point cloud, downscaling."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from distilled_splat.data.scene_checks import check_frames
from distilled_splat.data.scene_inputs import dataparser_for, find_scene
from distilled_splat.data.synthetic import PRESETS, write_scene
from distilled_splat.errors import DistilledSplatError
from distilled_splat.method_configs import distilled_splatfacto, distilled_teacher
from distilled_splat.schedules import scale_to_run_length
from tests.conftest import ns_train, run_command
from tests.helpers import pruned_teacher_psnr, train_run, untrained_psnr
from tests.scene_builders import without_point_cloud, write_colmap, write_downscaled_images


@pytest.fixture(scope="session")
def distorted_scene(tmp_path_factory) -> Path:
    return write_scene(tmp_path_factory.mktemp("scenes") / "distorted", PRESETS["tiny-distorted"])


def prepared_datamanager_config(scene: Path, downscale=None):
    """The teacher's datamanager config for ``scene`` after the run is prepared (what config.yml records)."""
    config = scale_to_run_length(distilled_teacher.config, 10)
    datamanager = config.pipeline.datamanager
    datamanager.data = scene
    datamanager.dataparser = dataparser_for(find_scene(scene), downscale)
    datamanager.prepare_run(Path("unused"))
    return datamanager


def training_images(datamanager_config, device="cpu"):
    datamanager = datamanager_config.setup(device=device, test_mode="val")
    return datamanager, [entry["image"] for entry in datamanager.cached_train]


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    return float(10 * np.log10(1.0 / np.mean((a - b) ** 2)))


@pytest.mark.parametrize("binary", [True, False])
def test_colmap_folder_reads_as_the_same_cameras_and_images(tiny_scene, tmp_path, binary):
    folder = write_colmap(tiny_scene, tmp_path / "colmap", binary=binary)
    scene = find_scene(folder)
    assert scene.kind == "colmap" and scene.colmap_model == Path("sparse/0")
    checked = check_frames(scene)
    assert len(checked.frames) == 16 and checked.point_cloud is not None
    from_colmap = prepared_datamanager_config(folder).dataparser.setup().get_dataparser_outputs("train")
    from_json = prepared_datamanager_config(tiny_scene).dataparser.setup().get_dataparser_outputs("train")
    assert [p.name for p in from_colmap.image_filenames] == [p.name for p in from_json.image_filenames]
    assert torch.allclose(from_colmap.cameras.fx, from_json.cameras.fx)
    assert torch.equal(from_colmap.cameras.width, from_json.cameras.width)

    # Same geometry up to the parsers' own orientation and scale: camera distances agree after normalising.
    def distances(outputs):
        centres = outputs.cameras.camera_to_worlds[:, :3, 3]
        d = torch.cdist(centres, centres)
        return d / d.max()

    assert torch.allclose(distances(from_colmap), distances(from_json), atol=1e-4)
    points = from_colmap.metadata["points3D_xyz"]
    assert len(points) == 400


def test_colmap_folder_trains_teacher_and_student_with_ns_train(tiny_scene, tmp_path):
    """The command line the issue names: ns-train METHOD --data X colmap --colmap-path sparse/0 --downscale-factor 2."""
    folder = write_colmap(tiny_scene, tmp_path / "colmap")
    write_downscaled_images(folder, 2)
    colmap_args = ("colmap", "--colmap-path", "sparse/0", "--downscale-factor", "2")
    teacher = ns_train("distilled-teacher", folder, tmp_path / "runs", *colmap_args, steps=30)
    student = ns_train(
        "distilled-splatfacto", folder, tmp_path / "runs", "--pipeline.datamanager.teachers", str(teacher.parent),
        "--pipeline.model.target-gaussians", "50", *colmap_args, steps=30,
    )  # fmt: skip
    (cache,) = (student.parent.parent / "teacher-cache").iterdir()
    views = sorted((cache / "views").glob("*.png"))
    pseudo_views = distilled_splatfacto.config.pipeline.datamanager.pseudo_views
    assert len(views) == 14 + pseudo_views and Image.open(views[0]).size == (24, 20)
    # Each learned from the COLMAP scene's images: better than where it started, on the held-out views.
    results = {}
    for name, config in (("teacher", teacher), ("student", student)):
        eval_json = tmp_path / f"{name}.json"
        run_command("ns-eval", "--load-config", str(config), "--output-path", str(eval_json))
        results[name] = json.loads(eval_json.read_text())["results"]["psnr"]
    starts = {"teacher": untrained_psnr(teacher), "student": pruned_teacher_psnr(teacher, 50)}
    print(f"COLMAP scene: PSNR {results} against their starts {starts}")
    assert results["teacher"] > starts["teacher"] + 1.0 and results["student"] > starts["student"] + 0.3


def test_downscale_uses_images_n_where_present_and_resizes_otherwise(tiny_scene, tmp_path, capsys, monkeypatch):
    from distilled_splat import notices

    monkeypatch.setattr(notices, "_said", set())  # the note is said once per process: whatever said it before
    resized = prepared_datamanager_config(tiny_scene, downscale=2)
    assert resized.dataparser.downscale_factor == 1 and resized.camera_res_scale_factor == 0.5
    assert "no images_2 folder" in capsys.readouterr().out
    _, images = training_images(resized)
    assert images[0].shape[:2] == (20, 24)

    copy = tmp_path / "with_images_2"
    import shutil

    shutil.copytree(tiny_scene, copy)
    write_downscaled_images(copy, 2)
    from_folder = prepared_datamanager_config(copy, downscale=2)
    assert from_folder.dataparser.downscale_factor == 2 and from_folder.camera_res_scale_factor == 1.0
    _, folder_images = training_images(from_folder)
    assert folder_images[0].shape[:2] == (20, 24)


def test_colmap_downscaled_folder_with_rounded_sizes_is_read(tiny_scene, tmp_path):
    """Mip-NeRF 360's images_N round sizes (1297 = round(5187 / 4)) where nerfstudio floors by default."""
    source = tmp_path / "odd"
    write_scene(source, PRESETS["tiny"].__class__(num_views=16, width=50, height=42, num_points=100))
    folder = write_colmap(source, tmp_path / "colmap")
    write_downscaled_images(folder, 4, rounding=np.round)  # 50 / 4 = 12.5 -> 12 (banker's), 42 / 4 = 10.5 -> 10
    (folder / "images_4").rename(folder / "images_4_unused")
    write_downscaled_images(folder, 4, rounding=np.ceil)  # 13 x 11, where floor would give 12 x 10
    datamanager = prepared_datamanager_config(folder, downscale=4)
    assert datamanager.dataparser.downscale_rounding_mode == "ceil"
    _, images = training_images(datamanager)
    assert images[0].shape[:2] == (11, 13)


def test_scene_without_point_cloud_starts_from_random_gaussians(tiny_scene, tmp_path, capsys):
    scene = without_point_cloud(tiny_scene, tmp_path / "no_points")
    datamanager = prepared_datamanager_config(scene)
    assert "no point cloud" in capsys.readouterr().out
    assert datamanager.dataparser.load_3D_points is False
    config = train_run(distilled_teacher.config, scene, tmp_path / "runs", 3, num_random=2000)
    state = torch.load(config.parent / "nerfstudio_models" / "step-000000002.ckpt", map_location="cpu")
    assert state["pipeline"]["_model.gauss_params.means"].shape[0] == 2000


def test_declared_point_cloud_that_is_missing_stays_an_error(tiny_scene, tmp_path):
    scene = without_point_cloud(tiny_scene, tmp_path / "declared")
    meta = json.loads((scene / "transforms.json").read_text())
    meta["ply_file_path"] = "sparse_pc.ply"
    (scene / "transforms.json").write_text(json.dumps(meta))
    with pytest.raises(DistilledSplatError, match="point cloud missing"):
        check_frames(find_scene(scene))


def test_teacher_cache_lines_up_with_undistorted_training_images(distorted_scene, tmp_path):
    """Lens distortion: nerfstudio undistorts and crops the training images when it loads them. The cache must be
    rendered at those cameras: a teacher's cached view matches the training image as well as the teacher's own
    render at that camera does, and a one-pixel shift is clearly worse."""
    teacher = train_run(distilled_teacher.config, distorted_scene, tmp_path / "teacher", 300)
    config = scale_to_run_length(distilled_splatfacto.config, 10)
    datamanager_config = config.pipeline.datamanager
    datamanager_config.data = distorted_scene
    datamanager_config.teachers = (teacher,)
    datamanager_config.teacher_cache_dir = tmp_path / "cache"
    datamanager = datamanager_config.setup(device="cpu", test_mode="val")
    declared = (40, 48)
    from distilled_splat.teachers import load_teacher

    pipeline, _ = load_teacher(teacher, torch.device("cpu"))
    aligned, own, shifted = [], [], []
    for view, entry in enumerate(datamanager.cached_train):
        truth = entry["image"].float().numpy() / 255
        assert truth.shape[:2] != declared, "the distortion must make nerfstudio crop the image"
        truth = truth[..., :3] * truth[..., 3:]  # premultiplied, as rendered over black
        cached = datamanager.teacher_images[view].float().numpy() / 255
        assert cached.shape == entry["image"].shape
        cached = cached[..., :3] * cached[..., 3:]
        camera = datamanager.train_dataset.cameras[view : view + 1]
        with torch.no_grad():
            pipeline.model.config.background_color = "black"
            render = pipeline.model.get_outputs(camera)["rgb"].clamp(0, 1).numpy()
        aligned.append(psnr(cached, truth))
        own.append(psnr(render, truth))
        shifted.append(psnr(np.roll(cached, 1, axis=1), truth))
    aligned, own, shifted = np.mean(aligned), np.mean(own), np.mean(shifted)
    assert abs(aligned - own) < 0.3, (aligned, own)
    assert aligned > 20 and aligned - shifted > 1, (aligned, shifted)
