"""Up-front checks of a nerfstudio-format scene folder, so bad input fails with one line naming the problem."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, Optional

from PIL import Image

from distilled_splat.errors import DistilledSplatError


def transforms_path(data: Optional[Path]) -> Path:
    """The transforms.json of a scene given as a folder or as the file itself."""
    if data is None:
        raise DistilledSplatError("no scene given: pass --data with a nerfstudio-format scene folder")
    data = Path(data)
    path = data if data.suffix == ".json" else data / "transforms.json"
    if not data.exists():
        raise DistilledSplatError(f"scene not found: {data}")
    if not path.is_file():
        raise DistilledSplatError(f"no transforms.json in scene folder {data}")
    return path


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


def _frame_size(meta: Dict[str, Any], frame: Dict[str, Any]) -> tuple:
    width, height = frame.get("w", meta.get("w")), frame.get("h", meta.get("h"))
    return (int(width), int(height)) if width is not None and height is not None else (None, None)


def check_scene(data: Optional[Path], check_images: bool = True) -> Dict[str, Any]:
    """Validate a nerfstudio-format scene and return its parsed transforms.json.

    Checks that transforms.json parses and has frames with poses, that every image exists and (when
    ``check_images``) has the declared size, and that the sparse point cloud the splat models start from is
    declared, present and non-empty. Raises :class:`DistilledSplatError` on the first problem found.
    """
    path = transforms_path(data)
    try:
        meta = json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise DistilledSplatError(f"{path} is not valid JSON (line {err.lineno}: {err.msg})") from None
    frames = meta.get("frames") if isinstance(meta, dict) else None
    if not frames or not isinstance(frames, list):
        raise DistilledSplatError(f"{path} has no 'frames' list")
    root = path.parent
    for index, frame in enumerate(frames):
        if not isinstance(frame, dict) or "file_path" not in frame or "transform_matrix" not in frame:
            raise DistilledSplatError(f"{path}: frame {index} needs 'file_path' and 'transform_matrix'")
        matrix = frame["transform_matrix"]
        if len(matrix) not in (3, 4) or any(len(row) != 4 for row in matrix):
            raise DistilledSplatError(f"{path}: frame {index} transform_matrix is not 3x4 or 4x4")
        image_path = root / frame["file_path"]
        if not image_path.is_file():
            raise DistilledSplatError(f"image missing: {image_path} (frame {index} of {path})")
        if check_images:
            declared = _frame_size(meta, frame)
            if declared[0] is None:
                raise DistilledSplatError(f"{path}: frame {index} has no image size ('w' and 'h')")
            with Image.open(image_path) as image:
                actual = image.size
            if actual != declared:
                raise DistilledSplatError(
                    f"image {image_path} is {actual[0]}x{actual[1]} but {path.name} declares "
                    f"{declared[0]}x{declared[1]}"
                )
    if "ply_file_path" not in meta:
        raise DistilledSplatError(f"{path} declares no sparse point cloud ('ply_file_path')")
    ply = root / meta["ply_file_path"]
    if not ply.is_file():
        raise DistilledSplatError(f"point cloud missing: {ply}")
    if ply_vertex_count(ply) == 0:
        raise DistilledSplatError(f"point cloud {ply} is empty")
    return meta
