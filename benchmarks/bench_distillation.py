"""What distillation costs: student vs teacher step time, cache build, structural loss, importance, rendering.

    python benchmarks/bench_distillation.py [--output outputs/demo] [--steps 30] [--device auto|cpu|cuda]
        [--structure-counts 100000 1000000]

Needs a finished ``distilled-splat run`` / ``demo`` folder (run ``distilled-splat demo`` first); everything is
measured in this one process on one device, so the ratios compare like with like. Prints one table.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Callable, List

import torch
from bench_rasterizer import peak_memory
from nerfstudio.engine.optimizers import Optimizers
from rich.console import Console
from rich.table import Table

from distilled_splat.data.teacher_cache import load_or_build, render_premultiplied
from distilled_splat.devices import resolve_device
from distilled_splat.losses import StructureLoss, structure_loss
from distilled_splat.recipe import Recipe
from distilled_splat.run_configs import STUDENT
from distilled_splat.teachers import load_teacher, teacher_config_path
from distilled_splat.training import last_step_checkpoint


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed_alternately(runs: List[Callable[[], None]], device: torch.device, repeats: int) -> List[float]:
    """Median seconds of each of ``runs`` over ``repeats`` rounds after one warm-up round, timed in turn so that
    drifting machine load affects all alike."""
    for run in runs:
        run()
    times: List[List[float]] = [[] for _ in runs]
    for _ in range(repeats):
        for run, samples in zip(runs, times):
            synchronize(device)
            start = time.perf_counter()
            run()
            synchronize(device)
            samples.append(time.perf_counter() - start)
    return [statistics.median(samples) for samples in times]


def timed(run: Callable[[], None], device: torch.device, repeats: int) -> float:
    """Median seconds of ``repeats`` runs after one warm-up."""
    return timed_alternately([run], device, repeats)[0]


def training_pipeline(recipe: Recipe, name: str, device: torch.device, gaussians_from: Path):
    """``name``'s pipeline in training mode holding the Gaussians of checkpoint ``gaussians_from``."""
    config = recipe.configs.method_config(name)
    config.pipeline.datamanager.prepare_run(config.get_base_dir())  # as ns-train does: finds the teacher cache
    pipeline = config.pipeline.setup(device=device, test_mode="val")
    state = torch.load(gaussians_from, map_location=device)
    pipeline.load_pipeline(state["pipeline"], state["step"])
    optimizers = Optimizers(copy.deepcopy(config.optimizers), pipeline.get_param_groups())
    pipeline.model.step_cb(optimizers, config.max_num_iterations - 2)  # late: no resolution or SH warm-up
    pipeline.train()
    return pipeline, optimizers


