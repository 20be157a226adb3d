"""The nerfstudio methods this plugin registers (entry point group ``nerfstudio.method_configs``).

The configs are built explicitly rather than copied from ``nerfstudio.configs.method_configs``: importing that
module from a plugin that it is itself discovering leaves it half-initialised.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Dict, Optional

from nerfstudio.configs.base_config import ViewerConfig
from nerfstudio.data.dataparsers.nerfstudio_dataparser import NerfstudioDataParserConfig
from nerfstudio.engine.optimizers import AdamOptimizerConfig
from nerfstudio.engine.schedulers import ExponentialDecaySchedulerConfig
from nerfstudio.engine.trainer import TrainerConfig
from nerfstudio.models.splatfacto import SplatfactoModelConfig
from nerfstudio.pipelines.base_pipeline import VanillaPipelineConfig
from nerfstudio.plugins.types import MethodSpecification

from distilled_splat.data.datamanager import PortableDatamanagerConfig
from distilled_splat.data.distilled_datamanager import DistilledDatamanagerConfig
from distilled_splat.devices import require_device
from distilled_splat.errors import DistilledSplatError
from distilled_splat.models.distilled_splatfacto import DistilledSplatfactoModelConfig
from distilled_splat.models.dropout_splatfacto import DropoutSplatfactoModelConfig
from distilled_splat.models.mcmc_splatfacto import MCMCSplatfactoModelConfig
from distilled_splat.models.perturbed_splatfacto import PerturbedSplatfactoModelConfig
from distilled_splat.models.portable_splatfacto import PortableSplatfactoModelConfig
from distilled_splat.schedules import FULL_RUN_STEPS, fit_model_to_run_length, scale_to_run_length, scheduled_parts


def splat_optimizers() -> Dict[str, Any]:
    """Splatfacto's optimisers, learning rates and decay schedules for a 30k-step run."""

    def adam(lr: float) -> AdamOptimizerConfig:
        return AdamOptimizerConfig(lr=lr, eps=1e-15)

    max_steps, warmup = FULL_RUN_STEPS, 1000
    return {
        "means": {
            "optimizer": adam(1.6e-4),
            "scheduler": ExponentialDecaySchedulerConfig(lr_final=1.6e-6, max_steps=max_steps),
        },
        "features_dc": {"optimizer": adam(0.0025), "scheduler": None},
        "features_rest": {"optimizer": adam(0.0025 / 20), "scheduler": None},
        "opacities": {"optimizer": adam(0.05), "scheduler": None},
        "scales": {"optimizer": adam(0.005), "scheduler": None},
        "quats": {"optimizer": adam(0.001), "scheduler": None},
        "camera_opt": {
            "optimizer": adam(1e-4),
            "scheduler": ExponentialDecaySchedulerConfig(
                lr_final=5e-7, max_steps=max_steps, warmup_steps=warmup, lr_pre_warmup=0
            ),
        },
        "bilateral_grid": {
            "optimizer": adam(2e-3),
            "scheduler": ExponentialDecaySchedulerConfig(
                lr_final=1e-4, max_steps=max_steps, warmup_steps=warmup, lr_pre_warmup=0
            ),
        },
    }


@dataclass
class CheckedTrainerConfig(TrainerConfig):
    """TrainerConfig that checks its inputs and fits its schedules to the run length before the run starts."""

    scale_schedules: bool = True
    """Treat every step count of the schedules (densification, opacity resets, SH, learning-rate decay, noise,
    dropout and distillation phases) as written for a 30000-step run and scale it to --max-num-iterations, so
    short runs pass through every phase. Turn off to use the step counts as given."""

    def save_config(self) -> None:
        # ns-train saves config.yml before building the pipeline: failing here leaves no half-made run folder,
        # and the saved config holds the schedules actually used.
        require_device(self.machine.device_type)
        datamanager = self.pipeline.datamanager
        if isinstance(datamanager, PortableDatamanagerConfig):
            datamanager.prepare_run(self.get_base_dir())
        if self.scale_schedules and self.max_num_iterations != FULL_RUN_STEPS:
            self.__dict__.update(scale_to_run_length(self, self.max_num_iterations).__dict__)
        self.check_events_fit()
        super().save_config()

    def check_events_fit(self) -> None:
        """Refuse a run whose last step comes before one of its scheduled events (a prune, a window, the first
        pseudo view), once what depends on the run's length is settled (also in a full-length or unscaled run)."""
        if not isinstance(self.pipeline.model, PortableSplatfactoModelConfig):
            return
        fit_model_to_run_length(self, self.max_num_iterations)
        last = self.max_num_iterations - 1
        for owner_name, owner in scheduled_parts(self).items():
            for name, (step, turn_off) in owner.scheduled_events().items():
                if step > last:
                    raise DistilledSplatError(
                        f"--pipeline.{owner_name}.{name.replace('_', '-')} {step} comes after the run's last step "
                        f"{last}, so it would never happen: move it earlier, or --scale-schedules True ({turn_off})"
                    )


