"""A single-file interactive page for a splat model (PlayCanvas's SuperSplat viewer, written by splat-transform)
that opens at one of the scene's cameras, and SOG files.

Axes. The viewer shows a file's splats rotated 180 degrees about z (F = diag(-1, -1, 1)), in a y-up world where
cameras look down -z, as nerfstudio's cameras do. splat-transform's ``--rotate ex,ey,ez`` applies, to the file's
coordinates, F R F with R = Rz(ez) Ry(ey) Rx(ex) (checked in the tests). Choosing R = C^T F, with C the camera's
rotation (camera to world), puts nerfstudio's world point p at C^T p in the viewer: the camera's own axes become
the viewer's, so an orbit camera placed at C^T t looking down -z with +y up shows exactly that camera's view,
and orbits about the camera's up.
"""

from __future__ import annotations

import json
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from jaxtyping import Float

from distilled_splat.errors import DistilledSplatError
from distilled_splat.exports import splat_transform
from distilled_splat.files import write_atomically

FLIP = np.diag([-1.0, -1.0, 1.0])
"""The viewer's 180-degree turn about z of every splat file it shows."""


@dataclass(frozen=True)
class ViewerCamera:
    """Where the page opens: a nerfstudio camera's pose and vertical field of view."""

    camera_to_world: Float[np.ndarray, "3 4"]
    """nerfstudio (OpenGL axes: x right, y up, looking down -z) camera-to-world, in the splat file's coordinates."""
    vertical_fov: float
    """Degrees."""

    @staticmethod
    def from_nerfstudio(cameras, index: int = 0) -> "ViewerCamera":
        camera = cameras[index : index + 1]
        fy, height = float(camera.fy.reshape(-1)[0]), float(camera.height.reshape(-1)[0])
        pose = camera.camera_to_worlds[0].detach().cpu().double().numpy()
        return ViewerCamera(pose, math.degrees(2 * math.atan(height / (2 * fy))))


OpeningView = Tuple[Optional[ViewerCamera], Sequence[float]]
"""Where a page opens and its background colour (RGB in [0, 1])."""


def held_out_view(config_path: Path, index: int = 0) -> OpeningView:
    """The run's held-out camera ``index`` (the report's view of the same number) and the background the model
    renders on at evaluation."""
    import torch
    from nerfstudio.utils.eval_utils import eval_setup

    _, pipeline, _, _ = eval_setup(config_path, test_mode="inference")
    model = pipeline.model
    model.eval()
    with torch.no_grad():
        background = model._get_background_color().reshape(-1)[:3].cpu().tolist()
    return ViewerCamera.from_nerfstudio(pipeline.datamanager.eval_dataset.cameras, index), background


def euler_xyz_degrees(rotation: np.ndarray) -> Tuple[float, float, float]:
    """(ex, ey, ez) with rotation = Rz(ez) Ry(ey) Rx(ex), in degrees."""
    ey = -math.asin(max(-1.0, min(1.0, float(rotation[2, 0]))))
    ex = math.atan2(float(rotation[2, 1]), float(rotation[2, 2]))
    ez = math.atan2(float(rotation[1, 0]), float(rotation[0, 0]))
    return tuple(math.degrees(angle) for angle in (ex, ey, ez))  # type: ignore[return-value]


def opening_view(
    camera: ViewerCamera, means: Float[np.ndarray, "N 3"], background: Sequence[float]
) -> Tuple[Tuple[float, float, float], Dict]:
    """splat-transform's rotation (Euler degrees) and the viewer settings that open the page at ``camera``.

    The orbit target lies on the view axis at the median depth of the splats in front of the camera.
    """
    rotation, position = camera.camera_to_world[:, :3], camera.camera_to_world[:, 3]
    depths = -((means - position) @ rotation)[:, 2]
    in_front = depths[depths > 0]
    distance = float(np.median(in_front)) if len(in_front) else 1.0
    eye = rotation.T @ position
    target = eye + np.array([0.0, 0.0, -distance])
    settings = {
        "version": 2, "tonemapping": "none", "highPrecisionRendering": False,
        "background": {"color": [float(c) for c in background]},
        "postEffectSettings": {
            "sharpness": {"enabled": False, "amount": 0},
            "bloom": {"enabled": False, "intensity": 1, "blurLevel": 2},
            "grading": {"enabled": False, "brightness": 0, "contrast": 1, "saturation": 1, "tint": [1, 1, 1]},
            "vignette": {"enabled": False, "intensity": 0.5, "inner": 0.3, "outer": 0.75, "curvature": 1},
            "fringing": {"enabled": False, "intensity": 0.5},
        },
        # Without a track of its own the viewer makes one (a turntable) and starts playing it, which moves the
        # camera away before anyone looks: a still track holds the opening view until the user takes over.
        "animTracks": [{
            "name": "opening view", "duration": 1, "frameRate": 1, "loopMode": "none", "interpolation": "step",
            "smoothness": 0,
            "keyframes": {"times": [0], "values": {
                "position": eye.tolist(), "target": target.tolist(), "fov": [camera.vertical_fov],
            }},
        }],
        "cameras": [{"initial": {"position": eye.tolist(), "target": target.tolist(), "fov": camera.vertical_fov}}],
        "annotations": [],
        "startMode": "animTrack",
    }  # fmt: skip
    return euler_xyz_degrees(rotation.T @ FLIP), settings


PAGE_SH_ITERATIONS = 5
"""k-means iterations of the spherical-harmonics codebook in a viewer page (splat-transform's default, which .sog
files keep, is 10). A page is for looking at the model; the codebook's k-means is nearly all of a page's time
(the demo's teacher page, 7,115 Gaussians: 28.9 s at 10, 15.3 s at 5, measured on 2 cores)."""


def write_html(
    ply: Path, output: Path, camera: Optional[ViewerCamera] = None, background: Sequence[float] = (0.0, 0.0, 0.0)
) -> Path:
    """The 3DGS PLY ``ply`` as a self-contained viewer page at ``output`` (atomically), opening at ``camera``
    (splat-transform's default view where None)."""
    from distilled_splat.exports.exporters import read_3dgs_ply

    arguments: List[str] = [str(ply), "--iterations", str(PAGE_SH_ITERATIONS)]
    with tempfile.TemporaryDirectory() as folder:
        if camera is not None:
            euler, settings = opening_view(camera, read_3dgs_ply(ply).means.astype(np.float64), background)
            settings_path = Path(folder) / "settings.json"
            settings_path.write_text(json.dumps(settings))
            arguments += ["--rotate", ",".join(f"{angle:.9g}" for angle in euler), "-E", str(settings_path)]
        write_through(arguments, output)
    return output


def write_sog(ply: Path, output: Path) -> Path:
    """The 3DGS PLY ``ply`` as PlayCanvas SOG at ``output`` (atomically), in the PLY's own coordinates."""
    write_through([str(ply)], output)
    return output


def write_through(arguments: List[str], output: Path) -> None:
    """Run splat-transform into a temporary file beside ``output`` and move it into place when complete."""
    if output.suffix not in (".html", ".sog"):
        raise DistilledSplatError(f"{output}: splat-transform writes .html or .sog here")

    def write(path: Path) -> None:  # the temporary path ends like the target, which is how splat-transform picks
        splat_transform.run([*arguments, path])

    write_atomically(output, write)
