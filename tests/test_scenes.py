"""The built-in scenes and the scene checks."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from distilled_splat.data.scene_checks import check_scene, ply_vertex_count
from distilled_splat.data.synthetic import PRESETS, orbit_poses, write_scene
from distilled_splat.errors import DistilledSplatError


def test_tiny_scene_is_a_complete_nerfstudio_scene(tiny_scene):
    spec = PRESETS["tiny"]
    checked = check_scene(tiny_scene)
    assert len(checked.frames) == spec.num_views
    assert ply_vertex_count(checked.point_cloud) == spec.num_points
    image = np.asarray(Image.open(checked.frames[0].image))
    assert image.shape == (spec.height, spec.width, 4)
    alpha = image[..., 3]
    assert 0.2 < (alpha > 0).mean() < 0.95, "objects and transparent sky should both be visible"
    assert image[..., :3][alpha == 255].std() > 20, "textured, not flat"


def test_cameras_look_at_the_scene():
    poses = orbit_poses(PRESETS["demo"])
    forward = -poses[:, :3, 2]
    to_centre = np.array([0.0, 0.0, 0.3]) - poses[:, :3, 3]
    to_centre /= np.linalg.norm(to_centre, axis=1, keepdims=True)
    assert np.allclose((forward * to_centre).sum(1), 1.0, atol=1e-6)
    assert np.allclose(np.einsum("vij,vkj->vik", poses[:, :3, :3], poses[:, :3, :3]), np.eye(3), atol=1e-9)


def test_write_scene_is_deterministic_and_replaces_atomically(tmp_path):
    first = write_scene(tmp_path / "a", PRESETS["tiny"])
    second = write_scene(tmp_path / "b", PRESETS["tiny"])
    assert (first / "sparse_pc.ply").read_bytes() == (second / "sparse_pc.ply").read_bytes()
    (first / "stale.txt").write_text("old")
    write_scene(first, PRESETS["tiny"])
    assert not (first / "stale.txt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a", "b"], "no staging folders left behind"


@pytest.fixture
def scene_copy(tiny_scene, tmp_path):
    return shutil.copytree(tiny_scene, tmp_path / "scene")


def rewrite(scene, change):
    meta = json.loads((scene / "transforms.json").read_text())
    change(meta)
    (scene / "transforms.json").write_text(json.dumps(meta))


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda m: m.pop("frames"), "has no 'frames' list"),
        (lambda m: m["frames"][2].pop("transform_matrix"), "frame 2 needs"),
        (lambda m: m["frames"][1].update(transform_matrix=[[1, 0, 0]]), "frame 1 transform_matrix"),
        (lambda m: m["frames"][4].update(file_path="images/nope.png"), "image missing"),
        (lambda m: m.update(ply_file_path="missing.ply"), "point cloud missing"),
        (lambda m: m.update(w=64), "declares 64x40"),
    ],
)
def test_bad_transforms_are_named(scene_copy, change, message):
    rewrite(scene_copy, change)
    with pytest.raises(DistilledSplatError, match=message):
        check_scene(scene_copy)


def test_missing_scene_and_non_ply_point_cloud(tmp_path, scene_copy):
    with pytest.raises(DistilledSplatError, match="no transforms.json and no COLMAP model"):
        check_scene(tmp_path)
    with pytest.raises(DistilledSplatError, match="scene not found"):
        check_scene(tmp_path / "nowhere")
    with pytest.raises(DistilledSplatError, match="no scene given"):
        check_scene(None)
    (scene_copy / "sparse_pc.ply").write_text("hello")
    with pytest.raises(DistilledSplatError, match="not a PLY file"):
        check_scene(scene_copy)


def test_exports_skip_image_checks(scene_copy):
    Image.new("RGB", (5, 5)).save(scene_copy / "images" / "frame_00000.png")
    check_scene(scene_copy, check_images=False)
    with pytest.raises(DistilledSplatError, match="5x5"):
        check_scene(scene_copy)
