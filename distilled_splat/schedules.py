"""Shrinking splatfacto's 30k-step schedules to shorter runs, keeping every phase at the same fraction."""

from __future__ import annotations

from nerfstudio.engine.trainer import TrainerConfig

from distilled_splat.method_configs import FULL_RUN_STEPS, splat_optimizers

MIN_REFINE_EVERY = 10
"""Densification needs gradients accumulated over several views; never refine more often than this."""


def scale_to_run_length(config: TrainerConfig, max_steps: int) -> TrainerConfig:
    """Set ``max_num_iterations`` and scale every step-count schedule by ``max_steps / 30_000``, in place.

    Covers densification (warm-up, refine interval, stop), opacity resets, the resolution and SH schedules,
    learning-rate decay and checkpoint/eval intervals, so a short run still passes through every phase.
    """
    if max_steps < 1:
        raise ValueError(f"max_steps must be positive, got {max_steps}")
    factor = max_steps / FULL_RUN_STEPS

    def scaled(steps: int, floor: int = 1) -> int:
        return max(floor, round(steps * factor))

    model = config.pipeline.model
    reset_every_steps = model.reset_alpha_every * model.refine_every
    model.warmup_length = scaled(model.warmup_length)
    model.refine_every = scaled(model.refine_every, MIN_REFINE_EVERY)
    model.reset_alpha_every = max(1, round(reset_every_steps * factor / model.refine_every))
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
