"""In-process training helpers shared by the model tests."""

from __future__ import annotations

import random
from pathlib import Path

import torch
from nerfstudio.engine.optimizers import Optimizers
from nerfstudio.engine.trainer import TrainerConfig

from distilled_splat.schedules import scale_to_run_length


def build_pipeline(method_config: TrainerConfig, scene: Path, steps: int = 200, seed: int = 0, **model_settings):
    """A CPU pipeline for ``method_config`` on ``scene``, schedules scaled to ``steps``, with its optimisers."""
    random.seed(seed)
    torch.manual_seed(seed)
    config = scale_to_run_length(method_config, steps)
    config.pipeline.datamanager.data = scene
    for name, value in model_settings.items():
        setattr(config.pipeline.model, name, value)
    pipeline = config.pipeline.setup(device="cpu", test_mode="val")
    optimizers = Optimizers(config.optimizers, pipeline.get_param_groups())
    pipeline.model.step_cb(optimizers, 0)
    return config, pipeline, optimizers


def train_steps(pipeline, optimizers: Optimizers, steps: range) -> None:
    """The trainer's loop body: forward, backward, optimiser step, then the model's post-step callback."""
    model = pipeline.model
    pipeline.train()
    for step in steps:
        model.step_cb(optimizers, step)
        optimizers.zero_grad_all()
        _, loss_dict, _ = pipeline.get_train_loss_dict(step)
        sum(loss_dict.values()).backward()
        optimizers.optimizer_step_all()
        model.step_post_backward(step)
