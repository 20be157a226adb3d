"""Coordinate frames of splat models: the similarity (rotation, translation, uniform scale) that takes a model from
one frame to another, applied to every parameter of its Gaussians.

Two frames matter: a scene's own world frame (COLMAP's, or its transforms.json's; the reference 3DGS code writes
PLYs there) and nerfstudio's normalised training frame (what ``ns-export gaussian-splat`` writes), which nerfstudio's
dataparser reaches by ``p -> scale * (R p + t)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Dict, List

import numpy as np
import torch
from gsplat.cuda._torch_impl import _eval_sh_bases_fast, _quat_to_rotmat
from torch import Tensor

from distilled_splat.errors import DistilledSplatError
from distilled_splat.ops.rotations import rotmat_to_quat


@dataclass(frozen=True)
class Similarity:
    """``p -> scale * rotation @ p + translation``."""

    rotation: np.ndarray  # [3, 3], a proper rotation
    translation: np.ndarray  # [3]
    scale: float

    @staticmethod
    def identity() -> "Similarity":
        return Similarity(np.eye(3), np.zeros(3), 1.0)

    @staticmethod
    def from_dataparser(transform: np.ndarray, scale: float) -> "Similarity":
        """nerfstudio's dataparser transform (3x4, applied before its scale) as a similarity."""
        transform = np.asarray(transform, dtype=np.float64)
        rotation = transform[:3, :3]
        if not np.allclose(rotation @ rotation.T, np.eye(3), atol=1e-5) or np.linalg.det(rotation) <= 0:
            raise DistilledSplatError("the dataparser transform is not a rotation: its frame cannot be converted")
        return Similarity(rotation, float(scale) * transform[:3, 3], float(scale))

    def then(self, other: "Similarity") -> "Similarity":
        """This similarity followed by ``other``."""
        return Similarity(
            other.rotation @ self.rotation,
            other.scale * other.rotation @ self.translation + other.translation,
            other.scale * self.scale,
        )

    def inverse(self) -> "Similarity":
        rotation = self.rotation.T
        return Similarity(rotation, -(rotation @ self.translation) / self.scale, 1.0 / self.scale)

    def is_identity(self, tolerance: float = 1e-6) -> bool:
        return bool(
            np.allclose(self.rotation, np.eye(3), atol=tolerance)
            and np.allclose(self.translation, 0.0, atol=tolerance)
            and abs(self.scale - 1.0) <= tolerance
        )

    def to_record(self) -> Dict[str, List]:
        return {"rotation": self.rotation.tolist(), "translation": self.translation.tolist(), "scale": self.scale}

    @staticmethod
    def from_record(record: Dict) -> "Similarity":
        return Similarity(np.asarray(record["rotation"]), np.asarray(record["translation"]), float(record["scale"]))


@lru_cache(maxsize=None)
def _unit_directions(count: int) -> Tensor:
    """``count`` directions spread over the sphere (a Fibonacci lattice): enough to pin down any SH rotation."""
    index = torch.arange(count, dtype=torch.float64) + 0.5
    polar = torch.arccos(1 - 2 * index / count)
    azimuth = math.pi * (1 + 5**0.5) * index
    return torch.stack(
        [torch.sin(polar) * torch.cos(azimuth), torch.sin(polar) * torch.sin(azimuth), torch.cos(polar)], -1
    )


def _sh_basis(degree: int, directions: Tensor) -> Tensor:
    """Every real SH basis function up to ``degree`` (gsplat's order and signs) at unit ``directions``: [D, K]."""
    return _eval_sh_bases_fast((degree + 1) ** 2, directions)


def sh_rotation(rotation: np.ndarray, degree: int) -> Tensor:
    """[K, K] matrix M with ``rotated = M @ coefficients`` for the SH bands 1..degree (K = (degree + 1)^2 - 1),
    so that colour(R d) of the rotated model equals colour(d) of the original for every direction d."""
    if degree == 0:
        return torch.zeros(0, 0, dtype=torch.float64)
    directions = _unit_directions(4 * (degree + 1) ** 2)
    turned = directions @ torch.as_tensor(rotation, dtype=torch.float64)  # rows R^T d
    basis, basis_turned = _sh_basis(degree, directions)[:, 1:], _sh_basis(degree, turned)[:, 1:]
    # The rotated model at d must give the original at R^T d: basis(d) @ M = basis(R^T d), exact for a rotation.
    return torch.linalg.lstsq(basis, basis_turned).solution


def transform_gaussians(gaussians: Dict[str, Tensor], similarity: Similarity) -> Dict[str, Tensor]:
    """Splatfacto's Gaussian parameters (means, scales as logs, quats w x y z, opacities, features_dc,
    features_rest [N, K, 3] as SH coefficients) moved by ``similarity``; opacity and base colour do not change.
    A similarity within rounding of the identity (a run read back into its own frame) changes nothing: the same
    model in, bit for bit, trains the same student."""
    if similarity.is_identity():
        return dict(gaussians)
    means = gaussians["means"]
    rotation = torch.as_tensor(similarity.rotation, dtype=torch.float64)
    moved = dict(gaussians)
    moved["means"] = (similarity.scale * means.double() @ rotation.T + torch.as_tensor(similarity.translation)).to(
        means.dtype
    )
    moved["scales"] = gaussians["scales"] + math.log(similarity.scale)
    quats = gaussians["quats"]
    rotmats = rotation[None] @ _quat_to_rotmat(torch.nn.functional.normalize(quats.double(), dim=-1))
    moved["quats"] = rotmat_to_quat(rotmats).to(quats.dtype)
    rest = gaussians.get("features_rest")
    if rest is not None and rest.shape[1] > 0:
        degree = int(round(math.sqrt(rest.shape[1] + 1))) - 1
        matrix = sh_rotation(similarity.rotation, degree)
        moved["features_rest"] = torch.einsum("kj,njc->nkc", matrix, rest.double()).to(rest.dtype)
    return moved
