"""The ``distilled-splat`` command."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import tyro
from rich.console import Console
from rich.table import Table

from distilled_splat.data.scene_checks import check_scene
from distilled_splat.data.synthetic import PRESETS, write_scene
from distilled_splat.errors import DistilledSplatError
from distilled_splat.method_configs import distilled_teacher
from distilled_splat.schedules import scale_to_run_length
from distilled_splat.training import evaluate, gaussian_count, resolve_device, train


@dataclass
class Scene:
    """Write a built-in synthetic scene (ray-traced photographs) as a nerfstudio-format folder."""

    output: Path
    """Folder to write; replaced if it exists."""
    preset: Literal["demo", "tiny"] = "demo"
    """'demo': 48 views at 128x128; 'tiny': 16 views at 48x40, for tests."""

    def main(self) -> None:
        write_scene(self.output, PRESETS[self.preset])
        print(f"wrote {self.preset} scene to {self.output}")


@dataclass
class Demo:
    """Train the vanilla teacher on the built-in demo scene and print its metrics on the held-out views."""

    output: Path = Path("outputs/demo")
    """Folder for the scene, the run and the metrics."""
    steps: int = 2000
    """Training steps; every splatfacto schedule is scaled from its 30k-step value to this length."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """'auto' uses CUDA (gsplat) when present, otherwise the CPU rasteriser."""

    def main(self) -> None:
        scene = self.output / "scene"
        try:
            check_scene(scene)
        except DistilledSplatError:
            write_scene(scene, PRESETS["demo"])
        config = scale_to_run_length(distilled_teacher.config, self.steps)
        config.pipeline.datamanager.data = scene
        config.output_dir = self.output / "runs"
        config.experiment_name = "demo"
        config.timestamp = f"{self.steps}-steps"
        config.machine.device_type = resolve_device(self.device)
        config.vis = "tensorboard"
        config_path = train(config)
        metrics = evaluate(config_path, self.output / "vanilla-teacher-eval.json")
        metrics["gaussians"] = gaussian_count(config)
        table = Table(title=f"distilled-teacher on the demo scene ({self.steps} steps, {config.machine.device_type})")
        shown = [name for name in ("psnr", "ssim", "lpips", "gaussians", "fps") if name in metrics]
        for name in shown:
            table.add_column(name)
        table.add_row(*(str(metrics[name]) if name == "gaussians" else f"{metrics[name]:.4g}" for name in shown))
        Console().print(table)
        if "lpips" not in metrics:
            print("lpips: unavailable (its AlexNet weights could not be loaded)")
        print(f"config: {config_path}")


def entrypoint() -> None:
    tyro.extras.subcommand_cli_from_dict({"scene": Scene, "demo": Demo}).main()
