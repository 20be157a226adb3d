"""Built-in scenes, ray traced from textured primitives into nerfstudio format, made offline.

The textures are real photographs shipped with scikit-image (a nerfstudio dependency): a coffee cup on the
ground plane, the astronaut, the cat and the rocket on a rotated box, and an immunohistochemistry micrograph on a sphere.
Each image is ray traced exactly (analytic intersections, Lambert shading, 2x2 supersampling) and written as
RGBA with a transparent sky, so random-background training behaves as on object-centric captures. The sparse
point cloud samples the visible surfaces with their shaded colours plus jitter, standing in for SfM points.
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import numpy as np
from PIL import Image

LIGHT = np.array([0.4, 0.3, 0.85]) / np.linalg.norm([0.4, 0.3, 0.85])
GROUND_HALF = 1.5
BOX_CENTRE, BOX_HALF, BOX_YAW = np.array([-0.45, 0.35, 0.4]), np.array([0.4, 0.3, 0.4]), 0.5
SPHERE_CENTRE, SPHERE_RADIUS = np.array([0.55, -0.4, 0.45]), 0.45
LOOK_AT = np.array([0.0, 0.0, 0.3])


@dataclass(frozen=True)
class SceneSpec:
    """Size of a generated scene."""

    num_views: int = 48
    """Number of camera views on an orbit; every 8th is held out for evaluation by the methods' dataparser."""
    width: int = 128
    """Image width in pixels."""
    height: int = 128
    """Image height in pixels."""
    num_points: int = 3000
    """Points in the sparse point cloud."""
    orbit_radius: float = 3.2
    """Distance of the cameras from the scene centre."""
    seed: int = 0
    """Seed for point sampling and jitter."""
    distortion: Tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
    """OpenCV lens distortion k1, k2, p1, p2 the images are rendered with (and transforms.json declares)."""


PRESETS: Dict[str, SceneSpec] = {
    "demo": SceneSpec(),
    "tiny": SceneSpec(num_views=16, width=48, height=40, num_points=400),
    # A phone-like lens: barrel distortion about as strong as the fox capture's, relative to the image.
    "tiny-distorted": SceneSpec(
        num_views=16, width=48, height=40, num_points=400, distortion=(-0.25, 0.08, 0.002, -0.003)
    ),
}


def _texture(name: str) -> np.ndarray:
    from skimage import data

    image = getattr(data, name)()
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return image[..., :3].astype(np.float32) / 255.0


