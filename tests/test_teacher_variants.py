"""The perturbed and dropout teachers: each mechanism does exactly what it claims, and only when it should."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from distilled_splat.errors import DistilledSplatError
from distilled_splat.method_configs import distilled_teacher, distilled_teacher_dropout, distilled_teacher_noise
from distilled_splat.models.dropout_splatfacto import DropoutSplatfactoModelConfig
from distilled_splat.models.perturbed_splatfacto import PerturbedSplatfactoModelConfig
from distilled_splat.ops.perturb import clone_candidates, perturb
from distilled_splat.ops.rotations import quat_to_6d, rotmat_from_6d, rotmat_to_quat
from distilled_splat.schedules import scale_to_run_length
from tests.helpers import build_pipeline, train_steps


def adam_moments(optimizers, name):
    optimizer = optimizers[name]
    return optimizer.state[optimizer.param_groups[0]["params"][0]]


def test_rotation_6d_round_trip():
    torch.manual_seed(0)
    quats = torch.nn.functional.normalize(torch.randn(500, 4), dim=-1)
    quats = torch.where(quats[:, :1] < 0, -quats, quats)
    torch.testing.assert_close(rotmat_to_quat(rotmat_from_6d(quat_to_6d(3.0 * quats))), quats, atol=1e-5, rtol=0)


def test_noisy_6d_maps_to_the_gram_schmidt_rotation():
    """Perturbation adds noise to the 6D representation, so its two columns are no longer orthonormal: the map
    back keeps the first column's direction and the part of the second orthogonal to it."""
    six = torch.randn(64, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    rotations = rotmat_from_6d(six)
    first, second = six[:, :3], six[:, 3:]
    first = first / first.norm(dim=-1, keepdim=True)
    second = second - (first * second).sum(-1, keepdim=True) * first
    torch.testing.assert_close(rotations[..., 0], first)
    torch.testing.assert_close(rotations[..., 1], second / second.norm(dim=-1, keepdim=True))
    eye = torch.eye(3, dtype=torch.float64).expand(64, 3, 3)
    torch.testing.assert_close(rotations.transpose(1, 2) @ rotations, eye)
    torch.testing.assert_close(torch.linalg.det(rotations), torch.ones(64, dtype=torch.float64))


def test_noise_std_follows_the_reference_rule():
    torch.manual_seed(0)
    n = 20_000
    params = nn.ParameterDict(
        {
            "means": nn.Parameter(torch.full((n, 3), 10.0)),  # mean |x| = 10: std 1.0
            "opacities": nn.Parameter(torch.full((n,), 0.2)),  # mean |x| < 1: std 0.1
        }
    )
    optimizers = {name: torch.optim.Adam([param], lr=0.1) for name, param in params.items()}
    mask = torch.ones(n, dtype=torch.bool)
    perturb(params, optimizers, mask, noise_scale=0.1, names=["means", "opacities"])
    assert float((params["means"].detach() - 10.0).std()) == pytest.approx(1.0, rel=0.03)
    assert float((params["opacities"].detach() - 0.2).std()) == pytest.approx(0.1, rel=0.03)


@pytest.fixture
def noise_teacher(tiny_scene):
    """A perturbed teacher after a few real steps, with full-length (unscaled) schedules."""
    config = copy.deepcopy(distilled_teacher_noise.config)
    config.scale_schedules = False
    config, pipeline, optimizers = build_pipeline(config, tiny_scene, steps=30_000)
    train_steps(pipeline, optimizers, range(3))
    return pipeline.model, optimizers.optimizers


@pytest.mark.parametrize("step, inside", [(499, False), (500, True), (750, False), (15_000, True), (15_500, False)])
def test_perturbation_touches_exactly_the_candidates_and_only_in_the_window(noise_teacher, step, inside):
    model, optimizers = noise_teacher
    num = model.num_points
    grad_high = torch.zeros(num, dtype=torch.bool)
    grad_high[::3] = True
    model.strategy_state["grad2d"] = grad_high.float() * 10 * model.strategy.grow_grad2d
    model.strategy_state["count"] = torch.ones(num)
    with torch.no_grad():
        model.gauss_params["scales"][:] = -7.0
        model.gauss_params["scales"][::2] = 5.0  # too large to clone
    expected = clone_candidates(model.gauss_params, model.strategy_state, model.strategy)
    assert 0 < int(expected.sum()) < int(grad_high.sum())
    before = {name: param.detach().clone() for name, param in model.gauss_params.items()}
    moments_before = {name: adam_moments(optimizers, name)["exp_avg"].clone() for name in before}

    touched = model.perturb_clone_candidates(step)

    assert touched == (int(expected.sum()) if inside else 0)
    for name, param in model.gauss_params.items():
        changed = (param.detach() != before[name]).reshape(num, -1).any(dim=1)
        if inside and name in model.config.perturb_attributes:
            assert torch.equal(changed, expected), name
            assert adam_moments(optimizers, name)["exp_avg"][expected].abs().sum() == 0, name
            torch.testing.assert_close(
                adam_moments(optimizers, name)["exp_avg"][~expected], moments_before[name][~expected]
            )
        else:
            assert not changed.any(), name
        assert optimizers[name].param_groups[0]["params"][0] is param, f"optimiser lost track of {name}"


def test_dropout_schedule_and_both_recipes():
    config = DropoutSplatfactoModelConfig()
    assert config.drop_rate(100) == 0.0  # before the ramp
    assert config.drop_rate(7750) == pytest.approx(0.1)
    assert config.drop_rate(29_000) == pytest.approx(0.2)  # capped
    reference = DropoutSplatfactoModelConfig(
        dropout_start=15_000, dropout_stop=25_000, dropout_every=1000, dropout_rate_cap=0.95
    )
    assert reference.drop_rate(15_500) == 0.0
    assert reference.drop_rate(25_000) == pytest.approx(0.2 * 24_500 / 14_500)
    assert sum(reference.drop_rate(step) > 0 for step in range(30_000)) == 11
    scaled = scale_to_run_length(distilled_teacher_dropout.config, 3000).pipeline.model
    assert (scaled.dropout_ramp_start, scaled.dropout_ramp_end, scaled.dropout_stop) == (50, 1500, 3000)


@pytest.mark.parametrize(
    "config_class, settings",
    [
        (DropoutSplatfactoModelConfig, {"dropout_rate_cap": 1.0}),
        (DropoutSplatfactoModelConfig, {"dropout_ramp_end": 10}),
        (PerturbedSplatfactoModelConfig, {"perturb_every": 0}),
        (PerturbedSplatfactoModelConfig, {"perturb_attributes": ("colours",)}),
    ],
)
def test_impossible_settings_are_refused(config_class, settings):
    with pytest.raises(DistilledSplatError, match="--pipeline.model"):
        config_class(**settings)


def separated_splats(model, camera, count_per_side=4):
    """Small, non-overlapping, half-transparent Gaussians in front of ``camera``: rendering is linear in opacity."""
    c2w = camera.camera_to_worlds[0]
    right, up, backward, origin = c2w[:, 0], c2w[:, 1], c2w[:, 2], c2w[:, 3]
    offsets = torch.linspace(-0.3, 0.3, count_per_side)
    grid_x, grid_y = torch.meshgrid(offsets, offsets, indexing="ij")
    means = origin - 2.0 * backward + grid_x.reshape(-1, 1) * right + grid_y.reshape(-1, 1) * up
    num = len(means)
    values = {
        "means": means,
        "scales": torch.full((num, 3), -4.0),
        "quats": torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(num, 1),
        "opacities": torch.full((num, 1), 0.0),  # sigmoid: 0.5
        "features_dc": torch.rand(num, 3),
        "features_rest": torch.zeros(num, 15, 3),
    }
    for name, value in values.items():
        model.gauss_params[name] = nn.Parameter(value)


def test_dropout_compensation_keeps_the_expected_render_and_eval_is_untouched(tiny_scene):
    config, pipeline, _ = build_pipeline(
        distilled_teacher_dropout.config, tiny_scene, steps=30_000, background_color="black"
    )
    model = pipeline.model
    camera = pipeline.datamanager.train_dataset.cameras[0:1]
    separated_splats(model, camera)
    model.step = 20_000  # rate 0.2
    model.eval()
    with torch.no_grad():
        reference = model.get_outputs(camera)["rgb"]
        assert torch.equal(model.get_outputs(camera)["rgb"], reference), "eval renders must be deterministic"
    model.train()  # training renders keep gradients: the densification strategy hooks into them
    torch.manual_seed(0)
    renders = torch.stack([model.get_outputs(camera)["rgb"].detach() for _ in range(400)])
    assert reference.max() > 0.1
    assert not torch.equal(renders[0], reference), "a training render should drop some Gaussians"
    opacities = torch.stack([model.splat_inputs(None)["opacities"].detach() for _ in range(400)])
    assert float((opacities == 0).float().mean()) == pytest.approx(0.2, abs=0.02)
    assert torch.allclose(opacities[opacities > 0], torch.tensor(0.5 / 0.8))
    # Statistical error of 400 draws is ~2.5% per splat; without compensation the mean would be 20% dark.
    torch.testing.assert_close(renders.mean(0), reference, atol=0.08 * float(reference.max()), rtol=0)


def test_training_with_one_seed_is_reproducible(tiny_scene):
    """What the variants are is checked by their mechanisms above (exactly the clone candidates perturbed, inside
    the window; the dropout render's expectation); a difference in trained results alone would prove nothing."""

    def trained_means():
        config, pipeline, optimizers = build_pipeline(
            distilled_teacher.config, tiny_scene, steps=60, seed=3, refine_every=20
        )
        train_steps(pipeline, optimizers, range(60))
        return pipeline.model.means.detach()

    # CPU float reductions are not bitwise reproducible: equal within 1e-5.
    torch.testing.assert_close(trained_means(), trained_means(), atol=1e-5, rtol=0)
