"""nerfstudio's full-image datamanager, made to run on any device and to check its scene first."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Type, Union

import torch
from nerfstudio.data.datamanagers.full_images_datamanager import FullImageDatamanager, FullImageDatamanagerConfig
from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

from distilled_splat.data.scene_checks import check_scene
from distilled_splat.errors import DistilledSplatError


def require_device(device: Union[torch.device, str]) -> torch.device:
    """The device, or a one-line error when it does not exist on this machine."""
    try:
        device = torch.device(device)
    except RuntimeError as err:
        raise DistilledSplatError(f"unknown device {device!r}: {err}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DistilledSplatError("--machine.device-type cuda was asked for but no CUDA device is available; use cpu")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise DistilledSplatError("--machine.device-type mps was asked for but MPS is not available; use cpu")
    return device


@dataclass
class PortableDatamanagerConfig(FullImageDatamanagerConfig):
    """FullImageDatamanager that runs without CUDA and validates a nerfstudio-format scene before loading it."""

    _target: Type = field(default_factory=lambda: PortableDatamanager)

    def prepare_run(self, run_dir: Path) -> None:
        """Check every input and fill in run-dependent defaults before nerfstudio writes anything for the run."""
        if isinstance(self.dataparser, NerfstudioDataParserConfig):
            check_scene(self.data if self.data is not None else self.dataparser.data)


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
        data = config.data if config.data is not None else config.dataparser.data
        if isinstance(config.dataparser, NerfstudioDataParserConfig):
            # Exporting needs no images, only the poses and point cloud.
            check_scene(data, check_images=test_mode != "inference")
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
