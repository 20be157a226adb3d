"""The fast CPU backend: :func:`rasterize_torch`'s projection, spherical harmonics and compositing as C++ kernels
(``cpu/*.cpp``), each a differentiable ``torch.autograd.Function`` that runs on all of torch's threads.

Everything else (culling, depth sorting, footprints, background, ``meta``) stays the PyTorch rasteriser's own,
and the kernels composite exactly its pairs, so both backends give the same images within float rounding. Every
kernel writes each output from one thread only, so results are bit-identical from call to call at any thread
count (see ``cpu/composite.cpp``).

The kernels are compiled once per machine by ``torch.utils.cpp_extension`` (``scripts/setup.sh`` does it; torch
caches the build under ``TORCH_EXTENSIONS_DIR``, by default ``~/.cache/torch_extensions``, and rebuilds only when
a source changes). Where they cannot be built, :func:`load_kernels` says so once and the PyTorch path is used.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Tuple

import torch
from torch import Tensor

from distilled_splat.notices import say_once
from distilled_splat.rendering.torch_rasterizer import _pixel_span

SOURCES = [Path(__file__).parent / "cpu" / name for name in ("composite.cpp", "project.cpp")]
EXTENSION_NAME = "distilled_splat_cpu"
TILE_SIZE = 8  # fastest of 4, 8 and 16 on the fox teacher at 135x240 and at 640x480 (docs/experiments.md)
# Built on the machine that runs it, so it may use all of that machine's vector instructions. No FMA contraction,
# so that vectorised and scalar code round alike and forward and backward agree on every pair; -fno-trapping-math
# (which changes no result) lets GCC turn the alpha cutoff's selects into vector blends.
COMPILE_FLAGS = ["-O3", "-march=native", "-ffp-contract=off", "-fno-trapping-math"]

_kernels = None
_failure: Optional[str] = None


def load_kernels(verbose: bool = False):
    """The compiled kernel module, built on first use; ``None`` (said once per process) where it cannot be."""
    global _kernels, _failure
    if _kernels is None and _failure is None:
        # cpp_extension logs a warning about CUDA_HOME on every import on a machine without CUDA.
        logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
        try:
            from torch.utils.cpp_extension import load

            _kernels = load(EXTENSION_NAME, [str(s) for s in SOURCES], extra_cflags=COMPILE_FLAGS, verbose=verbose)
        except Exception as err:  # any build or load failure falls back; nothing may fail because of it
            first_line = (str(err).strip().splitlines() or [""])[0]
            _failure = f"{type(err).__name__}: {first_line}"
    if _kernels is None:
        say_once(f"The C++ CPU rasteriser is unavailable ({_failure}); rendering with the PyTorch rasteriser.")
    return _kernels


def _threads() -> int:
    return torch.get_num_threads()


class _Project(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, quats, scales, viewmat, K, width, height, eps2d, near, far):  # type: ignore[override]
        radii, means2d, depths, conics = _kernels.project_forward(
            means, quats, scales, viewmat, K, width, height, eps2d, near, far, _threads()
        )
        ctx.save_for_backward(means, quats, scales, viewmat, K)
        ctx.settings = (width, height, eps2d)
        ctx.mark_non_differentiable(radii)
        return radii, means2d, depths, conics

    @staticmethod
    def backward(ctx, _radii, grad_means2d, grad_depths, grad_conics):  # type: ignore[override]
        means, quats, scales, viewmat, K = ctx.saved_tensors
        grads = _kernels.project_backward(
            means, quats, scales, viewmat, K, *ctx.settings,
            grad_means2d.contiguous(), grad_depths.contiguous(), grad_conics.contiguous(), _threads(),
        )  # fmt: skip
        return (*grads, None, None, None, None, None, None, None)


class _SphericalHarmonics(torch.autograd.Function):
    @staticmethod
    def forward(ctx, means, coeffs, campos, degree):  # type: ignore[override]
        ctx.save_for_backward(means, coeffs, campos)
        ctx.degree = degree
        return _kernels.sh_forward(means, coeffs, campos, degree, _threads())

    @staticmethod
    def backward(ctx, grad_colors):  # type: ignore[override]
        means, coeffs, campos = ctx.saved_tensors
        grad_means, grad_coeffs = _kernels.sh_backward(
            means, coeffs, campos, ctx.degree, grad_colors.contiguous(), _threads()
        )
        return grad_means, grad_coeffs, None, None


class _Composite(torch.autograd.Function):
    """Backward also adds gsplat's absgrad into ``absgrad_sink``."""

    @staticmethod
    def forward(ctx, means2d, conics, opacities, colors, spans, width, height, absgrad_sink, global_ids):  # type: ignore[override]
        image, alpha, final_t, stop, *bins = _kernels.composite_forward(
            means2d, conics, opacities, colors, spans, width, height, TILE_SIZE, _threads()
        )
        ctx.save_for_backward(means2d, conics, opacities, colors, spans, final_t, stop, *bins)
        ctx.size = (width, height)
        ctx.absgrad_sink, ctx.global_ids = absgrad_sink, global_ids
        return image, alpha

    @staticmethod
    def backward(ctx, grad_image: Tensor, grad_alpha: Tensor):  # type: ignore[override]
        means2d, conics, opacities, colors, spans, final_t, stop, *bins = ctx.saved_tensors
        grad_means2d, grad_conics, grad_opacities, grad_colors, absgrad = _kernels.composite_backward(
            means2d, conics, opacities, colors, spans, *ctx.size, TILE_SIZE, _threads(),
            grad_image.contiguous(), grad_alpha.contiguous(), final_t, stop, *bins,
        )  # fmt: skip
        if ctx.absgrad_sink is not None:
            ctx.absgrad_sink.index_add_(0, ctx.global_ids, absgrad)
        return grad_means2d, grad_conics, grad_opacities, grad_colors, None, None, None, None, None


