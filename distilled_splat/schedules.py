"""Fitting 30k-step schedules to shorter runs, keeping every training phase at the same fraction of the run."""

from __future__ import annotations

import copy
from typing import Dict

from nerfstudio.engine.schedulers import ExponentialDecaySchedulerConfig
from nerfstudio.engine.trainer import TrainerConfig

FULL_RUN_STEPS = 30_000
"""The run length every default step count in this package (and in splatfacto) is written for."""

MIN_REFINES_PER_RESET = 5
"""gsplat pauses refinement for (training views + one refine interval) steps after each opacity reset; resets
closer together than this many refinements would pause every refinement of a short run."""


def in_window(step: int, start: int, stop: int, every: int) -> bool:
    """Whether ``step`` is one of ``start, start + every, ...`` up to ``stop`` inclusive."""
    return start <= step <= stop and (step - start) % every == 0


def scheduled_parts(config: TrainerConfig) -> Dict[str, object]:
    """The parts of ``config`` that declare step schedules, by their command-line prefix: the model, and the
    datamanager where it has schedules of its own (the student's pseudo views)."""
    datamanager = config.pipeline.datamanager
    has_schedules = hasattr(datamanager, "step_schedule_fields")
    return {"model": config.pipeline.model, **({"datamanager": datamanager} if has_schedules else {})}


def fit_model_to_run_length(config: TrainerConfig, max_steps: int) -> None:
    """Let the model settle what depends on the run's length (where it is one of this package's)."""
    fit = getattr(config.pipeline.model, "fit_to_run_length", None)
    if fit is not None:
        fit(max_steps)


def scale_to_run_length(config: TrainerConfig, max_steps: int) -> TrainerConfig:
    """A copy of ``config`` running ``max_steps`` steps, every step-count schedule scaled by ``max_steps / 30_000``.

    Covers densification (warm-up, stop), opacity resets, the resolution and SH schedules, learning-rate decay,
    the checkpoint interval and the step counts the model config lists in ``step_schedule_fields()`` (noise and
    dropout windows, distillation phases; None stays off), so a short run still passes through every phase. The refinement
    interval itself is kept: densifying more often than every 100 steps gives the optimiser no time to fit the
    new Gaussians, and the count then roughly doubles at every refinement. Evaluation intervals are kept too:
    evaluating more often in a shorter run only costs time.
    """
    if max_steps < 1:
        raise ValueError(f"max_steps must be positive, got {max_steps}")
    config = copy.deepcopy(config)
    factor = max_steps / FULL_RUN_STEPS

    def scaled(steps: int) -> int:
        # 0 means "from the start" (e.g. no densification at all) and stays 0; anything later stays after step 0.
        return 0 if steps == 0 else max(1, round(steps * factor))

    model = config.pipeline.model
    reset_every_steps = model.reset_alpha_every * model.refine_every
    model.reset_alpha_every = max(MIN_REFINES_PER_RESET, round(reset_every_steps * factor / model.refine_every))
    for owner in scheduled_parts(config).values():
        for name in owner.step_schedule_fields():
            if getattr(owner, name) is not None:
                setattr(owner, name, scaled(getattr(owner, name)))
    for optimizer in config.optimizers.values():
        scheduler = optimizer["scheduler"]
        if isinstance(scheduler, ExponentialDecaySchedulerConfig):
            scheduler.max_steps = scaled(scheduler.max_steps)
            scheduler.warmup_steps = scaled(scheduler.warmup_steps) if scheduler.warmup_steps else 0
    fit_model_to_run_length(config, max_steps)
    config.max_num_iterations = max_steps
    config.steps_per_save = scaled(config.steps_per_save)
    config.scale_schedules = False
    return config
