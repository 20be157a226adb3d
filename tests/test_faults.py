"""Things that go wrong in practice: each stops with one clear line and leaves nothing half-written."""

from __future__ import annotations

import errno
import shutil

import numpy as np
import pytest
import torch

from distilled_splat.data import teacher_cache
from distilled_splat.errors import DistilledSplatError
from distilled_splat.method_configs import distilled_splatfacto_paper, distilled_teacher
from distilled_splat.models.portable_splatfacto import PortableSplatfactoModel
from distilled_splat.recipe import Recipe
from distilled_splat.run_configs import RecipeSettings
from distilled_splat.training import export_ply, is_complete_checkpoint
from tests.helpers import build_pipeline, train_run, train_steps


def disk_full(*_args, **_kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def student(tiny_scene, teachers, cache_dir, **model_settings):
    settings = {"teachers": tuple(teachers), "teacher_cache_dir": cache_dir}
    return build_pipeline(
        distilled_splatfacto_paper.config, tiny_scene, steps=100, datamanager=settings, **model_settings
    )


def test_nan_in_training_stops_at_that_step_naming_the_last_good_checkpoint(tiny_scene, tmp_path, monkeypatch):
    real_loss = PortableSplatfactoModel.get_loss_dict

    def poisoned(self, outputs, batch, metrics_dict=None):
        losses = real_loss(self, outputs, batch, metrics_dict)
        if self.step == 12:
            losses["main_loss"] = losses["main_loss"] * float("nan")
        return losses

    monkeypatch.setattr(PortableSplatfactoModel, "get_loss_dict", poisoned)
    with pytest.raises(DistilledSplatError) as error:
        train_run(distilled_teacher.config, tiny_scene, tmp_path, 20)
    message = str(error.value)
    assert "diverged at step 12" in message and "last good checkpoint: " in message
    checkpoint = message.split("last good checkpoint: ")[1]
    state = torch.load(checkpoint, map_location="cpu")
    assert state["step"] < 12 and torch.isfinite(state["pipeline"]["_model.gauss_params.means"]).all()


def test_truncated_teacher_checkpoint_is_refused_by_name(tiny_scene, teacher_runs, tmp_path):
    broken = shutil.copytree(teacher_runs[1].parent, tmp_path / "broken")
    checkpoint = next((broken / "nerfstudio_models").glob("*.ckpt"))
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])
    with pytest.raises(DistilledSplatError, match=f"teacher checkpoint {checkpoint} is unreadable"):
        student(tiny_scene, [teacher_runs[0], broken], tmp_path / "cache")
    assert not (tmp_path / "cache").exists()


@pytest.mark.parametrize("budget", [10**6, 0])
def test_impossible_budgets_are_refused(tiny_scene, teacher_runs, tmp_path, budget):
    with pytest.raises(DistilledSplatError, match=f"target-gaussians {budget}: must be between 1 and the vanilla"):
        student(tiny_scene, teacher_runs, tmp_path / "cache", target_gaussians=budget)


@pytest.mark.parametrize("failing_write", ["staged render", "aggregated view"])
def test_disk_full_while_building_the_cache_leaves_no_cache(
    tiny_scene, teacher_runs, tmp_path, monkeypatch, failing_write
):
    # Both writes happen in the cache's writer threads; the error must still reach the build.
    real_save = np.save

    def staging_fails(path, array):
        if path.parent.name.startswith("teacher_"):  # not teacher_means.npy, which the main thread writes
            disk_full()
        real_save(path, array)

    if failing_write == "staged render":
        monkeypatch.setattr(teacher_cache.np, "save", staging_fails)
    else:
        monkeypatch.setattr(teacher_cache.Image.Image, "save", disk_full)
    with pytest.raises(DistilledSplatError, match="cannot write the teacher cache .*No space left on device"):
        student(tiny_scene, teacher_runs, tmp_path / "cache")
    assert list(tmp_path.iterdir()) == []


def test_disk_full_during_export_keeps_the_previous_file(trained_teacher, tmp_path, monkeypatch):
    from nerfstudio.scripts import exporter

    target = tmp_path / "model.ply"
    target.write_bytes(b"previous export")
    monkeypatch.setattr(exporter.ExportGaussianSplat, "main", disk_full)
    with pytest.raises(DistilledSplatError, match="cannot write .*model.ply: No space left on device"):
        export_ply(trained_teacher, target)
    assert target.read_bytes() == b"previous export"
    assert [p.name for p in tmp_path.iterdir()] == ["model.ply"], "no temporary file may be left behind"


def test_unwritable_output_folder_is_named(tiny_scene, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    recipe = Recipe(tiny_scene, blocker / "out", RecipeSettings(steps=10, device="cpu"))
    with pytest.raises(DistilledSplatError, match=f"cannot write {blocker / 'out'}"):
        recipe.execute()


def test_nan_check_runs_in_every_model(tiny_scene):
    _, pipeline, optimizers = build_pipeline(distilled_teacher.config, tiny_scene, steps=100)
    train_steps(pipeline, optimizers, range(2))
    with torch.no_grad():
        pipeline.model.gauss_params["opacities"][3] = np.inf
    with pytest.raises(DistilledSplatError, match="diverged at step 1: NaN or Inf in the Gaussians' opacities"):
        pipeline.model.step_post_backward(pipeline.model.step)


def test_torn_checkpoint_is_never_trusted(tiny_scene, tmp_path):
    config_path = train_run(distilled_teacher.config, tiny_scene, tmp_path, 20)
    checkpoint = next((config_path.parent / "nerfstudio_models").glob("*.ckpt"))
    assert is_complete_checkpoint(checkpoint)
    checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])  # killed mid-write
    assert not is_complete_checkpoint(checkpoint)
    train_run(distilled_teacher.config, tiny_scene, tmp_path, 20)  # trains again instead of trusting it
    assert is_complete_checkpoint(checkpoint)
    assert torch.load(checkpoint, map_location="cpu")["step"] == 19


def test_a_later_training_in_the_same_process_leaves_a_finished_run_alone(tiny_scene, tmp_path):
    """nerfstudio keeps every run's event writers in one module-wide list: a frontier or a benchmark that trains
    several models in one process must not log a later model into an earlier run's files (nor re-create them
    once that run's folder is gone, which made the training-time benchmark fail to clean up)."""
    from nerfstudio.utils import writer as event_writers

    writers = len(event_writers.EVENT_WRITERS)
    first = train_run(distilled_teacher.config, tiny_scene, tmp_path, 2, timestamp="first").parent
    sizes = {path: path.stat().st_size for path in first.glob("events.out.tfevents.*")}
    assert sizes and len(event_writers.EVENT_WRITERS) == writers
    train_run(distilled_teacher.config, tiny_scene, tmp_path, 2, timestamp="second")
    for event_writer in event_writers.EVENT_WRITERS:  # anything still listed would now write what it holds
        if isinstance(event_writer, event_writers.TensorboardWriter):
            event_writer.tb_writer.flush()
    assert len(event_writers.EVENT_WRITERS) == writers
    assert {path: path.stat().st_size for path in first.glob("events.out.tfevents.*")} == sizes
