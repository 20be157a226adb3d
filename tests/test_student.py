"""The student: teacher cache behaviour, its losses, pruning to a budget, and the nerfstudio commands on it."""

from __future__ import annotations

import json
import random
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from pytorch_msssim import ssim

from distilled_splat.data import teacher_cache
from distilled_splat.errors import DistilledSplatError
from distilled_splat.method_configs import distilled_splatfacto_paper, distilled_teacher
from tests.conftest import TEACHER_STEPS
from tests.helpers import build_pipeline, train_run, train_steps


def student(tiny_scene, teachers, cache_dir, steps=100, aggregation="mean", **model_settings):
    settings = {"teachers": tuple(teachers), "teacher_cache_dir": cache_dir, "aggregation": aggregation}
    return build_pipeline(
        distilled_splatfacto_paper.config, tiny_scene, steps=steps, datamanager=settings, **model_settings
    )


def cache_state(cache_dir):
    return {p.relative_to(cache_dir): p.stat().st_mtime_ns for p in cache_dir.rglob("*") if p.is_file()}


def test_teacher_images_are_served_with_every_training_batch(tiny_scene, teacher_runs, tmp_path):
    _, pipeline, _ = student(tiny_scene, teacher_runs, tmp_path / "cache")
    datamanager = pipeline.datamanager
    assert datamanager.teacher_cache_rebuilt
    camera, batch = datamanager.next_train(0)
    teacher_image, image = batch["teacher_image"], batch["image"]
    assert teacher_image.shape == (*image.shape[:2], 4) and teacher_image.dtype == torch.uint8

    # Each aggregate is a render of its own view: of all training photos, its own is the closest.
    def premultiplied(rgba):
        return rgba[..., :3].float() * rgba[..., 3:].float() / 255

    photos = torch.stack([premultiplied(entry["image"]) for entry in datamanager.cached_train])
    for view, rendered in enumerate(datamanager.teacher_images):
        errors = (photos - premultiplied(rendered)).abs().mean(dim=(1, 2, 3))
        assert int(errors.argmin()) == view, errors
    (manifest_path,) = (tmp_path / "cache").glob("*/manifest.json")
    manifest = json.loads(manifest_path.read_text())
    assert [t["config"] for t in manifest["teachers"]] == [str(t) for t in teacher_runs]
    assert len(manifest["views"]) == len(datamanager.train_dataset)
    means = pipeline.model.teacher_means
    vanilla = torch.load(teacher_runs[0].parent / "nerfstudio_models" / f"step-{TEACHER_STEPS - 1:09d}.ckpt")
    torch.testing.assert_close(means, vanilla["pipeline"]["_model.gauss_params.means"])


def test_cache_is_reused_and_rebuilt_on_each_kind_of_change(tiny_scene, teacher_runs, tmp_path):
    cache = tmp_path / "cache"
    student(tiny_scene, teacher_runs, cache)
    first = cache_state(cache)
    _, pipeline, _ = student(tiny_scene, teacher_runs, cache)
    assert not pipeline.datamanager.teacher_cache_rebuilt and cache_state(cache) == first

    _, pipeline, _ = student(tiny_scene, teacher_runs, cache, aggregation="median")
    assert pipeline.datamanager.teacher_cache_rebuilt

    _, pipeline, _ = student(tiny_scene, teacher_runs[:2], cache, aggregation="median")
    assert pipeline.datamanager.teacher_cache_rebuilt, "a different set of teachers must rebuild"

    # Same teacher run, changed checkpoint bytes (e.g. retrained): rebuild.
    copied = shutil.copytree(teacher_runs[1].parent, tmp_path / "noise-copy")
    checkpoint = next((copied / "nerfstudio_models").glob("*.ckpt"))
    state = torch.load(checkpoint)
    state["pipeline"]["_model.gauss_params.opacities"] += 0.5
    torch.save(state, checkpoint)
    _, pipeline, _ = student(tiny_scene, [teacher_runs[0], copied / "config.yml"], cache, aggregation="median")
    assert pipeline.datamanager.teacher_cache_rebuilt

    # Other cameras (the same scene at half resolution, as nerfstudio's images_2 folder): rebuild, at that size.
    half = shutil.copytree(tiny_scene, tmp_path / "half")
    (half / "images_2").mkdir()
    for image in (half / "images").iterdir():
        Image.open(image).resize((24, 20), Image.LANCZOS).save(half / "images_2" / image.name)
    config, _, _ = student(half, teacher_runs, cache, steps=100)
    config.pipeline.datamanager.dataparser.downscale_factor = 2
    pipeline = config.pipeline.setup(device="cpu", test_mode="val")
    assert pipeline.datamanager.teacher_cache_rebuilt
    assert pipeline.datamanager.teacher_images[0].shape[:2] == (20, 24)


def random_states():
    return random.getstate(), np.random.get_state()[1].tolist(), torch.random.get_rng_state()


