"""The device-agnostic splatfacto: offline construction, CPU training with densification, LPIPS honesty."""

from __future__ import annotations

import pytest
import torch
from gsplat.strategy import DefaultStrategy
from nerfstudio.models.splatfacto import RGB2SH
from torch import nn

from distilled_splat.method_configs import distilled_teacher
from distilled_splat.models.portable_splatfacto import UnavailableLPIPS
from distilled_splat.rendering import gsplat_viewmats, rasterize
from tests.helpers import build_pipeline, train_steps


class FakeLPIPS(nn.Module):
    def __init__(self, *args, **kwargs):
        super().__init__()

    def forward(self, a, b):
        return (a - b).abs().mean()


class OfflineLPIPS:
    def __init__(self, *args, **kwargs):
        raise OSError("no route to download.pytorch.org")


@pytest.mark.parametrize("lpips_class, reported", [(FakeLPIPS, True), (OfflineLPIPS, False)])
def test_lpips_is_reported_only_when_it_can_be_built(monkeypatch, tiny_scene, lpips_class, reported):
    import torchmetrics.image.lpip as lpip_module

    monkeypatch.setattr(lpip_module, "LearnedPerceptualImagePatchSimilarity", lpips_class)
    _, pipeline, _ = build_pipeline(distilled_teacher.config, tiny_scene)
    assert lpip_module.LearnedPerceptualImagePatchSimilarity is lpips_class  # the patch is undone after construction
    assert pipeline.model.lpips.metric is None, "LPIPS is only built when an evaluation needs it"
    assert not any("lpips" in key for key in pipeline.state_dict())
    pipeline.eval()
    metrics = pipeline.get_average_eval_image_metrics()
    assert isinstance(pipeline.model.lpips.metric, UnavailableLPIPS) != reported
    assert ("lpips" in metrics) == reported
    assert metrics["psnr"] > 0
    assert not any("lpips" in key for key in pipeline.state_dict()), "checkpoints never hold LPIPS weights"


def test_seed_points_colour_the_gaussians_on_cpu(tiny_scene):
    _, pipeline, _ = build_pipeline(distilled_teacher.config, tiny_scene)
    model = pipeline.model
    seeds = pipeline.datamanager.train_dataparser_outputs.metadata["points3D_rgb"]
    assert model.means.device.type == "cpu" and model.num_points == len(seeds)
    torch.testing.assert_close(model.features_dc, RGB2SH(seeds.float() / 255.0))


def test_training_on_cpu_improves_held_out_psnr_and_densifies(tiny_scene):
    config, pipeline, optimizers = build_pipeline(
        distilled_teacher.config, tiny_scene, steps=300, refine_every=30, stop_split_at=250
    )
    model = pipeline.model

    def held_out_psnr():
        pipeline.eval()
        psnr = pipeline.get_average_eval_image_metrics()["psnr"]
        pipeline.train()
        return psnr

    before, start_count = held_out_psnr(), model.num_points
    train_steps(pipeline, optimizers, range(config.max_num_iterations))
    after = held_out_psnr()
    assert after > before + 3.0, (before, after)
    assert model.num_points != start_count
    assert all(p.shape[0] == model.num_points for p in model.gauss_params.values())


def test_default_strategy_grows_and_prunes_with_the_cpu_rasteriser():
    torch.manual_seed(0)
    n, width, height = 60, 32, 24
    params = nn.ParameterDict(
        {
            "means": nn.Parameter(torch.randn(n, 3) * 0.4 + torch.tensor([0.0, 0.0, 3.0])),
            "quats": nn.Parameter(torch.randn(n, 4)),
            "scales": nn.Parameter(torch.log(torch.full((n, 3), 0.08))),
            "opacities": nn.Parameter(torch.logit(torch.full((n,), 0.5))),
            "colors": nn.Parameter(torch.rand(n, 3)),
        }
    )
    with torch.no_grad():
        params["opacities"][:5] = -10.0  # nearly transparent: must be pruned
    optimizers = {k: torch.optim.Adam([v], lr=1e-2) for k, v in params.items()}
    strategy = DefaultStrategy(refine_start_iter=5, refine_every=10, reset_every=10_000, grow_grad2d=1e-5, absgrad=True)
    strategy.check_sanity(params, optimizers)
    state = strategy.initialize_state(scene_scale=1.0)
    viewmat = torch.eye(4)[None]
    K = torch.tensor([[30.0, 0, width / 2], [0, 30.0, height / 2], [0, 0, 1]])[None]
    target = torch.rand(1, height, width, 3)
    for step in range(11):
        rgb, _, info = rasterize(
            params["means"], params["quats"], torch.exp(params["scales"]), torch.sigmoid(params["opacities"]),
            params["colors"], viewmats=viewmat, Ks=K, width=width, height=height, packed=False, absgrad=True,
        )  # fmt: skip
        strategy.step_pre_backward(params, optimizers, state, step, info)
        (rgb - target).abs().mean().backward()
        for optimizer in optimizers.values():
            optimizer.step()
            optimizer.zero_grad()
        strategy.step_post_backward(params, optimizers, state, step, info, packed=False)
    count = len(params["means"])
    assert count > n - 5, "high-gradient Gaussians should have been duplicated or split"
    assert torch.sigmoid(params["opacities"]).min() > 0.005, "transparent Gaussians should have been pruned"
    for key, optimizer in optimizers.items():
        assert optimizer.state[optimizer.param_groups[0]["params"][0]]["exp_avg"].shape[0] == count, key


def test_viewmats_invert_nerfstudio_poses():
    c2w = torch.tensor([[0.0, -1.0, 0.0, 1.0], [0.6, 0.0, 0.8, 2.0], [-0.8, 0.0, 0.6, 3.0]])[None]
    opencv_c2w = torch.cat([c2w[0, :, :3] * torch.tensor([1.0, -1.0, -1.0]), c2w[0, :, 3:]], dim=1)
    full = torch.cat([opencv_c2w, torch.tensor([[0.0, 0.0, 0.0, 1.0]])])
    torch.testing.assert_close(gsplat_viewmats(c2w)[0] @ full, torch.eye(4), atol=1e-6, rtol=0)
