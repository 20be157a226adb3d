"""Distillation losses: photometric terms and the structural (spatial distribution) loss."""

from __future__ import annotations

import math
from typing import Callable, Literal, Tuple

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor

StructureMode = Literal["marginal", "joint"]


def photometric_loss(
    rendered: Tensor, target: Tensor, ssim: Callable[[Tensor, Tensor], Tensor], ssim_lambda: float = 0.2
) -> Tuple[Tensor, Tensor, Tensor]:
    """``(1 - l) * L1 + l * (1 - SSIM)`` on [H, W, 3] images; returns (loss, l1, ssim)."""
    l1 = torch.abs(rendered - target).mean()
    similarity = ssim(rendered.permute(2, 0, 1)[None], target.permute(2, 0, 1)[None])
    return (1 - ssim_lambda) * l1 + ssim_lambda * (1 - similarity), l1, similarity


def _common_box(student: Tensor, teacher: Tensor, grid_size: int, margin: float) -> Tuple[Tensor, Tensor]:
    """Lower corner and voxel size of the union bounding box grown by ``margin``. Treated as constant."""
    points = torch.cat([student.detach(), teacher.detach()])
    lower = points.min(0).values - margin
    upper = points.max(0).values + margin
    return lower, (upper - lower) / grid_size


def _kernel_taps(coords: Tensor, sigma: float, radius: int) -> Tuple[Tensor, Tensor]:
    """Bins ``floor(c) - radius + 1 .. floor(c) + radius`` of each coordinate (in voxels; bin centres at the
    integers; may fall outside the grid) and their Gaussian weights. Taps further than ``radius`` voxels away
    weigh less than exp(-radius^2 / (2 sigma^2)) and are left out."""
    offsets = torch.arange(-radius + 1, radius + 1, device=coords.device)
    bins = coords.detach().floor()[..., None] + offsets
    weights = torch.exp((coords[..., None] - bins) ** 2 * (-0.5 / sigma**2))
    return bins.long(), weights


def _marginal_cosine(student: Tensor, teacher: Tensor, grid_size: int, sigma: float, margin: float) -> Tensor:
    lower, voxel = _common_box(student, teacher, grid_size, margin)
    radius = max(1, math.ceil(8 * sigma))  # cut taps weigh < exp(-32) ~ 1e-14: below float64 resolution
    # Every point lies inside the box, so its taps stay within ``radius`` bins of the grid: padding each axis by
    # that much and cutting the padding off afterwards drops the outside taps without masking them.
    padded = grid_size + 2 * radius
    axis_offset = (torch.arange(3, device=student.device) * padded + radius)[None, :, None]

    def marginals(points: Tensor) -> Tensor:
        bins, weights = _kernel_taps((points - lower) / voxel, sigma, radius)  # [N, 3, taps]
        hist = torch.zeros(3 * padded, device=points.device, dtype=weights.dtype)
        hist = hist.index_add(0, (bins + axis_offset).flatten(), weights.flatten())
        return hist.view(3, padded)[:, radius : radius + grid_size]

    with torch.no_grad():
        teacher_marginals = marginals(teacher)
    # The 3D histogram is the outer product of the three marginals, so its cosine is the product of theirs.
    return F.cosine_similarity(marginals(student), teacher_marginals, dim=1, eps=1e-12).prod()


class _JointSoftHistogram(torch.autograd.Function):
    """Dense grid^3 soft histogram filled chunk by chunk; the backward pass recomputes each chunk's kernel taps
    instead of keeping N x taps^3 indices and weights alive."""

    @staticmethod
    def forward(ctx, coords: Tensor, grid_size: int, sigma: float, radius: int, chunk: int) -> Tensor:
        hist = torch.zeros(grid_size**3, device=coords.device, dtype=coords.dtype)
        for start in range(0, len(coords), chunk):
            ids, weights = _JointSoftHistogram.taps(coords[start : start + chunk], grid_size, sigma, radius)
            hist.index_add_(0, ids, weights)
        ctx.save_for_backward(coords)
        ctx.settings = (grid_size, sigma, radius, chunk)
        return hist

    @staticmethod
    def backward(ctx, grad_hist: Tensor):
        (coords,) = ctx.saved_tensors
        grid_size, sigma, radius, chunk = ctx.settings
        grad_coords = torch.zeros_like(coords)
        for start in range(0, len(coords), chunk):
            with torch.enable_grad():
                part = coords[start : start + chunk].detach().requires_grad_(True)
                ids, weights = _JointSoftHistogram.taps(part, grid_size, sigma, radius)
                (grad_part,) = torch.autograd.grad(weights, part, grad_hist[ids])
            grad_coords[start : start + chunk] = grad_part
        return grad_coords, None, None, None, None

    @staticmethod
    def taps(coords: Tensor, grid_size: int, sigma: float, radius: int) -> Tuple[Tensor, Tensor]:
        bins, weights = _kernel_taps(coords, sigma, radius)  # [n, 3, taps]
        weights = weights * ((bins >= 0) & (bins < grid_size))
        bins = bins.clamp(0, grid_size - 1)
        taps = bins.shape[-1]
        ids = (bins[:, 0, :, None, None] * grid_size + bins[:, 1, None, :, None]) * grid_size + bins[
            :, 2, None, None, :
        ]
        joint = weights[:, 0, :, None, None] * weights[:, 1, None, :, None] * weights[:, 2, None, None, :]
        return ids.reshape(-1), joint.reshape(len(coords) * taps**3)


def _joint_cosine(
    student: Tensor, teacher: Tensor, grid_size: int, sigma: float, margin: float, chunk: int = 8192
) -> Tensor:
    lower, voxel = _common_box(student, teacher, grid_size, margin)
    radius = max(1, math.ceil(4 * sigma))

    def histogram(points: Tensor) -> Tensor:
        return _JointSoftHistogram.apply((points - lower) / voxel, grid_size, sigma, radius, chunk)

    return F.cosine_similarity(histogram(student), histogram(teacher), dim=0, eps=1e-12)


def structure_loss(
    student_means: Float[Tensor, "N 3"],
    teacher_means: Float[Tensor, "M 3"],
    mode: StructureMode = "marginal",
    grid_size: int = 256,
    sigma: float = 0.5,
    margin: float = 0.01,
) -> Tensor:
    """``1 - cosine`` between soft voxel histograms of two point sets in their common bounding box.

    Both sets are binned on a ``grid_size``^3 grid spanning the union bounding box grown by ``margin`` (absolute
    units), each point spreading a Gaussian of ``sigma`` voxels. ``marginal`` is the reference's histogram,
    the outer product of the three per-axis histograms, computed from the marginals in O(N * grid_size)
    memory. ``joint`` is a true 3D histogram (a dense grid^3 buffer filled in chunks): it also sees how the axes
    co-vary, so it is zero only when the point clouds match in 3D. The box is a constant for the gradient.
    """
    if grid_size < 2 or sigma <= 0:
        raise ValueError(f"structure_loss needs grid_size >= 2 and sigma > 0, got {grid_size}, {sigma}")
    teacher_means = teacher_means.to(student_means)
    if mode == "marginal":
        return 1 - _marginal_cosine(student_means, teacher_means, grid_size, sigma, margin)
    if mode == "joint":
        return 1 - _joint_cosine(student_means, teacher_means, grid_size, sigma, margin)
    raise ValueError(f"unknown structure loss mode {mode!r}; choose 'marginal' or 'joint'")
