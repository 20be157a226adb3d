"""The dropout teacher (G_drop): DropGaussian, random opacity dropout with compensation while training."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple, Type

import torch
from torch import Tensor

from distilled_splat.errors import DistilledSplatError
from distilled_splat.models.portable_splatfacto import PortableSplatfactoModel, PortableSplatfactoModelConfig
from distilled_splat.schedules import in_window


@dataclass
class DropoutSplatfactoModelConfig(PortableSplatfactoModelConfig):
    """Splatfacto whose Gaussians are randomly dropped while training, the survivors' opacity scaled by 1/(1-p).

    The rate ramps linearly: p(t) = dropout-max-rate * (t - ramp-start) / (ramp-end - ramp-start), clipped to
    [0, dropout-rate-cap]. Step counts are for a 30000-step run and scale with --max-num-iterations. Evaluation,
    rendering, the viewer and export never drop anything.
    """

    _target: Type = field(default_factory=lambda: DropoutSplatfactoModel)
    dropout_start: int = 1
    """First step at which Gaussians are dropped. Default: every step of the run, as DropGaussian does; the
    reference code drops on only 11 steps (15000-25000 every 1000), too few to regularise anything. Reference:
    --dropout-start 15000 --dropout-stop 25000 --dropout-every 1000 --dropout-rate-cap 0.95."""
    dropout_stop: int = 30000
    """Last step (inclusive) at which Gaussians are dropped."""
    dropout_every: int = 1
    """Drop at dropout-start, dropout-start + dropout-every, ... up to dropout-stop."""
    dropout_ramp_start: int = 500
    """Step at which the linear rate ramp starts from 0."""
    dropout_ramp_end: int = 15000
    """Step at which the ramp reaches dropout-max-rate."""
    dropout_max_rate: float = 0.2
    """Drop rate at the end of the ramp."""
    dropout_rate_cap: float = 0.2
    """Largest rate ever used; the ramp keeps rising past its end up to this cap (must be below 1)."""

    def __post_init__(self) -> None:
        problems = []
        if self.dropout_every < 1 or self.dropout_start > self.dropout_stop:
            problems.append("dropout-every >= 1 and dropout-start <= dropout-stop")
        if self.dropout_ramp_end <= self.dropout_ramp_start:
            problems.append("dropout-ramp-start < dropout-ramp-end")
        if not (0 <= self.dropout_max_rate and 0 <= self.dropout_rate_cap < 1):
            problems.append("dropout-max-rate >= 0 and 0 <= dropout-rate-cap < 1")
        if problems:
            raise DistilledSplatError(f"--pipeline.model.dropout-*: need {'; '.join(problems)}")

    def step_schedule_fields(self) -> Tuple[str, ...]:
        return (
            *super().step_schedule_fields(),
            "dropout_start",
            "dropout_stop",
            "dropout_every",
            "dropout_ramp_start",
            "dropout_ramp_end",
        )

    def scheduled_events(self) -> Dict[str, Tuple[int, str]]:
        return {**super().scheduled_events(), "dropout_start": (self.dropout_start, "train distilled-teacher instead")}

    def drop_rate(self, step: int) -> float:
        """The rate used at training step ``step``; 0 outside the dropout window."""
        if not in_window(step, self.dropout_start, self.dropout_stop, self.dropout_every):
            return 0.0
        ramp = (step - self.dropout_ramp_start) / (self.dropout_ramp_end - self.dropout_ramp_start)
        return min(max(self.dropout_max_rate * ramp, 0.0), self.dropout_rate_cap)


class DropoutSplatfactoModel(PortableSplatfactoModel):
    config: DropoutSplatfactoModelConfig

    def splat_inputs(self, crop_ids: Optional[Tensor]) -> Dict[str, Tensor]:
        inputs = super().splat_inputs(crop_ids)
        rate = self.config.drop_rate(self.step) if self.training else 0.0
        if rate > 0:
            # Dropout of a ones vector: a Bernoulli keep mask already scaled by 1 / (1 - rate).
            keep = torch.nn.functional.dropout(torch.ones_like(inputs["opacities"]), p=rate, training=True)
            inputs["opacities"] = inputs["opacities"] * keep
        return inputs
