"""Other forms of a scene, made from a nerfstudio-format one: a COLMAP folder, a capture without point cloud,
pre-downscaled image folders. Used by the tests and, for the fox capture, by hand:

    python -m tests.scene_builders ../shared/data/fox/fox_q8 /tmp/fox_colmap
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import numpy as np
from nerfstudio.data.utils import colmap_parsing_utils as colmap
from PIL import Image
from plyfile import PlyData


def write_colmap(scene: Path, output: Path, binary: bool = True, with_points: bool = True) -> Path:
    """``scene`` (transforms.json, images, PLY) as a COLMAP folder: images/ and sparse/0 with one OPENCV camera.

    Poses go from nerfstudio's camera-to-world (OpenGL axes) to COLMAP's world-to-camera (OpenCV axes) in the
    same world frame; the PLY's points become points3D.
    """
    meta = json.loads((scene / "transforms.json").read_text())
    output.mkdir(parents=True)
    shutil.copytree(scene / "images", output / "images")
    params = [meta["fl_x"], meta["fl_y"], meta["cx"], meta["cy"], *(meta.get(k, 0.0) for k in ("k1", "k2", "p1", "p2"))]
    cameras = {1: colmap.Camera(1, "OPENCV", int(meta["w"]), int(meta["h"]), np.array(params, dtype=float))}
    images = {}
    for image_id, frame in enumerate(meta["frames"], start=1):
        camera_to_world = np.array(frame["transform_matrix"], dtype=float)[:3]
        camera_to_world[:, 1:3] *= -1  # OpenGL -> OpenCV camera axes
        rotation = camera_to_world[:, :3].T
        translation = -rotation @ camera_to_world[:, 3]
        images[image_id] = colmap.Image(
            image_id, colmap.rotmat2qvec(rotation), translation, 1, Path(frame["file_path"]).name,
            np.zeros((0, 2)), np.zeros(0, dtype=int),
        )  # fmt: skip
    points = {}
    if with_points and "ply_file_path" in meta:
        vertices = PlyData.read(str(scene / meta["ply_file_path"]))["vertex"]
        for point_id, vertex in enumerate(vertices, start=1):
            xyz = np.array([vertex["x"], vertex["y"], vertex["z"]], dtype=float)
            rgb = np.array([vertex["red"], vertex["green"], vertex["blue"]], dtype=np.uint8)
            points[point_id] = colmap.Point3D(point_id, xyz, rgb, 0.5, np.array([1]), np.array([0]))
    model = output / "sparse" / "0"
    model.mkdir(parents=True)
    colmap.write_model(cameras, images, points, str(model), ext=".bin" if binary else ".txt")
    return output


def without_point_cloud(scene: Path, output: Path) -> Path:
    """A copy of ``scene`` whose transforms.json declares no point cloud (as instant-ngp captures ship)."""
    shutil.copytree(scene, output)
    meta = json.loads((output / "transforms.json").read_text())
    (output / meta.pop("ply_file_path")).unlink()
    (output / "transforms.json").write_text(json.dumps(meta, indent=1))
    return output


def write_downscaled_images(folder: Path, factor: int, rounding=np.floor) -> Path:
    """images_<factor>/ beside folder/images, each image resized to rounding(size / factor)."""
    target = folder / f"images_{factor}"
    target.mkdir()
    for path in sorted((folder / "images").iterdir()):
        with Image.open(path) as image:
            size = tuple(int(rounding(s / factor)) for s in image.size)
            image.resize(size, Image.BILINEAR).save(target / path.name)
    return target


if __name__ == "__main__":
    write_colmap(Path(sys.argv[1]), Path(sys.argv[2]))
    print(f"wrote {sys.argv[2]}")
