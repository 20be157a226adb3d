"""Cameras that no photograph was taken from, for distilling the teachers' renders where the real images say
nothing (LightGaussian's pseudo views): between neighbouring training cameras, and training cameras moved a
little. They keep the intrinsics and image size of the training camera they come from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Tuple

import numpy as np
import torch
from jaxtyping import Float
from nerfstudio.cameras.camera_utils import quaternion_from_matrix, quaternion_matrix, quaternion_slerp
from nerfstudio.cameras.cameras import Cameras
from torch import Tensor

from distilled_splat.errors import DistilledSplatError

PseudoFamily = Literal["interpolated", "jittered"]


@dataclass(frozen=True)
class PseudoViewRecipe:
    """How many pseudo views, of which families; everything that decides their cameras (so, the cache key)."""

    count: int = 0
    families: Tuple[PseudoFamily, ...] = ("interpolated", "jittered")
    jitter: float = 0.05
    seed: int = 0

    def check(self) -> None:
        if self.count < 0:
            raise DistilledSplatError(f"--pipeline.datamanager.pseudo-views must be >= 0, got {self.count}")
        if self.count and not self.families:
            raise DistilledSplatError("--pipeline.datamanager.pseudo-families needs at least one family")
        if self.jitter < 0:
            raise DistilledSplatError(f"--pipeline.datamanager.pseudo-jitter must be >= 0, got {self.jitter}")


def nearest_other(positions: Float[Tensor, "N 3"]) -> Tensor:
    """[N] index of each camera's nearest other camera (itself where there is only one)."""
    distances = torch.cdist(positions.double(), positions.double())
    distances.fill_diagonal_(float("inf"))
    return distances.argmin(1) if len(positions) > 1 else torch.zeros(1, dtype=torch.long)


def slerp_pose(pose_a: np.ndarray, pose_b: np.ndarray, fraction: float) -> np.ndarray:
    """[3, 4] camera-to-world between two poses: position linearly, rotation along the shortest arc."""
    quat = quaternion_slerp(quaternion_from_matrix(pose_a[:3, :3]), quaternion_from_matrix(pose_b[:3, :3]), fraction)
    pose = np.zeros((3, 4))
    pose[:3, :3] = quaternion_matrix(quat)[:3, :3]
    pose[:, 3] = (1 - fraction) * pose_a[:, 3] + fraction * pose_b[:, 3]
    return pose


def pseudo_cameras(cameras: Cameras, recipe: PseudoViewRecipe) -> Cameras:
    """``recipe.count`` cameras made from ``cameras`` (the training cameras as the student renders them).

    The families take turns. ``interpolated``: a training camera and its nearest other training camera, at a
    fraction drawn from [0.25, 0.75] of the way between them. ``jittered``: a training camera whose position moves
    by N(0, jitter^2) per axis, in the scene's normalised units (nerfstudio scales poses into [-1, 1]), rotation
    unchanged. Draws from a generator of its own seeded with ``recipe.seed``, never from the global streams.
    """
    recipe.check()
    generator = np.random.default_rng(recipe.seed)
    poses = cameras.camera_to_worlds.detach().cpu().double().numpy()
    neighbours = nearest_other(cameras.camera_to_worlds[:, :3, 3].cpu()).numpy()
    sources, made = [], []
    for index in range(recipe.count):
        source = int(generator.integers(len(poses)))
        family = recipe.families[index % len(recipe.families)]
        if family == "interpolated":
            pose = slerp_pose(poses[source], poses[neighbours[source]], float(generator.uniform(0.25, 0.75)))
        else:
            pose = poses[source].copy()
            pose[:, 3] += generator.normal(0.0, recipe.jitter, size=3)
        sources.append(source)
        made.append(pose)
    if not made:
        return cameras[torch.zeros(0, dtype=torch.long)]
    chosen = cameras[torch.tensor(sources)]
    chosen.camera_to_worlds = torch.from_numpy(np.stack(made)).to(cameras.camera_to_worlds)
    chosen.metadata = None
    return chosen


def concatenated(first: Cameras, second: Cameras) -> Cameras:
    """One Cameras holding ``first`` then ``second`` (pseudo views made from ``first``, so of the same kind)."""
    if len(second) == 0:
        return first

    def cat(name: str) -> Optional[Tensor]:
        a, b = getattr(first, name), getattr(second, name)
        return None if a is None or b is None else torch.cat([a, b.to(a)])

    names = ("camera_to_worlds", "fx", "fy", "cx", "cy", "width", "height", "camera_type", "distortion_params")
    return Cameras(**{name: cat(name) for name in names})
