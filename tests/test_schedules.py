"""Scaled schedules keep every training phase alive in short runs."""

from __future__ import annotations

import copy

import pytest

from distilled_splat.frontier.contenders import CONTENDERS, Setup
from distilled_splat.method_configs import distilled_splatfacto, distilled_splatfacto_paper, distilled_teacher
from distilled_splat.models.distilled_splatfacto import MERGE_ONCE_FROM_STEPS
from distilled_splat.schedules import scale_to_run_length
from distilled_splat.teachers import read_config


def refinement_steps(model, max_steps: int, num_train_views: int):
    """Steps at which gsplat's DefaultStrategy, built the way splatfacto builds it, would densify."""
    reset_every = model.reset_alpha_every * model.refine_every
    pause = num_train_views + model.refine_every
    return [
        step
        for step in range(max_steps)
        if model.warmup_length < step < model.stop_split_at
        and step % model.refine_every == 0
        and step % reset_every >= pause
    ]


@pytest.mark.parametrize("steps", [1000, 2000, 7000, 30_000])
def test_short_runs_still_densify_and_reset(steps):
    config = scale_to_run_length(distilled_teacher.config, steps)
    model = config.pipeline.model
    refines = refinement_steps(model, steps, num_train_views=42)
    assert len(refines) >= 3
    assert model.stop_split_at == round(15_000 * steps / 30_000)
    assert config.optimizers["means"]["scheduler"].max_steps == steps
    assert config.max_num_iterations == steps


def test_full_length_is_splatfacto_and_original_is_untouched():
    config = scale_to_run_length(distilled_teacher.config, 30_000)
    assert config.pipeline.model.reset_alpha_every == 30 and config.pipeline.model.warmup_length == 500
    scale_to_run_length(distilled_teacher.config, 1000)
    assert distilled_teacher.config.pipeline.model.stop_split_at == 15_000
    with pytest.raises(ValueError):
        scale_to_run_length(distilled_teacher.config, 0)


def test_student_phases_scale_and_disabled_ones_stay_off():
    model = scale_to_run_length(distilled_splatfacto_paper.config, 3000).pipeline.model
    assert (model.sample_at, model.prune_at, model.structure_start, model.structure_every) == (1500, 2000, 2100, 100)
    disabled = copy.deepcopy(distilled_splatfacto_paper.config)
    disabled.pipeline.model.sample_at = None
    assert scale_to_run_length(disabled, 3000).pipeline.model.sample_at is None


@pytest.mark.parametrize("steps, cuts", [(60, 8), (1000, 8), (1999, 8), (2000, 1), (4000, 1), (30_000, 1)])
def test_the_default_student_cuts_by_the_run_length_and_never_densifies(steps, cuts):
    """Eight cuts over the first half of a short run, one cut at step 0 from MERGE_ONCE_FROM_STEPS on; pseudo
    views from half the run on either way."""
    assert MERGE_ONCE_FROM_STEPS == 2000
    config = scale_to_run_length(distilled_splatfacto.config, steps)
    model = config.pipeline.model
    # 0 is "from the start" and must stay 0: stop-split-at 1 would reset every opacity at step 0.
    assert model.stop_split_at == 0 and model.init == "teacher"
    assert abs(model.cuts_stop - steps / 2) <= 0.5
    expected = (0,) if cuts == 1 else tuple(round(i * model.cuts_stop / 7) for i in range(8))
    assert model.budget_cuts == cuts and model.cut_steps() == expected
    assert config.pipeline.datamanager.pseudo_start == model.cuts_stop
    assert config.optimizers["means"]["scheduler"] is None


@pytest.mark.parametrize("steps", [1000, 4000, 10_000, 30_000, 60_000])
def test_the_default_student_fine_tunes_as_mcmc_with_regularisers_scaled_by_the_run_length(steps):
    """3DGS-MCMC's regularisers at 0.01 x steps / 30000 (at most 0.01) for the student and its ablations; the
    alternatives that stand for published methods (LightGaussian, PUP-3DGS, a decimated model fine-tuned) keep
    splatfacto's fine-tune."""
    assert distilled_splatfacto.config.pipeline.model.fine_tune_regulariser is None
    config = scale_to_run_length(distilled_splatfacto.config, steps)
    expected = 0.01 * min(steps, 30_000) / 30_000
    assert config.pipeline.model.fine_tune == "mcmc"
    assert config.pipeline.model.fine_tune_regulariser == pytest.approx(expected, rel=1e-12)
    setup = Setup(budget_count=10, decimated_checkpoint=lambda: "decimated.ckpt")
    for name, kept in [("student-no-distill", "mcmc"), ("student-one-cut", "mcmc"), ("pup-pruned", "default"),
                       ("pruned-finetuned", "default"), ("decimated-finetuned", "default")]:  # fmt: skip
        contender = copy.deepcopy(config)
        CONTENDERS[name].settings(contender, setup)
        assert contender.pipeline.model.fine_tune == kept, name
    chosen = copy.deepcopy(distilled_splatfacto.config)
    chosen.pipeline.model.fine_tune_regulariser = 0.02
    assert scale_to_run_length(chosen, 1000).pipeline.model.fine_tune_regulariser == 0.02


def test_a_chosen_number_of_cuts_is_kept_at_any_length():
    chosen = copy.deepcopy(distilled_splatfacto.config)
    chosen.pipeline.model.budget_cuts = 3
    assert scale_to_run_length(chosen, 4000).pipeline.model.budget_cuts == 3
    assert scale_to_run_length(chosen, 1000).pipeline.model.budget_cuts == 3


def test_ns_train_settles_the_cuts_at_full_length_too(tiny_scene, teacher_runs, tmp_path):
    """A 30000-step ns-train run is not rescaled, and still gets its cuts settled before the run starts."""
    config = copy.deepcopy(distilled_splatfacto.config)
    config.output_dir, config.machine.device_type = tmp_path, "cpu"
    config.pipeline.datamanager.data = tiny_scene
    config.pipeline.datamanager.teachers = teacher_runs[:1]
    config.save_config()
    assert config.max_num_iterations == 30_000 and config.pipeline.model.budget_cuts == 1
    saved = read_config(config.get_base_dir() / "config.yml").pipeline.model
    assert (saved.budget_cuts, saved.fine_tune_regulariser) == (1, 0.01), "the saved config holds what the run does"
