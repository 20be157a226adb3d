"""Teacher renders of every training view, rendered once, aggregated, and cached on disk as RGBA images.

A cache folder holds one sub-folder per set of inputs (teachers, cameras, aggregation), named by their digest,
so students that render different cameras (with or without pseudo views) share the folder without rebuilding
or deleting each other's renders, even while they run at the same time. Each sub-folder: ``manifest.json``
(written last: a folder without one is never trusted), ``views/NNNNN.png`` (straight-alpha RGBA at the training
resolution) and ``teacher_means.npy`` (the first teacher's Gaussian centres, for the structural loss). A build
happens in a hidden sibling folder that replaces the sub-folder only once complete, so an interrupted build
leaves either the previous cache or none.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import uuid
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Deque, Dict, Iterator, List, Literal, Optional, Sequence, Tuple

import numpy as np
import torch
from nerfstudio.cameras.cameras import Cameras
from PIL import Image
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from distilled_splat.errors import DistilledSplatError
from distilled_splat.teachers import check_same_cameras, final_checkpoint, fingerprint, load_teacher

FORMAT_VERSION = 1
Aggregation = Literal["mean", "median"]


def cameras_fingerprint(cameras: Cameras, image_names: Sequence[str]) -> str:
    """sha256 of the poses, intrinsics, sizes (rounded so float noise does not count) and image file names."""
    values = torch.cat(
        [
            cameras.camera_to_worlds.flatten(1),
            cameras.fx,
            cameras.fy,
            cameras.cx,
            cameras.cy,
            cameras.width.float(),
            cameras.height.float(),
        ],
        dim=1,
    )
    digest = hashlib.sha256(np.round(values.detach().cpu().double().numpy(), 5).tobytes())
    digest.update("\n".join(image_names).encode())
    return digest.hexdigest()


@dataclass
class CacheKey:
    """Everything the cached images depend on."""

    teachers: List[Dict[str, str]]
    cameras: str
    aggregation: str

    def folder_name(self) -> str:
        """The sub-folder these inputs are cached in."""
        checkpoints = [teacher["sha256"] for teacher in self.teachers]
        text = json.dumps([FORMAT_VERSION, checkpoints, self.cameras, self.aggregation])
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def matches(self, manifest: dict) -> bool:
        return (
            manifest.get("format") == FORMAT_VERSION
            and manifest.get("aggregation") == self.aggregation
            and manifest.get("cameras") == self.cameras
            and [t.get("sha256") for t in manifest.get("teachers", [])] == [t["sha256"] for t in self.teachers]
        )


def cache_key(
    teacher_configs: Sequence[Path], cameras: Cameras, image_names: Sequence[str], aggregation: str
) -> CacheKey:
    teachers = []
    for config in teacher_configs:
        checkpoint = final_checkpoint(config)
        teachers.append({"config": str(config), "checkpoint": str(checkpoint), "sha256": fingerprint(checkpoint)})
    return CacheKey(teachers, cameras_fingerprint(cameras, image_names), aggregation)


def read_valid_manifest(cache_dir: Path, key: CacheKey) -> Optional[dict]:
    """The cache's manifest if the cache is complete and was built from exactly ``key``; otherwise None."""
    try:
        manifest = json.loads((cache_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    if not key.matches(manifest):
        return None
    files = [*manifest.get("views", []), manifest.get("teacher_means", {})]
    for entry in files:
        path = cache_dir / entry.get("file", "")
        if not path.is_file() or path.stat().st_size != entry.get("bytes"):
            return None
    return manifest


def progress_bar() -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), transient=True
    )


@torch.no_grad()
def render_premultiplied(pipeline, camera: Cameras) -> np.ndarray:
    """[H, W, 4] float16: colour premultiplied by alpha, then alpha. Rendered over black to keep it exact."""
    model = pipeline.model
    background = model.config.background_color
    model.config.background_color = "black"
    try:
        outputs = model.get_outputs(camera.to(model.device))
    finally:
        model.config.background_color = background
    rgba = torch.cat([outputs["rgb"], outputs["accumulation"]], dim=-1).clamp(0, 1)
    return rgba.cpu().numpy().astype(np.float16)


