"""Per-Gaussian importance for pruning, computed exactly on either renderer backend."""

from __future__ import annotations

import math
from typing import Dict, Literal, Optional

import torch
from jaxtyping import Float
from nerfstudio.cameras.cameras import Cameras
from torch import Tensor

from distilled_splat.rendering import gsplat_viewmats, rasterize
from distilled_splat.sensitivity import log_determinant, view_fisher

ImportanceMode = Literal["blend-weight", "area-normalised", "pup-fisher"]


def view_importance(
    splats: Dict[str, Tensor],
    viewmat: Float[Tensor, "4 4"],
    K: Float[Tensor, "3 3"],
    width: int,
    height: int,
    mode: ImportanceMode = "blend-weight",
) -> Float[Tensor, " N"]:
    """Total blending weight (alpha times transmittance, summed over the view's pixels) of each Gaussian.

    The rendered value of a one-channel feature f is sum_i f_i * alpha_i * T_i per pixel, so the gradient of
    the image sum with respect to f is exactly each Gaussian's summed blending weight, whatever backend renders
    it. ``area-normalised`` divides by the Gaussian's projected 3-sigma ellipse area in this view (the
    reference's "outdoor" metric), so large background splats do not win by size alone.
    """
    means = splats["means"].detach()
    feature = torch.zeros(len(means), 1, device=means.device, requires_grad=True)
    with torch.enable_grad():
        image, _, meta = rasterize(
            means,
            splats["quats"].detach(),
            splats["scales"].detach(),
            splats["opacities"].detach(),
            feature,
            viewmats=viewmat[None],
            Ks=K[None],
            width=width,
            height=height,
            packed=False,
        )
        (weights,) = torch.autograd.grad(image.sum(), feature)
    weights = weights[:, 0]
    if mode == "area-normalised":
        conics = meta["conics"][0].detach()
        det = (conics[:, 0] * conics[:, 2] - conics[:, 1] ** 2).clamp_min(1e-12)
        area = 9 * math.pi / torch.sqrt(det)
        weights = torch.where(meta["radii"][0] > 0, weights / area, torch.zeros_like(weights))
    return weights


@torch.no_grad()
def scene_importance(
    splats: Dict[str, Tensor],
    cameras: Cameras,
    mode: ImportanceMode = "blend-weight",
    sh_degree: Optional[int] = None,
) -> Float[Tensor, " N"]:
    """Importance of every Gaussian over all ``cameras`` (the training views, at full resolution); higher is kept.

    ``blend-weight`` / ``area-normalised``: :func:`view_importance` summed over the views. ``pup-fisher``: PUP-3DGS's
    sensitivity, the log-determinant of the Fisher matrix summed over the views (:mod:`distilled_splat.sensitivity`;
    it needs the render colours, SH coefficients with ``sh_degree`` or RGB).
    """
    means = splats["means"]
    fisher = None
    total = torch.zeros(len(means), device=means.device)
    for view in range(len(cameras)):
        camera = cameras[view : view + 1].to(means.device)
        viewmat = gsplat_viewmats(camera.camera_to_worlds)[0]
        K = camera.get_intrinsics_matrices()[0].to(means.device)
        width, height = int(camera.width), int(camera.height)
        if mode == "pup-fisher":
            contribution = view_fisher(splats, viewmat, K, width, height, sh_degree)
            fisher = contribution if fisher is None else fisher + contribution
        else:
            total += view_importance(splats, viewmat, K, width, height, mode)
    return log_determinant(fisher).float() if mode == "pup-fisher" else total
