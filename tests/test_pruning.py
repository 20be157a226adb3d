"""Importance and pruning: exact importance on both backends, and ops that keep the optimiser state aligned."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from distilled_splat.importance import view_importance
from distilled_splat.ops.prune import (
    cumulative_mass_mask,
    importance_sample_mask,
    keep_only,
    reinitialise,
    replace_gaussians,
    top_k_mask,
)
from tests import reference_rasterizer
from tests.test_torch_rasterizer import HEIGHT, WIDTH, make_scene


def splat_dict(tensors):
    means, quats, scales, opacities, _ = tensors
    return {"means": means, "quats": quats, "scales": scales, "opacities": opacities}


def test_blend_weight_importance_is_exact():
    tensors, viewmat, K = make_scene(n=9, seed=4)
    importance = view_importance(splat_dict(tensors), viewmat, K, WIDTH, HEIGHT)
    # Independent: render each Gaussian's own indicator channel with the per-pixel reference and sum the pixels.
    means, quats, scales, opacities, _ = tensors
    # The reference renders three channels, so three Gaussians' indicators at a time.
    expected = torch.cat(
        [
            reference_rasterizer.render(
                means, quats, scales, opacities, torch.eye(9)[:, group : group + 3], viewmat, K, WIDTH, HEIGHT
            )[0].sum(dim=(0, 1))
            for group in (0, 3, 6)
        ]
    )
    assert expected.max() > 1.0 and (expected > 0).sum() >= 5
    torch.testing.assert_close(importance, expected, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(importance / importance.max(), opacities / opacities.max(), atol=0.05)


def test_area_normalised_importance_divides_by_the_projected_ellipse():
    tensors, viewmat, K = make_scene(n=9, seed=4)
    splats = splat_dict(tensors)
    weights = view_importance(splats, viewmat, K, WIDTH, HEIGHT)
    normalised = view_importance(splats, viewmat, K, WIDTH, HEIGHT, mode="area-normalised")
    means, quats, scales, _, _ = tensors
    for i in range(len(means)):
        projected = reference_rasterizer.project(means[i], quats[i], scales[i], viewmat, K, WIDTH, HEIGHT)
        if projected is None:
            assert normalised[i] == 0
            continue
        ellipse_area = 9 * math.pi / float(torch.linalg.det(projected[2])) ** 0.5  # 3-sigma ellipse
        assert float(normalised[i]) == pytest.approx(float(weights[i]) / ellipse_area, rel=1e-4)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA for gsplat")
def test_importance_agrees_between_gsplat_and_the_cpu_rasteriser():
    tensors, viewmat, K = make_scene(n=40, seed=2)
    cpu = view_importance(splat_dict(tensors), viewmat, K, WIDTH, HEIGHT)
    gpu = view_importance(
        {k: v.cuda() for k, v in splat_dict(tensors).items()}, viewmat.cuda(), K.cuda(), WIDTH, HEIGHT
    )
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=1e-3, atol=1e-3)


def test_importance_sampling_keeps_a_fraction_of_the_visible_by_importance():
    importance = torch.cat([torch.zeros(100), torch.full((100,), 0.01), torch.full((100,), 10.0)])
    keep = importance_sample_mask(importance, 0.5, torch.Generator().manual_seed(0))
    assert int(keep.sum()) == 100  # half of the 200 visible
    assert not keep[:100].any(), "invisible Gaussians are never kept"
    assert keep[200:].sum() > 90, "sampling should strongly prefer the important ones"


def test_cumulative_mass_keeps_the_smallest_set_with_the_share():
    torch.manual_seed(0)
    importance = torch.rand(1000) ** 4
    keep = cumulative_mass_mask(importance, 0.99)
    kept_mass = importance[keep].sum() / importance.sum()
    assert kept_mass >= 0.99
    # Minimal: dropping the least important kept one would fall below the share.
    assert (importance[keep].sum() - importance[keep].min()) / importance.sum() < 0.99
    assert importance[keep].min() >= importance[~keep].max()
    assert int(keep.sum()) < 1000


def test_top_k():
    importance = torch.tensor([0.5, 3.0, 1.0, 2.0])
    assert top_k_mask(importance, 2).tolist() == [False, True, False, True]


def trained_params(num=50):
    torch.manual_seed(0)
    params = nn.ParameterDict(
        {
            "means": nn.Parameter(torch.randn(num, 3)),
            "scales": nn.Parameter(torch.randn(num, 3)),
            "opacities": nn.Parameter(torch.randn(num, 1)),
            "features_rest": nn.Parameter(torch.randn(num, 15, 3)),
        }
    )
    optimizers = {name: torch.optim.Adam([param], lr=0.01) for name, param in params.items()}
    for _ in range(3):
        loss = sum(
            (param**2).sum() * (1 + torch.arange(num).float().view(-1, *[1] * (param.dim() - 1))).mean()
            for param in params.values()
        )
        loss.backward()
        for optimizer in optimizers.values():
            optimizer.step()
            optimizer.zero_grad()
    return params, optimizers


def moments(optimizers, name):
    optimizer = optimizers[name]
    return optimizer.state[optimizer.param_groups[0]["params"][0]]


def test_keep_only_keeps_optimiser_and_strategy_state_aligned():
    params, optimizers = trained_params()
    keep = torch.rand(50) > 0.4
    before = {
        name: (param.detach().clone(), moments(optimizers, name)["exp_avg_sq"].clone())
        for name, param in params.items()
    }
    state = {"grad2d": torch.arange(50.0), "count": torch.ones(50), "scene_scale": 1.0}
    removed = keep_only(params, optimizers, state, keep)
    assert removed == int((~keep).sum())
    for name, param in params.items():
        assert optimizers[name].param_groups[0]["params"][0] is param
        torch.testing.assert_close(param.detach(), before[name][0][keep])
        torch.testing.assert_close(moments(optimizers, name)["exp_avg_sq"], before[name][1][keep])
    torch.testing.assert_close(state["grad2d"], torch.arange(50.0)[keep])
    # The optimiser still steps the new tensors.
    params["means"].sum().backward()
    optimizers["means"].step()


def test_reinitialise_replaces_values_and_restarts_moments():
    params, optimizers = trained_params()
    reinitialise(params, optimizers, {"opacities": torch.full((50, 1), -2.0)})
    assert torch.equal(params["opacities"].detach(), torch.full((50, 1), -2.0))
    assert moments(optimizers, "opacities")["exp_avg"].abs().sum() == 0
    assert moments(optimizers, "means")["exp_avg"].abs().sum() > 0, "other parameters are untouched"
    with pytest.raises(ValueError, match="shape"):
        reinitialise(params, optimizers, {"means": torch.zeros(3, 3)})


def test_replace_gaussians_swaps_the_whole_set_and_restarts_moments_and_statistics():
    params, optimizers = trained_params()
    new = {name: torch.randn(20, *param.shape[1:]) for name, param in params.items()}
    state = {"grad2d": torch.arange(50.0), "count": torch.ones(50), "scene_scale": 1.0, "max_count": 60}
    replace_gaussians(params, optimizers, state, new)
    for name, param in params.items():
        assert optimizers[name].param_groups[0]["params"][0] is param
        assert torch.equal(param.detach(), new[name])
        assert moments(optimizers, name)["exp_avg"].shape == param.shape
        assert moments(optimizers, name)["exp_avg"].abs().sum() == 0
    assert state["grad2d"] is None and state["count"] is None, "per-Gaussian statistics start over"
    assert state["scene_scale"] == 1.0 and state["max_count"] == 60, "numbers are kept"
    params["means"].sum().backward()
    optimizers["means"].step()
    assert not torch.equal(params["means"].detach(), new["means"]), "the optimiser steps the new tensors"


def test_mask_edges_fractions_boundaries_and_dtypes():
    """The masks at their edges: the ends of the allowed ranges, a mass boundary hit exactly, zero importance,
    reproducible draws from a given generator, boolean masks on the importance's device."""
    importance = torch.tensor([0.0, 1.0, 1.0, 2.0, 4.0])
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match=rf"sampling fraction must be in \(0, 1\], got {bad}"):
            importance_sample_mask(importance, bad)
        with pytest.raises(ValueError, match=rf"importance share must be in \(0, 1\], got {bad}"):
            cumulative_mass_mask(importance, bad)
    everything = importance_sample_mask(importance, 1.0)
    assert everything.tolist() == [False, True, True, True, True], "fraction 1 keeps every visible Gaussian"
    assert not importance_sample_mask(importance, 0.2).any(), "a fraction of 4 visible below one keeps none"
    assert int(importance_sample_mask(importance, 0.25).sum()) == 1, "exactly one is one"
    weights = torch.linspace(0.1, 1.0, 200)
    draws = [importance_sample_mask(weights, 0.5, torch.Generator().manual_seed(seed)) for seed in (7, 7, 8)]
    assert torch.equal(draws[0], draws[1]) and not torch.equal(draws[0], draws[2]), "draws follow the generator"
    assert cumulative_mass_mask(importance, 1.0).tolist() == [False, True, True, True, True]
    # Total 8; a share of 0.75 may drop 2 of it: the zero and both ones (cumulative 0, 1, 2 <= 2) go.
    assert cumulative_mass_mask(importance, 0.75).tolist() == [False, False, False, True, True]
    assert cumulative_mass_mask(importance).tolist() == [False, True, True, True, True], "0.99 by default"
    for mask in (everything, cumulative_mass_mask(importance, 0.75), top_k_mask(importance, 2)):
        assert mask.dtype == torch.bool and mask.device == importance.device
    assert top_k_mask(importance, 2).tolist() == [False, False, False, True, True]
    assert top_k_mask(importance, 9).all(), "asking for more than there are keeps all"