def splat_trainer_config(
    method_name: str, model: SplatfactoModelConfig, datamanager: type = PortableDatamanagerConfig
) -> TrainerConfig:
    """A splatfacto-style trainer for ``model``; every method needs its own ``method_name`` for ``eval_setup``."""
    return CheckedTrainerConfig(
        method_name=method_name,
        steps_per_eval_image=100,
        steps_per_eval_batch=0,
        steps_per_save=2000,
        steps_per_eval_all_images=1000,
        max_num_iterations=FULL_RUN_STEPS,
        mixed_precision=False,
        pipeline=VanillaPipelineConfig(
            datamanager=datamanager(
                dataparser=NerfstudioDataParserConfig(load_3D_points=True, eval_mode="interval", eval_interval=8),
                cache_images_type="uint8",
            ),
            model=model,
        ),
        optimizers=splat_optimizers(),
        viewer=ViewerConfig(num_rays_per_chunk=1 << 15),
        vis="viewer",
    )


distilled_teacher = MethodSpecification(
    config=splat_trainer_config("distilled-teacher", PortableSplatfactoModelConfig()),
    description="Distilled-3DGS vanilla teacher: splatfacto that also trains on CPU (every 8th view held out).",
)

distilled_teacher_noise = MethodSpecification(
    config=splat_trainer_config("distilled-teacher-noise", PerturbedSplatfactoModelConfig()),
    description="Distilled-3DGS perturbed teacher: noise on the raw parameters of clone candidates.",
)

distilled_teacher_dropout = MethodSpecification(
    config=splat_trainer_config("distilled-teacher-dropout", DropoutSplatfactoModelConfig()),
    description="Distilled-3DGS dropout teacher (DropGaussian): opacity dropout with 1/(1-p) compensation.",
)

FINETUNE_MEANS_LR = 1.6e-4
"""Position learning rate of every fine-tune from a trained model (the student and the teacher-started
alternatives alike), constant: the rate a fresh splatfacto run starts at. A cut model's survivors must move to
cover for the removed ones; at 1.6e-5 the student lost 0.23-0.77 dB on the demo and the fox at 1000, 4000 and
30000 steps, and at 30000 steps 5e-4 and a decay to 1.6e-6 lost too (docs/experiments.md, "Positions at 1.6e-4")."""


def from_teacher(config: TrainerConfig, budget_cuts: Optional[int] = None) -> TrainerConfig:
    """``config``'s student started from the trained vanilla teacher and fine-tuned: cut to its budget in
    ``budget_cuts`` cuts of equal ratio (the last at half the run; 1 = at once before the first step; None = by
    the run's length, see --pipeline.model.budget-cuts), no densification, pruning or opacity resets, full SH
    degree from the first step, positions at FINETUNE_MEANS_LR. Changes ``config`` in place and returns it."""
    model = config.pipeline.model
    model.init, model.budget_cuts, model.cuts_stop = "teacher", budget_cuts, config.max_num_iterations // 2
    model.sample_at, model.prune_at = None, None
    model.stop_split_at = 0
    model.sh_degree_interval = 1
    config.optimizers["means"] = {"optimizer": AdamOptimizerConfig(lr=FINETUNE_MEANS_LR, eps=1e-15), "scheduler": None}
    # Pseudo views from half the run on: where the gradual cuts reach the budget (kept there when the run's length
    # makes it one cut at step 0, as measured).
    config.pipeline.datamanager.pseudo_start = model.cuts_stop if budget_cuts != 1 else 0
    return config


def without_distillation(config: TrainerConfig) -> TrainerConfig:
    """``config``'s student learning from the real images alone: no distillation term, structural loss or pseudo
    views. Changes ``config`` in place and returns it."""
    config.pipeline.model.distill_weight, config.pipeline.model.structure_weight = 0.0, 0.0
    return without_pseudo_views(config)


