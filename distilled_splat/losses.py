"""Distillation losses: photometric terms and the structural (spatial distribution) loss."""

from __future__ import annotations

import math
from typing import Callable, Literal, Optional, Tuple

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


def _common_box(
    student: Tensor, teacher_lower: Tensor, teacher_upper: Tensor, grid_size: int, margin: float
) -> Tuple[Tensor, Tensor]:
    """Lower corner and voxel size of the union bounding box grown by ``margin``. Treated as constant."""
    points = student.detach()
    lower = torch.minimum(points.min(0).values, teacher_lower) - margin
    upper = torch.maximum(points.max(0).values, teacher_upper) + margin
    return lower, (upper - lower) / grid_size


def _kernel_taps(coords: Tensor, sigma: float, radius: int) -> Tuple[Tensor, Tensor]:
    """Bins ``floor(c) - radius + 1 .. floor(c) + radius`` of each coordinate (in voxels; bin centres at the
    integers; may fall outside the grid) and their Gaussian weights. Taps further than ``radius`` voxels away
    weigh less than exp(-radius^2 / (2 sigma^2)) and are left out."""
    offsets = torch.arange(-radius + 1, radius + 1, device=coords.device)
    bins = coords.detach().floor()[..., None] + offsets
    weights = torch.exp((coords[..., None] - bins) ** 2 * (-0.5 / sigma**2))
    return bins.long(), weights


def _marginal_histograms(points: Tensor, lower: Tensor, voxel: Tensor, grid_size: int, sigma: float) -> Tensor:
    """[3, grid_size] soft histograms of the points along each axis."""
    radius = max(1, math.ceil(8 * sigma))  # cut taps weigh < exp(-32) ~ 1e-14: below float64 resolution
    # Every point lies inside the box, so its taps stay within ``radius`` bins of the grid: padding each axis by
    # that much and cutting the padding off afterwards drops the outside taps without masking them.
    padded = grid_size + 2 * radius
    axis_offset = (torch.arange(3, device=points.device) * padded + radius)[None, :, None]
    bins, weights = _kernel_taps((points - lower) / voxel, sigma, radius)  # [N, 3, taps]
    hist = torch.zeros(3 * padded, device=points.device, dtype=weights.dtype)
    hist = hist.index_add(0, (bins + axis_offset).flatten(), weights.flatten())
    return hist.view(3, padded)[:, radius : radius + grid_size]


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


def _joint_histogram(
    points: Tensor, lower: Tensor, voxel: Tensor, grid_size: int, sigma: float, chunk: int = 8192
) -> Tensor:
    """[grid_size^3] soft histogram of the points."""
    radius = max(1, math.ceil(4 * sigma))
    return _JointSoftHistogram.apply((points - lower) / voxel, grid_size, sigma, radius, chunk)


class StructureLoss:
    """``1 - cosine`` between soft voxel histograms of the student's and a fixed teacher's point sets.

    Both sets are binned on a ``grid_size``^3 grid spanning their union bounding box grown by ``margin``
    (absolute units), each point spreading a Gaussian of ``sigma`` voxels. ``marginal`` is the reference's
    histogram, the outer product of the three per-axis histograms, computed from the marginals in
    O(N * grid_size) memory. ``joint`` is a true 3D histogram (a dense grid^3 buffer filled in chunks): it also
    sees how the axes co-vary, so it is zero only when the point clouds match in 3D. The box is a constant for
    the gradient.

    The teacher's histogram is kept and reused while the box is unchanged, which it is whenever the student
    lies inside the teacher's box: binning the (usually ten times larger) teacher set was most of the cost.
    """

    def __init__(
        self,
        teacher_means: Float[Tensor, "M 3"],
        mode: StructureMode = "marginal",
        grid_size: int = 256,
        sigma: float = 0.5,
        margin: float = 0.01,
    ):
        if grid_size < 2 or sigma <= 0:
            raise ValueError(f"structure_loss needs grid_size >= 2 and sigma > 0, got {grid_size}, {sigma}")
        if mode not in ("marginal", "joint"):
            raise ValueError(f"unknown structure loss mode {mode!r}; choose 'marginal' or 'joint'")
        self.teacher_means = teacher_means.detach()
        self.teacher_box = self.teacher_means.min(0).values, self.teacher_means.max(0).values
        self.mode, self.grid_size, self.sigma, self.margin = mode, grid_size, sigma, margin
        self.cached_teacher: Optional[Tuple[Tensor, Tensor, Tensor]] = None  # (lower, voxel, histogram)

    def histogram(self, points: Tensor, lower: Tensor, voxel: Tensor) -> Tensor:
        if self.mode == "marginal":
            return _marginal_histograms(points, lower, voxel, self.grid_size, self.sigma)
        return _joint_histogram(points, lower, voxel, self.grid_size, self.sigma)

    @torch.no_grad()
    def teacher_histogram(self, lower: Tensor, voxel: Tensor, like: Tensor) -> Tensor:
        cached = self.cached_teacher
        same_kind = cached is not None and cached[0].dtype == lower.dtype and cached[0].device == lower.device
        if not (same_kind and torch.equal(cached[0], lower) and torch.equal(cached[1], voxel)):
            teacher = self.teacher_means.to(like)
            self.cached_teacher = cached = (lower, voxel, self.histogram(teacher, lower, voxel))
        return cached[2]

    def __call__(self, student_means: Float[Tensor, "N 3"]) -> Tensor:
        teacher_lower, teacher_upper = (bound.to(student_means) for bound in self.teacher_box)
        lower, voxel = _common_box(student_means, teacher_lower, teacher_upper, self.grid_size, self.margin)
        target = self.teacher_histogram(lower, voxel, student_means)
        student = self.histogram(student_means, lower, voxel)
        # Cosines over up to 16.7M voxels are taken in float64: float32 sums let 1 - cosine go negative (-1.8e-4
        # for 1e5 identical points on the 256 grid), a distance below zero.
        student, target = student.double(), target.double()
        if self.mode == "marginal":
            # The 3D histogram is the outer product of the three marginals, so its cosine is the product of theirs.
            cosine = F.cosine_similarity(student, target, dim=1, eps=1e-12).prod()
        else:
            cosine = F.cosine_similarity(student, target, dim=0, eps=1e-12)
        return (1 - cosine).clamp_min(0).to(student_means.dtype)


def structure_loss(
    student_means: Float[Tensor, "N 3"],
    teacher_means: Float[Tensor, "M 3"],
    mode: StructureMode = "marginal",
    grid_size: int = 256,
    sigma: float = 0.5,
    margin: float = 0.01,
) -> Tensor:
    """One evaluation of :class:`StructureLoss` (which see); keep a ``StructureLoss`` to reuse the teacher's
    histogram across calls."""
    return StructureLoss(teacher_means, mode, grid_size, sigma, margin)(student_means)
