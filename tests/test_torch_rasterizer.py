"""Both CPU rasterisers (PyTorch, and its C++ kernels: the ``cpu_kernels`` fixture) against the per-pixel
reference, and against gsplat's CUDA kernels where present."""

from __future__ import annotations

import math

import pytest
import torch

from distilled_splat.rendering import rasterize
from distilled_splat.rendering.torch_rasterizer import ALPHA_MIN, _footprint, _row_bands, rasterize_torch
from tests import reference_rasterizer as reference

WIDTH, HEIGHT = 12, 10


def make_scene(n=7, seed=0, sh_coeffs=None):
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.rand(*shape, generator=generator)

    means = torch.cat([(rand(n, 2) - 0.5) * 2.0, 3.0 + rand(n, 1) * 2.0], dim=1)
    quats = rand(n, 4) - 0.5
    scales = 0.08 + rand(n, 3) * 0.3
    opacities = 0.3 + rand(n) * 0.69
    colors = rand(n, 3) if sh_coeffs is None else (rand(n, sh_coeffs, 3) - 0.5)
    viewmat = torch.eye(4)
    viewmat[:3, 3] = torch.tensor([0.1, -0.05, 0.2])
    K = torch.tensor([[11.0, 0.0, WIDTH / 2 + 0.3], [0.0, 10.5, HEIGHT / 2 - 0.2], [0.0, 0.0, 1.0]])
    return [means, quats, scales, opacities, colors], viewmat, K


def leaves(tensors):
    return [t.detach().clone().requires_grad_(True) for t in tensors]


