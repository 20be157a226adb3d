"""The student's datamanager: real images plus the teachers' aggregated renders of the same views."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Literal, Optional, Tuple, Type, Union

import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.models.splatfacto import SplatfactoModelConfig

from distilled_splat.data.datamanager import PortableDatamanager, PortableDatamanagerConfig
from distilled_splat.data.teacher_cache import load_or_build
from distilled_splat.errors import DistilledSplatError
from distilled_splat.teachers import final_checkpoint, read_config, teacher_config_path


@dataclass
class DistilledDatamanagerConfig(PortableDatamanagerConfig):
    """Serves each training view's image together with the teachers' aggregated render of it (``teacher_image``)."""

    _target: Type = field(default_factory=lambda: DistilledDatamanager)
    teachers: Tuple[Path, ...] = ()
    """Trained teacher runs (their config.yml or run folders) on the same scene, vanilla teacher first: its
    Gaussian centres are the structural loss target and the reference for --pipeline.model.target-fraction."""
    aggregation: Literal["mean", "median"] = "mean"
    """How the teachers' renders of a view are combined into the pseudo ground truth."""
    teacher_cache_dir: Optional[Path] = None
    """Where the aggregated renders are cached. Default: teacher-cache beside the student's runs
    (OUTPUT-DIR/EXPERIMENT/METHOD/teacher-cache), shared by re-runs and rebuilt when any input changes."""

    def prepare_run(self, run_dir: Path) -> None:
        super().prepare_run(run_dir)
        if not self.teachers:
            raise DistilledSplatError("no teachers given: pass --pipeline.datamanager.teachers RUN [RUN ...]")
        for teacher in self.teachers:
            path = teacher_config_path(teacher)
            config = read_config(path)
            if not isinstance(config.pipeline.model, SplatfactoModelConfig):
                raise DistilledSplatError(
                    f"teacher {path.parent} was trained with {config.method_name}, not a Gaussian splat method"
                )
            final_checkpoint(path, config)
        if self.teacher_cache_dir is None:
            self.teacher_cache_dir = run_dir.parent / "teacher-cache"


class DistilledDatamanager(PortableDatamanager):
    config: DistilledDatamanagerConfig

    def __init__(
        self,
        config: DistilledDatamanagerConfig,
        device: Union[torch.device, str] = "cpu",
        test_mode: Literal["test", "val", "inference"] = "val",
        **kwargs,
    ):
        super().__init__(config, device=device, test_mode=test_mode, **kwargs)
        self.teacher_images = []
        if test_mode != "val":
            return  # evaluation, the viewer and export need no teachers
        if config.teacher_cache_dir is None:
            raise DistilledSplatError("--pipeline.datamanager.teacher-cache-dir is not set")
        # The training images are undistorted and cropped when first loaded, which rewrites the training cameras'
        # intrinsics and sizes: load them first, so the teachers render exactly the pixels the student sees.
        _ = self.cached_train
        cached = load_or_build(
            Path(config.teacher_cache_dir),
            [teacher_config_path(teacher) for teacher in config.teachers],
            self.train_dataset.cameras,
            self.train_dataparser_outputs.cameras,
            [Path(name).name for name in self.train_dataparser_outputs.image_filenames],
            config.aggregation,
            torch.device(device),
        )
        self.teacher_cache_rebuilt = cached.rebuilt
        self.teacher_images = cached.images
        # The pipeline hands the training dataset's metadata to the model: this is how the student gets the
        # vanilla teacher's centres without reading the checkpoint itself.
        self.train_dataset.metadata["teacher_means"] = cached.teacher_means
        vanilla = teacher_config_path(config.teachers[0])
        self.train_dataset.metadata["teacher_checkpoint"] = final_checkpoint(vanilla, read_config(vanilla))

    def next_train(self, step: int) -> Tuple[Cameras, Dict]:
        camera, data = super().next_train(step)
        data["teacher_image"] = self.teacher_images[camera.metadata["cam_idx"]].to(self.device)
        return camera, data
