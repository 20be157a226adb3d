"""The student model of both student methods: splatfacto trained against the real images and the teachers'
cached aggregate (at the training views with --pipeline.model.distill-weight, at pseudo views where the
datamanager serves them), with a structural loss towards the vanilla teacher's Gaussian layout and importance
pruning to a budget.

``distilled-splatfacto`` (the default) starts it from the trained vanilla teacher and cuts it to the budget in
8 steps (``method_configs.from_teacher``), learns from photos at the training views and from the aggregate at
pseudo views. ``distilled-splatfacto-paper`` runs the config's own defaults, Distilled-3DGS as published: from
the point cloud, distillation weight 0.4 at every view, importance sampling and the mass prune."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Literal, Optional, Tuple, Type

import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.engine.callbacks import TrainingCallback, TrainingCallbackAttributes, TrainingCallbackLocation
from nerfstudio.models.splatfacto import SH2RGB
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor, nn

from distilled_splat.decimation import decimate_gaussians
from distilled_splat.errors import DistilledSplatError
from distilled_splat.exports import splat_transform
from distilled_splat.importance import ImportanceMode, scene_importance
from distilled_splat.losses import StructureLoss, StructureMode, photometric_loss
from distilled_splat.models.mcmc_splatfacto import REGULARISER_WEIGHT, mcmc_regularisers
from distilled_splat.models.portable_splatfacto import PortableSplatfactoModel, PortableSplatfactoModelConfig
from distilled_splat.notices import say_once
from distilled_splat.schedules import FULL_RUN_STEPS, in_window
from distilled_splat.strategy.compaction import CompactionStrategy
from distilled_splat.strategy.mcmc import PortableMCMCStrategy
from distilled_splat.teachers import load_gaussians

GRADUAL_CUTS = 8
"""Cuts from the teacher's count to the budget in the default student's shorter runs."""
MERGE_ONCE_FROM_STEPS = 2000
"""From this run length on, the default student reaches its budget in one cut at step 0. Measured at 1000 steps
(eight cuts up to half the run beat one by 0.19-0.44 dB on the fox and by 0.25 dB on the demo at 20%; level on the
demo at 10%) and 4000 steps (one cut beat eight on both scenes); the switch sits between the two, where nothing
was measured."""


@dataclass
class DistilledSplatfactoModelConfig(PortableSplatfactoModelConfig):
    """Distilled-3DGS student. The defaults are the paper's student (distilled-splatfacto-paper); the default
    method distilled-splatfacto changes init, budget-cuts, cuts-stop, sample-at, prune-at, stop-split-at,
    sh-degree-interval, distill-weight and structure-weight (see each, and `ns-train distilled-splatfacto --help`
    for its values). Step counts are for a 30000-step run and scale with --max-num-iterations."""

    _target: Type = field(default_factory=lambda: DistilledSplatfactoModel)
    distill_weight: float = 0.4
    """At training views, w in (1 - w) * photometric(student, real image) + w * photometric(student, teacher
    aggregate); photometric = (1 - ssim-lambda) * L1 + ssim-lambda * (1 - SSIM) for both. Pseudo views always
    train on the aggregate alone. distilled-splatfacto: 0 (the photo is the better target where there is one)."""
    structure_weight: float = 1.0
    """Weight of the structural loss (1 - cosine of soft voxel histograms of student and vanilla teacher centres).
    distilled-splatfacto: 0.03 (at 1.0 its gradient dwarfs the photometric one and stalls Adam on the positions)."""
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
    reference's indoor metric), that weight divided by the projected area ('area-normalised', its outdoor one), or
    PUP-3DGS's sensitivity, the log-determinant of the Fisher matrix over mean and log-scale ('pup-fisher')."""
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
    """'points': start from the scene's point cloud, as splatfacto does (distilled-splatfacto-paper). 'teacher':
    start from the trained vanilla teacher's Gaussians, cut to the budget by importance (see budget-cuts;
    distilled-splatfacto)."""
    budget_cuts: Optional[int] = 1
    """With init teacher: cut from the teacher's count to the budget in this many cuts of equal ratio, evenly
    spaced from the first step to cuts-stop, each keeping the most important Gaussians at that moment; 1 cuts
    once, before the first step (LightGaussian). Fine-tuning between cuts lets the survivors take over the space
    of the pruned ones. None (distilled-splatfacto): by the run's length, 8 cuts up to half a run shorter than 2000
    steps, one cut at step 0 from 2000 steps on (docs/experiments.md, "Cut gradually or merge once")."""
    cuts_stop: int = 15000
    """With init teacher and budget-cuts > 1: the step of the last cut, which reaches the budget (half the run)."""
    first_cut_keep: Optional[float] = None
    """With init teacher and budget-cuts > 1: the first cut keeps this fraction of the starting count (PUP-3DGS
    keeps 0.2; never fewer than the budget) and the later cuts share the rest by equal ratios. None: every cut
    has the same ratio."""
    cut_method: Literal["drop", "merge", "auto"] = "drop"
    """With init teacher, how each cut reaches its count: 'drop' keeps the most important Gaussians (importance);
    'merge' merges pairs of Gaussians down to it (splat-transform's decimation, NanoGS; needs splat-transform and
    SH degree >= 1), restarting the optimiser's moments; 'auto' (distilled-splatfacto) merges where
    splat-transform is installed and drops otherwise, and says which at the first cut."""
    fine_tune: Literal["default", "mcmc"] = "default"
    """With init teacher, how the student trains at its budget from its last cut on: 'default' as splatfacto does
    (its densification held under the budget); 'mcmc' (distilled-splatfacto) as 3DGS-MCMC does at a fixed count:
    every refine-every steps up to fine-tune-refine-stop the Gaussians at opacity 0.005 or below move onto live
    ones, opacity-gated noise moves the positions every step, and L1 regularisers pull opacity and scale down."""
    fine_tune_refine_stop: int = 25000
    """With fine-tune mcmc: the last step that relocates."""
    fine_tune_regulariser: Optional[float] = None
    """With fine-tune mcmc: weight of the L1 regularisers on opacity and on scale. None: 3DGS-MCMC's 0.01 scaled
    by the run's length (0.01 x steps / 30000, at most 0.01): at 0.01 the regularisers cost 0.4 dB at 4000 steps
    and won 0.5 dB at 30,000 (docs/experiments.md, "Stop 47")."""
    start_checkpoint: Optional[Path] = None
    """With init teacher: start from this splatfacto checkpoint's Gaussians instead of the vanilla teacher's (a
    decimated copy of it, say); the budget is still a fraction of the vanilla teacher's count."""

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
        if self.budget_cuts is not None and (self.budget_cuts < 1 or self.cuts_stop < self.budget_cuts - 1):
            problems.append("budget-cuts >= 1 and cuts-stop >= budget-cuts - 1 (one step per cut)")
        if self.cut_method == "merge" and self.sh_degree < 1:
            problems.append("sh-degree >= 1 with cut-method merge (merging reads colour as SH coefficients)")
        if self.first_cut_keep is not None and not (0 < self.first_cut_keep <= 1 and (self.budget_cuts or 0) > 1):
            problems.append(f"first-cut-keep in (0, 1] with budget-cuts > 1 (got {self.first_cut_keep})")
        if problems:
            raise DistilledSplatError(f"--pipeline.model: need {'; '.join(problems)}")

    def step_schedule_fields(self) -> Tuple[str, ...]:
        fields = ("structure_start", "structure_stop", "structure_every", "sample_at", "prune_at", "cuts_stop")
        fields = (*fields, "fine_tune_refine_stop")
        return (*super().step_schedule_fields(), *fields)

    def scheduled_events(self) -> Dict[str, Tuple[int, str]]:
        events = super().scheduled_events()
        if self.prune_at is not None:
            events["prune_at"] = (self.prune_at, "--pipeline.model.prune-at None turns it off")
        if self.sample_at is not None:
            events["sample_at"] = (self.sample_at, "--pipeline.model.sample-at None turns it off")
        if self.structure_weight > 0:
            events["structure_start"] = (self.structure_start, "--pipeline.model.structure-weight 0 turns it off")
        if self.init == "teacher" and (self.budget_cuts or 0) > 1:
            # The last cut is the one that reaches the budget: a run that ends before it stays above the budget.
            events["cuts_stop"] = (self.cut_steps()[-1], "--pipeline.model.budget-cuts 1 cuts once, at step 0")
        return events

    def fit_to_run_length(self, max_steps: int) -> None:
        """Settle what depends on the run's length (called once it is known, before the run starts)."""
        if self.budget_cuts is None:
            self.budget_cuts = GRADUAL_CUTS if max_steps < MERGE_ONCE_FROM_STEPS else 1
        if self.fine_tune_regulariser is None:
            self.fine_tune_regulariser = REGULARISER_WEIGHT * min(max_steps, FULL_RUN_STEPS) / FULL_RUN_STEPS

    def cut_steps(self) -> Tuple[int, ...]:
        """Steps at which a student started from the teacher is cut towards its budget."""
        if self.budget_cuts is None:
            raise DistilledSplatError("budget-cuts None is settled by the run's length: call fit_to_run_length first")
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
        self.fine_tune_strategy: Optional[PortableMCMCStrategy] = None
        if config.init == "teacher" and config.fine_tune == "mcmc":
            if config.fine_tune_regulariser is None:
                raise DistilledSplatError(
                    "fine-tune-regulariser None is settled by the run's length: call fit_to_run_length first"
                )
            self.fine_tune_strategy = PortableMCMCStrategy(
                cap_max=self.budget() or config.max_gaussians, refine_start_iter=config.cut_steps()[-1],
                refine_stop_iter=config.fine_tune_refine_stop, refine_every=config.refine_every,
            )  # fmt: skip
            self.fine_tune_state = self.fine_tune_strategy.initialize_state()
        if config.init == "teacher" and "teacher_checkpoint" in metadata:
            self.start_from(load_gaussians(config.start_checkpoint or metadata["teacher_checkpoint"]))

    def start_from(self, gaussians: Dict[str, Tensor]) -> None:
        """Replace the initial Gaussians by ``gaussians`` (a trained splatfacto model's parameters)."""
        if self.config.sh_degree == 0 and gaussians["features_rest"].shape[1] > 0:
            # Splatfacto keeps a degree-0 model's colour as a logit, a higher-degree one's as the SH coefficient.
            colour = SH2RGB(gaussians["features_dc"]).clamp(1e-4, 1 - 1e-4)
            gaussians = {**gaussians, "features_dc": torch.logit(colour)}
        for name, param in self.gauss_params.items():
            value = gaussians[name]
            if name == "features_rest" and value.shape[1] > param.shape[1]:
                value = value[:, : param.shape[1]]  # a student with fewer SH bands keeps the teacher's lower ones
            if value.shape[1:] != param.shape[1:]:
                raise DistilledSplatError(
                    f"--pipeline.model.init teacher: the teacher's {name} have shape {tuple(value.shape[1:])} per "
                    f"Gaussian, this model's {tuple(param.shape[1:])} (--pipeline.model.sh-degree can be at most the teacher's)"
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
        callbacks = super().get_training_callbacks(training_callback_attributes)
        trainer = training_callback_attributes.trainer
        if trainer is not None:
            last = trainer._start_step + trainer.config.max_num_iterations - 1
            for at_the_end in (self.relocate_the_faded, self.check_budget):
                callbacks.append(
                    TrainingCallback([TrainingCallbackLocation.AFTER_TRAIN_ITERATION], at_the_end, iters=(last,))
                )
        return callbacks

    def relocate_the_faded(self, step: int) -> None:
        """With fine-tune mcmc, at the run's last step: the Gaussians that faded (opacity 0.005 or below) since the
        last relocation move onto live ones, so the saved model holds its whole count in what an export writes
        (ns-export gaussian-splat leaves out every Gaussian below opacity 1/255)."""
        if self.fine_tuning_mcmc(step):
            self.fine_tune_strategy.relocate_dead(self.gauss_params, self.optimizers, self.fine_tune_state)

    def check_budget(self, step: int) -> None:
        """A student that ends above its budget is a failed run, never a small model with a wrong count."""
        budget = self.budget()
        if budget is not None and self.num_points > budget:
            raise DistilledSplatError(
                f"the student ends at step {step} with {self.num_points} Gaussians, above its budget of {budget}: "
                "a prune or cut it needs never happened"
            )

    def teacher_target(self, outputs, batch) -> Tensor:
        """The teachers' aggregate for this batch, downscaled and composited exactly like the real image."""
        return self.composite_with_background(self.get_gt_img(batch["teacher_image"]), outputs["background"])

    def get_loss_dict(self, outputs, batch, metrics_dict=None) -> Dict[str, Tensor]:
        loss_dict = super().get_loss_dict(outputs, batch, metrics_dict)
        weight = self.config.distill_weight
        if batch.get("pseudo_view"):
            # No photo exists here: the datamanager put the teachers' aggregate in the image's place.
            loss_dict["pseudo_view_loss"] = loss_dict.pop("main_loss")
        else:
            loss_dict["gt_loss"] = (1 - weight) * loss_dict.pop("main_loss")
        if "pseudo_camera" in batch:  # pseudo-mode add: this step also trains on a view no photo covers
            loss_dict["pseudo_view_loss"] = self.pseudo_view_loss(batch["pseudo_camera"], batch["pseudo_image"])
        if "teacher_image" in batch and weight > 0 and not batch.get("pseudo_view"):
            teacher = self.teacher_target(outputs, batch)
            rendered = outputs["rgb"]
            if "mask" in batch:
                mask = self._downscale_if_required(batch["mask"]).to(self.device)
                teacher, rendered = teacher * mask, rendered * mask
            distill, _, _ = photometric_loss(rendered, teacher, self.ssim, self.config.ssim_lambda)
            loss_dict["distill_loss"] = weight * distill
        config = self.config
        if self.training and self.fine_tuning_mcmc(self.step):
            regulariser = config.fine_tune_regulariser
            loss_dict.update(mcmc_regularisers(self, regulariser, regulariser))
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

    def pseudo_view_loss(self, camera: Cameras, aggregate: Tensor) -> Tensor:
        """Photometric loss of the student's render at a pseudo view against the teachers' aggregate there."""
        photo_info, photo_size = self.info, self.last_size
        outputs = self.get_outputs(camera)
        # The strategy's statistics and the step's bookkeeping stay those of the photo's render.
        self.info, self.last_size = photo_info, photo_size
        target = self.composite_with_background(self.get_gt_img(aggregate), outputs["background"])
        return photometric_loss(outputs["rgb"], target, self.ssim, self.config.ssim_lambda)[0]

    def get_metrics_dict(self, outputs, batch) -> Dict[str, Tensor]:
        metrics = super().get_metrics_dict(outputs, batch)
        if "teacher_image" in batch:
            teacher = self.teacher_target(outputs, batch)
            metrics["teacher_l1"] = torch.abs(outputs["rgb"].detach() - teacher).mean()
        return metrics

    def fine_tuning_mcmc(self, step: int) -> bool:
        """Whether ``step`` trains as 3DGS-MCMC (fine-tune mcmc, from the last cut on)."""
        return self.fine_tune_strategy is not None and step >= self.config.cut_steps()[-1]

    def strategy_post_backward(self, step: int) -> None:
        if self.fine_tuning_mcmc(step):
            lr = self.optimizers["means"].param_groups[0]["lr"]
            strategy, state = self.fine_tune_strategy, self.fine_tune_state
            strategy.step_post_backward(self.gauss_params, self.optimizers, state, step, self.info, lr)
            return
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
            keep = self.config.first_cut_keep
            keep = round(keep * before) if keep is not None and step == cuts[0] and cuts_left > 1 else None
            state = self.strategy_state
            merge = decimate_gaussians if self.cuts_merge() else None
            if self.strategy.cut_towards_budget(
                self.gauss_params, self.optimizers, state, self.importance, cuts_left, keep, merge
            ):
                CONSOLE.print(f"Step {step}: cut the vanilla teacher's Gaussians from {before} to {self.num_points}")

    def cuts_merge(self) -> bool:
        """Whether cuts merge Gaussians (cut-method merge, or auto with splat-transform installed)."""
        method = self.config.cut_method
        if method == "merge" and splat_transform.find() is None:
            raise DistilledSplatError(f"--pipeline.model.cut-method merge: {splat_transform.HOW_TO_GET}")
        if method == "auto" and not getattr(self, "said_cut_method", False):
            self.said_cut_method = True
            found = splat_transform.find() is not None and self.config.sh_degree > 0
            say_once(
                "cut-method auto: cuts merge Gaussians (splat-transform)"
                if found
                else f"cut-method auto: cuts keep the most important Gaussians ({splat_transform.HOW_TO_GET})"
            )
        return method == "merge" or (
            method == "auto" and splat_transform.find() is not None and self.config.sh_degree > 0
        )

    @torch.no_grad()
    def importance(self) -> Tensor:
        """Importance (--pipeline.model.importance) of every Gaussian over all training views, at full resolution."""
        if self.training_cameras is None:
            raise RuntimeError("pruning needs the training cameras; they are set in get_training_callbacks")
        sh_degree = self.config.sh_degree if self.config.sh_degree > 0 else None
        return scene_importance(self.splat_inputs(None), self.training_cameras, self.config.importance, sh_degree)
