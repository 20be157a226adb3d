"""Each planned model's nerfstudio config, and the fingerprint that names its run and result: everything that
decides the model (scene, teacher checkpoints, its config after scaling, steps, seed), so that a frontier with
other settings never reuses a result or resumes a run made under different ones."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

from nerfstudio.engine.trainer import TrainerConfig

from distilled_splat.data.distilled_datamanager import DistilledDatamanagerConfig
from distilled_splat.errors import DistilledSplatError
from distilled_splat.exports import splat_transform
from distilled_splat.fingerprints import combined_fingerprint, fingerprint_parts
from distilled_splat.frontier.contenders import CONTENDERS, Setup
from distilled_splat.frontier.plan import FrontierPlan, ModelSpec
from distilled_splat.teachers import fingerprint as file_fingerprint
from distilled_splat.training import last_step_checkpoint


@dataclass
class ModelConfigs:
    """The configs and fingerprints of ``plan``'s models (fingerprints are computed once per frontier)."""

    plan: FrontierPlan

    def base_config(self, spec: ModelSpec) -> TrainerConfig:
        """The contender's config for this budget and seed, before it is given its run folder."""
        contender, recipe = CONTENDERS[spec.method], self.plan.recipe
        if not contender.trains:
            config = copy.deepcopy(
                self.plan.vanilla_config()
            )  # a decimated teacher is stored as the teacher's runs are
        else:
            config = recipe.configs.run_config(contender.method.config, self.plan.own_and_total_steps(spec.method)[0])
            if isinstance(config.pipeline.datamanager, DistilledDatamanagerConfig):
                try:
                    config = recipe.configs.with_args(config, recipe.settings.student_args)
                except DistilledSplatError as error:
                    raise DistilledSplatError(f"--student-args do not fit contender {spec.method}: {error}") from error
                teachers = contender.teachers(recipe)
                datamanager = config.pipeline.datamanager
                datamanager.teachers = tuple(recipe.configs.teacher_config_path(name) for name in teachers)
                datamanager.teacher_cache_dir = recipe.folder.runs / "frontier" / "teacher-cache" / "+".join(teachers)
                config.pipeline.model.target_fraction, config.pipeline.model.target_gaussians = spec.budget, None
        setup = Setup(self.plan.budget_count(spec.budget), lambda: str(self.decimated_checkpoint(spec.budget)))
        contender.settings(config, setup)
        config.output_dir = recipe.folder.runs
        config.experiment_name = "frontier"
        config.machine.seed = spec.seed if contender.seed_matters else self.plan.teacher_seed()
        return config

    def decimated_checkpoint(self, budget: float) -> Path:
        return last_step_checkpoint(self.model_config(ModelSpec("decimated", budget, self.plan.teacher_seed())))

    def fingerprint(self, spec: ModelSpec) -> str:
        """sha256 of everything that decides the model: its config after scaling (paths inside the output folder
        and the scene written relative to them), the scene's files, the checkpoints of the teachers it uses, its
        seed (in the config), and splat-transform's version where it decimates."""
        return self.plan.once(("fingerprint", spec), lambda: self.compute_fingerprint(spec))

    def compute_fingerprint(self, spec: ModelSpec) -> str:
        config, contender = self.base_config(spec), CONTENDERS[spec.method]
        extra = {
            "teachers": {name: self.teacher_fingerprint(name) for name in contender.teachers_used(self.plan.recipe)},
            "splat_transform": splat_transform.installed_version() if contender.start == "teacher-ply" else None,
            # A model made without training has nothing in its config that tells its budget.
            **({} if contender.trains else {"decimated_to": self.plan.budget_count(spec.budget)}),
            # cut-method auto merges only where splat-transform is installed.
            **(
                {"merges": splat_transform.find() is not None}
                if getattr(config.pipeline.model, "cut_method", None) == "auto"
                else {}
            ),
        }
        return combined_fingerprint(fingerprint_parts(config), extra)

    def fingerprint_if_buildable(self, spec: ModelSpec) -> Optional[str]:
        """The fingerprint, or None for a contender these settings cannot build (--student-args that do not fit
        it): its stored results were made under other settings."""
        try:
            return self.fingerprint(spec)
        except DistilledSplatError:
            return None

    def teacher_fingerprint(self, name: str) -> str:
        return self.plan.once(
            ("teacher", name), lambda: file_fingerprint(last_step_checkpoint(self.plan.teacher_config(name)))
        )

    def stem(self, spec: ModelSpec) -> str:
        """The model's name and the start of its fingerprint: its run folder and result file are named so."""
        return f"{spec.name}-{self.fingerprint(spec)[:12]}"

    def model_config(self, spec: ModelSpec) -> TrainerConfig:
        config = self.base_config(spec)
        config.timestamp = self.stem(spec)
        return config

    def settings_record(self) -> Dict:
        """The frontier-wide settings a result was made under (what its table states once)."""
        settings = self.plan.recipe.settings
        return {
            "data": str(self.plan.recipe.data.resolve()), "teacher_steps": settings.steps,
            "student_steps": settings.student_steps, "compute": self.plan.settings.compute, "device": settings.device,
            "downscale": settings.downscale, "teachers": list(self.plan.recipe.configs.teachers("gradual")),
            "student_args": settings.student_args, "teacher_args": settings.teacher_args,
        }  # fmt: skip
