"""Quaternions (gsplat's w, x, y, z order) to and from the continuous 6D rotation representation."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from gsplat.cuda._torch_impl import _quat_to_rotmat
from jaxtyping import Float
from torch import Tensor


def quat_to_6d(quats: Float[Tensor, "N 4"]) -> Float[Tensor, "N 6"]:
    """First two columns of the rotation matrix; quaternions need not be normalised."""
    rotmats = _quat_to_rotmat(F.normalize(quats, dim=-1))
    return torch.cat([rotmats[..., :, 0], rotmats[..., :, 1]], dim=-1)


def rotmat_from_6d(six: Float[Tensor, "N 6"]) -> Float[Tensor, "N 3 3"]:
    """Gram-Schmidt on the two columns; the third is their cross product."""
    first = F.normalize(six[..., :3], dim=-1)
    second = six[..., 3:]
    second = F.normalize(second - (first * second).sum(-1, keepdim=True) * first, dim=-1)
    third = torch.cross(first, second, dim=-1)
    return torch.stack([first, second, third], dim=-1)


def rotmat_to_quat(rotmats: Float[Tensor, "N 3 3"]) -> Float[Tensor, "N 4"]:
    """Unit quaternions with non-negative w, computed from whichever component is largest for stability."""
    m = rotmats
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    # 4 * component^2 for w, x, y, z.
    squares = torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    roots = torch.sqrt(squares.clamp_min(1e-12))
    # Row k holds the quaternion scaled by 4 * component_k: each row is exact where component_k is large.
    candidates = torch.stack(
        [
            torch.stack(
                [
                    squares[..., 0],
                    m[..., 2, 1] - m[..., 1, 2],
                    m[..., 0, 2] - m[..., 2, 0],
                    m[..., 1, 0] - m[..., 0, 1],
                ],
                -1,
            ),
            torch.stack(
                [
                    m[..., 2, 1] - m[..., 1, 2],
                    squares[..., 1],
                    m[..., 1, 0] + m[..., 0, 1],
                    m[..., 0, 2] + m[..., 2, 0],
                ],
                -1,
            ),
            torch.stack(
                [
                    m[..., 0, 2] - m[..., 2, 0],
                    m[..., 1, 0] + m[..., 0, 1],
                    squares[..., 2],
                    m[..., 2, 1] + m[..., 1, 2],
                ],
                -1,
            ),
            torch.stack(
                [
                    m[..., 1, 0] - m[..., 0, 1],
                    m[..., 0, 2] + m[..., 2, 0],
                    m[..., 2, 1] + m[..., 1, 2],
                    squares[..., 3],
                ],
                -1,
            ),
        ],
        dim=-2,
    ) / (2 * roots[..., None])
    best = squares.argmax(-1)
    quats = F.normalize(candidates.gather(-2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2), dim=-1)
    return torch.where(quats[..., :1] < 0, -quats, quats)
