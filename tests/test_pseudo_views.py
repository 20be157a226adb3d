"""Distillation where no photo is: pseudo-view cameras, their renders in the teacher cache, the steps that train on
them and their loss; and a student with fewer SH bands than its teacher."""

from __future__ import annotations

import copy
import math
import os
import re

import numpy as np
import pytest
import torch
from nerfstudio.cameras.cameras import Cameras
from pytorch_msssim import ssim

from distilled_splat.data.pseudo_views import PseudoViewRecipe, nearest_other, pseudo_cameras
from distilled_splat.data.teacher_cache import render_premultiplied
from distilled_splat.errors import DistilledSplatError
from distilled_splat.method_configs import distilled_splatfacto
from distilled_splat.teachers import final_checkpoint, load_gaussians, load_teacher
from tests.helpers import build_pipeline


def ring_of_cameras(count: int = 8) -> Cameras:
    """Cameras on a circle of radius 1 looking at the origin, 100x80 pixels."""
    poses = []
    for index in range(count):
        angle = 2 * math.pi * index / count
        position = np.array([math.cos(angle), math.sin(angle), 0.3])
        forward = -position / np.linalg.norm(position)  # nerfstudio cameras look down -z
        right = np.cross(forward, [0.0, 0.0, 1.0])
        right /= np.linalg.norm(right)
        up = np.cross(right, forward)
        poses.append(np.stack([right, up, -forward, position], axis=1))
    return Cameras(
        camera_to_worlds=torch.tensor(np.stack(poses), dtype=torch.float32), fx=90.0, fy=90.0, cx=50.0, cy=40.0,
        width=100, height=80,
    )  # fmt: skip


def rotation_angle(a: np.ndarray, b: np.ndarray) -> float:
    """Angle in radians of the rotation between two 3x3 rotation matrices."""
    return float(np.arccos(np.clip((np.trace(a.T @ b) - 1) / 2, -1, 1)))


def test_interpolated_views_lie_between_a_camera_and_its_nearest_neighbour():
    cameras = ring_of_cameras()
    made = pseudo_cameras(cameras, PseudoViewRecipe(count=20, families=("interpolated",)))
    poses = cameras.camera_to_worlds.double().numpy()
    neighbours = nearest_other(cameras.camera_to_worlds[:, :3, 3]).numpy()
    for pose in made.camera_to_worlds.double().numpy():
        # Which training camera it came from: the one whose segment to its neighbour holds the position.
        fits = []
        for source in range(len(poses)):
            a, b = poses[source][:, 3], poses[neighbours[source]][:, 3]
            t = float(np.dot(pose[:, 3] - a, b - a) / np.dot(b - a, b - a))
            if 0.25 - 1e-6 <= t <= 0.75 + 1e-6 and np.allclose(a + t * (b - a), pose[:, 3], atol=1e-6):
                fits.append((source, t))
        assert fits, "the position lies on a camera-neighbour segment, a quarter to three quarters along"
        source, t = fits[0]
        start, end = poses[source][:, :3], poses[neighbours[source]][:, :3]
        total = rotation_angle(start, end)
        assert rotation_angle(start, pose[:, :3]) == pytest.approx(t * total, abs=1e-6), "slerp: angle in proportion"
        assert rotation_angle(pose[:, :3], end) == pytest.approx((1 - t) * total, abs=1e-6)
    assert torch.equal(made.fx, cameras.fx[: len(made)].new_full((len(made), 1), 90.0))
    assert made.width.unique().tolist() == [100] and made.height.unique().tolist() == [80]


def test_jittered_views_move_the_position_by_the_given_spread_and_keep_the_rotation():
    cameras = ring_of_cameras()
    made = pseudo_cameras(cameras, PseudoViewRecipe(count=400, families=("jittered",), jitter=0.05))
    poses = cameras.camera_to_worlds.double().numpy()
    offsets = []
    for pose in made.camera_to_worlds.double().numpy():
        source = min(range(len(poses)), key=lambda s: np.abs(poses[s][:, :3] - pose[:, :3]).max())
        assert np.abs(poses[source][:, :3] - pose[:, :3]).max() < 1e-6, "rotation unchanged"
        offsets.append(pose[:, 3] - poses[source][:, 3])
    spread = np.std(np.concatenate(offsets))
    assert 0.045 < spread < 0.055, spread  # 1200 draws of N(0, 0.05^2): within about 7%


