"""Per-Gaussian importance for pruning, computed exactly on either renderer backend."""

from __future__ import annotations

import math
from typing import Dict, Literal

import torch
from jaxtyping import Float
from torch import Tensor

from distilled_splat.rendering import rasterize

ImportanceMode = Literal["blend-weight", "area-normalised"]


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
