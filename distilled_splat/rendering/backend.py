"""One entry point for splat rasterisation, whatever the device."""

from __future__ import annotations

import os
from typing import Dict, Optional, Tuple

import torch
from torch import Tensor

from distilled_splat.errors import DistilledSplatError
from distilled_splat.rendering.torch_rasterizer import Kernels, rasterize_torch

BACKEND_VARIABLE = "DISTILLED_SPLAT_RASTERIZER"
CPU_BACKENDS = ("cpp", "torch")


def uses_gsplat(device: torch.device) -> bool:
    """gsplat's kernels only exist for CUDA; every other device gets the PyTorch rasteriser."""
    return device.type == "cuda"


def cpu_backend() -> str:
    """The CPU rasteriser asked for by ``DISTILLED_SPLAT_RASTERIZER`` (``cpp``, the default, or ``torch``).

    Read at every call, so one process can time both."""
    name = os.environ.get(BACKEND_VARIABLE, "cpp").strip().lower() or "cpp"
    if name not in CPU_BACKENDS:
        raise DistilledSplatError(f"{BACKEND_VARIABLE}={name!r} is not a rasteriser; use one of {CPU_BACKENDS}")
    return name


def cpu_kernels(device: torch.device) -> Optional[Kernels]:
    """The C++ kernels where they are asked for, run on ``device`` and were built; else ``None`` (PyTorch)."""
    if device.type != "cpu" or cpu_backend() != "cpp":
        return None
    from distilled_splat.rendering import cpp_backend  # imported lazily: the first use may compile it

    return cpp_backend.CppKernels() if cpp_backend.load_kernels() is not None else None


def rasterize(
    means: Tensor, quats: Tensor, scales: Tensor, opacities: Tensor, colors: Tensor, **kwargs
) -> Tuple[Tensor, Tensor, Dict]:
    """Drop-in for ``gsplat.rasterization``: same arguments, same ``(colors, alphas, meta)`` result.

    On CUDA tensors this is gsplat itself. Elsewhere it is :func:`rasterize_torch`, which returns the same
    ``meta`` keys (``means2d`` with gradients, ``radii``, ``width``, ``height``, ``n_cameras``, ...), so
    gsplat's densification strategies work unchanged on both paths; on the CPU its projection, SH and
    compositing are the C++ kernels unless ``DISTILLED_SPLAT_RASTERIZER=torch`` or a ``pair_observer`` is given
    (it needs PyTorch's pairs).
    """
    if uses_gsplat(means.device):
        from gsplat.rendering import rasterization  # imported lazily: it can JIT-compile CUDA code

        return rasterization(means, quats, scales, opacities, colors, **kwargs)
    if kwargs.get("pair_observer") is None and "kernels" not in kwargs:
        kwargs["kernels"] = cpu_kernels(means.device)
    return rasterize_torch(means, quats, scales, opacities, colors, **kwargs)
