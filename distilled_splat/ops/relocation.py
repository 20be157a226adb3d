"""3DGS-MCMC's relocation formula on any device, and gsplat's MCMC ops running with it where there is no CUDA.

gsplat 1.4 evaluates the formula and the noise covariances in CUDA kernels; its ops (``relocate``,
``sample_add``, ``inject_noise_to_position``) are otherwise plain PyTorch. :func:`portable_mcmc_ops` points those
ops at this module's functions for tensors off CUDA and leaves the CUDA path to gsplat's kernels.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Iterator, Tuple

import gsplat.strategy.ops as gsplat_ops
import torch
from gsplat.cuda._torch_impl import _quat_scale_to_covar_preci
from torch import Tensor

MAX_COPIES = 51
"""gsplat's n_max: a Gaussian sampled more often still splits into at most this many copies."""


def binomials(n_max: int = MAX_COPIES) -> Tensor:
    """[n_max, n_max] table of C(n, k) (zero for k > n), as gsplat's MCMCStrategy keeps in its state."""
    return torch.tensor([[math.comb(n, k) for k in range(n_max)] for n in range(n_max)], dtype=torch.float32)


def relocation(opacities: Tensor, scales: Tensor, ratios: Tensor, binoms: Tensor) -> Tuple[Tensor, Tensor]:
    """Opacity and scales of each of the N copies a Gaussian becomes (3DGS-MCMC, eq. 9), gsplat's signature.

    With N = ratio (clamped to 1..n_max) copies of a Gaussian of opacity a: a' = 1 - (1 - a)^(1/N), and the scales
    are multiplied by a / D, D = sum_{i=1..N} sum_{k=0..i-1} C(i-1, k) (-1)^k a'^(k+1) / sqrt(k+1), so that the
    copies stacked at one place render like the original. The alternating sum cancels badly for large N: it is
    evaluated in float64 and the results returned in the inputs' precision.
    """
    n_max = binoms.shape[0]
    count = ratios.clamp(1, n_max).to(torch.float64)
    alpha = opacities.to(torch.float64)
    new_alpha = 1 - (1 - alpha) ** (1 / count)
    i = torch.arange(1, n_max + 1, dtype=torch.float64, device=alpha.device)
    k = torch.arange(n_max, dtype=torch.float64, device=alpha.device)
    coefficient = binoms.to(alpha)[:n_max, :n_max] * (-1.0) ** k / torch.sqrt(k + 1)  # [i - 1, k]
    coefficient = coefficient * (k <= i[:, None] - 1)
    powers = new_alpha[..., None] ** (k + 1)  # [..., k]
    per_i = powers @ coefficient.T  # [..., i]
    denominator = (per_i * (i <= count[..., None])).sum(-1)
    new_scales = scales.to(torch.float64) * (alpha / denominator)[..., None]
    return new_alpha.to(opacities.dtype), new_scales.to(scales.dtype).reshape(scales.shape)


def _relocation_on_device(opacities: Tensor, scales: Tensor, ratios: Tensor, binoms: Tensor):
    if opacities.is_cuda:
        return _GSPLAT["compute_relocation"](opacities, scales, ratios, binoms)
    shape = opacities.shape  # gsplat's ops pass [n, 1] when the model keeps opacities as [N, 1]
    new_opacities, new_scales = relocation(opacities.reshape(-1), scales, ratios, binoms)
    return new_opacities.reshape(shape), new_scales


def _covariances_on_device(quats: Tensor, scales: Tensor, **kwargs):
    if quats.is_cuda:
        return _GSPLAT["quat_scale_to_covar_preci"](quats, scales, **kwargs)
    return _quat_scale_to_covar_preci(quats, scales, **kwargs)


_GSPLAT = {
    "compute_relocation": gsplat_ops.compute_relocation,
    "quat_scale_to_covar_preci": gsplat_ops.quat_scale_to_covar_preci,
}


@contextmanager
def portable_mcmc_ops() -> Iterator[None]:
    """While active, gsplat's MCMC ops run on CPU tensors too (CUDA tensors still use gsplat's kernels)."""
    gsplat_ops.compute_relocation = _relocation_on_device
    gsplat_ops.quat_scale_to_covar_preci = _covariances_on_device
    try:
        yield
    finally:
        gsplat_ops.compute_relocation = _GSPLAT["compute_relocation"]
        gsplat_ops.quat_scale_to_covar_preci = _GSPLAT["quat_scale_to_covar_preci"]
