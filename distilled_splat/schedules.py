"""Shrinking splatfacto's 30k-step schedules to shorter runs, keeping every phase at the same fraction."""

from __future__ import annotations

import copy

from nerfstudio.engine.trainer import TrainerConfig

from distilled_splat.method_configs import FULL_RUN_STEPS, splat_optimizers

MIN_REFINES_PER_RESET = 5
"""gsplat pauses refinement for (training views + one refine interval) steps after each opacity reset; resets
closer together than this many refinements would pause every refinement of a short run."""


def scale_to_run_length(config: TrainerConfig, max_steps: int) -> TrainerConfig:
    """A copy of ``config`` running ``max_steps`` steps, every step-count schedule scaled by ``max_steps / 30_000``.

    Covers densification (warm-up, stop), opacity resets, the resolution and SH schedules, learning-rate decay
    and checkpoint/eval intervals, so a short run still passes through every phase. The refinement interval
    itself is kept: densifying more often than every 100 steps gives the optimiser no time to fit the new
    Gaussians, and the count then roughly doubles at every refinement.
    """
    if max_steps < 1:
        raise ValueError(f"max_steps must be positive, got {max_steps}")
    factor = max_steps / FULL_RUN_STEPS
    config = copy.deepcopy(config)

    def scaled(steps: int) -> int:
        return max(1, round(steps * factor))

    model = config.pipeline.model
    reset_every_steps = model.reset_alpha_every * model.refine_every
    model.warmup_length = scaled(model.warmup_length)
    model.reset_alpha_every = max(MIN_REFINES_PER_RESET, round(reset_every_steps * factor / model.refine_every))
    model.resolution_schedule = scaled(model.resolution_schedule)
    model.sh_degree_interval = scaled(model.sh_degree_interval)
    model.stop_screen_size_at = scaled(model.stop_screen_size_at)
    model.stop_split_at = scaled(model.stop_split_at)
    config.max_num_iterations = max_steps
    config.optimizers = splat_optimizers(max_steps)
    config.steps_per_save = scaled(config.steps_per_save)
    config.steps_per_eval_image = scaled(config.steps_per_eval_image)
    config.steps_per_eval_all_images = scaled(config.steps_per_eval_all_images)
    return config
