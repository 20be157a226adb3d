"""gsplat's DefaultStrategy with a hard ceiling on the number of Gaussians."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict

import torch
from gsplat.strategy import DefaultStrategy

CAP_KEY = "max_count"
"""Strategy-state key of a run's own ceiling (a budget set during training): checkpoints keep the strategy
state's numbers (PortableSplatfactoModel.get_extra_state), so a resumed run stays under it."""


@dataclass
class CappedDefaultStrategy(DefaultStrategy):
    """Grows (clones and splits) at most up to the ceiling, never past it; pruning carries on as in gsplat.

    The ceiling is the smaller of ``max_count`` and ``state["max_count"]``. When a refinement has more growth
    candidates than room, the ones with the largest mean view-space gradient (the statistic gsplat thresholds)
    grow and the rest wait for the next refinement; every clone adds one Gaussian and every split adds one net.
    """

    max_count: int = 4_500_000

    def ceiling(self, state: Dict[str, Any]) -> int:
        cap = state.get(CAP_KEY)
        return self.max_count if cap is None else min(self.max_count, int(cap))

    def _grow_gs(self, params, optimizers, state, step):
        room = self.ceiling(state) - len(params["means"])
        if room <= 0:
            return 0, 0
        grads = state["grad2d"] / state["count"].clamp_min(1)
        candidates = grads > self.grow_grad2d
        if step < self.refine_scale2d_stop_iter:
            candidates |= state["radii"] > self.grow_scale2d
        if int(candidates.sum()) > room:
            ranked = torch.where(candidates, grads, torch.full_like(grads, -1.0))
            waiting = candidates.clone()
            waiting[torch.topk(ranked, room).indices] = False
            # gsplat clears these statistics right after refining, so hiding the waiting candidates from its
            # thresholds changes nothing else (except gsplat's screen-size prune of this one refinement for them).
            state["grad2d"][waiting] = 0.0
            state["radii"][waiting] = 0.0
        return super()._grow_gs(params, optimizers, state, step)


def set_ceiling(state: Dict[str, Any], count: int) -> None:
    """Cap the Gaussians of this run at ``count`` from now on, recorded in the (checkpointed) strategy state."""
    state[CAP_KEY] = int(count)  # a number, not a tensor: gsplat's ops index every tensor of the state per Gaussian
