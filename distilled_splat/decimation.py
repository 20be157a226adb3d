"""Training-free decimation: splatfacto's Gaussians merged pairwise down to a count by splat-transform (NanoGS),
through a 3DGS PLY, and read back as splatfacto's parameters."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Dict

import torch
from torch import Tensor

from distilled_splat.errors import DistilledSplatError
from distilled_splat.exports import splat_transform
from distilled_splat.exports.exporters import SplatArrays, encode_ply, read_3dgs_ply


def gaussians_from_ply(splats: SplatArrays) -> Dict[str, Tensor]:
    """A 3DGS PLY's Gaussians as splatfacto's parameters (raw: log-scales, logit opacities, SH coefficients)."""

    def tensor(array) -> Tensor:
        return torch.from_numpy(array.copy()).float()

    return {
        "means": tensor(splats.means),
        "scales": tensor(splats.log_scales),
        "quats": tensor(splats.quats),
        "opacities": tensor(splats.opacity)[:, None],
        "features_dc": tensor(splats.f_dc),
        "features_rest": tensor(splats.f_rest).transpose(1, 2).contiguous(),  # [N, K, 3], splatfacto's layout
    }


def ply_from_gaussians(gaussians: Dict[str, Tensor]) -> SplatArrays:
    """splatfacto's parameters (at SH degree 1 or more) as a 3DGS PLY's arrays."""

    def array(tensor: Tensor):
        return tensor.detach().float().cpu().numpy()

    return SplatArrays(
        means=array(gaussians["means"]), f_dc=array(gaussians["features_dc"]),
        f_rest=array(gaussians["features_rest"].transpose(1, 2)), opacity=array(gaussians["opacities"].reshape(-1)),
        log_scales=array(gaussians["scales"]), quats=array(gaussians["quats"]),
    )  # fmt: skip


def decimate_gaussians(gaussians: Dict[str, Tensor], count: int) -> Dict[str, Tensor]:
    """``gaussians`` (splatfacto's parameters) merged pairwise down to ``count`` by splat-transform."""
    if len(gaussians["means"]) <= count:
        return gaussians
    with tempfile.TemporaryDirectory() as folder:
        source = Path(folder) / "source.ply"
        source.write_bytes(encode_ply(ply_from_gaussians(gaussians)))
        merged = read_3dgs_ply(splat_transform.decimate(source, count, Path(folder) / "decimated.ply"))
    if len(merged) != count:
        raise DistilledSplatError(f"splat-transform was asked for {count} Gaussians and wrote {len(merged)}")
    return gaussians_from_ply(merged)
