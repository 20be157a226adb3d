"""gsplat's DefaultStrategy with a ceiling on the number of Gaussians."""

from __future__ import annotations

from dataclasses import dataclass

from gsplat.strategy import DefaultStrategy


@dataclass
class CappedDefaultStrategy(DefaultStrategy):
    """Stops growing (cloning and splitting) once ``max_count`` Gaussians exist; pruning carries on."""

    max_count: int = 4_500_000

    def _grow_gs(self, params, optimizers, state, step):
        if len(params["means"]) >= self.max_count:
            return 0, 0
        return super()._grow_gs(params, optimizers, state, step)