def aggregate(renders: np.ndarray, aggregation: str) -> np.ndarray:
    """[K, H, W, 4] premultiplied renders to one straight-alpha uint8 RGBA image.

    Averaging premultiplied colour and alpha is compositing-consistent: over any background, the aggregate
    composites to the average of the teachers' composites.
    """
    renders = renders.astype(np.float32)
    combined = renders.mean(0) if aggregation == "mean" else np.median(renders, axis=0)
    alpha = combined[..., 3:]
    colour = np.where(alpha > 0, combined[..., :3] / np.maximum(alpha, 1e-8), 0.0)
    return np.round(np.clip(np.concatenate([colour, alpha], -1), 0, 1) * 255).astype(np.uint8)


# Level 1 encodes ~5x faster than PIL's default 6 for ~15% larger files: at camera resolutions encoding at the
# default level would take longer than rendering the view on a GPU.
PNG_COMPRESS_LEVEL = 1
# Renders waiting to be written; bounds memory when rendering outpaces the disk.
MAX_PENDING_WRITES = 4


def write_aggregate(staging: Path, view: int, last_render: np.ndarray, staged_teachers: int, aggregation: str) -> dict:
    """Aggregate one view's staged renders with the last teacher's, write the PNG, return its manifest entry."""
    stack = [np.load(staging / f"teacher_{i}" / f"{view:05d}.npy") for i in range(staged_teachers)]
    name = f"views/{view:05d}.png"
    image = Image.fromarray(aggregate(np.stack([*stack, last_render]), aggregation), mode="RGBA")
    image.save(staging / name, compress_level=PNG_COMPRESS_LEVEL)
    return {"file": name, "bytes": (staging / name).stat().st_size}


def build(
    cache_dir: Path,
    key: CacheKey,
    teacher_configs: Sequence[Path],
    cameras: Cameras,
    scene_cameras: Cameras,
    device: torch.device,
) -> dict:
    """Render every teacher at every camera (one teacher in memory at a time), aggregate, write atomically.

    ``cameras`` are the cameras the student trains with (after nerfstudio's undistortion and crop, so each render
    lines up pixel for pixel with its training image); ``scene_cameras`` the same views as parsed, which is how
    each teacher's own scene is compared with the student's.

    Every teacher but the last is staged on disk; each view is aggregated as soon as the last teacher has
    rendered it. Writing, aggregating and encoding run in worker threads, overlapping the rendering.
    """
    for stale in cache_dir.parent.glob(f".{cache_dir.name}.partial-*"):
        if not process_alive(stale.name.split("-")[-2]):  # left by a killed build, not one still running
            shutil.rmtree(stale, ignore_errors=True)
    staging = cache_dir.parent / f".{cache_dir.name}.partial-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    last = len(teacher_configs) - 1
    try:
        (staging / "views").mkdir(parents=True)
        with progress_bar() as progress, ThreadPoolExecutor(max_workers=2) as writer:
            for index, config in enumerate(teacher_configs):
                pipeline, checkpoint = load_teacher(config, device)
                check_same_cameras(
                    pipeline.datamanager.train_dataparser_outputs.cameras, scene_cameras, str(config.parent)
                )
                if index == 0:  # the vanilla teacher: its centres are the structural loss target
                    means = getattr(pipeline.model, "means", None)
                    if means is None:
                        raise DistilledSplatError(f"teacher checkpoint {checkpoint} holds no Gaussian splat model")
                    np.save(staging / "teacher_means.npy", means.detach().float().cpu().numpy())
                (staging / f"teacher_{index}").mkdir()
                task = progress.add_task(f"Rendering teacher {index + 1}/{len(teacher_configs)}", total=len(cameras))
                pending: Deque[Future] = deque()
                written = []  # np.save's None for staged teachers; the aggregated views' entries for the last one
                for view in range(len(cameras)):
                    render = render_premultiplied(pipeline, cameras[view : view + 1])
                    if index < last:
                        pending.append(writer.submit(np.save, staging / f"teacher_{index}" / f"{view:05d}.npy", render))
                    else:
                        pending.append(writer.submit(write_aggregate, staging, view, render, last, key.aggregation))
                    while len(pending) > MAX_PENDING_WRITES:
                        written.append(pending.popleft().result())
                    progress.advance(task)
                written += [future.result() for future in pending]  # all on disk before the next teacher renders
                del pipeline
        views = written
        for index in range(len(teacher_configs)):
            shutil.rmtree(staging / f"teacher_{index}")
        manifest = {
            "format": FORMAT_VERSION,
            "aggregation": key.aggregation,
            "cameras": key.cameras,
            "teachers": key.teachers,
            "views": views,
            "teacher_means": {"file": "teacher_means.npy", "bytes": (staging / "teacher_means.npy").stat().st_size},
        }
        (staging / "manifest.json").write_text(json.dumps(manifest, indent=1))
        replace_dir(staging, cache_dir)
        return manifest
    except OSError as err:
        raise DistilledSplatError(f"cannot write the teacher cache {cache_dir}: {err.strerror or err}") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def process_alive(pid: str) -> bool:
    try:
        os.kill(int(pid), 0)
    except (ValueError, ProcessLookupError):
        return False
    except PermissionError:  # someone else's process
        return True
    return True