def step_function(pipeline, optimizers, extra: Callable[[object], None] = lambda camera: None):
    """One training step per call; call k trains on view k (mod the view count) whatever the pipeline, so the
    pipelines compared see the same views (their cost varies with what each view shows)."""
    calls = itertools.count()

    def step() -> None:
        # next_train pops the first queued view and refills the queue only once it is empty.
        pipeline.datamanager.train_unseen_cameras = [next(calls) % len(pipeline.datamanager.train_dataset)] * 2
        camera, batch = pipeline.datamanager.next_train(0)
        extra(camera)
        outputs = pipeline.model.get_outputs(camera)
        loss = sum(pipeline.model.get_loss_dict(outputs, batch).values())
        optimizers.zero_grad_all()
        loss.backward()
        optimizers.optimizer_step_all()

    return step


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=Path("outputs/demo"))
    parser.add_argument("--steps", type=int, default=30, help="timed training steps per measurement")
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--structure-counts", type=int, nargs="+", default=[100_000, 1_000_000],
        help="point counts (besides the student's own) at which the structural loss is timed",
    )  # fmt: skip
    args = parser.parse_args()
    device = torch.device(resolve_device(args.device))
    recipe = Recipe.load(args.output)
    recipe.settings.device = device.type
    teacher_configs = [teacher_config_path(recipe.configs.teacher_config_path(t)) for t in recipe.configs.teachers()]
    vanilla_checkpoint = last_step_checkpoint(recipe.configs.method_config("vanilla"))
    rows: List[tuple] = []

    # 1. Student vs vanilla teacher step, same Gaussians (the teacher's), same cameras.
    teacher, teacher_optimizers = training_pipeline(recipe, "vanilla", device, vanilla_checkpoint)
    student, student_optimizers = training_pipeline(recipe, STUDENT, device, vanilla_checkpoint)
    count = student.model.num_points
    loaded = [load_teacher(config, device)[0] for config in teacher_configs]

    def render_teachers(camera) -> None:
        for pipeline in loaded:
            render_premultiplied(pipeline, camera)

    teacher_step, student_step, on_the_fly = timed_alternately(
        [
            step_function(teacher, teacher_optimizers),
            step_function(student, student_optimizers),
            step_function(student, student_optimizers, render_teachers),
        ],
        device,
        args.steps,
    )
    rows += [
        ("teacher training step", f"{teacher_step * 1e3:.1f} ms", f"{count:,} Gaussians"),
        (
            "student training step (cached teachers)",
            f"{student_step * 1e3:.1f} ms",
            f"{student_step / teacher_step:.2f}x teacher (target <= 1.15)",
        ),
        (
            "student step, teachers rendered every step",
            f"{on_the_fly * 1e3:.1f} ms",
            f"{on_the_fly / teacher_step:.2f}x teacher",
        ),
    ]

    # 2. Cache build vs one plain render per teacher per view.
    cameras = student.datamanager.train_dataset.cameras
    names = [Path(p).name for p in student.datamanager.train_dataparser_outputs.image_filenames]

    def render_all() -> None:
        for pipeline in loaded:
            for view in range(len(cameras)):
                render_premultiplied(pipeline, cameras[view : view + 1])

    plain = timed(render_all, device, 1)
    loaded.clear()  # only the cache build holds teachers from here on
    with tempfile.TemporaryDirectory() as folder:
        start = time.perf_counter()
        scene_cameras = student.datamanager.train_dataparser_outputs.cameras
        load_or_build(Path(folder) / "cache", teacher_configs, cameras, scene_cameras, names, "mean", device)
        build = time.perf_counter() - start
        view_bytes = sum(p.stat().st_size for p in (Path(folder) / "cache").glob("*/views/*")) / len(cameras)
        shutil.rmtree(folder, ignore_errors=True)
    rows += [
        (
            "teacher renders, every teacher x view",
            f"{plain:.2f} s",
            f"{len(teacher_configs)} teachers x {len(cameras)} views",
        ),
        (
            "teacher cache build",
            f"{build:.2f} s",
            f"{build / plain:.2f}x plain renders (target <= 1.2); {view_bytes / 1024:.1f} KiB per view",
        ),
    ]

    # 3. Structural loss, both modes, at the finished student's size and at 1e5 / 1e6 points, grid 256.
    teacher_means = student.model.teacher_means.to(device)
    small, small_optimizers = training_pipeline(
        recipe, STUDENT, device, last_step_checkpoint(recipe.configs.method_config(STUDENT))
    )
    small_step = timed(step_function(small, small_optimizers), device, args.steps)
    rows.append(
        (
            "student training step at its final size",
            f"{small_step * 1e3:.1f} ms",
            f"{small.model.num_points:,} Gaussians",
        )
    )
    for mode in ("marginal", "joint"):
        for n in (small.model.num_points, *args.structure_counts):
            if n == small.model.num_points:  # the finished student's own centres
                means = small.model.means.detach().clone()
            else:
                means = torch.randn(n, 3, device=device) * teacher_means.std(0) + teacher_means.mean(0)
            means.requires_grad_(True)
            kept = StructureLoss(teacher_means, mode=mode)

            def loss_and_grad(means=means, kept=kept) -> None:
                kept(means).backward()

            def first_call(means=means, mode=mode) -> None:
                structure_loss(means, teacher_means, mode=mode).backward()

            seconds = timed(loss_and_grad, device, 5)
            first = timed(first_call, device, 3)
            extra = peak_memory(first_call, device)
            share = f"{seconds / small_step:.1%} of that step" + (
                " (target <= 3%)" if mode == "marginal" and n == small.model.num_points else ""
            )
            rows.append(
                (
                    f"structural loss {mode}, N={n:,}",
                    f"{seconds * 1e3:.1f} ms",
                    f"{share}; {first * 1e3:.1f} ms when the teacher histogram is built too; "
                    f"peak +{extra / 2**20:.1f} MiB",
                )
            )

    # 4. Importance over all training views vs one no-grad render pass over them.
    model = student.model
    model.training_cameras = cameras
    importance = timed(model.importance, device, 1)

    @torch.no_grad()
    def render_views() -> None:
        model.eval()
        for view in range(len(cameras)):
            model.get_outputs(cameras[view : view + 1].to(device))
        model.train()

    render_pass = timed(render_views, device, 1)
    rows.append(
        (
            "importance, all training views",
            f"{importance:.2f} s",
            f"{importance / render_pass:.2f}x one render pass of {render_pass:.2f} s (target <= 2)",
        )
    )

    # 5. Rendering speed of the finished student vs the vanilla teacher over every training view, and the work a
    # frame takes: gsplat's tile intersections (each costs one 16x16 tile of a Gaussian's compositing).
    speed = {}
    for name in ("vanilla", STUDENT):
        pipeline, _ = load_teacher(recipe.configs.method_config(name).get_base_dir() / "config.yml", device)
        tiles = []

        def render_every_view(pipeline=pipeline, tiles=tiles) -> None:
            tiles.clear()
            for view in range(len(cameras)):
                render_premultiplied(pipeline, cameras[view : view + 1])
                tiles.append(int(pipeline.model.info["tiles_per_gauss"].sum()))

        frame = timed(render_every_view, device, 3) / len(cameras)
        speed[name] = (frame, pipeline.model.num_points, statistics.mean(tiles))
    for name, (frame, count, tiles) in speed.items():
        base_frame, base_count, base_tiles = speed["vanilla"]
        rows.append(
            (
                f"render, {name}",
                f"{frame * 1e3:.1f} ms = {1 / frame:.1f} fps",
                f"{frame / base_frame:.2f}x the teacher's time for {count / base_count:.2f}x its Gaussians "
                f"({count:,}) and {tiles / base_tiles:.2f}x its tile intersections ({tiles:,.0f} per frame)",
            )
        )

    table = Table(title=f"distillation costs on {device} ({recipe.data.name}, {len(cameras)} training views)")
    for column in ("measurement", "time", "comparison"):
        table.add_column(column)
    for row in rows:
        table.add_row(*row)
    Console(width=160).print(table)


if __name__ == "__main__":
    main()
