"""The C++ CPU backend against the PyTorch rasteriser: same images, gradients and radii, bit-identical repeats, the
environment switch and the fallback when the kernels cannot be built. (Both backends are also checked against
the brute-force per-pixel reference in test_torch_rasterizer.py.)"""

from __future__ import annotations

import pytest
import torch

from distilled_splat.errors import DistilledSplatError
from distilled_splat.rendering import backend, cpp_backend, rasterize
from distilled_splat.rendering.torch_rasterizer import rasterize_torch
from tests.conftest import cpp_kernels


@pytest.fixture(scope="module")
def kernels() -> cpp_backend.CppKernels:
    return cpp_kernels()


def scene(count: int, width: int, height: int, seed: int, sh: bool):
    """Gaussians a few pixels wide in front of a camera, some off-screen and some behind it."""
    generator = torch.Generator().manual_seed(seed)

    def rand(*shape):
        return torch.rand(*shape, generator=generator)

    means = torch.cat([(rand(count, 2) - 0.5) * 3.0, rand(count, 1) * 5.0 - 0.5], dim=1)
    params = [
        means,
        rand(count, 4) - 0.5,
        rand(count, 3) * 0.08 + 0.01,
        rand(count) * 0.98 + 0.01,
        (rand(count, 16, 3) - 0.5) if sh else rand(count, 3),
    ]
    viewmat = torch.eye(4)
    viewmat[:3, 3] = torch.tensor([0.05, -0.1, 1.0])
    K = torch.tensor([[0.8 * width, 0.0, width / 2 + 0.3], [0.0, 0.8 * width, height / 2 - 0.4], [0.0, 0.0, 1.0]])
    return params, viewmat[None], K[None]


def render(params, viewmat, K, width, height, kernels, sh: bool, **kwargs):
    leaves = [p.detach().clone().requires_grad_(True) for p in params]
    rgb, alpha, meta = rasterize_torch(
        *leaves, viewmat, K, width, height, sh_degree=3 if sh else None, absgrad=True, render_mode="RGB+ED",
        backgrounds=torch.tensor([[0.2, 0.5, 0.9]]), kernels=kernels, **kwargs,
    )  # fmt: skip
    meta["means2d"].retain_grad()
    weights = torch.rand(rgb.shape, generator=torch.Generator().manual_seed(7))
    ((rgb * weights).sum() + alpha.sum()).backward()
    grads = {name: p.grad for name, p in zip(("means", "quats", "scales", "opacities", "colors"), leaves)}
    grads.update(means2d=meta["means2d"].grad, absgrad=meta["means2d"].absgrad)
    return rgb.detach(), alpha.detach(), meta["radii"], grads


# Odd sizes leave partial tiles at the right and bottom edges; 300 Gaussians overlap many tiles each.
@pytest.mark.parametrize("sh", [False, True])
@pytest.mark.parametrize("count, width, height, seed", [(300, 37, 29, 0), (2000, 64, 48, 1)])
def test_same_images_gradients_and_radii_as_pytorch(kernels, count, width, height, seed, sh):
    params, viewmat, K = scene(count, width, height, seed, sh)
    rgb, alpha, radii, grads = render(params, viewmat, K, width, height, kernels, sh)
    ref_rgb, ref_alpha, ref_radii, ref_grads = render(params, viewmat, K, width, height, None, sh)
    assert float(ref_alpha.mean()) > 0.3, "the scene should cover much of the image"
    assert torch.equal(radii, ref_radii)
    torch.testing.assert_close(rgb, ref_rgb, atol=1e-5, rtol=0)
    torch.testing.assert_close(alpha, ref_alpha, atol=1e-5, rtol=0)
    for name, grad in grads.items():
        reference = ref_grads[name]
        assert reference.abs().sum() > 0, name
        error = (grad - reference).abs().max() / reference.abs().max()
        assert error < 1e-3, f"{name}: relative error {error:.2e}"


def test_repeats_are_bit_identical_at_any_thread_count(kernels):
    params, viewmat, K = scene(2000, 64, 48, 2, sh=True)
    threads = torch.get_num_threads()
    runs = []
    try:
        for count in (1, 2, 2, 3):
            torch.set_num_threads(count)
            runs.append(render(params, viewmat, K, 64, 48, kernels, sh=True))
    finally:
        torch.set_num_threads(threads)
    first = runs[0]
    for run in runs[1:]:
        assert torch.equal(run[0], first[0]) and torch.equal(run[1], first[1])
        for name, grad in run[3].items():
            assert torch.equal(grad, first[3][name]), name


def test_cameras_with_gradients_and_antialiasing_use_pytorch_projection(kernels):
    """The C++ projection takes fixed cameras and classic mode; other calls still composite in C++ and match."""
    params, viewmat, K = scene(300, 37, 29, 3, sh=True)
    moving = viewmat.clone().requires_grad_(True)
    for camera, mode in ((moving, "classic"), (viewmat, "antialiased")):
        leaves = [p.detach().clone().requires_grad_(True) for p in params]
        fast, _, _ = rasterize_torch(*leaves, camera, K, 37, 29, sh_degree=3, kernels=kernels, rasterize_mode=mode)
        slow, _, _ = rasterize_torch(*leaves, camera, K, 37, 29, sh_degree=3, rasterize_mode=mode)
        torch.testing.assert_close(fast, slow, atol=1e-5, rtol=0)
        if camera is moving:
            fast.sum().backward()
            assert moving.grad is not None and moving.grad.abs().sum() > 0


def test_environment_variable_chooses_the_backend_at_call_time(kernels, monkeypatch):
    params, viewmat, K = scene(300, 37, 29, 4, sh=False)
    calls = []
    original = cpp_backend.CppKernels.composite
    monkeypatch.setattr(cpp_backend.CppKernels, "composite", staticmethod(lambda *a: calls.append(1) or original(*a)))
    for name, expected_calls in (("torch", 0), ("cpp", 1), ("", 2)):
        monkeypatch.setenv(backend.BACKEND_VARIABLE, name)
        rasterize(*params, viewmats=viewmat, Ks=K, width=37, height=29)
        assert len(calls) == expected_calls, name
    monkeypatch.setenv(backend.BACKEND_VARIABLE, "numba")
    with pytest.raises(DistilledSplatError, match="DISTILLED_SPLAT_RASTERIZER='numba' is not a rasteriser"):
        rasterize(*params, viewmats=viewmat, Ks=K, width=37, height=29)


def test_a_build_that_fails_is_said_once_and_renders_with_pytorch(tmp_path, monkeypatch, capsys):
    broken = tmp_path / "broken.cpp"
    broken.write_text("this is not C++\n")
    monkeypatch.setattr(cpp_backend, "SOURCES", [broken])
    monkeypatch.setattr(cpp_backend, "EXTENSION_NAME", "distilled_splat_broken")
    monkeypatch.setattr(cpp_backend, "_kernels", None)
    monkeypatch.setattr(cpp_backend, "_failure", None)
    monkeypatch.setenv("TORCH_EXTENSIONS_DIR", str(tmp_path / "extensions"))
    monkeypatch.delenv(backend.BACKEND_VARIABLE, raising=False)
    params, viewmat, K = scene(300, 37, 29, 5, sh=False)
    images = [rasterize(*params, viewmats=viewmat, Ks=K, width=37, height=29)[0] for _ in range(2)]
    said = capsys.readouterr().out
    assert said.count("The C++ CPU rasteriser is unavailable") == 1, said
    expected, _, _ = rasterize_torch(*params, viewmat, K, 37, 29)
    assert torch.equal(images[0], expected) and torch.equal(images[1], expected)
