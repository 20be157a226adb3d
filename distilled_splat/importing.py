"""A splat model the user already has (a Gaussian splat run of nerfstudio's or ours, or a 3DGS PLY) made into the
vanilla teacher run of a recipe without training it: read, moved into the scene's training frame, checked against
the training photos, then written as a finished run (config, fingerprint and final checkpoint)."""

from __future__ import annotations

import copy
import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

import numpy as np
import torch
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.pipelines.base_pipeline import Pipeline
from PIL import Image
from torch import Tensor

from distilled_splat.decimation import gaussians_from_ply, ply_from_gaussians
from distilled_splat.errors import DistilledSplatError
from distilled_splat.exports.exporters import encode_ply, read_3dgs_ply
from distilled_splat.files import write_atomically
from distilled_splat.fingerprints import FINGERPRINT_FILE
from distilled_splat.frames import Similarity, transform_gaussians
from distilled_splat.given_model import GivenModel, GivenTeacher, read_gaussians
from distilled_splat.notices import say_once
from distilled_splat.rendering import gsplat_viewmats, rasterize
from distilled_splat.teachers import teacher_config_path

FRAME_RECORD = "given.json"
"""Written into the imported run folder: what it was made from, and the frame of the given model."""
MIN_GAIN_DB = 3.0
"""A given model must render the training photos at least this much better (PSNR) than a flat image of each
photo's mean colour; a model in another frame or of another scene renders next to nothing there."""
CHECK_VIEWS = 8
CHECK_SIZE = 96
"""The check renders this many training views, the longer side at this many pixels: enough to tell a model that
lines up with the photos from one that does not, in a second or two on a CPU."""


def dataparser_similarity(pipeline: Pipeline) -> Similarity:
    """World frame to the training frame of ``pipeline``'s dataparser."""
    outputs = pipeline.datamanager.train_dataparser_outputs
    return Similarity.from_dataparser(outputs.dataparser_transform.numpy(), float(outputs.dataparser_scale))


def run_frame_to_world(run_config: Path) -> Similarity:
    """From a nerfstudio run's training frame back to its scene's world frame (its dataparser_transforms.json)."""
    path = run_config.parent / "dataparser_transforms.json"
    try:
        record = json.loads(path.read_text())
        return Similarity.from_dataparser(np.asarray(record["transform"]), float(record["scale"])).inverse()
    except (OSError, ValueError, KeyError):
        raise DistilledSplatError(
            f"--teacher {run_config.parent} has no readable dataparser_transforms.json, so its frame is unknown"
        ) from None


def candidate_frames(given: GivenModel, world_to_training: Similarity) -> Dict[str, Similarity]:
    """Each frame the given model may be in, with the similarity from it to the training frame."""
    if given.kind == "run":
        return {"run": run_frame_to_world(teacher_config_path(given.path)).then(world_to_training)}
    frames = {"normalised": Similarity.identity(), "world": world_to_training}
    return frames if given.frame == "auto" else {given.frame: frames[given.frame]}


@torch.no_grad()
def render_gain_db(gaussians: Dict[str, Tensor], pipeline: Pipeline, sh_degree: int) -> float:
    """Mean PSNR gain of the Gaussians' renders over flat mean-colour images, at a few training views."""
    outputs = pipeline.datamanager.train_dataparser_outputs
    cameras = outputs.cameras
    picks = np.unique(np.linspace(0, len(cameras) - 1, min(CHECK_VIEWS, len(cameras))).round().astype(int))
    colors = (
        torch.cat([gaussians["features_dc"][:, None], gaussians["features_rest"]], 1)
        if sh_degree > 0
        else torch.sigmoid(gaussians["features_dc"])
    )
    gains = []
    for index in picks:
        camera = copy.deepcopy(cameras[int(index) : int(index) + 1])
        camera.rescale_output_resolution(CHECK_SIZE / float(max(camera.width, camera.height)))
        width, height = int(camera.width), int(camera.height)
        photo = Image.open(outputs.image_filenames[int(index)]).convert("RGB").resize((width, height), Image.BILINEAR)
        truth = torch.from_numpy(np.asarray(photo, dtype=np.float32) / 255.0)
        render, _, _ = rasterize(
            gaussians["means"], torch.nn.functional.normalize(gaussians["quats"], dim=-1),
            torch.exp(gaussians["scales"]), torch.sigmoid(gaussians["opacities"][:, 0]), colors,
            viewmats=gsplat_viewmats(camera.camera_to_worlds), Ks=camera.get_intrinsics_matrices(),
            width=width, height=height, sh_degree=sh_degree if sh_degree > 0 else None, packed=False,
        )  # fmt: skip
        flat = truth.mean((0, 1), keepdim=True).expand_as(truth)
        mse = float(((render[0].clamp(0, 1) - truth) ** 2).mean())
        gains.append(10 * math.log10(float(((flat - truth) ** 2).mean()) / max(mse, 1e-10)))
    return float(np.mean(gains))


