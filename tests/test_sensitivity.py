"""PUP-3DGS's sensitivity score against its definition: the Fisher matrix built from per-patch autograd
gradients of the rendered image, one backward pass per channel and patch."""

from __future__ import annotations

import math

import torch

from distilled_splat.rendering.torch_rasterizer import rasterize_torch
from distilled_splat.sensitivity import log_determinant, view_fisher

WIDTH, HEIGHT, PATCH = 20, 16, 4


def three_gaussians():
    torch.manual_seed(0)
    return {
        "means": torch.tensor([[0.0, 0.0, 0.0], [0.3, 0.1, 0.5], [-0.2, -0.2, -0.2]]),
        "quats": torch.randn(3, 4),
        "scales": torch.tensor([[0.3, 0.2, 0.25], [0.2, 0.3, 0.2], [0.15, 0.15, 0.3]]),
        "opacities": torch.tensor([0.8, 0.6, 0.7]),
        "colors": torch.randn(3, 4, 3) * 0.3,  # SH degree 1: the colour depends on the mean too
    }


def view_looking_at_the_origin(angle: float) -> torch.Tensor:
    """World-to-camera (OpenCV axes) of a camera 3 units from the origin, turned ``angle`` about y."""
    c, s = math.cos(angle), math.sin(angle)
    viewmat = torch.eye(4)
    viewmat[:3, :3] = torch.tensor([[c, 0.0, -s], [0.0, 1.0, 0.0], [s, 0.0, c]])
    viewmat[2, 3] = 3.0
    return viewmat


K = torch.tensor([[18.0, 0.0, 10.0], [0.0, 18.0, 8.0], [0.0, 0.0, 1.0]])
VIEWS = [view_looking_at_the_origin(angle) for angle in (0.0, 0.6, -0.7)]


def fisher_by_definition(splats) -> torch.Tensor:
    """sum over views, channels and 4x4 patches of g g^T, g = d(patch sum) / d(mean, log-scale), by autograd."""
    means = splats["means"].clone().requires_grad_(True)
    log_scales = torch.log(splats["scales"]).requires_grad_(True)
    fisher = torch.zeros(len(means), 6, 6, dtype=torch.float64)
    for viewmat in VIEWS:
        image, _, _ = rasterize_torch(
            means, splats["quats"], torch.exp(log_scales), splats["opacities"], splats["colors"],
            viewmats=viewmat[None], Ks=K[None], width=WIDTH, height=HEIGHT, sh_degree=1,
        )  # fmt: skip
        for channel in range(3):
            for top in range(0, HEIGHT, PATCH):
                for left in range(0, WIDTH, PATCH):
                    patch = image[0, top : top + PATCH, left : left + PATCH, channel].sum()
                    g = torch.cat(torch.autograd.grad(patch, (means, log_scales), retain_graph=True), 1).double()
                    fisher += g[:, :, None] * g[:, None, :]
    return fisher


def test_pup_fisher_equals_the_per_patch_definition_and_its_log_determinant():
    splats = three_gaussians()
    expected = fisher_by_definition(splats)
    ours = sum(view_fisher(splats, viewmat, K, WIDTH, HEIGHT, sh_degree=1) for viewmat in VIEWS)
    assert expected.abs().max() > 1.0 and torch.linalg.matrix_rank(expected).min() == 6
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6 * float(expected.abs().max()))
    torch.testing.assert_close(log_determinant(ours), torch.logdet(expected), rtol=0, atol=1e-3)


def test_a_gaussian_no_view_sees_scores_lowest():
    splats = three_gaussians()
    splats["means"] = torch.cat([splats["means"], torch.tensor([[0.0, 0.0, -50.0]])])  # behind every camera
    for name in ("quats", "scales", "opacities", "colors"):
        splats[name] = torch.cat([splats[name], splats[name][:1]])
    fisher = sum(view_fisher(splats, viewmat, K, WIDTH, HEIGHT, sh_degree=1) for viewmat in VIEWS)
    scores = log_determinant(fisher)
    assert torch.isfinite(scores).all() and int(scores.argmin()) == 3