def _float(tensor: Tensor) -> Tensor:
    return tensor.float().contiguous()


class CppKernels:
    """The :class:`~distilled_splat.rendering.torch_rasterizer.Kernels` of this backend."""

    @staticmethod
    def project(
        means: Tensor,  # [N, 3]
        quats: Tensor,  # [N, 4]
        scales: Tensor,  # [N, 3]
        viewmat: Tensor,  # [4, 4], no gradient
        K: Tensor,  # [3, 3], no gradient
        width: int,
        height: int,
        eps2d: float,
        near_plane: float,
        far_plane: float,
    ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """radii [N] int32, means2d [N, 2], depths [N], conics [N, 3], as gsplat's classic projection."""
        return _Project.apply(
            _float(means), _float(quats), _float(scales), _float(viewmat.detach()), _float(K.detach()),
            width, height, float(eps2d), float(near_plane), float(far_plane),
        )  # fmt: skip

    @staticmethod
    def spherical_harmonics(degree: int, means: Tensor, coeffs: Tensor, campos: Tensor) -> Tensor:
        """Colours [N, 3]: SH of ``coeffs`` [N, K, 3] in the direction from ``campos`` [3], + 0.5, clamped at 0."""
        return _SphericalHarmonics.apply(_float(means), _float(coeffs), _float(campos.detach()), degree)

    @staticmethod
    def composite(
        means2d: Tensor,  # [M, 2] visible Gaussians, sorted front to back
        conics: Tensor,  # [M, 3]
        opacities: Tensor,  # [M]
        colors: Tensor,  # [M, D]
        half_x: Tensor,  # [M] footprint half-width (torch_rasterizer._footprint)
        half_y: Tensor,  # [M]
        width: int,
        height: int,
        absgrad_sink: Optional[Tensor],  # [N, 2] per-camera buffer, or None
        global_ids: Tensor,  # [M] index of each visible Gaussian in the camera's full set
    ) -> Tuple[Tensor, Tensor]:
        """Colours [H, W, D] and alphas [H, W, 1] of one camera (no background)."""
        with torch.no_grad():
            x_first, x_last = _pixel_span(means2d[:, 0], half_x, width)
            y_first, y_last = _pixel_span(means2d[:, 1], half_y, height)
            spans = torch.stack([x_first, x_last, y_first, y_last], dim=1).int().contiguous()
        image, alpha = _Composite.apply(
            _float(means2d), _float(conics), _float(opacities), _float(colors), spans, width, height,
            absgrad_sink, global_ids,
        )  # fmt: skip
        return image.reshape(height, width, -1), alpha.reshape(height, width, 1)