def sh_degree1_colors(means, coeffs, viewmat):
    """Degree-1 SH colours written out from the basis definition, with gsplat's +0.5 offset and clamp."""
    centre = torch.inverse(viewmat)[:3, 3]
    d = torch.nn.functional.normalize(means - centre, dim=-1)
    x, y, z = d[:, :1], d[:, 1:2], d[:, 2:3]
    c0, c1 = 0.28209479177387814, 0.4886025119029199
    rgb = c0 * coeffs[:, 0] - c1 * y * coeffs[:, 1] + c1 * z * coeffs[:, 2] - c1 * x * coeffs[:, 3]
    return torch.clamp_min(rgb + 0.5, 0.0)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_values_and_gradients_match_reference(seed, cpu_kernels):
    params, viewmat, K = make_scene(seed=seed)
    background = torch.tensor([0.2, 0.5, 0.9])
    weights = torch.rand(HEIGHT, WIDTH, 3, generator=torch.Generator().manual_seed(99))

    fast = leaves(params)
    rgb, alpha, meta = rasterize_torch(
        *fast, viewmat[None], K[None], WIDTH, HEIGHT, backgrounds=background[None], render_mode="RGB+ED",
        kernels=cpu_kernels,
    )  # fmt: skip
    slow = leaves(params)
    ref_rgb, ref_alpha, ref_depth = reference.render(*slow, viewmat, K, WIDTH, HEIGHT, background=background)

    assert rgb.shape == (1, HEIGHT, WIDTH, 4) and alpha.shape == (1, HEIGHT, WIDTH, 1)
    assert float(ref_alpha.max()) > 0.5, "scene should cover the image"
    torch.testing.assert_close(rgb[0, ..., :3], ref_rgb, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(alpha[0], ref_alpha, atol=1e-5, rtol=1e-4)
    covered = ref_alpha[..., 0] > 1e-3
    torch.testing.assert_close(rgb[0, ..., 3][covered], ref_depth[..., 0][covered], atol=1e-4, rtol=1e-4)

    ((rgb[0, ..., :3] * weights).sum() + alpha.sum()).backward()
    ((ref_rgb * weights).sum() + ref_alpha.sum()).backward()
    for name, a, b in zip(["means", "quats", "scales", "opacities", "colors"], fast, slow):
        assert b.grad.abs().sum() > 0, name
        torch.testing.assert_close(a.grad, b.grad, atol=1e-4, rtol=1e-3, msg=lambda m, n=name: f"{n}: {m}")


def test_spherical_harmonics_colours_match_definition(cpu_kernels):
    params, viewmat, K = make_scene(seed=3, sh_coeffs=16)
    means, quats, scales, opacities, coeffs = params
    rgb, _, _ = rasterize_torch(
        means, quats, scales, opacities, coeffs, viewmat[None], K[None], WIDTH, HEIGHT, sh_degree=1,
        kernels=cpu_kernels,
    )  # fmt: skip
    colors = sh_degree1_colors(means, coeffs[:, :4], viewmat)
    ref_rgb, _, _ = reference.render(means, quats, scales, opacities, colors, viewmat, K, WIDTH, HEIGHT)
    torch.testing.assert_close(rgb[0], ref_rgb, atol=1e-5, rtol=1e-4)


def test_absgrad_sums_absolute_per_pixel_gradients(cpu_kernels):
    params, viewmat, K = make_scene(seed=4)
    fast = leaves(params)
    rgb, _, meta = rasterize_torch(*fast, viewmat[None], K[None], WIDTH, HEIGHT, absgrad=True, kernels=cpu_kernels)
    meta["means2d"].retain_grad()
    weights = torch.randn(HEIGHT, WIDTH, 3, generator=torch.Generator().manual_seed(5))
    (rgb[0] * weights).sum().backward()

    slow_leaves = {}
    ref_rgb, _, _ = reference.render(*leaves(params), viewmat, K, WIDTH, HEIGHT, mean2d_leaves=slow_leaves)
    expected_abs = torch.zeros(len(params[0]), 2)
    expected = torch.zeros(len(params[0]), 2)
    ids = list(slow_leaves)
    for py in range(HEIGHT):
        for px in range(WIDTH):
            pixel_loss = (ref_rgb[py, px] * weights[py, px]).sum()
            if not pixel_loss.requires_grad:
                continue
            grads = torch.autograd.grad(pixel_loss, [slow_leaves[i] for i in ids], retain_graph=True, allow_unused=True)
            for i, g in zip(ids, grads):
                if g is not None:
                    expected_abs[i] += g.abs()
                    expected[i] += g
    assert expected_abs.sum() > 0
    torch.testing.assert_close(meta["means2d"].absgrad[0], expected_abs, atol=1e-4, rtol=1e-3)
    torch.testing.assert_close(meta["means2d"].grad[0], expected, atol=1e-4, rtol=1e-3)


def test_row_chunks_with_recomputation_give_identical_images_and_gradients():
    params, viewmat, K = make_scene(n=40, seed=6, sh_coeffs=16)
    outputs = []
    for max_pairs in (1 << 23, 30):
        tensors = leaves(params)
        rgb, alpha, meta = rasterize_torch(
            *tensors, viewmat[None], K[None], WIDTH, HEIGHT, sh_degree=3, absgrad=True, max_pairs_per_chunk=max_pairs
        )
        (rgb.square().sum() + alpha.sum()).backward()
        outputs.append((rgb.detach(), [t.grad for t in tensors], meta["means2d"].absgrad))
    (rgb_a, grads_a, abs_a), (rgb_b, grads_b, abs_b) = outputs
    torch.testing.assert_close(rgb_a, rgb_b)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(abs_a, abs_b, atol=1e-5, rtol=1e-4)


def test_row_bands_respect_the_pair_budget():
    y_first = torch.tensor([0, 2, 5, 5])
    y_last = torch.tensor([9, 3, 9, 6])
    widths = torch.tensor([4, 10, 3, 1])
    bands = _row_bands(y_first, y_last, widths, height=10, max_pairs=20)
    assert bands[0][0] == 0 and bands[-1][1] == 10
    assert all(a[1] == b[0] for a, b in zip(bands, bands[1:]))
    per_row = [sum(int(w) for lo, hi, w in zip(y_first, y_last, widths) if lo <= r <= hi) for r in range(10)]
    for start, stop in bands:
        assert sum(per_row[start:stop]) <= 20 or stop - start == 1


def test_footprint_box_holds_every_pixel_above_the_alpha_cutoff():
    # Elongated and faint splats, where the box is much smaller than the 3-sigma square.
    generator = torch.Generator().manual_seed(5)
    n, size = 400, 48
    means2d = torch.rand(n, 2, generator=generator) * size
    angle = torch.rand(n, generator=generator) * math.pi
    sx, sy = torch.rand(n, generator=generator) * 6 + 0.3, torch.rand(n, generator=generator) * 0.8 + 0.3
    cos, sin = torch.cos(angle), torch.sin(angle)
    cov = torch.stack(
        [sx**2 * cos**2 + sy**2 * sin**2, (sx**2 - sy**2) * cos * sin, sx**2 * sin**2 + sy**2 * cos**2], 1
    )
    det = cov[:, 0] * cov[:, 2] - cov[:, 1] ** 2
    conics = torch.stack([cov[:, 2] / det, -cov[:, 1] / det, cov[:, 0] / det], 1)
    opacities = 10 ** (torch.rand(n, generator=generator) * 2.6 - 2.6)  # 0.0025 .. 1
    radii = torch.ceil(3 * torch.sqrt(torch.maximum(cov[:, 0], cov[:, 2]) * 2))
    half_x, half_y = _footprint(conics, opacities, radii)

    pixels = torch.stack(torch.meshgrid(torch.arange(size), torch.arange(size), indexing="xy"), -1).reshape(-1, 2)
    d = means2d[:, None] - (pixels[None] + 0.5)  # [n, P, 2]
    sigma = 0.5 * (conics[:, None, 0] * d[..., 0] ** 2 + conics[:, None, 2] * d[..., 1] ** 2)
    sigma = sigma + conics[:, None, 1] * d[..., 0] * d[..., 1]
    in_square = (d.abs() <= radii[:, None, None]).all(-1)
    composited = in_square & (opacities[:, None] * torch.exp(-sigma) >= ALPHA_MIN)
    in_box = (d[..., 0].abs() <= half_x[:, None]) & (d[..., 1].abs() <= half_y[:, None])
    assert composited.sum() > 1000
    assert not (composited & ~in_box).any()
    assert int(in_box.sum()) < 0.6 * int(in_square.sum()), "the box should cut most of the square"


def test_culled_gaussians_have_zero_radius_and_no_effect():
    params, viewmat, K = make_scene(n=3, seed=7)
    means = params[0].clone()
    means[1, 2] = -2.0  # behind the camera
    means[2, 0] = 50.0  # far outside the image
    rgb, alpha, meta = rasterize_torch(means, *params[1:], viewmat[None], K[None], WIDTH, HEIGHT)
    assert meta["radii"][0, 1] == 0 and meta["radii"][0, 2] == 0 and meta["radii"][0, 0] > 0
    alone, alone_alpha, _ = rasterize_torch(
        *(p[:1] for p in [means, *params[1:]]), viewmat[None], K[None], WIDTH, HEIGHT
    )
    torch.testing.assert_close(rgb, alone)
    torch.testing.assert_close(alpha, alone_alpha)


def test_opaque_stack_stops_compositing_like_gsplat():
    n = 8
    means = torch.tensor([[0.0, 0.0, 2.0 + 0.1 * i] for i in range(n)])
    quats = torch.tensor([[1.0, 0.0, 0.0, 0.0]]).repeat(n, 1)
    scales = torch.full((n, 3), 2.0)
    opacities = torch.full((n,), 0.99)
    colors = torch.eye(3).repeat(3, 1)[:n]
    _, viewmat, K = make_scene()
    rgb, alpha, _ = rasterize_torch(means, quats, scales, opacities, colors, viewmat[None], K[None], WIDTH, HEIGHT)
    ref_rgb, ref_alpha, _ = reference.render(means, quats, scales, opacities, colors, viewmat, K, WIDTH, HEIGHT)
    torch.testing.assert_close(rgb[0], ref_rgb, atol=1e-6, rtol=1e-5)
    # 0.999-clamped alphas: the third Gaussian would take T below 1e-4, so only two contribute.
    assert float(alpha.max()) == pytest.approx(1 - (1 - 0.99) ** 2, abs=1e-6)


def test_antialiased_mode_scales_opacity_by_compensation():
    params, viewmat, K = make_scene(seed=8)
    classic, _, _ = rasterize_torch(*params, viewmat[None], K[None], WIDTH, HEIGHT)
    aa, _, meta = rasterize_torch(*params, viewmat[None], K[None], WIDTH, HEIGHT, rasterize_mode="antialiased")
    assert (meta["opacities"] < params[3][None]).all()
    assert float(aa.sum()) < float(classic.sum())


def test_cpu_dispatch_and_unsupported_options():
    params, viewmat, K = make_scene(seed=9)
    rgb, _, meta = rasterize(*params, viewmats=viewmat[None], Ks=K[None], width=WIDTH, height=HEIGHT, packed=False)
    expected, _, _ = rasterize_torch(*params, viewmat[None], K[None], WIDTH, HEIGHT)
    torch.testing.assert_close(rgb, expected)
    for key in ("means2d", "radii", "width", "height", "n_cameras", "depths", "conics", "opacities", "tile_size"):
        assert key in meta
    with pytest.raises(ValueError, match="packed=False"):
        rasterize_torch(*params, viewmat[None], K[None], WIDTH, HEIGHT, packed=True)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA for gsplat's kernels")
def test_matches_gsplat_cuda(cpu_kernels):
    from gsplat.rendering import rasterization

    torch.manual_seed(0)
    n, width, height = 3000, 96, 72
    means = torch.randn(n, 3) * 0.7 + torch.tensor([0.0, 0.0, 4.0])
    params = [
        means,
        torch.randn(n, 4),
        torch.rand(n, 3) * 0.05 + 0.01,
        torch.rand(n) * 0.9,
        torch.randn(n, 16, 3) * 0.3,
    ]
    K = torch.tensor([[80.0, 0, width / 2], [0, 80.0, height / 2], [0, 0, 1]])[None]
    viewmat = torch.eye(4)[None]
    kwargs = dict(sh_degree=3, render_mode="RGB+ED", backgrounds=torch.ones(1, 3), packed=False)

    cpu = leaves(params)
    rgb_cpu, alpha_cpu, meta_cpu = rasterize_torch(*cpu, viewmat, K, width, height, kernels=cpu_kernels, **kwargs)
    gpu = [t.detach().cuda().requires_grad_(True) for t in leaves(params)]
    gpu_kwargs = {**kwargs, "backgrounds": kwargs["backgrounds"].cuda()}
    rgb_gpu, alpha_gpu, meta_gpu = rasterization(*gpu, viewmat.cuda(), K.cuda(), width, height, **gpu_kwargs)
    torch.testing.assert_close(meta_cpu["radii"], meta_gpu["radii"].cpu())
    # gsplat lets Gaussians reach whole tiles beyond their 3-sigma square: tiny differences at footprint edges.
    assert (rgb_cpu[..., :3] - rgb_gpu[..., :3].cpu()).abs().mean() < 2e-3
    assert (alpha_cpu - alpha_gpu.cpu()).abs().mean() < 2e-3
    rgb_cpu[..., :3].sum().backward()
    rgb_gpu[..., :3].sum().backward()
    for a, b in zip(cpu, gpu):
        rel = (a.grad - b.grad.cpu()).norm() / b.grad.norm().clamp(min=1e-12)
        assert rel < 0.05
