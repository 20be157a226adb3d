"""The perturbed teacher (G_perb): splatfacto whose clone candidates get noise on their raw parameters."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Tuple, Type

from distilled_splat.errors import DistilledSplatError
from distilled_splat.models.portable_splatfacto import PortableSplatfactoModel, PortableSplatfactoModelConfig
from distilled_splat.ops.perturb import PERTURBED_ATTRIBUTES, clone_candidates, perturb
from distilled_splat.schedules import in_window


@dataclass
class PerturbedSplatfactoModelConfig(PortableSplatfactoModelConfig):
    """Splatfacto with Gaussian noise on the raw parameters of clone candidates at regular steps.

    Step counts are for a 30000-step run and scale with --max-num-iterations (see --scale-schedules).
    """

    _target: Type = field(default_factory=lambda: PerturbedSplatfactoModel)
    perturb_start: int = 500
    """First step at which clone candidates are perturbed. Default: the paper's window (500-15000, every 500),
    which coincides with densification, so the clone test reads live gradients. The reference code uses
    15000-25000 every 1000, after densification has stopped, on gradient statistics frozen at step 15000."""
    perturb_stop: int = 15000
    """Last step (inclusive) at which clone candidates are perturbed."""
    perturb_every: int = 500
    """Perturb at perturb-start, perturb-start + perturb-every, ... up to perturb-stop."""
    perturb_noise_scale: float = 0.1
    """Noise standard deviation per attribute: this times max(1, mean |attribute| over all Gaussians)."""
    perturb_attributes: Tuple[str, ...] = PERTURBED_ATTRIBUTES
    """Raw parameters that receive noise: means, opacities (logit), scales (log), quats (noise added in 6D)."""

    def __post_init__(self) -> None:
        if self.perturb_every < 1 or self.perturb_start > self.perturb_stop:
            raise DistilledSplatError(
                f"--pipeline.model.perturb-*: need perturb-every >= 1 and perturb-start <= perturb-stop, got "
                f"every={self.perturb_every}, start={self.perturb_start}, stop={self.perturb_stop}"
            )
        unknown = set(self.perturb_attributes) - set(PERTURBED_ATTRIBUTES)
        if unknown:
            raise DistilledSplatError(
                f"--pipeline.model.perturb-attributes: unknown {sorted(unknown)}, choose from {PERTURBED_ATTRIBUTES}"
            )

    def step_schedule_fields(self) -> Tuple[str, ...]:
        return (*super().step_schedule_fields(), "perturb_start", "perturb_stop", "perturb_every")

    def scheduled_events(self) -> Dict[str, Tuple[int, str]]:
        return {**super().scheduled_events(), "perturb_start": (self.perturb_start, "train distilled-teacher instead")}


class PerturbedSplatfactoModel(PortableSplatfactoModel):
    config: PerturbedSplatfactoModelConfig

    def perturb_clone_candidates(self, step: int) -> int:
        """Perturb the current clone candidates if ``step`` is a perturbation step; returns how many."""
        config = self.config
        if not in_window(step, config.perturb_start, config.perturb_stop, config.perturb_every):
            return 0
        candidates = clone_candidates(self.gauss_params, self.strategy_state, self.strategy)
        return perturb(
            self.gauss_params, self.optimizers, candidates, config.perturb_noise_scale, config.perturb_attributes
        )

    def step_post_backward(self, step: int) -> None:
        # Before the strategy's refinement, which clears the gradient statistics the clone test reads.
        self.perturb_clone_candidates(step)
        super().step_post_backward(step)
