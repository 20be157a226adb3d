"""The student's compaction as one gsplat-style strategy: densification with a hard ceiling, plus the
importance events of Mini-Splatting (sampling with re-initialisation, the mass prune) and the budget."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, Optional

import torch
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor

from distilled_splat.ops.prune import (
    Params,
    cumulative_mass_mask,
    importance_sample_mask,
    keep_only,
    neighbour_log_scales,
    reinitialise,
    replace_gaussians,
    top_k_mask,
)
from distilled_splat.strategy.capped import CappedDefaultStrategy, set_ceiling

Importance = Callable[[], Tensor]
"""Returns the current importance of every Gaussian (summed over all training views)."""
Merge = Callable[[Params, int], Dict[str, Tensor]]
"""Merges the Gaussians down to a count, returning the new parameters (distilled_splat.decimation)."""


@dataclass
class CompactionStrategy(CappedDefaultStrategy):
    """gsplat's DefaultStrategy with a hard ceiling, and at fixed steps:

    - ``sample_at``: keep ``sample_fraction`` of the visible Gaussians, drawn without replacement with probability
      proportional to importance, and re-initialise them (isotropic scales from the 3 nearest neighbours, opacity
      0.1, identity rotation, no view-dependent colour; these parameters' Adam moments restart);
    - ``prune_at``: keep the most important Gaussians holding ``keep_mass`` of the total importance, then at most
      ``budget`` of them; from then on the budget is the ceiling (kept in the state, so checkpoints carry it).

    :meth:`cut_towards_budget` brings models that start from more Gaussians than the budget allows down to it, at
    once or in several cuts of equal ratio.
    ``step_post_backward`` takes the importance as a callable, since computing it renders every training view.
    """

    sample_at: Optional[int] = None
    sample_fraction: float = 0.5
    prune_at: Optional[int] = None
    keep_mass: float = 0.99
    budget: Optional[int] = None

    def step_post_backward(
        self,
        params: Params,
        optimizers: Dict[str, torch.optim.Optimizer],
        state: Dict[str, Any],
        step: int,
        info: Dict[str, Any],
        packed: bool = False,
        importance: Optional[Importance] = None,
    ) -> None:
        super().step_post_backward(params, optimizers, state, step, info, packed)
        if step not in (self.sample_at, self.prune_at):
            return
        if importance is None:
            raise ValueError(f"step {step} prunes by importance, but no importance was given")
        if step == self.sample_at:
            self.sample_and_reinitialise(params, optimizers, state, importance())
            CONSOLE.print(f"Step {step}: importance sampling kept {len(params['means'])} Gaussians")
        if step == self.prune_at:
            before = len(params["means"])
            self.prune_to_mass_and_budget(params, optimizers, state, importance())
            CONSOLE.print(f"Step {step}: importance pruning kept {len(params['means'])} of {before} Gaussians")

    @torch.no_grad()
    def sample_and_reinitialise(self, params: Params, optimizers, state: Dict[str, Any], importance: Tensor) -> None:
        keep_only(params, optimizers, state, importance_sample_mask(importance, self.sample_fraction))
        means = params["means"].detach()
        count = len(means)
        opacities = params["opacities"]
        reinitialise(
            params,
            optimizers,
            {
                "scales": neighbour_log_scales(means).repeat(1, 3),
                "opacities": torch.logit(torch.full_like(opacities, 0.1)),
                # Isotropic scales make the rotation irrelevant to the render; the identity draws no random numbers.
                "quats": torch.tensor([1.0, 0.0, 0.0, 0.0]).to(means).repeat(count, 1),
                **({"features_rest": torch.zeros_like(params["features_rest"])} if "features_rest" in params else {}),
            },
        )

    @torch.no_grad()
    def prune_to_mass_and_budget(self, params: Params, optimizers, state: Dict[str, Any], importance: Tensor) -> None:
        keep = cumulative_mass_mask(importance, self.keep_mass)
        if self.budget is not None and int(keep.sum()) > self.budget:
            keep = top_k_mask(torch.where(keep, importance, torch.zeros_like(importance)), self.budget)
        keep_only(params, optimizers, state, keep)
        if self.budget is not None:
            set_ceiling(state, self.budget)  # later growth stays within the budget, resumed runs too

    @torch.no_grad()
    def cut_towards_budget(
        self,
        params: Params,
        optimizers,
        state: Dict[str, Any],
        importance: Importance,
        cuts_left: int = 1,
        keep: Optional[int] = None,
        merge: Optional[Merge] = None,
    ) -> int:
        """Bring the count down to the budget itself when ``cuts_left`` is 1, otherwise to ``keep`` if given
        (never below the budget), else to as many as leave ``cuts_left - 1`` further cuts of the same ratio: by
        keeping the most important Gaussians, or, with ``merge``, by merging them down to that count. What is
        kept becomes the ceiling; returns how many went."""
        if self.budget is None:
            return 0
        if cuts_left < 1:
            raise ValueError(f"cuts_left must be positive, got {cuts_left}")
        count = len(params["means"])
        if count <= self.budget:
            keep = self.budget
        elif cuts_left == 1 or keep is None:
            keep = round(count * (self.budget / count) ** (1 / cuts_left))
        else:
            keep = min(count, max(self.budget, keep))
        set_ceiling(state, keep)
        if count <= keep:
            return 0
        if merge is not None:
            replace_gaussians(params, optimizers, state, merge(params, keep))
            return count - keep
        return keep_only(params, optimizers, state, top_k_mask(importance(), keep))
