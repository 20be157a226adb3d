"""The scene folders users bring, read into one list of frames, and the nerfstudio dataparser for each.

Two kinds are recognised from the folder itself:

- nerfstudio / instant-ngp: ``transforms.json`` with intrinsics, optional OpenCV lens distortion and
  camera-to-world poses, with or without a sparse point cloud (``ply_file_path``);
- COLMAP, as Mip-NeRF 360, Tanks and Temples and Deep Blending ship it: ``images/`` (and ``images_2/4/8``)
  beside a sparse model in ``sparse/0``, ``sparse`` or ``colmap/sparse/0``, text or binary.
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Literal, Optional, Union

import numpy as np
from nerfstudio.data.dataparsers.base_dataparser import DataParserConfig
from nerfstudio.data.dataparsers.colmap_dataparser import ColmapDataParserConfig
from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig

from distilled_splat.errors import DistilledSplatError

COLMAP_MODEL_DIRS = (Path("sparse/0"), Path("sparse"), Path("colmap/sparse/0"))
"""Where a COLMAP folder keeps its sparse model, in the order they are looked for."""
MAX_AUTO_SIZE = 1600
"""nerfstudio's rule: without an explicit factor, images are downscaled by powers of two to at most this size."""
DISTORTION_KEYS = ("k1", "k2", "k3", "k4", "k5", "k6", "p1", "p2")


@dataclass(frozen=True)
class SceneFolder:
    """Where a scene's cameras, images and points are."""

    kind: Literal["transforms", "colmap"]
    root: Path
    """The scene folder."""
    transforms: Optional[Path] = None
    """transforms.json (kind 'transforms')."""
    colmap_model: Path = Path("sparse/0")
    """Sparse model folder relative to root (kind 'colmap')."""
    images: Path = Path("images")
    """Full-size image folder relative to root (kind 'colmap')."""

    def describe(self) -> str:
        if self.kind == "transforms":
            return f"{self.transforms}"
        return f"COLMAP model {self.root / self.colmap_model}"


@dataclass
class Frame:
    """One view as the scene declares it, before any downscaling: enough to check it and find its image."""

    image: Path
    """Full-size image file."""
    label: str
    """How messages name this frame, e.g. 'frame 3 of scene/transforms.json'."""
    pose: np.ndarray
    """[3, 4] or [4, 4] camera pose as stored (camera-to-world for transforms.json, world-to-camera for COLMAP)."""
    fx: float
    fy: float
    cx: float
    cy: float
    width: float
    height: float
    camera_model: str = "OPENCV"
    distortion: Dict[str, float] = field(default_factory=dict)


def is_colmap_model(folder: Path) -> bool:
    return (folder / "cameras.bin").is_file() or (folder / "cameras.txt").is_file()


def find_scene(data: Optional[Union[str, Path]]) -> SceneFolder:
    """The kind and layout of the scene at ``data`` (a folder, or a transforms.json)."""
    if data is None:
        raise DistilledSplatError("no scene given: pass --data with a transforms.json or COLMAP scene folder")
    data = Path(data)
    if not data.exists():
        raise DistilledSplatError(f"scene not found: {data}")
    if data.is_file():
        if data.suffix != ".json":
            raise DistilledSplatError(f"scene {data} is a file but not a transforms.json")
        return SceneFolder("transforms", data.parent, transforms=data)
    if (data / "transforms.json").is_file():
        return SceneFolder("transforms", data, transforms=data / "transforms.json")
    for model in COLMAP_MODEL_DIRS:
        if is_colmap_model(data / model):
            return SceneFolder("colmap", data, colmap_model=model)
    raise DistilledSplatError(
        f"no transforms.json and no COLMAP model (sparse/0/cameras.bin or .txt) in scene folder {data}"
    )


def scene_for_dataparser(parser: DataParserConfig, data: Optional[Path]) -> Optional[SceneFolder]:
    """The scene a nerfstudio dataparser config will read, for the parsers this package can check."""
    data = Path(data) if data is not None else Path(parser.data)
    if isinstance(parser, ColmapDataParserConfig):
        if not data.is_dir():
            raise DistilledSplatError(f"scene not found: {data}")
        if not is_colmap_model(data / parser.colmap_path):
            raise DistilledSplatError(
                f"no COLMAP model in {data / parser.colmap_path} (no cameras.bin or cameras.txt); "
                "give its folder with --colmap-path"
            )
        return SceneFolder("colmap", data, colmap_model=parser.colmap_path, images=parser.images_path)
    if isinstance(parser, NerfstudioDataParserConfig):
        scene = find_scene(data)
        if scene.kind != "transforms":
            raise DistilledSplatError(
                f"{data} is a COLMAP folder: read it with the colmap dataparser "
                f"(ns-train METHOD --data {data} colmap --colmap-path {scene.colmap_model})"
            )
        return scene
    return None


# --- reading the declared frames -------------------------------------------------------------------------------


