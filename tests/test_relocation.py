"""3DGS-MCMC relocation on any device: the formula against values worked out by hand and against gsplat's CUDA
kernel, and the capped splatfacto never above its cap."""

from __future__ import annotations

import math

import pytest
import torch

from distilled_splat.method_configs import splat_trainer_config
from distilled_splat.models.mcmc_splatfacto import MCMCSplatfactoModelConfig
from distilled_splat.ops.relocation import binomials, relocation
from tests.helpers import build_pipeline, train_steps


def by_hand(alpha: float, copies: int):
    """a' = 1 - (1 - a)^(1/N); scale factor a / D with D = sum_{i=1..N} sum_{k<i} C(i-1,k) (-1)^k a'^(k+1)/sqrt(k+1)."""
    new_alpha = 1 - (1 - alpha) ** (1 / copies)
    denominator = sum(
        math.comb(i - 1, k) * (-1) ** k * new_alpha ** (k + 1) / math.sqrt(k + 1)
        for i in range(1, copies + 1)
        for k in range(i)
    )
    return new_alpha, alpha / denominator


def test_relocation_matches_the_formula_worked_by_hand():
    # N = 2, a = 0.9: a' = 1 - sqrt(0.1) = 0.683772; D = a' + (a' - a'^2 / sqrt 2) = 1.036934; factor 0.867938.
    new_alpha, scales = relocation(torch.tensor([0.9]), torch.ones(1, 3), torch.tensor([2]), binomials())
    assert new_alpha.item() == pytest.approx(0.683772, abs=1e-6)
    assert scales[0].tolist() == pytest.approx([0.867938] * 3, abs=1e-6)
    alphas = torch.tensor([0.5, 0.9, 0.01, 0.3, 0.995, 0.2])
    copies = torch.tensor([1, 3, 7, 20, 51, 80])  # 80 is clamped to gsplat's 51
    scales_in = torch.rand(6, 3) + 0.1
    new_alpha, new_scales = relocation(alphas, scales_in, copies, binomials())
    for i in range(6):
        expected_alpha, factor = by_hand(float(alphas[i]), min(int(copies[i]), 51))
        assert new_alpha[i].item() == pytest.approx(expected_alpha, rel=1e-5)
        assert new_scales[i].tolist() == pytest.approx((scales_in[i] * factor).tolist(), rel=1e-4)
    assert torch.equal(new_alpha[0], alphas[0]) and torch.allclose(new_scales[0], scales_in[0]), "one copy: unchanged"


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="gsplat's relocation kernel needs CUDA")
def test_relocation_matches_gsplats_cuda_kernel():
    from gsplat.relocation import compute_relocation

    generator = torch.Generator().manual_seed(0)
    alphas = torch.rand(4000, generator=generator) * 0.98 + 0.01
    scales = torch.rand(4000, 3, generator=generator) + 0.05
    copies = torch.randint(1, 12, (4000,), generator=generator)  # float32 cancellation grows with the count
    ours = relocation(alphas, scales, copies, binomials())
    theirs = compute_relocation(alphas.cuda(), scales.cuda(), copies.cuda(), binomials().cuda())
    assert torch.allclose(ours[0], theirs[0].cpu(), rtol=1e-4, atol=1e-6)
    assert torch.allclose(ours[1], theirs[1].cpu(), rtol=1e-3, atol=1e-6)


def test_capped_splatfacto_never_exceeds_its_cap(tiny_scene):
    """400 seed points, cap 150: subsampled at the start, then relocation and growth keep it at 150 at every
    step; cap 600: it grows (by 50% a refinement in this 300-step run) to exactly 600 and stays there."""
    method = splat_trainer_config("distilled-mcmc", MCMCSplatfactoModelConfig())
    for cap in (150, 600):
        _, pipeline, optimizers = build_pipeline(method, tiny_scene, steps=300, cap_max=cap)
        model = pipeline.model
        counts = []
        for step in range(300):
            train_steps(pipeline, optimizers, range(step, step + 1))
            counts.append(model.num_points)
        assert max(counts) == cap and counts[-1] == cap, (cap, counts[::20])
        assert counts[0] == min(cap, 400)
