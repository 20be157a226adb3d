"""Noise on the raw parameters of selected Gaussians: the perturbed teacher's regulariser."""

from __future__ import annotations

from typing import Any, Dict, Sequence, Union

import torch
from gsplat.strategy import DefaultStrategy
from gsplat.strategy.ops import _update_param_with_optimizer
from torch import Tensor, nn

from distilled_splat.ops.rotations import quat_to_6d, rotmat_from_6d, rotmat_to_quat

Params = Union[Dict[str, nn.Parameter], nn.ParameterDict]

PERTURBED_ATTRIBUTES = ("means", "opacities", "scales", "quats")


def clone_candidates(params: Params, state: Dict[str, Any], strategy: DefaultStrategy) -> Tensor:
    """Boolean mask of the Gaussians ``strategy`` would clone (duplicate) at its next refinement.

    Same test as gsplat's ``DefaultStrategy``: mean view-space gradient since the last refinement above
    ``grow_grad2d``, and largest scale at most ``grow_scale3d`` times the scene scale.
    """
    num = len(params["means"])
    if state.get("grad2d") is None or len(state["grad2d"]) != num:
        return torch.zeros(num, dtype=torch.bool, device=params["means"].device)
    grads = state["grad2d"] / state["count"].clamp_min(1)
    is_small = torch.exp(params["scales"]).max(dim=-1).values <= strategy.grow_scale3d * state["scene_scale"]
    return (grads > strategy.grow_grad2d) & is_small


def noise_std(values: Tensor, noise_scale: float) -> float:
    """``noise_scale * max(1, mean |value|)`` over all Gaussians: relative noise for large-valued attributes."""
    return noise_scale * max(1.0, float(values.abs().mean()))


@torch.no_grad()
def perturb(
    params: Params,
    optimizers: Dict[str, torch.optim.Optimizer],
    mask: Tensor,
    noise_scale: float = 0.1,
    names: Sequence[str] = PERTURBED_ATTRIBUTES,
) -> int:
    """Add Gaussian noise to the raw parameters ``names`` of the Gaussians in ``mask``; returns how many.

    Rotations get their noise in the 6D representation and are mapped back to unit quaternions. The perturbed
    Gaussians' Adam moments are zeroed, so stale momentum does not undo the noise; all other rows are untouched.
    """
    if not bool(mask.any()):
        return 0

    def param_fn(name: str, param: Tensor) -> nn.Parameter:
        values = param.data.clone()
        selected = values[mask]
        if name == "quats":
            six = quat_to_6d(selected)
            six = six + torch.randn_like(six) * noise_std(quat_to_6d(values), noise_scale)
            values[mask] = rotmat_to_quat(rotmat_from_6d(six))
        else:
            values[mask] = selected + torch.randn_like(selected) * noise_std(values, noise_scale)
        return nn.Parameter(values, requires_grad=param.requires_grad)

    def optimizer_fn(key: str, moment: Tensor) -> Tensor:
        moment = moment.clone()
        moment[mask] = 0
        return moment

    _update_param_with_optimizer(param_fn, optimizer_fn, params, optimizers, names=list(names))
    return int(mask.sum())
