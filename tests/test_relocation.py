"""3DGS-MCMC relocation on any device: the formula against values worked out by hand and against gsplat's CUDA
kernel, and the capped splatfacto never above its cap."""

from __future__ import annotations

import math

import pytest
import torch

from distilled_splat.method_configs import distilled_splatfacto, splat_trainer_config
from distilled_splat.models.mcmc_splatfacto import MCMCSplatfactoModelConfig
from distilled_splat.ops.relocation import binomials, relocate_dead, relocation
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


def held_student(tiny_scene, teacher_runs, cache, **model):
    """The default student cut once to 30 Gaussians at step 0, relocating every 5 steps, on 100 steps."""
    datamanager = {"teachers": tuple(teacher_runs[:1]), "teacher_cache_dir": cache}
    settings = {"budget_cuts": 1, "cut_method": "drop", "target_gaussians": 30, "relocate_every": 5, **model}
    return build_pipeline(distilled_splatfacto.config, tiny_scene, steps=100, datamanager=datamanager, **settings)


def kill(model, indices) -> None:
    with torch.no_grad():
        model.gauss_params["opacities"][indices] = torch.logit(torch.tensor(0.001))


def test_relocation_moves_dead_gaussians_onto_live_ones_without_changing_the_render(tiny_scene, teacher_runs, tmp_path):
    _, pipeline, optimizers = held_student(tiny_scene, teacher_runs, tmp_path / "cache")
    model = pipeline.model
    train_steps(pipeline, optimizers, range(0, 3))
    dead = torch.arange(0, 30, 3)
    kill(model, dead)
    camera = pipeline.datamanager.train_dataset.cameras[0:1]
    model.eval()
    before = model.get_outputs(camera)["rgb"]
    assert relocate_dead(model.gauss_params, optimizers.optimizers, model.strategy_state, 0.005) == len(dead)
    after = model.get_outputs(camera)["rgb"]
    opacities = torch.sigmoid(model.opacities.flatten())
    assert model.num_points == 30 and bool((opacities > 0.005).all())
    moved_onto = [
        i for i in range(30) if i not in dead and any(torch.equal(model.means[i], model.means[j]) for j in dead)
    ]
    assert moved_onto, "each dead Gaussian now sits on a live one"
    assert (after - before).abs().mean() < 2e-3, float((after - before).abs().mean())


def test_the_student_relocates_only_once_at_its_budget(tiny_scene, teacher_runs, tmp_path):
    """Cut once at step 0: the Gaussians killed after step 2 are moved at step 5. Cut in 8 steps up to step 50:
    the ones killed at step 7 are still dead after step 10, since relocation waits for the last cut."""
    _, pipeline, optimizers = held_student(tiny_scene, teacher_runs, tmp_path / "cache")
    model = pipeline.model
    train_steps(pipeline, optimizers, range(0, 3))
    kill(model, torch.arange(0, 30, 3))
    train_steps(pipeline, optimizers, range(3, 6))
    assert model.num_points == 30 and bool((torch.sigmoid(model.opacities) > 0.005).all())

    _, pipeline, optimizers = held_student(tiny_scene, teacher_runs, tmp_path / "cache", budget_cuts=8)
    model = pipeline.model
    train_steps(pipeline, optimizers, range(0, 8))
    kill(model, torch.arange(0, 30, 3))
    train_steps(pipeline, optimizers, range(8, 11))
    assert int((torch.sigmoid(model.opacities) <= 0.005).sum()) >= 10
