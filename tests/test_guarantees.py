"""Guarantees the README promises, each checked so that breaking it fails: a hard budget (across resumes),
scheduled events that cannot silently skip, the structural loss as a distance that moves the student."""

from __future__ import annotations

import copy

import pytest
import torch
from gsplat.strategy import default as gsplat_default
from torch import nn

from distilled_splat.errors import DistilledSplatError
from distilled_splat.losses import StructureLoss, structure_loss
from distilled_splat.method_configs import (
    distilled_splatfacto,
    distilled_splatfacto_paper,
    distilled_teacher,
    distilled_teacher_dropout,
    distilled_teacher_noise,
    without_pseudo_views,
)
from distilled_splat.ops.perturb import clone_candidates
from distilled_splat.schedules import scale_to_run_length
from distilled_splat.strategy.capped import CAP_KEY, CappedDefaultStrategy, set_ceiling
from tests.helpers import build_pipeline, spy_on_growth, train_steps


def gaussians(count: int, generator: torch.Generator):
    params = nn.ParameterDict(
        {
            "means": nn.Parameter(torch.randn(count, 3, generator=generator)),
            "scales": nn.Parameter(torch.full((count, 3), -6.0)),  # small: growth clones rather than splits
            "quats": nn.Parameter(torch.randn(count, 4, generator=generator)),
            "opacities": nn.Parameter(torch.zeros(count)),
        }
    )
    optimizers = {name: torch.optim.Adam([param], lr=0.01) for name, param in params.items()}
    return params, optimizers


def refinement_state(count: int, grads: torch.Tensor) -> dict:
    return {"grad2d": grads.clone(), "count": torch.ones(count), "radii": torch.zeros(count), "scene_scale": 1.0}


@pytest.mark.parametrize("ceiling_in_state", [False, True])
def test_growth_fills_the_room_exactly_with_the_highest_gradients(ceiling_in_state):
    generator = torch.Generator().manual_seed(0)
    params, optimizers = gaussians(50, generator)
    strategy = CappedDefaultStrategy(max_count=10_000 if ceiling_in_state else 60, grow_grad2d=0.5)
    grads = torch.rand(50, generator=generator) * 2  # about 37 candidates above 0.5, room for 10
    state = refinement_state(50, grads)
    if ceiling_in_state:
        set_ceiling(state, 60)
    original = params["means"].detach().clone()
    strategy._grow_gs(params, optimizers, state, step=1000)
    assert len(params["means"]) == 60
    top = torch.topk(grads, 10).indices
    assert torch.equal(params["means"].detach()[50:], original[top.sort().values]), "the 10 highest gradients grow"
    state = refinement_state(60, torch.full((60,), 2.0))
    if ceiling_in_state:
        set_ceiling(state, 60)
    assert strategy._grow_gs(params, optimizers, state, step=1100) == (0, 0) and len(params["means"]) == 60


def test_growth_ranks_mean_gradients_and_counts_screen_size_candidates():
    """Candidates are ranked by their mean gradient (sum over its count), which in real runs is far below 1;
    while gsplat still splits by screen size, large-on-screen Gaussians are candidates too, and the ones left
    waiting neither clone nor split."""
    generator = torch.Generator().manual_seed(1)
    params, optimizers = gaussians(40, generator)
    counts = torch.randint(1, 6, (40,), generator=generator).float()
    mean_grads = torch.rand(40, generator=generator) * 0.002  # gsplat's default threshold is 0.0002
    strategy = CappedDefaultStrategy(max_count=48, grow_grad2d=0.0005, refine_scale2d_stop_iter=0)
    state = refinement_state(40, mean_grads * counts)
    state["count"] = counts.clone()
    original = params["means"].detach().clone()
    strategy._grow_gs(params, optimizers, state, step=1000)
    ranked = torch.where(mean_grads > 0.0005, mean_grads, torch.full_like(mean_grads, -1.0))
    top = torch.topk(ranked, 8).indices.sort().values
    assert torch.equal(params["means"].detach()[40:], original[top]), "the 8 highest mean gradients clone"

    params, optimizers = gaussians(20, generator)
    grads = torch.zeros(20)
    grads[:4] = 1.0  # four gradient candidates (small: they clone)
    radii = torch.zeros(20)
    radii[4:7] = 0.5  # three screen-size candidates (they split), grads 0.3, 0.2, 0.1 rank them
    grads[4:7] = torch.tensor([0.3, 0.2, 0.1])
    strategy = CappedDefaultStrategy(max_count=25, grow_grad2d=0.5, grow_scale2d=0.05, refine_scale2d_stop_iter=2000)
    state = refinement_state(20, grads)
    state["radii"] = radii
    duplicated, split = strategy._grow_gs(params, optimizers, state, step=1000)
    assert (duplicated, split) == (4, 1) and len(params["means"]) == 25, "the best screen-size candidate splits"
    state = refinement_state(25, torch.full((25,), 2.0))
    strategy.max_count = 26
    assert strategy._grow_gs(params, optimizers, state, step=3000) == (1, 0), "room for one grows one"


