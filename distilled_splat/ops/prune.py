"""Importance-based pruning (after Mini-Splatting), as operations over params, optimisers and strategy state."""

from __future__ import annotations

from typing import Any, Dict, Optional, Union

import torch
from gsplat.strategy.ops import _update_param_with_optimizer, remove
from torch import Tensor, nn

Params = Union[Dict[str, nn.Parameter], nn.ParameterDict]


def importance_sample_mask(importance: Tensor, fraction: float, generator: Optional[torch.Generator] = None) -> Tensor:
    """Keep mask of ``fraction`` of the Gaussians with non-zero importance, drawn without replacement with
    probability proportional to importance. Gaussians no training view sees are never kept."""
    if not 0 < fraction <= 1:
        raise ValueError(f"sampling fraction must be in (0, 1], got {fraction}")
    visible = int((importance > 0).sum())
    count = int(fraction * visible)
    keep = torch.zeros(len(importance), dtype=torch.bool, device=importance.device)
    if count > 0:
        keep[torch.multinomial(importance.float(), count, replacement=False, generator=generator)] = True
    return keep


def cumulative_mass_mask(importance: Tensor, share: float = 0.99) -> Tensor:
    """Keep mask dropping the least important Gaussians whose importance together is at most ``1 - share`` of
    the total: what is kept holds at least ``share`` of the mass."""
    if not 0 < share <= 1:
        raise ValueError(f"importance share must be in (0, 1], got {share}")
    if share == 1:
        return importance > 0
    order = torch.argsort(importance)
    dropped_mass = torch.cumsum(importance[order].double(), 0) <= (1 - share) * importance.double().sum()
    keep = torch.ones(len(importance), dtype=torch.bool, device=importance.device)
    keep[order[dropped_mass]] = False
    return keep


def top_k_mask(importance: Tensor, count: int) -> Tensor:
    """Keep mask of the ``count`` most important Gaussians."""
    keep = torch.zeros(len(importance), dtype=torch.bool, device=importance.device)
    keep[torch.topk(importance, min(count, len(importance))).indices] = True
    return keep


def neighbour_log_scales(means: Tensor, neighbours: int = 3) -> Tensor:
    """[N, 1] log of each point's mean distance to its ``neighbours`` nearest other points (splatfacto's initial
    scale rule)."""
    from sklearn.neighbors import NearestNeighbors

    points = means.detach().cpu().numpy()
    k = min(neighbours + 1, len(points))
    distances, _ = NearestNeighbors(n_neighbors=k).fit(points).kneighbors(points)
    mean = torch.from_numpy(distances[:, 1:]).to(means).mean(-1, keepdim=True) if k > 1 else torch.ones(len(points), 1)
    return torch.log(mean.to(means).clamp_min(1e-7))


@torch.no_grad()
def keep_only(params: Params, optimizers: Dict[str, torch.optim.Optimizer], state: Dict[str, Any], keep: Tensor) -> int:
    """Remove every Gaussian outside ``keep`` from params, optimiser moments and strategy state; returns how many."""
    removed = int((~keep).sum())
    if removed:
        remove(params, optimizers, state, ~keep)
    return removed


@torch.no_grad()
def reinitialise(params: Params, optimizers: Dict[str, torch.optim.Optimizer], values: Dict[str, Tensor]) -> None:
    """Replace whole parameters by ``values`` (same shapes) and restart their optimiser moments from zero."""
    for name, value in values.items():
        if value.shape != params[name].shape:
            raise ValueError(f"reinitialise: {name} has shape {tuple(params[name].shape)}, got {tuple(value.shape)}")

    def param_fn(name: str, param: Tensor) -> nn.Parameter:
        return nn.Parameter(values[name].to(param), requires_grad=param.requires_grad)

    _update_param_with_optimizer(
        param_fn, lambda _key, moment: torch.zeros_like(moment), params, optimizers, list(values)
    )


@torch.no_grad()
def replace_gaussians(
    params: Params, optimizers: Dict[str, torch.optim.Optimizer], state: Dict[str, Any], values: Dict[str, Tensor]
) -> None:
    """Replace the whole set of Gaussians by ``values`` (another count: a merged set, say). Every parameter takes
    its new value, its Adam moments restart from zero, and the strategy's per-Gaussian statistics start over
    (gsplat allocates them again at the next step)."""
    for name, value in values.items():

        def param_fn(_name: str, param: Tensor, value=value) -> nn.Parameter:
            # A copy: training must not write into the caller's tensors.
            return nn.Parameter(value.detach().to(param, copy=True), requires_grad=param.requires_grad)

        def optimizer_fn(_key: str, moment: Tensor, value=value) -> Tensor:
            return torch.zeros(value.shape, dtype=moment.dtype, device=moment.device)

        _update_param_with_optimizer(param_fn, optimizer_fn, params, optimizers, [name])
    for key, held in state.items():
        if isinstance(held, Tensor):
            state[key] = None
