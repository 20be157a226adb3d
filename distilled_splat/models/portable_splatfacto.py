"""Splatfacto that runs on any device and without network access; the base of every model in this package.

Three things stop nerfstudio 1.1.5's splatfacto from running on a CPU-only machine: hard-coded ``.cuda()``
calls (seed colours, camera intrinsics), gsplat's CUDA-only rasteriser, and LPIPS, whose backbone weights are
downloaded when the model is built. This subclass replaces exactly those pieces and nothing else; LPIPS is
built when first used instead, and reported as unavailable when it cannot be.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from typing import Dict, Iterator, List, Optional, Tuple, Type, Union

import torch
from nerfstudio.cameras.cameras import Cameras
from nerfstudio.models.splatfacto import RGB2SH, SplatfactoModel, SplatfactoModelConfig
from nerfstudio.utils.rich_utils import CONSOLE
from torch import Tensor, nn

from distilled_splat.errors import DistilledSplatError
from distilled_splat.rendering import gsplat_viewmats, rasterize


class UnavailableLPIPS(nn.Module):
    """Stands in for LPIPS when its network weights cannot be loaded; its score is dropped, never reported."""

    def __init__(self, reason: str):
        super().__init__()
        self.reason = reason

    def forward(self, *_args) -> Tensor:
        return torch.tensor(float("nan"))


class LazyLPIPS(nn.Module):
    """torchmetrics' LPIPS, built on its first call, or :class:`UnavailableLPIPS` if it cannot be built.

    Building it initialises an AlexNet and downloads its weights (about 0.3 s on a CPU even when the download
    fails), which rendering and training never need: a teacher loaded to fill the cache would pay it for
    nothing. The built metric is kept out of the module tree, so checkpoints never hold its fixed weights.
    """

    def __init__(self, metric_class: Type[nn.Module], *args, **kwargs):
        super().__init__()
        self.__dict__["metric"] = None
        self.__dict__["make_metric"] = lambda: metric_class(*args, **kwargs)

    def build(self) -> nn.Module:
        if self.metric is None:
            try:
                self.__dict__["metric"] = self.make_metric()
            except Exception as err:  # the download can fail in many ways (DNS, refused, SSL, timeout)
                reason = f"{type(err).__name__}: {err}".splitlines()[0]
                CONSOLE.print(f"[yellow]LPIPS unavailable, its backbone weights could not be loaded ({reason})")
                self.__dict__["metric"] = UnavailableLPIPS(reason)
        return self.metric

    @property
    def available(self) -> bool:
        return not isinstance(self.build(), UnavailableLPIPS)

    def forward(self, images: Tensor, targets: Tensor) -> Tensor:
        return self.build().to(images.device)(images, targets)


@contextmanager
def lazy_lpips() -> Iterator[None]:
    """While active, building torchmetrics' LPIPS yields a :class:`LazyLPIPS` that builds it when first used."""
    import torchmetrics.image.lpip as lpip_module

    real = lpip_module.LearnedPerceptualImagePatchSimilarity
    lpip_module.LearnedPerceptualImagePatchSimilarity = partial(LazyLPIPS, real)
    try:
        yield
    finally:
        lpip_module.LearnedPerceptualImagePatchSimilarity = real


@dataclass
class PortableSplatfactoModelConfig(SplatfactoModelConfig):
    """Splatfacto that trains and renders on CPU (own PyTorch rasteriser) and CUDA (gsplat), offline too."""

    _target: Type = field(default_factory=lambda: PortableSplatfactoModel)

    def step_schedule_fields(self) -> Tuple[str, ...]:
        """Step counts that :func:`distilled_splat.schedules.scale_to_run_length` scales with the run length."""
        return ("warmup_length", "resolution_schedule", "sh_degree_interval", "stop_screen_size_at", "stop_split_at")

    def fit_to_run_length(self, max_steps: int) -> None:
        """Settle the settings that depend on the run's length (none here; see the student's budget-cuts)."""

    def scheduled_events(self) -> Dict[str, Tuple[int, str]]:
        """Events this model exists for, as {setting: (first step, how to turn it off)}; a run too short for one
        is refused before it starts (:class:`distilled_splat.method_configs.CheckedTrainerConfig`)."""
        return {}


