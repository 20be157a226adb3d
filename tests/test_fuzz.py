"""Property-based fuzzing of the renderer and the pruning ops with awkward Gaussian sets."""

from __future__ import annotations

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from torch import nn

from distilled_splat.importance import view_importance
from distilled_splat.ops.prune import cumulative_mass_mask, importance_sample_mask, keep_only, reinitialise, top_k_mask
from distilled_splat.rendering import rasterize

WIDTH, HEIGHT = 16, 12
K = torch.tensor([[14.0, 0.0, WIDTH / 2], [0.0, 14.0, HEIGHT / 2], [0.0, 0.0, 1.0]])

FUZZ = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def gaussian_sets(draw):
    """Small sets mixing ordinary splats with degenerate ones: zero or huge scales, zero opacity, points behind
    or on the camera plane, many tiny splats on one pixel, non-normalised and zero-length quaternions."""
    seed = draw(st.integers(0, 2**31 - 1))
    count = draw(st.integers(1, 60))
    generator = torch.Generator().manual_seed(seed)
    means = torch.randn(count, 3, generator=generator) * draw(st.sampled_from([0.01, 0.5, 3.0]))
    means[:, 2] += draw(st.sampled_from([-2.0, 0.0, 0.005, 3.0]))  # behind, at, barely in front of, in front
    log_scales = torch.randn(count, 3, generator=generator) + draw(st.sampled_from([-20.0, -4.0, 0.0, 3.0]))
    quats = torch.randn(count, 4, generator=generator)
    if draw(st.booleans()):
        quats[0] = 0.0
    opacities = torch.rand(count, generator=generator)
    if draw(st.booleans()):
        opacities[: count // 2] = 0.0
    colors = torch.rand(count, 3, generator=generator)
    return means, quats, torch.exp(log_scales), opacities, colors


@FUZZ
@given(gaussian_sets())
def test_renderer_never_crashes_or_makes_nan(tensors):
    leaves = [t.clone().requires_grad_(True) for t in tensors]
    image, alpha, meta = rasterize(
        *leaves, viewmats=torch.eye(4)[None], Ks=K[None], width=WIDTH, height=HEIGHT, packed=False, absgrad=True
    )
    assert image.shape == (1, HEIGHT, WIDTH, 3) and alpha.shape == (1, HEIGHT, WIDTH, 1)
    assert torch.isfinite(image).all() and torch.isfinite(alpha).all()
    assert (alpha >= 0).all() and (alpha <= 1).all()
    (image.sum() + alpha.sum()).backward()
    for leaf in leaves:
        assert leaf.grad is None or torch.isfinite(leaf.grad).all()
    assert meta["radii"].shape == (1, len(tensors[0]))


@FUZZ
@given(gaussian_sets())
def test_importance_is_finite_and_zero_for_the_invisible(tensors):
    means, quats, scales, opacities, _ = tensors
    splats = {"means": means, "quats": quats, "scales": scales, "opacities": opacities}
    for mode in ("blend-weight", "area-normalised"):
        importance = view_importance(splats, torch.eye(4), K, WIDTH, HEIGHT, mode=mode)
        assert torch.isfinite(importance).all() and (importance >= 0).all()
        assert (importance[opacities == 0] == 0).all()


@st.composite
def importances(draw):
    count = draw(st.integers(1, 200))
    values = draw(st.lists(st.sampled_from([0.0, 1e-9, 0.5, 0.5, 1.0, 1e6]), min_size=count, max_size=count))
    return torch.tensor(values)


@FUZZ
@given(importances(), st.floats(0.01, 1.0), st.floats(0.01, 1.0), st.integers(1, 250))
def test_pruning_ops_keep_optimiser_state_aligned(importance, fraction, share, budget):
    count = len(importance)
    params = nn.ParameterDict(
        {"means": nn.Parameter(torch.randn(count, 3)), "opacities": nn.Parameter(torch.randn(count, 1))}
    )
    optimizers = {name: torch.optim.Adam([param], lr=0.01) for name, param in params.items()}
    sum(param.sum() for param in params.values()).backward()
    for optimizer in optimizers.values():
        optimizer.step()
    state = {"grad2d": torch.arange(count, dtype=torch.float32), "scene_scale": 1.0}
    masks = [
        importance_sample_mask(importance, fraction),
        cumulative_mass_mask(importance, share),
        top_k_mask(importance, budget),
    ]
    assert int(masks[0].sum()) == int(fraction * int((importance > 0).sum()))
    assert not masks[0][importance == 0].any()
    if importance.sum() > 0:
        assert importance[masks[1]].sum() >= share * importance.sum() * (1 - 1e-6)
    assert int(masks[2].sum()) == min(budget, count)
    keep = masks[1] & masks[2]
    before = params["means"].detach()[keep].clone()
    keep_only(params, optimizers, state, keep)
    kept = int(keep.sum())
    reinitialise(params, optimizers, {"opacities": torch.zeros(kept, 1)})
    assert torch.equal(params["means"].detach(), before)
    assert state["grad2d"].shape == (kept,)
    for name, optimizer in optimizers.items():
        param = optimizer.param_groups[0]["params"][0]
        assert param is params[name] and optimizer.state[param]["exp_avg"].shape == param.shape
