"""gsplat's MCMCStrategy (3DGS-MCMC: relocation of dead Gaussians, growth by sampling up to ``cap_max``) on any
device, with the growth rate exposed."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from gsplat.strategy import MCMCStrategy
from gsplat.strategy.ops import sample_add

from distilled_splat.ops.relocation import portable_mcmc_ops


@dataclass
class PortableMCMCStrategy(MCMCStrategy):
    """MCMCStrategy whose relocation runs on CPU tensors too (:mod:`distilled_splat.ops.relocation`).

    ``grow_fraction``: each refinement adds this share of the current count (gsplat: 0.05), up to ``cap_max``.
    The count never exceeds ``cap_max`` as long as the model starts at or below it: relocation moves Gaussians
    and growth stops at the cap.
    """

    grow_fraction: float = 0.05
    absgrad: bool = False  # splatfacto's renderer asks its strategy; MCMC reads no screen-space gradients

    def step_post_backward(self, params, optimizers, state, step, info, lr: float) -> None:
        with portable_mcmc_ops():
            super().step_post_backward(params, optimizers, state, step, info, lr)

    def relocate_dead(self, params, optimizers, state) -> int:
        """Relocate the Gaussians at ``min_opacity`` or below now, outside the refinement schedule; returns how many."""
        state["binoms"] = state["binoms"].to(params["means"].device)
        with portable_mcmc_ops():
            return self._relocate_gs(params, optimizers, state["binoms"])

    @torch.no_grad()
    def _add_new_gs(self, params, optimizers, binoms) -> int:
        current = len(params["means"])
        added = max(0, min(self.cap_max, int((1 + self.grow_fraction) * current)) - current)
        if added > 0:
            sample_add(params, optimizers, {}, added, binoms, self.min_opacity)
        return added
