"""What decides a trained model, fingerprinted: the one test of "made with the same settings" that ``run`` and
``frontier`` apply before they report a model a run folder already holds."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path, PurePath
from typing import Dict, Optional

import yaml
from nerfstudio.engine.trainer import TrainerConfig

from distilled_splat.data.scene_inputs import declared_point_cloud, find_scene, read_frames
from distilled_splat.teachers import checkpoint_steps
from distilled_splat.teachers import fingerprint as file_fingerprint

FINGERPRINT_FILE = "fingerprint.json"
"""Written into a run folder when its training starts: the parts of :func:`fingerprint_parts` it was made with."""


def scene_fingerprint(data: Path) -> str:
    """sha256 of the scene's camera files and point cloud, and of its image files' names and sizes."""
    scene = find_scene(data)
    digest = hashlib.sha256()
    cameras = [scene.transforms] if scene.kind == "transforms" else sorted((scene.root / scene.colmap_model).iterdir())
    points = declared_point_cloud(scene)
    for path in [*cameras, *([points] if points is not None else [])]:
        if path is not None and path.is_file():
            digest.update(path.name.encode() + file_fingerprint(path).encode())
    for frame in read_frames(scene):
        size = frame.image.stat().st_size if frame.image.is_file() else -1
        digest.update(f"{frame.image.name}:{size}".encode())
    return digest.hexdigest()


def scene_of(config: TrainerConfig) -> Optional[Path]:
    datamanager = config.pipeline.datamanager
    data = datamanager.data or getattr(datamanager.dataparser, "data", None)
    return None if data is None else Path(data).resolve()


def teacher_checkpoint_fingerprints(config: TrainerConfig) -> Dict[str, str]:
    """sha256 of the newest checkpoint of every teacher the config's datamanager distils from ('untrained' where
    there is none yet), keyed by the teacher's run folder relative to the config's output folder."""
    found = {}
    for teacher in getattr(config.pipeline.datamanager, "teachers", ()) or ():
        folder = Path(teacher).parent if Path(teacher).suffix == ".yml" else Path(teacher)
        steps = checkpoint_steps(folder / "nerfstudio_models") if (folder / "nerfstudio_models").is_dir() else []
        checkpoint = folder / "nerfstudio_models" / f"step-{steps[-1]:09d}.ckpt" if steps else None
        found[_relative(folder, config)] = file_fingerprint(checkpoint) if checkpoint else "untrained"
    return found


def _relative(path: Path, config: TrainerConfig) -> str:
    return str(path).replace(str(config.output_dir), "<runs>")


class _PathsAsText(yaml.Dumper):
    """yaml.Dumper that writes paths as one string (the default writes their parts as a list), so that the output
    and scene folders in them can be replaced by placeholders."""


_PathsAsText.add_multi_representer(PurePath, lambda dumper, path: dumper.represent_scalar("!path", str(path)))


def config_text(config: TrainerConfig) -> str:
    """The whole config as YAML, with the output folder written ``<runs>`` and the scene folder ``<scene>``."""
    text = yaml.dump(config, Dumper=_PathsAsText).replace(str(config.output_dir), "<runs>")
    scene = scene_of(config)
    return text if scene is None else text.replace(str(scene), "<scene>")


def fingerprint_parts(config: TrainerConfig) -> Dict[str, str]:
    """sha256 of each part of what decides the model ``config`` trains, before nerfstudio saves it:

    - ``settings``: the whole config (model, datamanager and dataparser with its downscale, optimisers, length,
      seed, device), with the output and scene folders written as placeholders so that moving them changes
      nothing;
    - ``scene``: the scene's camera files, point cloud and image names and sizes (:func:`scene_fingerprint`);
    - ``teachers``: the checkpoints of the teachers it distils from.
    """
    scene = scene_of(config)
    return {
        "settings": hashlib.sha256(config_text(config).encode()).hexdigest(),
        "scene": scene_fingerprint(scene) if scene is not None else "none",
        "teachers": hashlib.sha256(
            json.dumps(teacher_checkpoint_fingerprints(config), sort_keys=True).encode()
        ).hexdigest(),
    }


def combined_fingerprint(parts: Dict[str, str], extra: Optional[Dict] = None) -> str:
    """One sha256 of ``parts`` and of anything else that decides the model (``extra``, JSON-serialisable)."""
    return hashlib.sha256(json.dumps({"parts": parts, "extra": extra or {}}, sort_keys=True).encode()).hexdigest()


def read_recorded_parts(run_folder: Path) -> Optional[Dict[str, str]]:
    """The parts a run folder's training was started with, or None where it records none (or unreadably)."""
    try:
        parts = json.loads((run_folder / FINGERPRINT_FILE).read_text())
    except (OSError, ValueError):
        return None
    return parts if isinstance(parts, dict) else None
