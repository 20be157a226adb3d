"""nerfstudio cameras as gsplat's view matrices."""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor


def gsplat_viewmats(camera_to_worlds: Float[Tensor, "C 3 4"]) -> Float[Tensor, "C 4 4"]:
    """nerfstudio camera-to-world (OpenGL axes) to gsplat world-to-camera (OpenCV axes).

    Splatfacto's ``get_viewmat`` does the same under ``torch.compile``, which on CPU means a C++ build.
    """
    flip = torch.tensor([1.0, -1.0, -1.0], device=camera_to_worlds.device, dtype=camera_to_worlds.dtype)
    rotation = camera_to_worlds[:, :3, :3] * flip
    translation = camera_to_worlds[:, :3, 3:4]
    rotation_inv = rotation.transpose(1, 2)
    top = torch.cat([rotation_inv, -torch.bmm(rotation_inv, translation)], dim=2)
    bottom = torch.tensor([0.0, 0.0, 0.0, 1.0], device=top.device, dtype=top.dtype).expand(len(top), 1, 4)
    return torch.cat([top, bottom], dim=1)