def without_pseudo_views(config: TrainerConfig) -> TrainerConfig:
    """``config`` taking no pseudo views. Changes ``config`` in place and returns it."""
    datamanager = config.pipeline.datamanager
    datamanager.pseudo_views, datamanager.pseudo_share, datamanager.pseudo_start = 0, 0.0, 0
    # The fields' defaults: nothing is left behind that could matter (or move the contender's fingerprint).
    defaults = type(datamanager)
    datamanager.pseudo_mode, datamanager.pseudo_families = defaults.pseudo_mode, defaults.pseudo_families
    return config


def student_trainer_config(method_name: str) -> TrainerConfig:
    return splat_trainer_config(method_name, DistilledSplatfactoModelConfig(), DistilledDatamanagerConfig)


STUDENT_STRUCTURE_WEIGHT = 0.03
"""The default student's structural-loss weight. At the paper's 1.0 the loss's gradient on the positions was ~37
times the photometric one (median over the demo student's Gaussians), so its nine steps filled Adam's second
moments: the median position step fell to 0.3-0.4 of its size for the rest of a 1000-step run, and the student
lost 0.28 dB on the demo there, beyond the seed spread. At 0.03 the two gradients are of one size; the loss
neither gains nor loses measurably (docs/experiments.md, "Stop 46: the structural loss at 0.03")."""

PSEUDO_VIEWS = 64
"""Cameras without a photo at which the default student learns the teachers' aggregate (see README's frontier)."""
PSEUDO_SHARE = 0.2
"""Share of the default student's steps, from its last cut on, that also train at one of those cameras."""
PSEUDO_MODE = "add"
"""A pseudo view is added to its step's photo, not taken instead of it: on the demo, replacing cost 0.11 dB at
20% (beyond the seed spread), adding 0.03 dB (within it); README's "What distillation adds"."""
PSEUDO_FAMILIES = ("interpolated",)
"""Only cameras between two photographed ones: on the demo at 40%, jittered views too cost 0.05 dB against the
student without distillation (beyond the seed spread), interpolated ones alone 0.01 dB (within it). Jittered
cameras leave the captured path, where the teachers' renders are least constrained; README's "What distillation
adds"."""


def gradual_student() -> TrainerConfig:
    """The default student (Distilled-3DGS's design card): started from the vanilla teacher and cut to the budget
    in steps (merging Gaussians where splat-transform is installed), fine-tuned on the real images at the training
    views and, once at its budget, also on the teachers' cached aggregate at pseudo views (cameras no photo
    covers) and as 3DGS-MCMC trains at a fixed count (relocation, its regularisers scaled by the run's length),
    with the structural loss towards the vanilla teacher's layout (at STUDENT_STRUCTURE_WEIGHT). At
    training views the photo itself is the target (the aggregate only approximates it): distill-weight 0 there."""
    config = from_teacher(student_trainer_config("distilled-splatfacto"))
    config.pipeline.model.cut_method = "auto"
    config.pipeline.model.fine_tune = "mcmc"
    config.pipeline.model.distill_weight = 0.0
    config.pipeline.model.structure_weight = STUDENT_STRUCTURE_WEIGHT
    datamanager = config.pipeline.datamanager
    datamanager.pseudo_views, datamanager.pseudo_share = PSEUDO_VIEWS, PSEUDO_SHARE
    datamanager.pseudo_mode, datamanager.pseudo_families = PSEUDO_MODE, PSEUDO_FAMILIES
    return config


distilled_splatfacto = MethodSpecification(
    config=gradual_student(),
    description="Distilled-3DGS student: the vanilla teacher cut to a budget in steps, fine-tuned on the real images "
    "and on the teachers' cached renders at pseudo views, with the structural loss, relocating its faded Gaussians "
    "at the budget as 3DGS-MCMC does.",
)

distilled_splatfacto_paper = MethodSpecification(
    config=student_trainer_config("distilled-splatfacto-paper"),
    description="Distilled-3DGS student as published: from the point cloud, distilled from the teachers' average, "
    "structural loss, importance sampling and pruning to a budget.",
)

distilled_mcmc = MethodSpecification(
    config=splat_trainer_config("distilled-mcmc", MCMCSplatfactoModelConfig()),
    description="Splatfacto capped from the start (3DGS-MCMC relocation, --pipeline.model.cap-max), also on CPU.",
)
