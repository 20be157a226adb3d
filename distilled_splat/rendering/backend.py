"""One entry point for splat rasterisation, whatever the device."""

from __future__ import annotations

from typing import Dict, Tuple

import torch
from torch import Tensor

from distilled_splat.rendering.torch_rasterizer import rasterize_torch


def uses_gsplat(device: torch.device) -> bool:
    """gsplat's kernels only exist for CUDA; every other device gets the PyTorch rasteriser."""
    return device.type == "cuda"


def rasterize(
    means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor, **kwargs
) -> Tuple[Tensor, Tensor, Dict]:
    """Drop-in for ``gsplat.rasterization``: same arguments, same ``(colors, alphas, meta)`` result.

    On CUDA tensors this is gsplat itself. Elsewhere it is :func:`rasterize_torch`, which returns the same
    ``meta`` keys (``means2d`` with gradients, ``radii``, ``width``, ``height``, ``n_cameras``, ...), so
    gsplat's densification strategies work unchanged on both paths.
    """
    if uses_gsplat(means.device):
        from gsplat.rendering import rasterization  # imported lazily: it can JIT-compile CUDA code

        return rasterization(means, quats, scales, opacities, colors, **kwargs)
    return rasterize_torch(means, quats, scales, opacities, colors, **kwargs)