@contextmanager
def random_state_kept(device: torch.device) -> Iterator[None]:
    """Leave Python's, numpy's and torch's random state as it was on entry.

    Loading a teacher builds its model, which draws random numbers. Without this a student whose cache was built in
    the same process would train on another random stream than one that found its cache on disk (a run resumed
    after a kill during its first checkpoint), and the two would end apart.
    """
    python_state, numpy_state = random.getstate(), np.random.get_state()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            yield
    finally:
        random.setstate(python_state)
        np.random.set_state(numpy_state)


def replace_dir(new: Path, target: Path) -> None:
    """Put ``new`` at ``target``; at every instant ``target`` is either the old complete folder or absent."""
    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    if target.exists():
        target.rename(old)
    new.rename(target)
    shutil.rmtree(old, ignore_errors=True)


@dataclass
class TeacherImages:
    """The cache's contents in memory: aggregated RGBA per training view and the first teacher's centres."""

    images: List[torch.Tensor]
    teacher_means: torch.Tensor
    rebuilt: bool


def load_or_build(
    cache_dir: Path,
    teacher_configs: Sequence[Path],
    cameras: Cameras,
    scene_cameras: Cameras,
    image_names: Sequence[str],
    aggregation: Aggregation,
    device: torch.device,
) -> TeacherImages:
    """Reuse the cache if it was built from these teachers, cameras and aggregation; rebuild it otherwise.

    ``cameras``: the training cameras as the student renders them; ``scene_cameras``: as parsed (see :func:`build`).
    """
    if not teacher_configs:
        raise DistilledSplatError("no teachers given: pass --pipeline.datamanager.teachers with trained teacher runs")
    key = cache_key(teacher_configs, cameras, image_names, aggregation)
    folder = cache_dir / key.folder_name()
    manifest = read_valid_manifest(folder, key)
    contents = None if manifest is None else read_contents(folder, manifest, cameras)
    if contents is not None:
        return TeacherImages(*contents, rebuilt=False)
    cache_dir.mkdir(parents=True, exist_ok=True)
    try:
        with random_state_kept(device):
            manifest = build(folder, key, teacher_configs, cameras, scene_cameras, device)
    except BaseException:  # an error or an interrupt: a failed first build leaves no empty cache folder behind
        with contextlib.suppress(OSError):
            cache_dir.rmdir()
        raise
    contents = read_contents(folder, manifest, cameras)
    if contents is None:
        raise DistilledSplatError(f"teacher cache {folder} could not be read back right after building it")
    return TeacherImages(*contents, rebuilt=True)


def read_contents(
    cache_dir: Path, manifest: dict, cameras: Cameras
) -> Optional[Tuple[List[torch.Tensor], torch.Tensor]]:
    """Decoded images and teacher centres, or None if any file is corrupt or of the wrong size."""
    images = []
    try:
        for view, entry in enumerate(manifest["views"]):
            image = torch.from_numpy(np.array(Image.open(cache_dir / entry["file"]).convert("RGBA")))
            if tuple(image.shape[:2]) != (int(cameras.height[view]), int(cameras.width[view])):
                return None
            images.append(image)
        means = torch.from_numpy(np.load(cache_dir / manifest["teacher_means"]["file"]))
    except (OSError, ValueError, KeyError, SyntaxError):  # PIL and numpy report corrupt files in these
        return None
    if len(images) != len(cameras) or means.ndim != 2 or means.shape[1] != 3:
        return None
    return images, means
