"""Finding, fingerprinting and loading trained teacher runs, and checking they belong to the student's scene."""

from __future__ import annotations

import dataclasses
import hashlib
import re
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import torch
import yaml
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.data.datamanagers.full_images_datamanager import FullImageDatamanagerConfig
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.models.splatfacto import SplatfactoModelConfig
from nerfstudio.pipelines.base_pipeline import Pipeline

from distilled_splat.data.datamanager import PortableDatamanagerConfig
from distilled_splat.errors import DistilledSplatError
from distilled_splat.models.portable_splatfacto import PortableSplatfactoModelConfig

CHECKPOINT_NAME = re.compile(r"step-(\d+)\.ckpt")


def checkpoint_steps(folder: Path) -> List[int]:
    """Steps of the ``step-NNNNNNNNN.ckpt`` files in a nerfstudio checkpoint folder, ascending."""
    return sorted(int(m.group(1)) for p in folder.glob("step-*.ckpt") if (m := CHECKPOINT_NAME.fullmatch(p.name)))


def teacher_config_path(teacher: Path) -> Path:
    """The config.yml of a teacher given as that file or as its run folder."""
    teacher = Path(teacher)
    path = teacher / "config.yml" if teacher.is_dir() else teacher
    if not path.is_file():
        raise DistilledSplatError(f"teacher run not found: {teacher} (give its config.yml or run folder)")
    return path


def read_config(config_path: Path) -> TrainerConfig:
    try:
        config = yaml.load(config_path.read_text(), Loader=yaml.Loader)
    except (yaml.YAMLError, AttributeError, ModuleNotFoundError) as err:
        raise DistilledSplatError(f"teacher config {config_path} is unreadable: {str(err).splitlines()[0]}") from None
    if not isinstance(config, TrainerConfig):
        raise DistilledSplatError(f"teacher config {config_path} is not a nerfstudio run config")
    # A cut-off file can still parse: yaml then builds the config from the fields it got as far as.
    if not all(name in config.__dict__ for name in ("pipeline", "method_name", "max_num_iterations")):
        raise DistilledSplatError(f"teacher config {config_path} is unreadable: it ends before the run's settings")
    return config


def final_checkpoint(config_path: Path, config: Optional[TrainerConfig] = None) -> Path:
    """The checkpoint of the teacher's last training step; an unfinished run is refused.

    ``config`` is the already-read ``config_path``, if the caller has it (parsing it takes ~40 ms).
    """
    config = read_config(config_path) if config is None else config
    folder = config_path.parent / config.relative_model_dir
    steps = checkpoint_steps(folder)
    if not steps:
        raise DistilledSplatError(f"teacher {config_path.parent} has no checkpoint in {folder}")
    last = config.max_num_iterations - 1
    if steps[-1] < last:
        raise DistilledSplatError(
            f"teacher {config_path.parent} is unfinished: its latest checkpoint is step {steps[-1]} of {last}"
        )
    return folder / f"step-{steps[-1]:09d}.ckpt"


def fingerprint(path: Path) -> str:
    """sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def load_checkpoint_state(checkpoint: Path, device: torch.device) -> dict:
    try:
        return torch.load(checkpoint, map_location=device)
    except Exception as err:  # truncated zip, bad pickle, wrong format: all mean "unusable"
        raise DistilledSplatError(f"teacher checkpoint {checkpoint} is unreadable ({type(err).__name__})") from None


def load_gaussians(checkpoint: Path) -> Dict[str, torch.Tensor]:
    """The Gaussian parameters (means, scales, quats, opacities, features_dc, features_rest) of a splat checkpoint."""
    prefix = "_model.gauss_params."
    state = load_checkpoint_state(checkpoint, torch.device("cpu"))["pipeline"]
    return {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}


def as_portable(config: TrainerConfig) -> TrainerConfig:
    """A run of nerfstudio's own splatfacto (or splatfacto-big) with this package's model and datamanager, which
    render and load on any device (nerfstudio's need CUDA), and the same settings; ours come back unchanged."""

    def carried(value, new_type: type):
        shared = {f.name for f in dataclasses.fields(new_type) if f.init and f.name != "_target"}
        return new_type(**{name: getattr(value, name) for name in shared if hasattr(value, name)})

    pipeline = config.pipeline
    if isinstance(pipeline.model, SplatfactoModelConfig) and not isinstance(
        pipeline.model, PortableSplatfactoModelConfig
    ):
        pipeline.model = carried(pipeline.model, PortableSplatfactoModelConfig)
    if type(pipeline.datamanager) is FullImageDatamanagerConfig:
        pipeline.datamanager = carried(pipeline.datamanager, PortableDatamanagerConfig)
        # nerfstudio holds out a fraction of the views by default, this package every 8th. The split changes
        # neither the teacher's Gaussians nor its frame (normalised over all views), only which cameras it calls
        # training ones, which check_same_cameras compares with the student's.
        parser = pipeline.datamanager.dataparser
        if hasattr(parser, "eval_mode"):
            parser.eval_mode, parser.eval_interval = "interval", 8
    return config


def load_teacher(config_path: Path, device: torch.device) -> Tuple[Pipeline, Path]:
    """A teacher's pipeline in inference mode with its final checkpoint loaded; returns (pipeline, checkpoint).
    nerfstudio's own splatfacto runs load into the portable model (:func:`as_portable`)."""
    config = as_portable(read_config(config_path))
    checkpoint = final_checkpoint(config_path, config)
    try:
        pipeline = config.pipeline.setup(device=device, test_mode="inference")
    except DistilledSplatError as err:
        raise DistilledSplatError(f"teacher {config_path.parent}: {err}") from None
    state = load_checkpoint_state(checkpoint, device)
    try:
        pipeline.load_pipeline(state["pipeline"], state["step"])
    except (KeyError, RuntimeError) as err:
        raise DistilledSplatError(
            f"teacher checkpoint {checkpoint} does not fit its config: {str(err).splitlines()[0]}"
        ) from None
    pipeline.eval()
    return pipeline, checkpoint


def check_same_cameras(teacher: Cameras, student: Cameras, teacher_name: str) -> None:
    """One-line error naming the first difference between a teacher's training cameras and the student's.

    Intrinsics are compared relative to the image size: the student may train at another resolution.
    """
    prefix = f"teacher {teacher_name} was trained on a different scene:"
    if len(teacher) != len(student):
        raise DistilledSplatError(
            f"{prefix} it has {len(teacher)} training cameras, the student's scene has {len(student)}"
        )

    def relative_intrinsics(cameras: Cameras) -> torch.Tensor:
        width, height = cameras.width.float().cpu(), cameras.height.float().cpu()
        return torch.cat(
            [cameras.fx.cpu() / width, cameras.fy.cpu() / height, cameras.cx.cpu() / width, cameras.cy.cpu() / height],
            1,
        )

    pose_error = (teacher.camera_to_worlds.cpu() - student.camera_to_worlds.cpu()).abs().flatten(1).max(1).values
    intrinsics_error = (relative_intrinsics(teacher) - relative_intrinsics(student)).abs().max(1).values
    # Rounding image sizes when downscaling moves relative intrinsics by up to ~1/size.
    for name, error, tolerance in (("pose", pose_error, 1e-3), ("intrinsics", intrinsics_error, 2e-2)):
        if bool((error > tolerance).any()):
            i = int((error > tolerance).nonzero()[0])
            raise DistilledSplatError(f"{prefix} camera {i} {name} differs by {float(error[i]):.3g}")