class PortableSplatfactoModel(SplatfactoModel):
    config: PortableSplatfactoModelConfig

    def populate_modules(self) -> None:
        seed = self.seed_points
        colour_from_seed = seed is not None and not self.config.random_init and len(seed[1]) > 0
        if colour_from_seed:
            # splatfacto allocates seed colours with a hard-coded .cuda(); give it colourless seeds and colour
            # the Gaussians here instead.
            self.seed_points = (seed[0], seed[1][:0])
        with lazy_lpips():
            super().populate_modules()
        self.seed_points = seed
        if colour_from_seed:
            rgb = seed[1].float() / 255.0
            dc = RGB2SH(rgb) if self.config.sh_degree > 0 else torch.logit(rgb, eps=1e-10)
            self.gauss_params["features_dc"].data.copy_(dc)

    @property
    def lpips_available(self) -> bool:
        return self.lpips.available

    def splat_inputs(self, crop_ids: Optional[Tensor]) -> Dict[str, Tensor]:
        """Activated per-Gaussian render inputs: means, quats, scales, opacities [N] and colours.

        Subclasses that change what is rendered during training (dropout, for one) override this.
        """

        def pick(tensor: Tensor) -> Tensor:
            return tensor if crop_ids is None else tensor[crop_ids]

        colors = torch.cat((pick(self.features_dc)[:, None, :], pick(self.features_rest)), dim=1)
        if self.config.sh_degree == 0:
            colors = torch.sigmoid(colors).squeeze(1)
        return {
            "means": pick(self.means),
            "quats": pick(self.quats),
            "scales": torch.exp(pick(self.scales)),
            "opacities": torch.sigmoid(pick(self.opacities)).squeeze(-1),
            "colors": colors,
        }

    def get_outputs(self, camera: Cameras) -> Dict[str, Union[Tensor, List]]:
        """Splatfacto's ``get_outputs`` without its CUDA-only calls, rendering through :func:`rasterize`."""
        if not isinstance(camera, Cameras):
            raise TypeError(f"get_outputs needs a Cameras object, got {type(camera).__name__}")
        if self.training:
            assert camera.shape[0] == 1, "Only one camera at a time"
            camera_to_world = self.camera_optimizer.apply_to_camera(camera)
        else:
            camera_to_world = camera.camera_to_worlds

        crop_ids = None
        if self.crop_box is not None and not self.training:
            crop_ids = self.crop_box.within(self.means).squeeze()
            if crop_ids.sum() == 0:
                width, height = int(camera.width.item()), int(camera.height.item())
                return self.get_empty_outputs(width, height, self.background_color)

        downscale = self._get_downscale_factor()
        camera.rescale_output_resolution(1 / downscale)
        intrinsics = camera.get_intrinsics_matrices().to(self.device)
        width, height = int(camera.width.item()), int(camera.height.item())
        self.last_size = (height, width)
        camera.rescale_output_resolution(downscale)

        render_mode = "RGB+ED" if self.config.output_depth_during_training or not self.training else "RGB"
        sh_degree = None
        if self.config.sh_degree > 0:
            sh_degree = min(self.step // self.config.sh_degree_interval, self.config.sh_degree)
        render, alpha, self.info = rasterize(
            **self.splat_inputs(crop_ids),
            viewmats=gsplat_viewmats(camera_to_world),
            Ks=intrinsics,
            width=width,
            height=height,
            packed=False,
            near_plane=0.01,
            far_plane=1e10,
            render_mode=render_mode,
            sh_degree=sh_degree,
            sparse_grad=False,
            absgrad=self.strategy.absgrad,
            rasterize_mode=self.config.rasterize_mode,
        )
        if self.training:
            self.strategy.step_pre_backward(
                self.gauss_params, self.optimizers, self.strategy_state, self.step, self.info
            )

        background = self._get_background_color()
        rgb = torch.clamp(render[..., :3] + (1 - alpha) * background, 0.0, 1.0)
        if self.config.use_bilateral_grid and self.training and camera.metadata and "cam_idx" in camera.metadata:
            rgb = self._apply_bilateral_grid(rgb, camera.metadata["cam_idx"], height, width)
        depth = None
        if render_mode == "RGB+ED":
            depth = render[..., 3:4]
            depth = torch.where(alpha > 0, depth, depth.detach().max()).squeeze(0)
        if background.shape[0] == 3 and not self.training:
            background = background.expand(height, width, 3)
        return {"rgb": rgb.squeeze(0), "depth": depth, "accumulation": alpha.squeeze(0), "background": background}

    def get_extra_state(self) -> Dict[str, Tensor]:
        """Saved with every checkpoint so that a resumed run continues exactly: gsplat's densification statistics
        and the strategy's numbers, such as a ceiling (not part of nerfstudio's checkpoints), and the random number
        generator state."""
        state = {
            f"strategy.{key}": value if isinstance(value, Tensor) else torch.tensor(value)
            for key, value in self.strategy_state.items()
            if isinstance(value, (Tensor, int, float))
        }
        state["rng.cpu"] = torch.get_rng_state()
        if torch.cuda.is_available():
            state["rng.cuda"] = torch.cuda.get_rng_state()
        return state

    def set_extra_state(self, state: Dict[str, Tensor]) -> None:
        # Applied at the next training step, so that evaluating or exporting a checkpoint changes nothing.
        self.resume_state = state

    def load_state_dict(self, state_dict, **kwargs):
        state_dict.setdefault("_extra_state", {})  # checkpoints written before the resume state existed
        return super().load_state_dict(state_dict, **kwargs)

    def step_cb(self, optimizers, step: int) -> None:
        super().step_cb(optimizers, step)
        resume_state = getattr(self, "resume_state", None)
        if resume_state:
            for key, value in resume_state.items():
                if key.startswith("strategy."):
                    # Per-Gaussian statistics are tensors; numbers (the scene scale, a ceiling) were saved as 0-d ones.
                    restored = value.item() if value.ndim == 0 else value.to(self.device)
                    self.strategy_state[key[len("strategy.") :]] = restored
            torch.set_rng_state(resume_state["rng.cpu"])
            if "rng.cuda" in resume_state and torch.cuda.is_available():
                torch.cuda.set_rng_state(resume_state["rng.cuda"])
        self.resume_state = None
        # Resuming (ns-train --load-dir) builds the optimisers first and then loads the checkpoint, whose Gaussian
        # count differs, so load_state_dict swaps in new Parameters the optimisers do not hold: re-point them, or
        # a resumed run silently stops training its Gaussians.
        for name, param in self.gauss_params.items():
            optimizer = self.optimizers.get(name)
            held = None if optimizer is None else optimizer.param_groups[0]["params"][0]
            if held is not None and held is not param:
                optimizer.param_groups[0]["params"] = [param]
                if held in optimizer.state:
                    optimizer.state[param] = optimizer.state.pop(held)

    def step_post_backward(self, step: int) -> None:
        assert step == self.step
        self.strategy_post_backward(step)
        # A non-finite parameter spreads to every Gaussian it overlaps within a few steps; stop at the first.
        for name in ("means", "scales", "opacities"):
            if not bool(torch.isfinite(self.gauss_params[name]).all()):
                raise DistilledSplatError(f"training diverged at step {step}: NaN or Inf in the Gaussians' {name}")

    def strategy_post_backward(self, step: int) -> None:
        """Hands the step to the densification strategy; models with another strategy change the call here."""
        self.strategy.step_post_backward(
            self.gauss_params, self.optimizers, self.strategy_state, step, self.info, packed=False
        )

    def get_image_metrics_and_images(
        self, outputs: Dict[str, Tensor], batch: Dict[str, Tensor]
    ) -> Tuple[Dict[str, float], Dict[str, Tensor]]:
        metrics, images = super().get_image_metrics_and_images(outputs, batch)
        if not self.lpips_available:
            metrics = {name: value for name, value in metrics.items() if not name.endswith("lpips")}
        return metrics, images