def read_transforms(scene: SceneFolder) -> dict:
    path = scene.transforms
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DistilledSplatError(f"{path} is not valid JSON (line {err.lineno}: {err.msg})") from None
    except (OSError, UnicodeDecodeError) as err:
        raise DistilledSplatError(f"{path} is unreadable: {err}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("frames"), list) or not meta["frames"]:
        raise DistilledSplatError(f"{path} has no 'frames' list")
    return meta


def _number(value, what: str) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        raise DistilledSplatError(f"{what} is not a number: {value!r}") from None


def transforms_frames(scene: SceneFolder, meta: dict) -> List[Frame]:
    """Frames of a transforms.json; intrinsics and distortion given at the top level apply to every frame, as in
    nerfstudio's parser."""
    path = scene.transforms
    distortion_at_top = any(key in meta for key in ("k1", "k2", "k3", "p1", "p2"))
    frames = []
    for index, frame in enumerate(meta["frames"]):
        label = f"frame {index} of {path}"
        if not isinstance(frame, dict) or "file_path" not in frame or "transform_matrix" not in frame:
            raise DistilledSplatError(f"{path}: frame {index} needs 'file_path' and 'transform_matrix'")
        matrix = frame["transform_matrix"]
        if (
            not isinstance(matrix, list)
            or len(matrix) not in (3, 4)
            or any(not isinstance(row, list) or len(row) != 4 for row in matrix)
        ):
            raise DistilledSplatError(f"{path}: frame {index} transform_matrix is not 3x4 or 4x4")
        pose = np.array([[_number(v, f"{label}: transform_matrix entry") for v in row] for row in matrix])

        def value(key: str, frame=frame, index=index, label=label) -> float:
            found = meta.get(key, frame.get(key))
            if found is None:
                raise DistilledSplatError(f"{path}: frame {index} has no '{key}' (nor has the file)")
            return _number(found, f"{label}: '{key}'")

        source = meta if distortion_at_top else frame
        distortion = {key: _number(source[key], f"{label}: '{key}'") for key in DISTORTION_KEYS if key in source}
        frames.append(
            Frame(
                image=scene.root / frame["file_path"],
                label=label,
                pose=pose,
                fx=value("fl_x"),
                fy=value("fl_y"),
                cx=value("cx"),
                cy=value("cy"),
                width=value("w"),
                height=value("h"),
                camera_model=str(meta.get("camera_model", "OPENCV")),
                distortion=distortion,
            )
        )
    return frames


def colmap_frames(scene: SceneFolder) -> List[Frame]:
    """Frames of a COLMAP model, sorted by image id as nerfstudio's COLMAP parser sorts them."""
    from nerfstudio.data.utils import colmap_parsing_utils as colmap
    from nerfstudio.process_data.colmap_utils import parse_colmap_camera_params

    model = scene.root / scene.colmap_model
    text = (model / "cameras.txt").is_file()
    try:
        cameras = (
            colmap.read_cameras_text(model / "cameras.txt")
            if text
            else colmap.read_cameras_binary(model / "cameras.bin")
        )
        images = (
            colmap.read_images_text(model / "images.txt") if text else colmap.read_images_binary(model / "images.bin")
        )
    except FileNotFoundError as err:
        raise DistilledSplatError(f"COLMAP model {model} is incomplete: {Path(err.filename).name} is missing") from None
    except (struct.error, ValueError, IndexError, KeyError, UnicodeDecodeError, MemoryError) as err:
        raise DistilledSplatError(f"COLMAP model {model} is unreadable ({type(err).__name__})") from None
    if not images:
        raise DistilledSplatError(f"COLMAP model {model} has no images")
    models = {camera.model for camera in cameras.values()}
    if len(models) > 1:
        raise DistilledSplatError(f"COLMAP model {model} mixes camera models {sorted(models)}; nerfstudio needs one")
    intrinsics = {}
    for camera_id, camera in cameras.items():
        try:
            intrinsics[camera_id] = parse_colmap_camera_params(camera)
        except NotImplementedError:
            raise DistilledSplatError(
                f"COLMAP camera {camera_id} in {model} uses the {camera.model} model, which nerfstudio cannot "
                "undistort; undistort the images first (colmap image_undistorter) or use OPENCV / OPENCV_FISHEYE"
            ) from None
    frames = []
    for image_id in sorted(images):
        image = images[image_id]
        label = f"image {image.name} (id {image_id}) of {model}"
        if image.camera_id not in intrinsics:
            raise DistilledSplatError(f"{label} refers to camera {image.camera_id}, which the model does not have")
        camera = intrinsics[image.camera_id]
        world_to_camera = np.concatenate([colmap.qvec2rotmat(image.qvec), image.tvec.reshape(3, 1)], 1)
        # qvec2rotmat hides a non-finite or zero quaternion: make each show as what it is.
        if not np.isfinite(image.qvec).all():
            world_to_camera[:] = np.nan
        elif np.linalg.norm(image.qvec) < 1e-8:
            world_to_camera[:, :3] = 0.0  # no rotation at all: singular
        frames.append(
            Frame(
                image=scene.root / scene.images / image.name,
                label=label,
                pose=world_to_camera,
                fx=float(camera["fl_x"]),
                fy=float(camera["fl_y"]),
                cx=float(camera["cx"]),
                cy=float(camera["cy"]),
                width=float(camera["w"]),
                height=float(camera["h"]),
                camera_model=camera["camera_model"],
                distortion={key: float(camera[key]) for key in DISTORTION_KEYS if key in camera},
            )
        )
    return frames


def read_frames(scene: SceneFolder) -> List[Frame]:
    if scene.kind == "transforms":
        return transforms_frames(scene, read_transforms(scene))
    return colmap_frames(scene)


# --- point cloud and resolution --------------------------------------------------------------------------------


def colmap_point_count(model: Path) -> int:
    """Number of 3D points in a COLMAP model; 0 when it has no points file."""
    if (model / "points3D.bin").is_file():
        with open(model / "points3D.bin", "rb") as handle:
            header = handle.read(8)
        return struct.unpack("<Q", header)[0] if len(header) == 8 else 0
    if (model / "points3D.txt").is_file():
        with open(model / "points3D.txt") as handle:
            return sum(1 for line in handle if line.strip() and not line.startswith("#"))
    return 0


def declared_point_cloud(scene: SceneFolder) -> Optional[Path]:
    """The sparse point cloud the scene declares (a PLY, or the COLMAP model's points), or None."""
    if scene.kind == "transforms":
        meta = read_transforms(scene)
        return scene.root / meta["ply_file_path"] if "ply_file_path" in meta else None
    model = scene.root / scene.colmap_model
    return model if colmap_point_count(model) > 0 else None


@dataclass(frozen=True)
class Resolution:
    """How the training images are obtained at 1/factor of the declared size."""

    factor: int
    """Requested downscale factor (1: full size)."""
    folder: bool
    """True: read the pre-downscaled images_<factor> folder (dataparser downscale); False: resize on load."""
    rounding: Literal["floor", "round", "ceil"] = "floor"
    """How the pre-downscaled folder rounded sizes (Mip-NeRF 360's images_N round; ns-process-data floors)."""

    def note(self, scene: SceneFolder) -> str:
        if self.factor == 1:
            return "images: full size"
        folder = self.folder_name(scene)
        if self.folder:
            return f"images: {scene.root / folder} (1/{self.factor} size)"
        return f"no {folder} folder in {scene.root}: images are resized to 1/{self.factor} when loaded"

    def folder_name(self, scene: SceneFolder) -> str:
        base = "images" if scene.kind == "transforms" else str(scene.images)
        return f"{base}_{self.factor}"


def downscaled_image(scene: SceneFolder, frame: Frame, factor: int) -> Path:
    """Where nerfstudio's parsers look for a frame's image at 1/factor."""
    if scene.kind == "transforms":
        return scene.root / f"images_{factor}" / frame.image.name
    relative = frame.image.relative_to(scene.root / scene.images)
    return scene.root / f"{scene.images}_{factor}" / relative


def scaled_size(size: float, factor: int, rounding: str) -> int:
    return {"floor": math.floor, "round": round, "ceil": math.ceil}[rounding](size / factor)


def choose_resolution(scene: SceneFolder, frames: List[Frame], downscale: Optional[int]) -> Resolution:
    """``downscale`` or, when None, nerfstudio's automatic choice (powers of two down to 1600 pixels)."""
    from PIL import Image

    if downscale is not None and downscale < 1:
        raise DistilledSplatError(f"--downscale must be a positive integer, got {downscale}")
    factor = downscale
    if factor is None:
        largest = max(frames[0].width, frames[0].height)
        factor = 1
        while largest / factor > MAX_AUTO_SIZE:
            factor *= 2
    if factor == 1:
        return Resolution(1, folder=False)
    paths = [downscaled_image(scene, frame, factor) for frame in frames]
    if not all(path.is_file() for path in paths):
        return Resolution(factor, folder=False)
    rounding = "floor"
    if scene.kind == "colmap":  # nerfstudio's COLMAP parser can round either way; its transforms parser floors
        try:
            with Image.open(paths[0]) as image:
                size = image.size
        except OSError:
            size = None  # the scene check names the unreadable image
        for mode in ("floor", "round", "ceil"):
            if size == (scaled_size(frames[0].width, factor, mode), scaled_size(frames[0].height, factor, mode)):
                rounding = mode
                break
    return Resolution(factor, folder=True, rounding=rounding)


def dataparser_for(scene: SceneFolder, downscale: Optional[int] = None) -> DataParserConfig:
    """The nerfstudio dataparser reading ``scene``, every 8th view held out as in the paper.

    ``downscale`` None is nerfstudio's automatic choice. The datamanager settles the factor (images_N folder or
    resize on load) and the point cloud (none: random start) when the run is prepared.
    """
    if scene.kind == "transforms":
        return NerfstudioDataParserConfig(
            data=scene.transforms,
            load_3D_points=True,
            eval_mode="interval",
            eval_interval=8,
            downscale_factor=downscale,
        )
    return ColmapDataParserConfig(
        data=scene.root,
        colmap_path=scene.colmap_model,
        images_path=scene.images,
        load_3D_points=True,
        eval_mode="interval",
        eval_interval=8,
        downscale_factor=downscale,
    )
