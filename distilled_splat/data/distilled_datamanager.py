"""The student's datamanager: real images plus the teachers' cached, aggregated renders of the same views, and,
for distilled-splatfacto, a share of steps at pseudo views (cameras no photo covers) with the aggregate alone."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Literal, Optional, Tuple, Type, Union

import numpy as np
import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.models.splatfacto import SplatfactoModelConfig
from torch import Tensor

from distilled_splat.data.datamanager import PortableDatamanager, PortableDatamanagerConfig
from distilled_splat.data.pseudo_views import PseudoFamily, PseudoViewRecipe, concatenated, pseudo_cameras
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
    pseudo_views: int = 0
    """Also cache the teachers' aggregate at this many cameras no photo was taken from (LightGaussian's pseudo
    views), drawn once from a fixed seed, so every student of the scene shares them. 0: none."""
    pseudo_families: Tuple[PseudoFamily, ...] = ("interpolated", "jittered")
    """Kinds of pseudo view, taking turns: 'interpolated' (between a training camera and its nearest neighbour,
    position interpolated, rotation slerped) and 'jittered' (a training camera moved by N(0, pseudo-jitter^2) per
    axis). distilled-splatfacto: interpolated (jittered ones too cost 0.05 dB on the demo scene at 40%, README)."""
    pseudo_jitter: float = 0.05
    """Standard deviation of the jittered positions, in the scene's normalised units (poses fit in [-1, 1])."""
    pseudo_share: float = 0.0
    """Share of the training steps from pseudo-start on that train on a pseudo view (against the teachers'
    aggregate alone), spread evenly; LightGaussian uses 2/3."""
    pseudo_mode: Literal["replace", "add"] = "replace"
    """What a pseudo view takes the place of: 'replace' trains that step on it instead of a photo (LightGaussian,
    share below 1); 'add' trains the step on its photo and on the pseudo view, so no photo step is given up, at
    the cost of a second render on those steps. distilled-splatfacto: add (replacing photos cost 0.11 dB on the
    demo scene at 20%, README)."""
    pseudo_start: int = 0
    """First step that may take a pseudo view (30000-step units, scaled with the run like the model's schedules).
    distilled-splatfacto: its last cut (15000), so that while the student is cut the photos alone decide what it
    keeps; pseudo views during the cuts cost 0.15 dB on the fox capture (README)."""

    def step_schedule_fields(self) -> Tuple[str, ...]:
        return ("pseudo_start",)

    def scheduled_events(self) -> Dict[str, Tuple[int, str]]:
        if self.pseudo_share == 0:
            return {}
        return {"pseudo_start": (self.pseudo_start, "--pipeline.datamanager.pseudo-share 0 turns them off")}

    def pseudo_recipe(self) -> PseudoViewRecipe:
        return PseudoViewRecipe(self.pseudo_views, tuple(self.pseudo_families), self.pseudo_jitter)

    def __post_init__(self) -> None:
        self.check_pseudo_views()

    def check_pseudo_views(self) -> None:
        self.pseudo_recipe().check()
        adds = self.pseudo_mode == "add"  # only a step that keeps its photo may take a pseudo view every time
        if not (0 <= self.pseudo_share <= 1 if adds else 0 <= self.pseudo_share < 1):
            interval = "[0, 1] with pseudo-mode add" if adds else "[0, 1) with pseudo-mode replace"
            raise DistilledSplatError(
                f"--pipeline.datamanager.pseudo-share must be in {interval}, got {self.pseudo_share}"
            )
        if (self.pseudo_views > 0) != (self.pseudo_share > 0):
            raise DistilledSplatError(
                "--pipeline.datamanager.pseudo-views and --pipeline.datamanager.pseudo-share go together: views "
                f"without a share are rendered for no step, a share without views has nothing to train on (got "
                f"{self.pseudo_views} views, share {self.pseudo_share:g})"
            )

    def prepare_run(self, run_dir: Path) -> None:
        super().prepare_run(run_dir)
        self.check_pseudo_views()  # again: settings changed after construction skip __post_init__
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
        self.teacher_images: List[Tensor] = []
        self.pseudo_images: List[Tensor] = []
        if test_mode != "val":
            return  # evaluation, the viewer and export need no teachers
        if config.teacher_cache_dir is None:
            raise DistilledSplatError("--pipeline.datamanager.teacher-cache-dir is not set")
        # The training images are undistorted and cropped when first loaded, which rewrites the training cameras'
        # intrinsics and sizes: load them first, so the teachers render exactly the pixels the student sees.
        _ = self.cached_train
        training = self.train_dataset.cameras
        self.pseudo_cameras = pseudo_cameras(training, config.pseudo_recipe())
        names = [Path(name).name for name in self.train_dataparser_outputs.image_filenames]
        cached = load_or_build(
            Path(config.teacher_cache_dir),
            [teacher_config_path(teacher) for teacher in config.teachers],
            concatenated(training, self.pseudo_cameras),
            self.train_dataparser_outputs.cameras,
            names + [f"pseudo-view-{index:05d}" for index in range(len(self.pseudo_cameras))],
            config.aggregation,
            torch.device(device),
        )
        self.teacher_cache_rebuilt = cached.rebuilt
        self.teacher_images, self.pseudo_images = cached.images[: len(training)], cached.images[len(training) :]
        # A fixed order of its own, so that which pseudo view a step takes depends on the step alone (resumes too).
        self.pseudo_order = np.random.default_rng(1).permutation(len(self.pseudo_images)).tolist()
        # The pipeline hands the training dataset's metadata to the model: this is how the student gets the
        # vanilla teacher's centres without reading the checkpoint itself.
        self.train_dataset.metadata["teacher_means"] = cached.teacher_means
        vanilla = teacher_config_path(config.teachers[0])
        self.train_dataset.metadata["teacher_checkpoint"] = final_checkpoint(vanilla, read_config(vanilla))

    def pseudo_steps_before(self, step: int) -> int:
        return math.floor(max(0, step - self.config.pseudo_start) * self.config.pseudo_share)

    def next_train(self, step: int) -> Tuple[Cameras, Dict]:
        if self.pseudo_images and self.pseudo_steps_before(step + 1) > self.pseudo_steps_before(step):
            index = self.pseudo_order[self.pseudo_steps_before(step) % len(self.pseudo_order)]
            pseudo_camera = self.pseudo_cameras[index : index + 1].to(self.device)
            image = self.pseudo_images[index].to(self.device)
            if self.config.pseudo_mode == "replace":
                # The aggregate stands in for the photo, so the model's photometric loss is against the teachers
                # alone.
                return pseudo_camera, {"image": image, "teacher_image": image, "pseudo_view": True}
            camera, data = self.next_photo(step)
            data["pseudo_camera"], data["pseudo_image"] = pseudo_camera, image  # the model renders this one too
            return camera, data
        return self.next_photo(step)

    def next_photo(self, step: int) -> Tuple[Cameras, Dict]:
        camera, data = super().next_train(step)
        data["teacher_image"] = self.teacher_images[camera.metadata["cam_idx"]].to(self.device)
        return camera, data