def _sample(texture: np.ndarray, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Bilinear texture lookup at (u, v) in [0, 1]^2, v = 0 at the top row."""
    h, w = texture.shape[:2]
    x = np.clip(u, 0, 1) * (w - 1)
    y = np.clip(v, 0, 1) * (h - 1)
    x0, y0 = np.floor(x).astype(int), np.floor(y).astype(int)
    x1, y1 = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
    fx, fy = (x - x0)[..., None], (y - y0)[..., None]
    top = texture[y0, x0] * (1 - fx) + texture[y0, x1] * fx
    bottom = texture[y1, x0] * (1 - fx) + texture[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def _yaw(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


class _Scene:
    """Three textured primitives; ``trace`` returns hit distance, albedo and normal per ray."""

    def __init__(self) -> None:
        self.ground = _texture("coffee")
        self.box_faces = [_texture(name) for name in ("astronaut", "chelsea", "rocket")]
        self.sphere = _texture("immunohistochemistry")
        self.box_rotation = _yaw(BOX_YAW)

    def _ground(self, origins, dirs):
        with np.errstate(divide="ignore", invalid="ignore"):
            t = -origins[:, 2] / dirs[:, 2]
        hit = origins + t[:, None] * dirs
        ok = (t > 1e-6) & (np.abs(hit[:, 0]) <= GROUND_HALF) & (np.abs(hit[:, 1]) <= GROUND_HALF)
        u = (hit[:, 0] + GROUND_HALF) / (2 * GROUND_HALF)
        v = (hit[:, 1] + GROUND_HALF) / (2 * GROUND_HALF)
        normal = np.broadcast_to([0.0, 0.0, 1.0], hit.shape)
        return np.where(ok, t, np.inf), _sample(self.ground, u, v), normal

    def _box(self, origins, dirs):
        local_o = (origins - BOX_CENTRE) @ self.box_rotation
        local_d = dirs @ self.box_rotation
        with np.errstate(divide="ignore", invalid="ignore"):
            t1 = (-BOX_HALF - local_o) / local_d
            t2 = (BOX_HALF - local_o) / local_d
        t_near = np.nanmax(np.minimum(t1, t2), axis=1)
        t_far = np.nanmin(np.maximum(t1, t2), axis=1)
        ok = (t_near <= t_far) & (t_near > 1e-6)
        hit = local_o + np.where(ok, t_near, 0)[:, None] * local_d
        axis = np.argmax(np.abs(hit) / BOX_HALF, axis=1)
        normal_local = np.zeros_like(hit)
        normal_local[np.arange(len(hit)), axis] = np.sign(hit[np.arange(len(hit)), axis])
        albedo = np.zeros_like(hit)
        for face_axis in range(3):
            others = [a for a in range(3) if a != face_axis]
            sel = axis == face_axis
            u = (hit[sel, others[0]] / BOX_HALF[others[0]] + 1) / 2
            v = 1 - (hit[sel, others[1]] / BOX_HALF[others[1]] + 1) / 2
            albedo[sel] = _sample(self.box_faces[face_axis], u, v)
        return np.where(ok, t_near, np.inf), albedo, normal_local @ self.box_rotation.T

    def _sphere(self, origins, dirs):
        offset = origins - SPHERE_CENTRE
        b = np.sum(offset * dirs, axis=1)
        c = np.sum(offset * offset, axis=1) - SPHERE_RADIUS**2
        disc = b * b - c
        t = -b - np.sqrt(np.maximum(disc, 0))
        ok = (disc >= 0) & (t > 1e-6)
        normal = (offset + t[:, None] * dirs) / SPHERE_RADIUS
        u = np.arctan2(normal[:, 1], normal[:, 0]) / (2 * np.pi) + 0.5
        v = np.arccos(np.clip(normal[:, 2], -1, 1)) / np.pi
        return np.where(ok, t, np.inf), _sample(self.sphere, u, v), normal

    def trace(self, origins: np.ndarray, dirs: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Shaded RGB [R, 3] and hit mask [R] for rays (origins, unit dirs) [R, 3]."""
        hits = [self._ground(origins, dirs), self._box(origins, dirs), self._sphere(origins, dirs)]
        distances = np.stack([h[0] for h in hits])
        nearest = np.argmin(distances, axis=0)
        rows = np.arange(len(origins))
        albedo = np.stack([h[1] for h in hits])[nearest, rows]
        normal = np.stack([h[2] for h in hits])[nearest, rows]
        return albedo * shade(normal)[:, None], np.isfinite(distances[nearest, rows])

    def surface_points(self, count: int, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
        """``count`` points on the visible surfaces, by area, with their shaded colours."""
        samplers: List[Tuple[float, Callable[[int], np.ndarray]]] = [
            ((2 * GROUND_HALF) ** 2, lambda n: np.c_[rng.uniform(-GROUND_HALF, GROUND_HALF, (n, 2)), np.zeros(n)]),
            (4 * np.pi * SPHERE_RADIUS**2, lambda n: SPHERE_CENTRE + SPHERE_RADIUS * _unit(rng.normal(size=(n, 3)))),
            (8 * float(BOX_HALF @ np.roll(BOX_HALF, 1)), lambda n: self._box_surface(n, rng)),
        ]
        areas = np.array([area for area, _ in samplers])
        counts = rng.multinomial(count, areas / areas.sum())
        points = np.concatenate([sample(n) for (_, sample), n in zip(samplers, counts)])
        # Colour each point by tracing a ray that ends on it from above, as a camera would see it.
        origins = points + LIGHT * 5.0
        colours, _ = self.trace(origins, np.broadcast_to(-LIGHT, points.shape).copy())
        return points, colours

    def _box_surface(self, n: int, rng: np.random.Generator) -> np.ndarray:
        local = rng.uniform(-1, 1, (n, 3)) * BOX_HALF
        axis = rng.integers(0, 3, n)
        local[np.arange(n), axis] = np.sign(rng.uniform(-1, 1, n)) * BOX_HALF[axis]
        return local @ self.box_rotation.T + BOX_CENTRE


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def shade(normals: np.ndarray) -> np.ndarray:
    """Ambient plus Lambert term; view independent, like the colours a degree-0 splat can represent."""
    return 0.35 + 0.65 * np.clip(normals @ LIGHT, 0, None)


def orbit_poses(spec: SceneSpec) -> np.ndarray:
    """Camera-to-world matrices [V, 4, 4] (OpenGL axes) around the scene at varying elevation."""
    poses = []
    for i in range(spec.num_views):
        azimuth = 2 * math.pi * i / spec.num_views
        elevation = math.radians(20 + 30 * ((i * 0.618034) % 1.0))
        position = LOOK_AT + spec.orbit_radius * np.array(
            [math.cos(azimuth) * math.cos(elevation), math.sin(azimuth) * math.cos(elevation), math.sin(elevation)]
        )
        back = _unit(position - LOOK_AT)
        right = _unit(np.cross([0.0, 0.0, 1.0], back))
        up = np.cross(back, right)
        pose = np.eye(4)
        pose[:3, :3] = np.stack([right, up, back], axis=1)
        pose[:3, 3] = position
        poses.append(pose)
    return np.stack(poses)


def undistort_points(x: np.ndarray, y: np.ndarray, distortion: Tuple[float, float, float, float]):
    """Invert OpenCV's k1 k2 p1 p2 lens model on normalised image coordinates (fixed-point iteration)."""
    k1, k2, p1, p2 = distortion
    xu, yu = x.copy(), y.copy()
    for _ in range(50):
        r2 = xu * xu + yu * yu
        radial = 1 + k1 * r2 + k2 * r2 * r2
        dx = 2 * p1 * xu * yu + p2 * (r2 + 2 * xu * xu)
        dy = p1 * (r2 + 2 * yu * yu) + 2 * p2 * xu * yu
        xu, yu = (x - dx) / radial, (y - dy) / radial
    return xu, yu


def render_view(
    scene: _Scene,
    pose: np.ndarray,
    focal: float,
    width: int,
    height: int,
    distortion: Tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0),
) -> np.ndarray:
    """RGBA uint8 image [H, W, 4] of one view through a lens with OpenCV ``distortion``, 2x2 supersampled."""
    ss = 2
    ys, xs = np.mgrid[0 : height * ss, 0 : width * ss]
    # Normalised OpenCV coordinates (y down) of each sample in the distorted image, then the ray it images.
    x, y = undistort_points(((xs + 0.5) / ss - width / 2) / focal, ((ys + 0.5) / ss - height / 2) / focal, distortion)
    dirs_cam = np.stack([x, -y, -np.ones_like(x, dtype=float)], axis=-1).reshape(-1, 3)
    dirs = _unit(dirs_cam @ pose[:3, :3].T)
    origins = np.broadcast_to(pose[:3, 3], dirs.shape)
    rgb, hit = scene.trace(origins, dirs)
    rgba = np.concatenate([rgb * hit[:, None], hit[:, None]], axis=1).reshape(height, ss, width, ss, 4)
    rgba = rgba.mean(axis=(1, 3))
    # Premultiplied by coverage above; store straight alpha as PNG expects.
    rgba[..., :3] = np.where(rgba[..., 3:] > 0, rgba[..., :3] / np.maximum(rgba[..., 3:], 1e-8), 0)
    return (np.clip(rgba, 0, 1) * 255 + 0.5).astype(np.uint8)


def write_point_cloud(path: Path, points: np.ndarray, colours: np.ndarray) -> None:
    """ASCII PLY with float x, y, z and uchar red, green, blue, the layout nerfstudio's loader reads."""
    header = "\n".join(
        ["ply", "format ascii 1.0", f"element vertex {len(points)}"]
        + [f"property float {axis}" for axis in "xyz"]
        + [f"property uchar {channel}" for channel in ("red", "green", "blue")]
        + ["end_header"]
    )
    rgb = np.clip(colours * 255 + 0.5, 0, 255).astype(np.uint8)
    rows = [f"{x:.6f} {y:.6f} {z:.6f} {r} {g} {b}" for (x, y, z), (r, g, b) in zip(points, rgb)]
    path.write_text(header + "\n" + "\n".join(rows) + "\n")


def write_scene(output: Path, spec: SceneSpec = PRESETS["demo"]) -> Path:
    """Ray trace ``spec`` into a nerfstudio scene folder at ``output`` and return it.

    The folder is built beside ``output`` and renamed into place, so an interrupted run leaves no partial
    scene behind. An existing ``output`` is replaced.
    """
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    scene = _Scene()
    rng = np.random.default_rng(spec.seed)
    focal = 0.9 * spec.width
    staging = Path(tempfile.mkdtemp(prefix=f".{output.name}-", dir=output.parent))
    try:
        (staging / "images").mkdir()
        frames = []
        for index, pose in enumerate(orbit_poses(spec)):
            name = f"images/frame_{index:05d}.png"
            image = render_view(scene, pose, focal, spec.width, spec.height, spec.distortion)
            Image.fromarray(image).save(staging / name)
            frames.append({"file_path": name, "transform_matrix": pose.tolist()})
        points, colours = scene.surface_points(spec.num_points, rng)
        points = points + rng.normal(scale=0.005, size=points.shape)
        write_point_cloud(staging / "sparse_pc.ply", points, colours)
        transforms = {
            "camera_model": "OPENCV",
            "fl_x": focal,
            "fl_y": focal,
            "cx": spec.width / 2,
            "cy": spec.height / 2,
            "w": spec.width,
            "h": spec.height,
            "frames": frames,
            "ply_file_path": "sparse_pc.ply",
        }
        if any(spec.distortion):
            transforms.update(zip(("k1", "k2", "p1", "p2"), spec.distortion))
        (staging / "transforms.json").write_text(json.dumps(transforms, indent=2))
        if output.exists():
            shutil.rmtree(output)
        staging.rename(output)
    finally:
        if staging.exists():
            shutil.rmtree(staging)
    return output
