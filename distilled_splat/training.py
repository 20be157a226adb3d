"""Running nerfstudio training, evaluation and export in-process, resumable and with atomic outputs."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Callable, Dict, Optional

import torch
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackLocation
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.utils import writer as event_writers

from distilled_splat.errors import DistilledSplatError
from distilled_splat.files import write_atomically
from distilled_splat.fingerprints import FINGERPRINT_FILE, fingerprint_parts, read_recorded_parts
from distilled_splat.teachers import checkpoint_steps, read_config


def run_dir(config: TrainerConfig) -> Path:
    """Folder nerfstudio writes ``config.yml`` and ``nerfstudio_models/`` into."""
    return config.get_base_dir()


def last_step_checkpoint(config: TrainerConfig) -> Path:
    """The checkpoint nerfstudio writes after the last training step."""
    return config.get_checkpoint_dir() / f"step-{config.max_num_iterations - 1:09d}.ckpt"


def is_complete_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a whole torch checkpoint (a zip whose every member passes its CRC), not a torn write."""
    try:
        with zipfile.ZipFile(path) as archive:
            return archive.testzip() is None
    except (OSError, zipfile.BadZipFile):
        return False


def is_trained(config: TrainerConfig) -> bool:
    return (run_dir(config) / "config.yml").is_file() and is_complete_checkpoint(last_step_checkpoint(config))


def latest_resumable_step(config: TrainerConfig) -> Optional[int]:
    """Step of the newest complete checkpoint of an interrupted run; torn checkpoints are deleted on the way."""
    folder = config.get_checkpoint_dir()
    if not (run_dir(config) / "config.yml").is_file() or not folder.is_dir():
        return None
    for step in reversed(checkpoint_steps(folder)):
        path = folder / f"step-{step:09d}.ckpt"
        if is_complete_checkpoint(path):
            return step
        path.unlink()
    return None


def refuse_other_settings(config: TrainerConfig) -> Dict[str, str]:
    """A run folder that already holds a run made with other settings, on another scene or from other teachers'
    checkpoints is never taken (finished) or continued (interrupted) as this one: that would report a model these
    settings did not make. Returns ``config``'s fingerprint parts (taken before nerfstudio saves and changes it)."""
    wanted = fingerprint_parts(config)
    if not (run_dir(config) / "config.yml").is_file():
        return wanted
    recorded = read_recorded_parts(run_dir(config))
    if recorded is None:
        raise DistilledSplatError(
            f"{run_dir(config)} holds a run that records no {FINGERPRINT_FILE} (an earlier version made it), so it "
            "cannot be told from a run with other settings: use another --output, or delete that folder"
        )
    differing = [part for part, value in wanted.items() if recorded.get(part) != value]
    if differing:
        raise DistilledSplatError(
            f"{run_dir(config)} holds a run made with other {' and '.join(differing)} than this one (other options, "
            "another scene or other teachers): use another --output, or delete that folder"
        )
    return wanted


def train(config: TrainerConfig, on_step: Optional[Callable[[int], None]] = None) -> Path:
    """Train ``config`` (timestamp must be fixed) and return its ``config.yml``.

    A finished run is skipped; an interrupted one resumes from its newest complete checkpoint. ``on_step`` is
    called with the step number after every training step.
    """
    from nerfstudio.scripts.train import _set_random_seed

    config_path = run_dir(config) / "config.yml"
    parts = refuse_other_settings(config)
    if is_trained(config):
        return config_path
    resume_step = latest_resumable_step(config)
    if resume_step is None:
        shutil.rmtree(run_dir(config), ignore_errors=True)
        run_dir(config).mkdir(parents=True)
        write_atomically(run_dir(config) / FINGERPRINT_FILE, lambda path: path.write_text(json.dumps(parts, indent=1)))
        config.save_config()  # checks inputs and fits schedules first (CheckedTrainerConfig)
        trainer_config = config
    else:
        # Resume what was saved; nerfstudio trains max_num_iterations steps *after* the loaded one, while the
        # saved config keeps the total.
        trainer_config = read_config(config_path)
        trainer_config.load_dir = config.get_checkpoint_dir()
        trainer_config.max_num_iterations = config.max_num_iterations - resume_step - 1
    _set_random_seed(config.machine.seed)
    writers_before = len(event_writers.EVENT_WRITERS)
    trainer = trainer_config.setup(local_rank=0, world_size=1)
    try:
        trainer.setup()
        if on_step is not None:
            trainer.callbacks.append(TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], on_step))
        try:
            trainer.train()
        except DistilledSplatError as err:
            last = latest_resumable_step(config)
            where = "none" if last is None else str(config.get_checkpoint_dir() / f"step-{last:09d}.ckpt")
            raise DistilledSplatError(f"{config.method_name}: {err}; last good checkpoint: {where}") from None
    finally:
        close_event_writers_since(writers_before)
    return config_path


def close_event_writers_since(count: int) -> None:
    """Close and forget the event writers a training added to nerfstudio's module-wide list. Left there, every later
    training in the same process (a frontier, a benchmark) would also log into this run's files, and re-create
    them after this run's folder is gone."""
    for event_writer in event_writers.EVENT_WRITERS[count:]:
        if isinstance(event_writer, event_writers.TensorboardWriter):
            event_writer.tb_writer.close()
    del event_writers.EVENT_WRITERS[count:]


def gaussian_count(config: TrainerConfig) -> int:
    """Number of Gaussians in the run's final checkpoint."""
    state = torch.load(last_step_checkpoint(config), map_location="cpu")["pipeline"]
    return int(state["_model.gauss_params.means"].shape[0])


def evaluate(config_path: Path, output_json: Path) -> Dict[str, float]:
    """``ns-eval`` on the held-out views: writes ``output_json`` and returns its ``results`` metrics."""
    from nerfstudio.scripts.eval import ComputePSNR

    write_atomically(output_json, lambda path: ComputePSNR(load_config=config_path, output_path=path).main())
    return json.loads(output_json.read_text())["results"]


def export_ply(config_path: Path, output_ply: Path) -> Path:
    """``ns-export gaussian-splat``: a standard 3DGS .ply at ``output_ply``."""
    from nerfstudio.scripts.exporter import ExportGaussianSplat

    def export(path: Path) -> None:
        with tempfile.TemporaryDirectory(dir=output_ply.parent) as folder:
            ExportGaussianSplat(load_config=config_path, output_dir=Path(folder)).main()
            os.replace(Path(folder) / "splat.ply", path)

    return write_atomically(output_ply, export)
