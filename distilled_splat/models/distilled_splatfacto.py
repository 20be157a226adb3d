"""The student (distilled-splatfacto): splatfacto trained against real images and the teachers' aggregate,
with a structural loss towards the vanilla teacher's Gaussian layout and aggressive importance pruning."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Dict, List, Literal, Optional, Tuple, Type

import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor, nn

from distilled_splat.errors import DistilledSplatError
from distilled_splat.importance import ImportanceMode, view_importance
from distilled_splat.losses import StructureLoss, StructureMode, photometric_loss
from distilled_splat.models.portable_splatfacto import (
    PortableSplatfactoModel,
    PortableSplatfactoModelConfig,
    gsplat_viewmats,
)
from distilled_splat.schedules import in_window
from distilled_splat.strategy.compaction import CompactionStrategy
from distilled_splat.teachers import load_gaussians


@dataclass
class DistilledSplatfactoModelConfig(PortableSplatfactoModelConfig):
    """Distilled-3DGS student. Step counts are for a 30000-step run and scale with --max-num-iterations."""

    _target: Type = field(default_factory=lambda: DistilledSplatfactoModel)
    distill_weight: float = 0.4
    """w in (1 - w) * photometric(student, real image) + w * photometric(student, teacher aggregate);
    photometric = (1 - ssim-lambda) * L1 + ssim-lambda * (1 - SSIM) for both."""
    structure_weight: float = 1.0
    """Weight of the structural loss (1 - cosine of soft voxel histograms of student and vanilla teacher centres)."""
    structure_mode: StructureMode = "marginal"
    """'marginal': the reference's histogram, the outer product of per-axis histograms (O(N * grid) memory).
    'joint': a true 3D histogram, which also matches how the axes co-vary (a dense grid^3 buffer)."""
    structure_grid: int = 256
    """Voxels per axis of the histogram grid."""
    structure_sigma: float = 0.5
    """Kernel standard deviation, in voxels."""
    structure_margin: float = 0.01
    """Absolute margin added to the union bounding box of both point sets."""
    structure_start: int = 21000
    """First step with the structural loss (reference: steps 21000-29000, every 1000)."""
    structure_stop: int = 29000
    """Last step (inclusive) with the structural loss."""
    structure_every: int = 1000
    """The structural loss is added at structure-start, structure-start + structure-every, ..."""
    importance: ImportanceMode = "blend-weight"
    """Per-Gaussian importance for pruning: total blending weight over all training views ('blend-weight', the
    reference's indoor metric) or that weight divided by the projected area ('area-normalised', its outdoor one)."""
    sample_at: Optional[int] = 15000
    """Step of the first prune: sample sample-fraction of the visible Gaussians without replacement, with
    probability proportional to importance, then re-initialise them (scales from neighbour distances, opacity
    0.1, colour kept) and restart their optimiser state. None skips it."""
    sample_fraction: float = 0.5
    """Share of the visible Gaussians the first prune keeps."""
    prune_at: Optional[int] = 20000
    """Step of the second prune: keep the most important Gaussians holding keep-mass of the total importance,
    then cut to the budget (target-gaussians / target-fraction) if one is set. None skips it (then only a
    student that starts from the teacher, --pipeline.model.init teacher, has a budget)."""
    keep_mass: float = 0.99
    """Share of the total importance the second prune keeps."""
    max_gaussians: int = 4_500_000
    """Densification stops growing beyond this many Gaussians."""
    target_gaussians: Optional[int] = None
    """Budget: at most this many Gaussians from the second prune on."""
    target_fraction: Optional[float] = 0.1
    """Budget as a fraction of the vanilla teacher's Gaussian count (ignored when target-gaussians is set).
    The default aims at the method's promise: a tenth of the Gaussians. None leaves the count to the pruning."""
    init: Literal["points", "teacher"] = "points"
    """'points': start from the scene's point cloud, as splatfacto does. 'teacher': start from the trained vanilla
    teacher's Gaussians, cut to the budget by importance (see budget-cuts)."""
    budget_cuts: int = 1
    """With init teacher: cut from the teacher's count to the budget in this many cuts of equal ratio, evenly
    spaced from the first step to cuts-stop, each keeping the most important Gaussians at that moment; 1 cuts
    once, before the first step (LightGaussian). Fine-tuning between cuts lets the survivors take over the space
    of the pruned ones."""
    cuts_stop: int = 15000
    """With init teacher and budget-cuts > 1: the step of the last cut, which reaches the budget."""

    def __post_init__(self) -> None:
        problems = []
        if not 0 <= self.distill_weight <= 1:
            problems.append(f"distill-weight in [0, 1] (got {self.distill_weight})")
        if self.structure_every < 1 or self.structure_start > self.structure_stop:
            problems.append("structure-every >= 1 and structure-start <= structure-stop")
        if self.structure_grid < 2 or self.structure_sigma <= 0:
            problems.append("structure-grid >= 2 and structure-sigma > 0")
        if not 0 < self.sample_fraction <= 1 or not 0 < self.keep_mass <= 1:
            problems.append("sample-fraction and keep-mass in (0, 1]")
        if self.target_gaussians is not None and self.target_gaussians < 1:
            problems.append(f"target-gaussians >= 1 (got {self.target_gaussians})")
        if self.target_fraction is not None and not 0 < self.target_fraction <= 1:
            problems.append(f"target-fraction in (0, 1] (got {self.target_fraction})")
        if self.prune_at is None and self.init == "points" and (self.target_fraction or self.target_gaussians):
            problems.append("a prune-at step for the budget (or --pipeline.model.init teacher)")
        if self.budget_cuts < 1 or self.cuts_stop < self.budget_cuts - 1:
            problems.append("budget-cuts >= 1 and cuts-stop >= budget-cuts - 1 (one step per cut)")
        if problems:
            raise DistilledSplatError(f"--pipeline.model: need {'; '.join(problems)}")

    def step_schedule_fields(self) -> Tuple[str, ...]:
        fields = ("structure_start", "structure_stop", "structure_every", "sample_at", "prune_at", "cuts_stop")
        return (*super().step_schedule_fields(), *fields)

    def scheduled_events(self) -> Dict[str, Tuple[int, str]]:
        events = super().scheduled_events()
        if self.prune_at is not None:
            events["prune_at"] = (self.prune_at, "--pipeline.model.prune-at None turns it off")
        if self.sample_at is not None:
            events["sample_at"] = (self.sample_at, "--pipeline.model.sample-at None turns it off")
        if self.structure_weight > 0:
            events["structure_start"] = (self.structure_start, "--pipeline.model.structure-weight 0 turns it off")
        return events

    def cut_steps(self) -> Tuple[int, ...]:
        """Steps at which a student started from the teacher is cut towards its budget."""
        if self.budget_cuts == 1:
            return (0,)
        return tuple(round(i * self.cuts_stop / (self.budget_cuts - 1)) for i in range(self.budget_cuts))


class DistilledSplatfactoModel(PortableSplatfactoModel):
    config: DistilledSplatfactoModelConfig

    def populate_modules(self) -> None:
        super().populate_modules()
        metadata = self.kwargs.get("metadata", {})
        self.teacher_means: Optional[Tensor] = metadata.get("teacher_means")
        self.training_cameras: Optional[Cameras] = None
        self.structure_loss: Optional[StructureLoss] = None
        target = self.config.target_gaussians
        if target is not None and self.teacher_means is not None and not 1 <= target <= len(self.teacher_means):
            raise DistilledSplatError(
                f"--pipeline.model.target-gaussians {target}: must be between 1 and the vanilla teacher's "
                f"{len(self.teacher_means)} Gaussians"
            )
        config = self.config
        fields = {f.name: getattr(self.strategy, f.name) for f in dataclasses.fields(self.strategy)}
        self.strategy = CompactionStrategy(
            **fields, max_count=config.max_gaussians, sample_at=config.sample_at,
            sample_fraction=config.sample_fraction, prune_at=config.prune_at, keep_mass=config.keep_mass,
            budget=self.budget(),
        )  # fmt: skip
        if config.init == "teacher" and "teacher_checkpoint" in metadata:
            self.start_from(load_gaussians(metadata["teacher_checkpoint"]))

    def start_from(self, gaussians: Dict[str, Tensor]) -> None:
        """Replace the initial Gaussians by ``gaussians`` (a trained splatfacto model's parameters)."""
        for name, param in self.gauss_params.items():
            value = gaussians[name]
            if value.shape[1:] != param.shape[1:]:
                raise DistilledSplatError(
                    f"--pipeline.model.init teacher: the teacher's {name} have shape {tuple(value.shape[1:])} per "
                    f"Gaussian, this model's {tuple(param.shape[1:])} (set the same --pipeline.model.sh-degree)"
                )
            self.gauss_params[name] = nn.Parameter(value.to(param))

    def budget(self) -> Optional[int]:
        """Most Gaussians allowed after the second prune, or None for no budget."""
        if self.config.target_gaussians is not None:
            return self.config.target_gaussians
        if self.config.target_fraction is None or self.teacher_means is None:
            return None
        return max(1, round(self.config.target_fraction * len(self.teacher_means)))

    def get_training_callbacks(
        self, training_callback_attributes: TrainingCallbackAttributes
    ) -> List[TrainingCallback]:
        # Pruning scores every training view, so the model keeps a handle on the training cameras.
        self.training_cameras = training_callback_attributes.pipeline.datamanager.train_dataset.cameras
        return super().get_training_callbacks(training_callback_attributes)

    def teacher_target(self, outputs, batch) -> Tensor:
        """The teachers' aggregate for this batch, downscaled and composited exactly like the real image."""
        return self.composite_with_background(self.get_gt_img(batch["teacher_image"]), outputs["background"])

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, Tensor]:
        loss_dict = super().get_loss_dict(outputs, batch, metrics_dict)
        weight = self.config.distill_weight
        loss_dict["gt_loss"] = (1 - weight) * loss_dict.pop("main_loss")
        if "teacher_image" in batch and weight > 0:
            teacher = self.teacher_target(outputs, batch)
            rendered = outputs["rgb"]
            if "mask" in batch:
                mask = self._downscale_if_required(batch["mask"]).to(self.device)
                teacher, rendered = teacher * mask, rendered * mask
            distill, _, _ = photometric_loss(rendered, teacher, self.ssim, self.config.ssim_lambda)
            loss_dict["distill_loss"] = weight * distill
        config = self.config
        if self.training and in_window(
            self.step, config.structure_start, config.structure_stop, config.structure_every
        ):
            if self.teacher_means is None:
                raise DistilledSplatError("the structural loss needs the vanilla teacher's centres (teacher cache)")
            if self.structure_loss is None:  # built once: it keeps the teacher's histogram between calls
                self.structure_loss = StructureLoss(
                    self.teacher_means.to(self.device), config.structure_mode, config.structure_grid,
                    config.structure_sigma, config.structure_margin,
                )  # fmt: skip
            loss_dict["structure_loss"] = config.structure_weight * self.structure_loss(self.means)
        return loss_dict

    def get_metrics_dict(self, outputs, batch) -> Dict[str, Tensor]:
        metrics = super().get_metrics_dict(outputs, batch)
        if "teacher_image" in batch:
            teacher = self.teacher_target(outputs, batch)
            metrics["teacher_l1"] = torch.abs(outputs["rgb"].detach() - teacher).mean()
        return metrics

    def strategy_post_backward(self, step: int) -> None:
        self.strategy.step_post_backward(
            self.gauss_params, self.optimizers, self.strategy_state, step, self.info, importance=self.importance
        )

    def step_cb(self, optimizers, step: int) -> None:
        super().step_cb(optimizers, step)
        # A student started from the teacher is cut towards its budget before these steps train (a resumed run's
        # checkpoint already holds the earlier cuts).
        cuts = self.config.cut_steps()
        if self.config.init == "teacher" and step in cuts and self.training_cameras is not None:
            cuts_left = sum(1 for cut in cuts if cut >= step)
            before = self.num_points
            state = self.strategy_state
            if self.strategy.cut_towards_budget(self.gauss_params, self.optimizers, state, self.importance, cuts_left):
                CONSOLE.print(f"Step {step}: cut the vanilla teacher's Gaussians from {before} to {self.num_points}")

    @torch.no_grad()
    def importance(self) -> Tensor:
        """Importance of every Gaussian summed over all training views, at full resolution."""
        if self.training_cameras is None:
            raise RuntimeError("pruning needs the training cameras; they are set in get_training_callbacks")
        splats = self.splat_inputs(None)
        total = torch.zeros(self.num_points, device=self.device)
        for view in range(len(self.training_cameras)):
            camera = self.training_cameras[view : view + 1].to(self.device)
            total += view_importance(
                splats, gsplat_viewmats(camera.camera_to_worlds)[0], camera.get_intrinsics_matrices()[0].to(self.device),
                int(camera.width), int(camera.height), self.config.importance,
            )  # fmt: skip
        return total