def test_pseudo_views_draw_from_their_own_generator_and_are_reproducible():
    cameras = ring_of_cameras()
    torch.manual_seed(0)
    before = torch.random.get_rng_state()
    first = pseudo_cameras(cameras, PseudoViewRecipe(count=6))
    assert torch.equal(torch.random.get_rng_state(), before)
    assert torch.equal(first.camera_to_worlds, pseudo_cameras(cameras, PseudoViewRecipe(count=6)).camera_to_worlds)
    other = pseudo_cameras(cameras, PseudoViewRecipe(count=6, jitter=0.2))
    assert not torch.equal(first.camera_to_worlds, other.camera_to_worlds)


DEFAULT_MODE = distilled_splatfacto.config.pipeline.datamanager.pseudo_mode


def pseudo_student(tiny_scene, teacher_runs, cache_dir, views=6, share=0.25, mode=DEFAULT_MODE, **model):
    """The registered default student with pseudo views in its own mode, at a test's count and share."""
    datamanager = {
        "teachers": tuple(teacher_runs[:1]), "teacher_cache_dir": cache_dir, "pseudo_views": views,
        "pseudo_share": share, "pseudo_mode": mode,
    }  # fmt: skip
    return build_pipeline(distilled_splatfacto.config, tiny_scene, steps=100, datamanager=datamanager, **model)


def test_pseudo_views_are_rendered_into_the_cache_by_the_teacher(tiny_scene, teacher_runs, tmp_path):
    _, pipeline, _ = pseudo_student(tiny_scene, teacher_runs, tmp_path / "cache")
    datamanager = pipeline.datamanager
    assert len(datamanager.pseudo_images) == 6 and len(datamanager.teacher_images) == len(datamanager.train_dataset)
    teacher, _ = load_teacher(teacher_runs[0], torch.device("cpu"))
    for index, image in enumerate(datamanager.pseudo_images):
        render = render_premultiplied(teacher, datamanager.pseudo_cameras[index : index + 1])
        straight = image.float() / 255
        premultiplied = torch.cat([straight[..., :3] * straight[..., 3:], straight[..., 3:]], -1).numpy()
        assert np.abs(premultiplied - render.astype(np.float32)).max() < 3 / 255, index  # uint8 rounding


def test_cache_is_rebuilt_when_the_pseudo_view_recipe_changes_and_reused_otherwise(tiny_scene, teacher_runs, tmp_path):
    cache = tmp_path / "cache"
    assert pseudo_student(tiny_scene, teacher_runs, cache)[1].datamanager.teacher_cache_rebuilt
    assert not pseudo_student(tiny_scene, teacher_runs, cache)[1].datamanager.teacher_cache_rebuilt
    assert pseudo_student(tiny_scene, teacher_runs, cache, views=7)[1].datamanager.teacher_cache_rebuilt
    rebuilt = pseudo_student(tiny_scene, teacher_runs, cache, views=7, share=0.5)
    assert not rebuilt[1].datamanager.teacher_cache_rebuilt, "the share decides steps, not renders"
    # Students with other cameras (frontier contenders with and without pseudo views) keep their own renders.
    assert not pseudo_student(tiny_scene, teacher_runs, cache)[1].datamanager.teacher_cache_rebuilt
    assert len(list(cache.glob("*/manifest.json"))) == 2


def test_a_build_removes_what_killed_builds_left_and_not_what_running_ones_write(tiny_scene, teacher_runs, tmp_path):
    cache = tmp_path / "cache"
    pseudo_student(tiny_scene, teacher_runs, cache)
    (folder,) = cache.iterdir()
    running = cache / f".{folder.name}.partial-{os.getpid()}-0000"
    killed = cache / f".{folder.name}.partial-{2**22 + 1}-0000"  # above Linux's largest process id
    for partial in (running, killed):
        (partial / "views").mkdir(parents=True)
    (folder / "manifest.json").unlink()
    assert pseudo_student(tiny_scene, teacher_runs, cache)[1].datamanager.teacher_cache_rebuilt
    assert running.is_dir() and not killed.exists()


