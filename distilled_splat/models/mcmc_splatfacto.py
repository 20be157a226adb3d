"""Splatfacto capped from the start: 3DGS-MCMC densification (gsplat's MCMCStrategy) on any device.

nerfstudio 1.1.5 has no MCMC method; this is the "capped" alternative the frontier compares the student with.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple, Type

import torch
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor

from distilled_splat.models.portable_splatfacto import PortableSplatfactoModel, PortableSplatfactoModelConfig
from distilled_splat.strategy.mcmc import PortableMCMCStrategy

REGULARISER_WEIGHT = 0.01
"""3DGS-MCMC's weight of the L1 regulariser on opacities and of the one on scales (gsplat's simple_trainer)."""


@dataclass
class MCMCSplatfactoModelConfig(PortableSplatfactoModelConfig):
    """Splatfacto with 3DGS-MCMC densification: never more than cap-max Gaussians. Step counts are for a
    30000-step run and scale with --max-num-iterations."""

    _target: Type = field(default_factory=lambda: MCMCSplatfactoModel)
    cap_max: int = 1_000_000
    """Most Gaussians at any step. A point cloud with more points is subsampled (uniformly) to this many."""
    refine_stop: int = 25000
    """Last step that relocates and grows (gsplat: 25000; refinement starts after warmup-length)."""
    noise_lr: float = 5e5
    """Scale of the noise added to the means of low-opacity Gaussians, times the means' learning rate."""
    min_opacity: float = 0.005
    """Gaussians at or below this opacity are dead and are relocated onto live ones."""
    grow_fraction: Optional[float] = None
    """Share of the count each refinement adds (gsplat: 0.05). None: 0.05, or more where a short run would not
    reach cap-max within the first half of its refinements."""
    opacity_reg: float = REGULARISER_WEIGHT
    """Weight of the L1 regulariser on opacities."""
    scale_reg: float = REGULARISER_WEIGHT
    """Weight of the L1 regulariser on scales."""

    def step_schedule_fields(self) -> Tuple[str, ...]:
        return (*super().step_schedule_fields(), "refine_stop")


class MCMCSplatfactoModel(PortableSplatfactoModel):
    config: MCMCSplatfactoModelConfig

    def populate_modules(self) -> None:
        config = self.config
        if self.seed_points is not None and len(self.seed_points[0]) > config.cap_max:
            keep = torch.randperm(len(self.seed_points[0]))[: config.cap_max]
            CONSOLE.print(f"MCMC: {config.cap_max} of the {len(self.seed_points[0])} seed points, the cap")
            self.seed_points = (self.seed_points[0][keep], self.seed_points[1][keep])
        if self.seed_points is None or config.random_init:
            config.num_random = min(config.num_random, config.cap_max)
        super().populate_modules()
        refinements = max(1, (config.refine_stop - config.warmup_length) // config.refine_every)
        grow = config.grow_fraction
        if grow is None:
            needed = math.log(max(config.cap_max / max(self.num_points, 1), 1.0)) / max(refinements // 2, 1)
            grow = max(0.05, math.exp(needed) - 1)
        self.strategy = PortableMCMCStrategy(
            cap_max=config.cap_max, noise_lr=config.noise_lr, refine_start_iter=config.warmup_length,
            refine_stop_iter=config.refine_stop, refine_every=config.refine_every, min_opacity=config.min_opacity,
            grow_fraction=grow,
        )  # fmt: skip
        self.strategy_state = self.strategy.initialize_state()

    def strategy_post_backward(self, step: int) -> None:
        lr = self.optimizers["means"].param_groups[0]["lr"]
        self.strategy.step_post_backward(self.gauss_params, self.optimizers, self.strategy_state, step, self.info, lr)

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, Tensor]:
        loss_dict = super().get_loss_dict(outputs, batch, metrics_dict)
        if self.training:
            loss_dict.update(mcmc_regularisers(self, self.config.opacity_reg, self.config.scale_reg))
        return loss_dict


def mcmc_regularisers(model: PortableSplatfactoModel, opacity_weight: float, scale_weight: float) -> Dict[str, Tensor]:
    """3DGS-MCMC's L1 regularisers on opacities and scales, which let unneeded Gaussians fade and be relocated."""
    return {
        "opacity_reg": opacity_weight * torch.sigmoid(model.opacities).mean(),
        "scale_reg_mcmc": scale_weight * torch.exp(model.scales).mean(),
    }