def test_building_the_cache_draws_no_random_numbers(tiny_scene, teacher_runs, tmp_path):
    # A run resumed after a kill during its first checkpoint finds the cache its killed attempt built: it must train
    # on the same random stream as a run that built the cache itself, or the two end apart.
    np.random.seed(0)
    _, pipeline, _ = student(tiny_scene, teacher_runs, tmp_path / "cache")
    assert pipeline.datamanager.teacher_cache_rebuilt
    after_build = random_states()
    np.random.seed(0)
    _, pipeline, _ = student(tiny_scene, teacher_runs, tmp_path / "cache")
    assert not pipeline.datamanager.teacher_cache_rebuilt
    after_reuse = random_states()
    assert after_build[:2] == after_reuse[:2]
    assert torch.equal(after_build[2], after_reuse[2])


def test_interrupted_build_leaves_nothing_trusted(tiny_scene, teacher_runs, tmp_path, monkeypatch):
    cache = tmp_path / "cache"
    real_aggregate = teacher_cache.aggregate
    calls = []

    def interrupted(*args):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real_aggregate(*args)

    monkeypatch.setattr(teacher_cache, "aggregate", interrupted)
    with pytest.raises(KeyboardInterrupt):
        student(tiny_scene, teacher_runs, cache)
    assert not cache.exists() and list(tmp_path.iterdir()) == [], "no partial cache may be left behind"
    monkeypatch.setattr(teacher_cache, "aggregate", real_aggregate)
    _, pipeline, _ = student(tiny_scene, teacher_runs, cache)
    assert pipeline.datamanager.teacher_cache_rebuilt

    # A cache whose files were damaged afterwards is not trusted either.
    view = next(cache.glob("*/views/*.png"))
    view.write_bytes(view.read_bytes()[:50])
    _, pipeline, _ = student(tiny_scene, teacher_runs, cache)
    assert pipeline.datamanager.teacher_cache_rebuilt


def test_teacher_from_another_scene_is_refused(tiny_scene, teacher_runs, tmp_path):
    other_scene = shutil.copytree(tiny_scene, tmp_path / "other")
    transforms = json.loads((other_scene / "transforms.json").read_text())
    transforms["frames"] = transforms["frames"][:-3]
    (other_scene / "transforms.json").write_text(json.dumps(transforms))
    stranger = train_run(distilled_teacher.config, other_scene, tmp_path / "runs", 10)
    with pytest.raises(DistilledSplatError, match=r"trained on a different scene: it has \d+ training cameras"):
        student(tiny_scene, [teacher_runs[0], stranger], tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


def test_loss_terms_follow_the_definition(tiny_scene, teacher_runs, tmp_path):
    _, pipeline, _ = student(tiny_scene, teacher_runs, tmp_path / "cache", steps=30_000)
    model = pipeline.model
    model.train()
    model.step = 21_000  # a structural-loss step of the reference schedule
    camera, batch = pipeline.datamanager.next_train(model.step)
    torch.manual_seed(1)
    outputs = model.get_outputs(camera)
    losses = model.get_loss_dict(outputs, batch)
    assert {"gt_loss", "distill_loss", "structure_loss", "scale_reg"} <= set(losses)

    def photometric(target):
        rendered = outputs["rgb"]
        similarity = ssim(
            rendered.permute(2, 0, 1)[None], target.permute(2, 0, 1)[None], data_range=1.0, size_average=True
        )
        return 0.8 * (rendered - target).abs().mean() + 0.2 * (1 - similarity)

    def composite(image):
        image = model.get_gt_img(image)
        return image[..., :3] * image[..., 3:] + (1 - image[..., 3:]) * outputs["background"]

    torch.testing.assert_close(losses["gt_loss"], 0.6 * photometric(composite(batch["image"])), rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(
        losses["distill_loss"], 0.4 * photometric(composite(batch["teacher_image"])), rtol=1e-4, atol=1e-6
    )
    assert losses["structure_loss"] > 0
    losses["structure_loss"].backward()
    assert model.means.grad.abs().sum() > 0
    model.step = 21_500
    assert "structure_loss" not in model.get_loss_dict(model.get_outputs(camera), batch)


@pytest.mark.parametrize("budget", [{"target_gaussians": 25}, {"target_fraction": 0.05, "target_gaussians": None}])
def test_pruning_schedule_meets_the_budget_with_aligned_optimisers(tiny_scene, teacher_runs, tmp_path, budget):
    config, pipeline, optimizers = student(
        tiny_scene, teacher_runs, tmp_path / "cache", steps=100, refine_every=20, **budget
    )
    model = pipeline.model
    expected = budget["target_gaussians"] or round(0.05 * len(model.teacher_means))
    sample_at, prune_at = config.pipeline.model.sample_at, config.pipeline.model.prune_at
    counts = {}
    for step in range(100):
        train_steps(pipeline, optimizers, range(step, step + 1))
        counts[step] = model.num_points
    assert counts[sample_at] < counts[sample_at - 1], "importance sampling should have removed Gaussians"
    assert counts[prune_at] <= expected and counts[99] <= expected
    for name, optimizer in optimizers.optimizers.items():
        if name in model.gauss_params:
            param = optimizer.param_groups[0]["params"][0]
            assert param is model.gauss_params[name]
            assert optimizer.state[param]["exp_avg"].shape == param.shape
    assert torch.isfinite(model.means).all()
