"""nerfstudio's full-image datamanager, made to run on any device and to check its scene first."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Literal, Optional, Type, Union

import torch
from nerfstudio.data.datamanagers.full_images_datamanager import FullImageDatamanager, FullImageDatamanagerConfig
from nerfstudio.data.dataparsers.colmap_dataparser import ColmapDataParserConfig

from distilled_splat.data.scene_checks import CheckedScene, check_frames
from distilled_splat.data.scene_inputs import scene_for_dataparser
from distilled_splat.devices import require_device
from distilled_splat.notices import say_once


def scene_notes(checked: CheckedScene) -> List[str]:
    """What a user should know about how their scene is read: a resize, a random start."""
    notes = []
    if checked.resolution.factor > 1:
        notes.append(checked.resolution.note(checked.scene))
    if checked.point_cloud is None:
        notes.append(
            f"no point cloud in {checked.scene.describe()}: starting from random Gaussians, as splatfacto does"
        )
    return notes


@dataclass
class PortableDatamanagerConfig(FullImageDatamanagerConfig):
    """FullImageDatamanager that runs without CUDA and checks its scene (transforms.json or COLMAP) first."""

    _target: Type = field(default_factory=lambda: PortableDatamanager)

    def check_scene(self, check_images: bool = True) -> Optional[CheckedScene]:
        """Check the scene the dataparser will read; None for dataparsers this package does not know."""
        data = self.data if self.data is not None else self.dataparser.data
        scene = scene_for_dataparser(self.dataparser, data)
        if scene is None:
            return None
        return check_frames(scene, self.dataparser.downscale_factor, check_images)

    def prepare_run(self, run_dir: Path) -> None:
        """Check every input and settle how the scene is read, before nerfstudio writes anything for the run.

        The dataparser's downscale factor becomes concrete: the images_N folder where it exists, otherwise a
        resize on load (nerfstudio's COLMAP parser would stop to ask about ffmpeg). A scene without a point cloud
        is read without one, so splatfacto starts from random Gaussians. config.yml records the result.
        """
        checked = self.check_scene()
        if checked is None:
            return
        parser, resolution = self.dataparser, checked.resolution
        parser.downscale_factor = resolution.factor if resolution.folder else 1
        if isinstance(parser, ColmapDataParserConfig):
            parser.downscale_rounding_mode = resolution.rounding
        if not resolution.folder and resolution.factor > 1:
            self.camera_res_scale_factor /= resolution.factor
        if checked.point_cloud is None:
            parser.load_3D_points = False
        for note in scene_notes(checked):
            say_once(note)


class PortableDatamanager(FullImageDatamanager):
    config: PortableDatamanagerConfig

    def __init__(
        self,
        config: PortableDatamanagerConfig,
        device: Union[torch.device, str] = "cpu",
        test_mode: Literal["test", "val", "inference"] = "val",
        **kwargs,
    ):
        require_device(device)
        config.check_scene(check_images=test_mode != "inference")  # exporting needs no images
        super().__init__(config, device=device, test_mode=test_mode, **kwargs)

    def get_extra_state(self) -> dict:
        """The training camera order, saved with checkpoints so that a resumed run visits views as before."""
        sampler = getattr(self, "random_generator", None)
        return {"unseen": list(self.train_unseen_cameras), "sampler": None if sampler is None else sampler.getstate()}

    def set_extra_state(self, state: dict) -> None:
        if state.get("unseen"):
            self.train_unseen_cameras = list(state["unseen"])
        if state.get("sampler") is not None and hasattr(self, "random_generator"):
            self.random_generator.setstate(state["sampler"])

    def _load_images(self, split, cache_images_device):
        # "cpu" caching pins host memory, which needs a CUDA driver; off CUDA, caching "on the device" is the
        # same host memory without the pinning.
        if cache_images_device == "cpu" and torch.device(self.device).type != "cuda":
            cache_images_device = "gpu"
        return super()._load_images(split, cache_images_device)
