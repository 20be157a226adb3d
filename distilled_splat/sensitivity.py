"""PUP-3DGS's sensitivity score (Hanson et al., arXiv 2406.10219): how much the training views' L2 error would
grow if a Gaussian's position or size moved, to second order.

Per Gaussian i the Fisher matrix ``F_i = sum over views, colour channels and P x P pixel patches of g g^T`` with
``g`` the gradient of the patch's summed pixel value with respect to i's mean (3) and log-scale (3); the score
is ``log det F_i``, taken as the sum of the logs of its singular values. Summing gradients over a patch before
the outer product is the reference's "fisher resolution" pooling (4 by default); patches are aligned to the
image's top-left corner and the last row and column of patches may be partial.

A per-Gaussian gradient of a patch sum would take one backward pass per patch. Instead, one render per view
records each (Gaussian, pixel) pair's render inputs (``PairRecord``): the gradient of a channel's image sum with
respect to those rows holds every pair's own pixel derivative, three backward passes per view in all. Pooled by
patch and chained through each Gaussian's Jacobian (render inputs by mean and log-scale), that is ``g``.
This needs the PyTorch rasteriser, which runs on any device, CUDA included; gsplat's kernels expose no
per-pixel gradients.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional

import torch
from jaxtyping import Float
from torch import Tensor

from distilled_splat.rendering.torch_rasterizer import PairRecord, rasterize_torch

PARAMETERS = 6
"""Mean (3) and log-scale (3): the parameters PUP's Fisher is taken over."""
UNBANDED = 1 << 62
"""Composite a whole view at once: the pair records must stay in the graph."""


def render_input_jacobian(record: PairRecord, means: Tensor, log_scales: Tensor) -> Float[Tensor, "M D 6"]:
    """Derivative of each visible Gaussian's render inputs (a row of ``record.table``) by its mean and log-scale.

    A row depends on its own Gaussian alone, so the gradient of a column's sum is, row by row, that row's
    derivative: one backward pass through the projection per column.
    """
    columns = []
    for column in range(record.table.shape[1]):
        grads = torch.autograd.grad(record.table[:, column].sum(), (means, log_scales), retain_graph=True)
        columns.append(torch.cat(grads, dim=1)[record.table_ids])
    return torch.stack(columns, dim=1)


def view_fisher(
    splats: Dict[str, Tensor],
    viewmat: Float[Tensor, "4 4"],
    K: Float[Tensor, "3 3"],
    width: int,
    height: int,
    sh_degree: Optional[int] = None,
    patch: int = 4,
) -> Float[Tensor, "N 6 6"]:
    """One view's contribution to every Gaussian's Fisher matrix over (mean, log-scale), in float64.

    ``splats``: activated render inputs as :meth:`PortableSplatfactoModel.splat_inputs` gives them (``colors``
    SH coefficients [N, K, 3] with ``sh_degree``, or RGB [N, 3] without). Rendered over black.
    """
    means = splats["means"].detach().clone().requires_grad_(True)
    log_scales = torch.log(splats["scales"].detach()).requires_grad_(True)
    records: List[PairRecord] = []
    fisher = torch.zeros(len(means), PARAMETERS, PARAMETERS, dtype=torch.float64, device=means.device)
    with torch.enable_grad():
        image, _, _ = rasterize_torch(
            means, splats["quats"].detach(), torch.exp(log_scales), splats["opacities"].detach(),
            splats["colors"].detach(), viewmats=viewmat[None], Ks=K[None], width=width, height=height,
            sh_degree=sh_degree, pair_observer=records.append, max_pairs_per_chunk=UNBANDED,
        )  # fmt: skip
        patches_across = math.ceil(width / patch)
        patches = patches_across * math.ceil(height / patch)
        for record in records:
            if len(record.rows) == 0:
                continue
            jacobian = render_input_jacobian(record, means, log_scales)  # [M, D, 6], M visible Gaussians
            row_of = torch.full((len(means),), -1, dtype=torch.long, device=means.device)
            row_of[record.table_ids] = torch.arange(len(record.table_ids), device=means.device)
            y, x = torch.div(record.pixel, width, rounding_mode="floor"), record.pixel % width
            patch_of_pair = torch.div(y, patch, rounding_mode="floor") * patches_across + torch.div(
                x, patch, rounding_mode="floor"
            )
            keys, pooled_index = torch.unique(record.gaussian * patches + patch_of_pair, return_inverse=True)
            owner = torch.div(keys, patches, rounding_mode="floor")  # the Gaussian of each (Gaussian, patch)
            for channel in range(image.shape[-1]):
                (row_grads,) = torch.autograd.grad(image[0, :, :, channel].sum(), record.rows, retain_graph=True)
                pooled = torch.zeros(len(keys), row_grads.shape[1], dtype=torch.float64, device=means.device)
                pooled.index_add_(0, pooled_index, row_grads.double())
                g = torch.einsum("kd,kdp->kp", pooled, jacobian[row_of[owner]].double())  # [K, 6]
                fisher.index_add_(0, owner, g[:, :, None] * g[:, None, :])
    return fisher


def log_determinant(fisher: Float[Tensor, "N 6 6"]) -> Float[Tensor, " N"]:
    """PUP's score: the sum of the logs of the singular values (a Gaussian no view sees scores lowest)."""
    tiny = torch.finfo(fisher.dtype).tiny
    return torch.log(torch.linalg.svdvals(fisher).clamp_min(tiny)).sum(-1)
