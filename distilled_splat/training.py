"""Running nerfstudio training and evaluation in-process for the pipeline commands."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Dict

import torch
from nerfstudio.engine.trainer import TrainerConfig

from distilled_splat.data.datamanager import require_device


def resolve_device(device: str) -> str:
    """``auto`` becomes ``cuda`` where a CUDA device exists and ``cpu`` elsewhere; others are checked."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return require_device(device).type


def run_dir(config: TrainerConfig) -> Path:
    """Folder nerfstudio writes ``config.yml`` and ``nerfstudio_models/`` into."""
    return config.get_base_dir()


def final_checkpoint(config: TrainerConfig) -> Path:
    """The checkpoint nerfstudio writes after the last training step."""
    return config.get_checkpoint_dir() / f"step-{config.max_num_iterations - 1:09d}.ckpt"


def train(config: TrainerConfig) -> Path:
    """Train ``config`` (timestamp must be fixed) and return its ``config.yml``; skipped if already finished."""
    from nerfstudio.scripts.train import main as train_main

    config_path = run_dir(config) / "config.yml"
    if not (config_path.is_file() and final_checkpoint(config).is_file()):
        train_main(config)
    return config_path


def gaussian_count(config: TrainerConfig) -> int:
    """Number of Gaussians in the run's final checkpoint."""
    state = torch.load(final_checkpoint(config), map_location="cpu", weights_only=True)["pipeline"]
    return int(state["_model.gauss_params.means"].shape[0])


def evaluate(config_path: Path, output_json: Path) -> Dict[str, float]:
    """``ns-eval`` on the held-out views: writes ``output_json`` and returns its ``results`` metrics."""
    from nerfstudio.scripts.eval import ComputePSNR

    ComputePSNR(load_config=config_path, output_path=output_json).main()
    return json.loads(output_json.read_text())["results"]