def test_clone_candidates_are_exactly_what_gsplat_duplicates(tiny_scene):
    """Compared with gsplat's own DefaultStrategy refinement on the same Gaussians and statistics."""
    config = copy.deepcopy(distilled_teacher_noise.config)
    config.scale_schedules = False
    _, pipeline, optimizers = build_pipeline(config, tiny_scene, steps=30_000)
    train_steps(pipeline, optimizers, range(3))
    model = pipeline.model
    num = model.num_points
    state = model.strategy_state
    state["grad2d"] = torch.linspace(0, 2 * model.strategy.grow_grad2d, num)
    state["count"] = torch.ones(num)
    with torch.no_grad():
        model.gauss_params["scales"][::2] = -7.0  # half small enough to clone, half large enough to split
    ours = clone_candidates(model.gauss_params, state, model.strategy)
    duplicated = []
    real_duplicate = gsplat_default.duplicate

    def spy(params, optimizers, state, mask):
        duplicated.append(mask.clone())
        real_duplicate(params=params, optimizers=optimizers, state=state, mask=mask)

    gsplat_default.duplicate = spy
    try:
        params = copy.deepcopy(model.gauss_params)
        opts = {k: copy.deepcopy(v) for k, v in optimizers.optimizers.items() if k in params}
        n_dupli, n_split = gsplat_default.DefaultStrategy._grow_gs(
            model.strategy, params, opts, copy.deepcopy(state), step=20_000
        )
    finally:
        gsplat_default.duplicate = real_duplicate
    assert n_dupli > 0 and n_split > 0
    assert torch.equal(duplicated[0], ours)


def student_pipeline(tiny_scene, teacher_runs, tmp_path, **settings):
    datamanager = {"teachers": tuple(teacher_runs), "teacher_cache_dir": tmp_path / "cache"}
    return build_pipeline(distilled_splatfacto_paper.config, tiny_scene, steps=100, datamanager=datamanager, **settings)


def test_budget_holds_at_every_step_after_the_prune_even_across_a_resume(tiny_scene, teacher_runs, tmp_path):
    # Densification keeps growing after the prune here, with a low threshold, so only the ceiling stops it.
    settings = dict(target_gaussians=40, refine_every=5, stop_split_at=100, densify_grad_thresh=1e-6, seed=0)
    config, pipeline, optimizers = student_pipeline(tiny_scene, teacher_runs, tmp_path, **settings)
    prune_at = config.pipeline.model.prune_at
    refused = spy_on_growth(pipeline.model.strategy)
    counts = []
    for step in range(prune_at + 10):
        train_steps(pipeline, optimizers, range(step, step + 1))
        counts.append(pipeline.model.num_points)
    assert max(counts[prune_at:]) <= 40 and counts[prune_at - 1] > 40
    # What a checkpoint holds, loaded into a freshly built student, as `ns-train --load-dir` does.
    saved = copy.deepcopy(pipeline.model.state_dict())
    resumed_config, resumed, resumed_optimizers = student_pipeline(tiny_scene, teacher_runs, tmp_path, **settings)
    assert CAP_KEY not in resumed.model.strategy_state
    resumed.model.load_state_dict(saved)
    resumed_optimizers.load_optimizers({k: v.state_dict() for k, v in optimizers.optimizers.items()})
    resumed.model.step_cb(resumed_optimizers, prune_at + 10)
    assert resumed.model.strategy_state[CAP_KEY] == 40
    resumed_refused = spy_on_growth(resumed.model.strategy)
    resumed_counts = []
    for step in range(prune_at + 10, 100):
        train_steps(resumed, resumed_optimizers, range(step, step + 1))
        resumed_counts.append(resumed.model.num_points)
    print(
        f"budget 40: before the prune {counts[prune_at - 1]}, largest count after it {max(counts[prune_at:])}, "
        f"after the resume {max(resumed_counts)} (steps {prune_at}-99); growth candidates refused at the ceiling: "
        f"{refused} before the resume, {resumed_refused} after"
    )
    assert max(resumed_counts) <= 40
    # The ceiling, not a lack of candidates, is what held the count: growth was tried and refused, both times.
    assert sum(refused) > 0 and sum(resumed_refused) > 0, "growth must be tried and refused at the ceiling"


def turn_off_prune(model) -> None:
    model.prune_at, model.target_fraction = None, None  # no prune: no budget either (the config requires both)


def turn_off_sample(model) -> None:
    model.sample_at = None


def turn_off_structure(model) -> None:
    model.structure_weight = 0.0


def one_cut(model) -> None:
    model.budget_cuts = 1


