"""Reads a PLY point cloud as ``open3d.io.read_point_cloud`` does, for nerfstudio's dataparser (see README.md)."""

from types import SimpleNamespace

import numpy as np
from plyfile import PlyData


def read_point_cloud(path: str) -> SimpleNamespace:
    vertex = PlyData.read(path)["vertex"]
    points = np.stack([vertex["x"], vertex["y"], vertex["z"]], axis=1).astype(np.float64)
    names = vertex.data.dtype.names
    if {"red", "green", "blue"} <= set(names):
        colors = np.stack([vertex["red"], vertex["green"], vertex["blue"]], axis=1).astype(np.float64) / 255.0
    else:
        colors = np.zeros((0, 3))
    return SimpleNamespace(points=points, colors=colors)


io = SimpleNamespace(read_point_cloud=read_point_cloud)


def __getattr__(name):
    raise NotImplementedError(f"open3d.{name}: not available in the GPU check's stand-in (see README.md)")