@dataclass
class PreparedImport:
    """A given model read, moved into the training frame and checked, ready to be written as a run."""

    gaussians: Dict[str, Tensor]
    frame: str
    to_training: Similarity
    gain_db: float
    pipeline: Pipeline


def prepare_import(config: TrainerConfig, given: GivenModel, budget: Optional[int] = None) -> PreparedImport:
    """Read ``given`` for the teacher run ``config`` and check it; raises a one-line error, writing nothing, for a
    model that is not there, is broken, is in no frame that lines up with the training photos, or is smaller than
    ``budget``."""
    probe = copy.deepcopy(config)  # settling the datamanager's inputs changes the config; save_config does it again
    probe.pipeline.datamanager.prepare_run(probe.get_base_dir())
    pipeline = probe.pipeline.setup(device="cpu", test_mode="inference")
    degree = given.degree()
    gaussians = read_gaussians(given, degree)
    count = len(gaussians["means"])
    if budget is not None and budget > count:
        raise DistilledSplatError(f"--target-gaussians {budget} is above the {count} Gaussians of {given.describe()}")
    finite = all(bool(torch.isfinite(value).all()) for value in gaussians.values())
    if count == 0 or not finite:
        raise DistilledSplatError(f"{given.describe()} holds {'no Gaussians' if count == 0 else 'NaN or Inf values'}")
    frames = candidate_frames(given, dataparser_similarity(pipeline))
    scored = []
    for name, similarity in frames.items():
        moved = transform_gaussians(gaussians, similarity)
        scored.append((render_gain_db(moved, pipeline, degree), name, similarity, moved))
    gain, frame, similarity, moved = max(scored, key=lambda entry: entry[0])
    if gain < MIN_GAIN_DB:
        tried = ", ".join(f"{name} frame {score:+.1f} dB" for score, name, *_ in scored)
        raise DistilledSplatError(
            f"{given.describe()} does not line up with this scene's photos (render against a flat image: {tried}; "
            f"at least {MIN_GAIN_DB:g} dB needed): another scene, or another frame (--frame)"
        )
    if given.kind == "ply" and given.frame == "auto":
        say_once(f"{given.describe()}: read in the scene's {frame} frame (its renders line up with the photos there)")
    return PreparedImport(moved, frame, similarity, gain, pipeline)


def write_imported_run(config: TrainerConfig, given: GivenTeacher, prepared: PreparedImport, parts: Dict) -> None:
    """Write the finished run ``config`` holding the prepared Gaussians: its fingerprint, config.yml, dataparser
    transform, the record of what it came from, and last of all its final checkpoint, so that a run cut short is
    never taken for finished."""
    run = config.get_base_dir()
    run.mkdir(parents=True, exist_ok=True)
    write_atomically(run / FINGERPRINT_FILE, lambda path: path.write_text(json.dumps(parts, indent=1)))
    config.save_config()
    pipeline = prepared.pipeline
    pipeline.datamanager.train_dataparser_outputs.save_dataparser_transform(run / "dataparser_transforms.json")
    record = {
        **given.model.to_record(), "source_sha256": given.source_sha256, "frame_found": prepared.frame,
        "to_training": prepared.to_training.to_record(), "render_gain_db": round(prepared.gain_db, 2),
        "num_gaussians": len(prepared.gaussians["means"]),
    }  # fmt: skip
    write_atomically(run / FRAME_RECORD, lambda path: path.write_text(json.dumps(record, indent=1)))
    model = pipeline.model
    for name, value in prepared.gaussians.items():
        model.gauss_params[name] = torch.nn.Parameter(value.to(model.gauss_params[name]))
    state = {
        "step": config.max_num_iterations - 1,
        "pipeline": pipeline.state_dict(),
        "optimizers": {},
        "schedulers": {},
    }
    checkpoint = config.get_checkpoint_dir() / f"step-{config.max_num_iterations - 1:09d}.ckpt"
    checkpoint.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(checkpoint, lambda path: torch.save(state, path))


def read_frame_record(run: Path) -> Optional[Dict]:
    try:
        return json.loads((run / FRAME_RECORD).read_text())
    except (OSError, ValueError):
        return None


def training_to_given(run: Path) -> Optional[Similarity]:
    """From the training frame back to the given model's own frame, for the imported run ``run``; None where that
    is the training frame itself (or ``run`` was not imported)."""
    record = read_frame_record(run)
    if record is None:
        return None
    similarity = Similarity.from_record(record["to_training"])
    return None if similarity.is_identity() else similarity.inverse()


def write_ply_in_frame(ply: Path, similarity: Similarity, target: Path) -> Path:
    """The 3DGS PLY ``ply`` moved by ``similarity``, written as a 3DGS PLY at ``target``."""
    moved = transform_gaussians(gaussians_from_ply(read_3dgs_ply(ply)), similarity)
    return write_atomically(target, lambda path: path.write_bytes(encode_ply(ply_from_gaussians(moved))))