@pytest.mark.parametrize(
    "method, setting, step, turn_off, how",
    [
        (distilled_splatfacto_paper, "prune_at", 20_000, turn_off_prune, "prune-at None turns it off"),
        (distilled_splatfacto_paper, "sample_at", 15_000, turn_off_sample, "sample-at None turns it off"),
        (distilled_splatfacto_paper, "structure_start", 21_000, turn_off_structure, "structure-weight 0 turns it off"),
        (distilled_splatfacto, "cuts_stop", 15_000, one_cut, "budget-cuts 1 cuts once"),
        (distilled_teacher_noise, "perturb_start", 500, None, "train distilled-teacher instead"),
        (distilled_teacher_dropout, "dropout_start", 500, None, "train distilled-teacher instead"),
    ],
)
def test_events_after_the_last_step_are_refused_unless_turned_off(method, setting, step, turn_off, how):
    """Each event the model exists for: inside the run it is accepted; after the run's last step it is refused
    in one line that names it and the way out; turned off that way (where it can be), the same run is accepted."""
    config = copy.deepcopy(method.config)
    config.scale_schedules = False
    config.max_num_iterations = 400
    model = config.pipeline.model
    for name in ("sample_at", "prune_at", "structure_start", "perturb_start", "dropout_start", "cuts_stop"):
        if hasattr(model, name):  # every event inside the run
            setattr(model, name, 100)
    if hasattr(config.pipeline.datamanager, "pseudo_start"):
        config.pipeline.datamanager.pseudo_start = 100
    config.check_events_fit()
    setattr(model, setting, step)
    with pytest.raises(
        DistilledSplatError, match=f"--pipeline.model.{setting.replace('_', '-')} .* never happen.*{how}"
    ):
        config.check_events_fit()
    if turn_off is not None:
        turn_off(model)
        config.check_events_fit()  # turned off explicitly: accepted


def test_pseudo_views_starting_after_the_last_step_are_refused_unless_turned_off():
    config = scale_to_run_length(distilled_splatfacto.config, 400)  # every other event inside the run
    datamanager = config.pipeline.datamanager
    datamanager.pseudo_start = 399
    config.check_events_fit()
    datamanager.pseudo_start = 400
    with pytest.raises(
        DistilledSplatError, match="--pipeline.datamanager.pseudo-start 400 .* never happen.*pseudo-share 0 turns"
    ):
        config.check_events_fit()
    without_pseudo_views(config)
    config.check_events_fit()


def test_plain_teacher_has_no_events_to_check():
    config = copy.deepcopy(distilled_teacher.config)
    config.max_num_iterations = 10
    config.check_events_fit()


def test_structure_loss_of_identical_large_sets_is_zero_not_negative():
    points = torch.randn(100_000, 3, generator=torch.Generator().manual_seed(0))
    for mode in ("joint", "marginal"):
        loss = float(structure_loss(points, points.clone(), mode=mode))
        assert 0 <= loss < 1e-9, (mode, loss)


def test_structure_loss_moves_the_students_centres_towards_the_teachers(tiny_scene, teacher_runs, tmp_path):
    """Same student, same seed, with and without the loss on its last 40 steps: with it, the centres end closer
    to the vanilla teacher's distribution (1 - cosine of the histograms)."""
    distances = {}
    for weight in (0.0, 20.0):
        settings = dict(structure_weight=weight, structure_start=60, structure_stop=99, structure_every=1, seed=0)
        settings.update(structure_grid=32, structure_sigma=1.0)  # coarse enough for 100 steps to show a change
        _, pipeline, optimizers = student_pipeline(tiny_scene, teacher_runs, tmp_path / str(weight), **settings)
        train_steps(pipeline, optimizers, range(100))
        measure = StructureLoss(pipeline.model.teacher_means, "marginal", grid_size=32, sigma=1.0)
        distances[weight] = float(measure(pipeline.model.means.detach()))
    assert distances[20.0] < 0.9 * distances[0.0], distances


def test_structure_loss_of_nearby_large_sets_matches_float64():
    """The cosine over 16.7M voxels must not lose the small distances that matter late in training."""
    generator = torch.Generator().manual_seed(1)
    teacher = torch.randn(100_000, 3, generator=generator)
    student = teacher[:50_000] + 0.002 * torch.randn(50_000, 3, generator=generator)
    for mode in ("joint", "marginal"):
        single = float(structure_loss(student, teacher, mode=mode))
        double = float(structure_loss(student.double(), teacher.double(), mode=mode))
        assert abs(single - double) < 1e-4 * double, (mode, single, double)


def test_a_student_that_ends_above_its_budget_fails_instead_of_finishing(
    tiny_scene, teacher_runs, tmp_path, monkeypatch
):
    """Whatever keeps a student above its budget (here: its cuts made to do nothing), the run fails at its last
    step in one line and leaves no finished run to report."""
    from distilled_splat.strategy.compaction import CompactionStrategy
    from distilled_splat.training import is_trained, train
    from tests.helpers import training_config

    monkeypatch.setattr(CompactionStrategy, "cut_towards_budget", lambda *args, **kwargs: 0)
    config = training_config(
        distilled_splatfacto.config, tiny_scene, tmp_path / "runs", 12,
        datamanager={"teachers": tuple(teacher_runs[:1]), "teacher_cache_dir": tmp_path / "cache"},
        target_gaussians=30,
    )  # fmt: skip
    with pytest.raises(DistilledSplatError, match=r"ends at step 11 with \d+ Gaussians, above its budget of 30"):
        train(config)
    assert not is_trained(config)
