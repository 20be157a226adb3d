"""Up-front checks of a scene folder, so bad input fails with one line naming the file or frame.

Everything nerfstudio would trip over later (with a traceback, or silently by training on it) is caught here
before anything is written: unreadable or truncated images, image modes nerfstudio misreads, sizes that differ
from the declared ones, non-finite or singular poses, impossible intrinsics, camera models nerfstudio cannot
undistort, duplicate frames, and a declared point cloud that is missing or empty.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np
from nerfstudio.cameras.cameras import CAMERA_MODEL_TO_TYPE, CameraType
from PIL import Image

from distilled_splat.data.scene_inputs import (
    Frame,
    Resolution,
    SceneFolder,
    choose_resolution,
    declared_point_cloud,
    downscaled_image,
    find_scene,
    read_frames,
    scaled_size,
)
from distilled_splat.errors import DistilledSplatError

USABLE_MODES = {"RGB", "RGBA", "L"}
"""Image modes nerfstudio reads correctly (it repeats a greyscale channel three times). It reads others wrongly
without noticing (palette indices as grey, 16-bit values wrapped, CMYK as RGBA) or fails on them (LA)."""
UNDISTORTABLE = {CameraType.PERSPECTIVE.value, CameraType.FISHEYE.value}


def ply_vertex_count(path: Path) -> int:
    """Number of vertices a PLY header declares (reads the header only)."""
    with open(path, "rb") as handle:
        if handle.readline().strip() != b"ply":
            raise DistilledSplatError(f"point cloud {path} is not a PLY file")
        for raw in handle:
            line = raw.strip()
            if line.startswith(b"element vertex"):
                return int(line.split()[2])
            if line == b"end_header":
                break
    raise DistilledSplatError(f"point cloud {path} declares no vertex element")


def check_geometry(frame: Frame) -> None:
    """Finite, non-singular pose; finite intrinsics with positive focal lengths and image size."""
    pose = frame.pose
    if not np.isfinite(pose).all():
        raise DistilledSplatError(f"{frame.label}: the pose has non-finite values")
    if abs(np.linalg.det(pose[:3, :3])) < 1e-6:
        raise DistilledSplatError(f"{frame.label}: the pose's rotation is singular (determinant 0)")
    values = {"fl_x": frame.fx, "fl_y": frame.fy, "cx": frame.cx, "cy": frame.cy, "w": frame.width, "h": frame.height}
    for name, value in values.items():
        if not np.isfinite(value):
            raise DistilledSplatError(f"{frame.label}: '{name}' is not finite ({value})")
    for name in ("fl_x", "fl_y", "w", "h"):
        if values[name] <= 0:
            raise DistilledSplatError(f"{frame.label}: '{name}' must be positive, got {values[name]:g}")
    if any(not np.isfinite(value) for value in frame.distortion.values()):
        raise DistilledSplatError(f"{frame.label}: a lens distortion coefficient is not finite")


def check_camera_model(frame: Frame) -> None:
    camera_type = CAMERA_MODEL_TO_TYPE.get(frame.camera_model)
    if camera_type is None or camera_type.value not in UNDISTORTABLE:
        raise DistilledSplatError(
            f"{frame.label}: camera model {frame.camera_model} is not one nerfstudio can undistort for splatting "
            "(use a pinhole/OPENCV or OPENCV_FISHEYE model)"
        )
    if camera_type == CameraType.PERSPECTIVE and any(frame.distortion.get(k, 0.0) for k in ("k4", "k5", "k6")):
        raise DistilledSplatError(
            f"{frame.label}: distortion coefficients k4-k6 are set; nerfstudio undistorts only k1, k2, k3, p1, p2"
        )


def check_image(path: Path, label: str, expected_size: tuple) -> None:
    """The image exists, decodes completely, has a mode nerfstudio reads correctly and the expected size."""
    if not path.is_file():
        raise DistilledSplatError(f"image missing: {path} ({label})")
    try:
        with Image.open(path) as image:
            image.load()  # decodes every byte: a truncated file fails here, not mid-training
            mode, size = image.mode, image.size
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        reason = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise DistilledSplatError(f"image {path} is unreadable ({reason})") from None
    if mode not in USABLE_MODES:
        raise DistilledSplatError(
            f"image {path} has mode {mode}, which nerfstudio does not read as colour; convert it to RGB"
        )
    if size != expected_size:
        raise DistilledSplatError(
            f"image {path} is {size[0]}x{size[1]} but {label} declares {expected_size[0]}x{expected_size[1]}"
        )


def check_point_cloud(scene: SceneFolder) -> Optional[Path]:
    """The declared point cloud, checked; None when the scene has none (splatfacto then starts at random)."""
    cloud = declared_point_cloud(scene)
    if cloud is None or scene.kind == "colmap":
        return cloud
    if not cloud.is_file():
        raise DistilledSplatError(f"point cloud missing: {cloud}")
    if ply_vertex_count(cloud) == 0:
        raise DistilledSplatError(f"point cloud {cloud} is empty")
    return cloud


@dataclass
class CheckedScene:
    scene: SceneFolder
    frames: List[Frame]
    resolution: Resolution
    point_cloud: Optional[Path]


def check_frames(scene: SceneFolder, downscale: Optional[int] = None, check_images: bool = True) -> CheckedScene:
    """Check every frame of ``scene`` and the image files that training at 1/``downscale`` reads (None: nerfstudio's
    automatic factor). Raises :class:`DistilledSplatError` on the first problem found."""
    frames = read_frames(scene)
    seen = {}
    for frame in frames:
        if frame.image in seen:
            raise DistilledSplatError(f"{frame.label} repeats the image of {seen[frame.image]}: {frame.image}")
        seen[frame.image] = frame.label
        check_geometry(frame)
        check_camera_model(frame)
    resolution = choose_resolution(scene, frames, downscale)
    for frame in frames:
        if not frame.image.is_file() and not resolution.folder:
            raise DistilledSplatError(f"image missing: {frame.image} ({frame.label})")
        if check_images:
            declared = (int(frame.width), int(frame.height))
            if resolution.folder:
                path = downscaled_image(scene, frame, resolution.factor)
                expected = tuple(scaled_size(s, resolution.factor, resolution.rounding) for s in declared)
            else:
                path, expected = frame.image, declared
            check_image(path, frame.label, expected)
    return CheckedScene(scene, frames, resolution, check_point_cloud(scene))


def check_scene(data: Optional[Path], check_images: bool = True) -> CheckedScene:
    """Find the scene at ``data`` (a transforms.json scene or a COLMAP folder) and check it at full size."""
    return check_frames(find_scene(data), downscale=1, check_images=check_images)