def photometric(model, outputs, aggregate):
    """0.8 L1 + 0.2 (1 - SSIM) of the render against the aggregate composited on the render's background, written
    out here independently of the model's loss code."""
    target = model.get_gt_img(aggregate)
    target = target[..., :3] * target[..., 3:] + (1 - target[..., 3:]) * outputs["background"]
    rendered = outputs["rgb"]
    similarity = ssim(rendered.permute(2, 0, 1)[None], target.permute(2, 0, 1)[None], data_range=1.0)
    return 0.8 * (rendered - target).abs().mean() + 0.2 * (1 - similarity)


def test_a_share_of_steps_trains_on_pseudo_views_against_the_aggregate_alone(tiny_scene, teacher_runs, tmp_path):
    _, pipeline, _ = pseudo_student(tiny_scene, teacher_runs, tmp_path / "cache", mode="replace")
    datamanager, model = pipeline.datamanager, pipeline.model
    taken = [index for index in range(100) if datamanager.next_train(index)[1].get("pseudo_view")]
    # The default takes them once the student is at its budget: from its last cut on, a quarter of the steps.
    last_cut = model.config.cut_steps()[-1]
    assert datamanager.config.pseudo_start == last_cut == 50
    assert len(taken) == 12 and min(taken) >= last_cut, taken
    assert max(b - a for a, b in zip(taken, taken[1:])) <= 4, "spread evenly over the rest of the run"
    # Which pseudo view a step takes depends on the step alone (a resumed run continues as an uninterrupted one).
    first = [datamanager.next_train(step)[0].camera_to_worlds for step in taken[:5]]
    again = [datamanager.next_train(step)[0].camera_to_worlds for step in taken[:5]]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    camera, batch = datamanager.next_train(taken[0])
    assert torch.equal(batch["image"], batch["teacher_image"])
    assert any(torch.equal(camera.camera_to_worlds, datamanager.pseudo_cameras[i : i + 1].camera_to_worlds)
               for i in range(6))  # fmt: skip
    model.train()
    outputs = model.get_outputs(camera)
    losses = model.get_loss_dict(outputs, batch)
    assert "gt_loss" not in losses and "distill_loss" not in losses
    expected = photometric(model, outputs, batch["teacher_image"])
    torch.testing.assert_close(losses["pseudo_view_loss"], expected, rtol=1e-4, atol=1e-6)


def test_added_pseudo_views_keep_every_photo_step_and_add_the_loss_at_the_pseudo_view(
    tiny_scene, teacher_runs, tmp_path
):
    assert DEFAULT_MODE == "add", "the default's mode: this test is about it"
    _, pipeline, _ = pseudo_student(tiny_scene, teacher_runs, tmp_path / "cache")
    datamanager, model = pipeline.datamanager, pipeline.model
    batches = [datamanager.next_train(step) for step in range(100)]
    assert not any(batch.get("pseudo_view") for _, batch in batches), "no step gives up its photo"
    taken = [step for step, (_, batch) in enumerate(batches) if "pseudo_camera" in batch]
    assert len(taken) == 12 and min(taken) >= model.config.cut_steps()[-1], taken
    camera, batch = batches[taken[0]]
    photo = datamanager.train_dataset.cameras
    assert torch.equal(camera.camera_to_worlds, photo[int(camera.metadata["cam_idx"])].camera_to_worlds[None])
    model.train()
    outputs = model.get_outputs(camera)
    photo_info = model.info
    torch.manual_seed(0)  # the same random background for the pseudo view's render here and below
    losses = model.get_loss_dict(outputs, batch)
    assert model.info is photo_info, "the strategy still sees the photo's render"
    photo_only = model.get_loss_dict(outputs, {key: value for key, value in batch.items() if "pseudo" not in key})
    torch.testing.assert_close(losses["gt_loss"], photo_only["gt_loss"])
    torch.manual_seed(0)
    pseudo_outputs = model.get_outputs(batch["pseudo_camera"])
    expected = photometric(model, pseudo_outputs, batch["pseudo_image"])
    torch.testing.assert_close(losses["pseudo_view_loss"], expected, rtol=1e-4, atol=1e-6)
    # Its gradient reaches the Gaussians: the pseudo view trains the student too.
    model.means.grad = None
    losses["pseudo_view_loss"].backward()
    assert model.means.grad is not None and model.means.grad.abs().sum() > 0


