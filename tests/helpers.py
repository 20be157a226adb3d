"""In-process training helpers shared by the model tests."""

from __future__ import annotations

import random
from pathlib import Path
from typing import Dict, Optional

import torch
from nerfstudio.engine.callbacks import TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.engine.optimizers import Optimizers
from nerfstudio.engine.trainer import TrainerConfig

from distilled_splat.data.scene_inputs import dataparser_for, find_scene
from distilled_splat.schedules import scale_to_run_length
from distilled_splat.training import train


def build_pipeline(
    method_config: TrainerConfig,
    scene: Path,
    steps: int = 200,
    seed: int = 0,
    datamanager: Optional[Dict] = None,
    **model_settings,
):
    """A CPU pipeline for ``method_config`` on ``scene``, schedules scaled to ``steps``, with its optimisers."""
    random.seed(seed)
    torch.manual_seed(seed)
    config = scale_to_run_length(method_config, steps)
    config.pipeline.datamanager.data = scene
    for name, value in (datamanager or {}).items():
        setattr(config.pipeline.datamanager, name, value)
    for name, value in model_settings.items():
        setattr(config.pipeline.model, name, value)
    pipeline, optimizers = setup_pipeline(config)
    pipeline.model.step_cb(optimizers, 0)
    return config, pipeline, optimizers


def setup_pipeline(config: TrainerConfig):
    """A CPU training pipeline and its optimisers for ``config`` as it is (schedules already fitted)."""
    pipeline = config.pipeline.setup(device="cpu", test_mode="val")
    return pipeline, Optimizers(config.optimizers, pipeline.get_param_groups())


def spy_on_growth(strategy) -> list:
    """Record, at each refinement under a ceiling, how many Gaussians wanted to grow (view-space gradient above
    the threshold) beyond the room the ceiling leaves; the real growth step then runs as usual."""
    from distilled_splat.strategy.capped import CAP_KEY

    refused = []
    real = strategy._grow_gs

    def grow(params, optimizers, state, step):
        if CAP_KEY in state:
            grads = state["grad2d"] / state["count"].clamp_min(1)
            room = strategy.ceiling(state) - len(params["means"])
            refused.append(max(0, int((grads > strategy.grow_grad2d).sum()) - room))
        return real(params, optimizers, state, step)

    strategy._grow_gs = grow
    return refused


def train_steps(pipeline, optimizers: Optimizers, steps: range) -> None:
    """The trainer's loop body: callbacks before, forward, backward, optimiser step, callbacks after."""
    attributes = TrainingCallbackAttributes(optimizers=optimizers, grad_scaler=None, pipeline=pipeline, trainer=None)
    callbacks = pipeline.get_training_callbacks(attributes)
    pipeline.train()
    for step in steps:
        for callback in callbacks:
            callback.run_callback_at_location(step, TrainingCallbackLocation.BEFORE_TRAIN_ITERATION)
        optimizers.zero_grad_all()
        _, loss_dict, _ = pipeline.get_train_loss_dict(step)
        sum(loss_dict.values()).backward()
        optimizers.optimizer_step_all()
        for callback in callbacks:
            callback.run_callback_at_location(step, TrainingCallbackLocation.AFTER_TRAIN_ITERATION)


def untrained_psnr(config_path: Path, count: Optional[int] = None) -> float:
    """Held-out PSNR of the run's model as initialised, before any training step (with ``count``: only its first
    ``count`` Gaussians, for a model trained to a budget): the baseline a trained model must beat by a margin."""
    from distilled_splat.teachers import read_config

    config = read_config(config_path)
    torch.manual_seed(config.machine.seed)
    pipeline = config.pipeline.setup(device="cpu", test_mode="test")
    model = pipeline.model
    if count is not None:
        for name, param in model.gauss_params.items():
            model.gauss_params[name] = torch.nn.Parameter(param.detach()[:count])
    pipeline.eval()
    return float(pipeline.get_average_eval_image_metrics()["psnr"])


def pruned_teacher_psnr(teacher_config: Path, count: int) -> float:
    """Held-out PSNR of the trained teacher cut to its ``count`` most important Gaussians (total blending weight
    over the training views) and not trained further: what a student started from that teacher must beat."""
    from nerfstudio.utils.eval_utils import eval_setup

    from distilled_splat.importance import scene_importance

    _, pipeline, _, _ = eval_setup(teacher_config, test_mode="test")
    model = pipeline.model
    importance = scene_importance(model.splat_inputs(None), pipeline.datamanager.train_dataset.cameras)
    keep = torch.topk(importance, count).indices
    for name, param in model.gauss_params.items():
        model.gauss_params[name] = torch.nn.Parameter(param.detach()[keep])
    pipeline.eval()
    return float(pipeline.get_average_eval_image_metrics()["psnr"])


def training_config(
    method_config: TrainerConfig,
    scene: Path,
    output: Path,
    steps: int,
    timestamp: str = "run",
    datamanager: Optional[Dict] = None,
    **model_settings,
) -> TrainerConfig:
    """``method_config`` set up for a CPU run of ``steps`` steps on ``scene`` under ``output``."""
    config = scale_to_run_length(method_config, steps)
    config.pipeline.datamanager.data = scene
    config.pipeline.datamanager.dataparser = dataparser_for(find_scene(scene))
    for name, value in (datamanager or {}).items():
        setattr(config.pipeline.datamanager, name, value)
    config.output_dir = output
    config.timestamp = timestamp
    config.vis = "tensorboard"
    config.machine.device_type = "cpu"
    for name, value in model_settings.items():
        setattr(config.pipeline.model, name, value)
    return config


def train_run(
    method_config: TrainerConfig, scene: Path, output: Path, steps: int, timestamp: str = "run", **model_settings
) -> Path:
    """A full nerfstudio training run in this process (checkpoints, config.yml); returns the config.yml."""
    return train(training_config(method_config, scene, output, steps, timestamp, **model_settings))