TOGETHER = "pseudo-views and --pipeline.datamanager.pseudo-share go together"


@pytest.mark.parametrize(
    "views, share, mode, rule",
    [
        (4, 0.0, "replace", TOGETHER),
        (0, 0.3, "replace", TOGETHER),
        (4, 1.0, "replace", re.escape("pseudo-share must be in [0, 1) with pseudo-mode replace, got 1.0")),
        (-1, 0.2, "replace", "pseudo-views must be >= 0, got -1"),
        (4, 1.5, "add", re.escape("pseudo-share must be in [0, 1] with pseudo-mode add, got 1.5")),
        (0, 1.0, "add", TOGETHER),
    ],
)
def test_pseudo_settings_that_cannot_work_are_refused(views, share, mode, rule):
    config = copy.deepcopy(distilled_splatfacto.config.pipeline.datamanager)
    config.pseudo_views, config.pseudo_share, config.pseudo_mode = views, share, mode
    with pytest.raises(DistilledSplatError, match=rule):
        config.check_pseudo_views()


def test_added_pseudo_views_may_come_with_every_step():
    config = copy.deepcopy(distilled_splatfacto.config.pipeline.datamanager)
    config.pseudo_views, config.pseudo_share, config.pseudo_mode = 4, 1.0, "add"
    config.check_pseudo_views()


@pytest.mark.parametrize("degree", [0, 1])
def test_student_with_fewer_sh_bands_starts_from_the_teachers_lower_ones(tiny_scene, teacher_runs, tmp_path, degree):
    _, pipeline, _ = pseudo_student(
        tiny_scene, teacher_runs, tmp_path / "cache", sh_degree=degree, target_fraction=1.0, target_gaussians=None
    )
    teacher = load_gaussians(final_checkpoint(teacher_runs[0]))
    model = pipeline.model
    assert model.features_rest.shape[1] == (degree + 1) ** 2 - 1
    torch.testing.assert_close(model.features_rest, teacher["features_rest"][:, : (degree + 1) ** 2 - 1])
    # Rendered, it shows the teacher's colour up to that degree: compare with the teacher evaluated at that degree.
    teacher_pipeline, _ = load_teacher(teacher_runs[0], torch.device("cpu"))
    teacher_model = teacher_pipeline.model
    camera = pipeline.datamanager.train_dataset.cameras[0:1]
    teacher_model.config.sh_degree_interval = 10**9  # the teacher's render then stops at degree step // interval
    teacher_model.step = degree * 10**9
    model.eval()
    model.step = 10**6  # past the SH warm-up: every band the student has
    with torch.no_grad():
        ours = model.get_outputs(camera)["rgb"]
        theirs = teacher_model.get_outputs(camera)["rgb"]
    assert (ours - theirs).abs().max() < 2e-3, float((ours - theirs).abs().max())


def test_the_registered_student_distils_by_default():
    """What `ns-train distilled-splatfacto` runs without options: the teachers' aggregate at pseudo views, the
    structural loss, cuts from the vanilla teacher settled by the run's length; `without_distillation` is the
    frontier's ablation."""
    from distilled_splat.method_configs import without_distillation

    config = distilled_splatfacto.config
    model, datamanager = config.pipeline.model, config.pipeline.datamanager
    assert datamanager.pseudo_views > 0 and 0 < datamanager.pseudo_share < 1 and datamanager.pseudo_mode == "add"
    assert datamanager.pseudo_families == ("interpolated",)
    assert model.structure_weight > 0 and model.init == "teacher" and model.budget_cuts is None
    plain = without_distillation(copy.deepcopy(config))
    assert (plain.pipeline.datamanager.pseudo_share, plain.pipeline.model.structure_weight) == (0, 0)
    fields_defaults = (plain.pipeline.datamanager.pseudo_mode, plain.pipeline.datamanager.pseudo_families)
    assert fields_defaults == ("replace", ("interpolated", "jittered")), "nothing left that could matter"
    assert plain.pipeline.model.distill_weight == 0
